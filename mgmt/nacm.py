"""NETCONF Access Control Model (RFC 8341) decisions, pure: no libyang, no I/O.

Theory of operation: :meth:`Policy.compile` turns the ``ietf-netconf-acm:nacm`` container of
running (RFC 7951 JSON; ``None`` when absent, which means the YANG defaults: enabled, read
permit, write deny, exec permit) into immutable rules once per change of running.  A request
is described by a :class:`Target` (a data node with its path segments, a protocol operation or
a notification, each with its module and the ``nacm:default-deny-write`` /
``nacm:default-deny-all`` flags of its schema node) and an access operation (``read``,
``create``, ``update``, ``delete``, ``exec``).  :meth:`Policy.permits` follows RFC 8341
Section 3.4: NACM disabled -> permit; ``close-session`` and the replay notifications are always
permitted; otherwise the rule-lists whose groups include one of the user's groups (or ``*``)
are scanned in order and the first rule whose module, type (rpc-name / notification-name /
path) and access-operations match decides; without a match ``default-deny-all`` /
``default-deny-write`` deny, ``kill-session`` and ``delete-config`` of ``ietf-netconf`` are
denied, and the read/write/exec default applies.

A path rule matches the node it names and all its descendants; predicates in the rule
(``[name='a']``) must equal the node's list keys.  The rules that apply to a user are computed
once per user and policy (:meth:`Policy.rules_for`), and decisions for targets without list
keys are cached, so filtering a large ``<get>`` costs a dictionary look-up per schema node.

The default installed by the agent when running has no ``/nacm`` is :func:`default_nacm`;
a read-only operator group is shown in docs/nacm.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

NACM_MODULE = "ietf-netconf-acm"
NACM_TOP = f"{NACM_MODULE}:nacm"
READ, CREATE, UPDATE, DELETE, EXEC = "read", "create", "update", "delete", "exec"
ALL_OPS = frozenset((READ, CREATE, UPDATE, DELETE, EXEC))
WRITE_OPS = frozenset((CREATE, UPDATE, DELETE))
NETCONF_MODULE = "ietf-netconf"
ALWAYS_PERMITTED_RPCS = frozenset({(NETCONF_MODULE, "close-session")})
DENY_ALL_RPCS = frozenset({(NETCONF_MODULE, "kill-session"), (NETCONF_MODULE, "delete-config")})
ALWAYS_PERMITTED_NOTIFICATIONS = frozenset({"replayComplete", "notificationComplete"})


@dataclass(frozen=True)
class Segment:
    """One step of a data node's path: its module, name and (for a list entry) key values."""

    module: str
    name: str
    keys: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Target:
    """What is accessed: ``kind`` is ``data``, ``rpc`` or ``notification``."""

    kind: str
    module: str
    name: str
    path: tuple[Segment, ...] = ()
    deny_write: bool = False
    deny_all: bool = False

    @classmethod
    def data(cls, path: Sequence[Segment], deny_write: bool = False, deny_all: bool = False) -> Target:
        last = path[-1]
        return cls("data", last.module, last.name, tuple(path), deny_write, deny_all)

    @classmethod
    def rpc(cls, module: str, name: str, deny_all: bool = False) -> Target:
        return cls("rpc", module, name, deny_all=deny_all or (module, name) in DENY_ALL_RPCS)

    @classmethod
    def notification(cls, module: str, name: str, deny_all: bool = False) -> Target:
        return cls("notification", module, name, deny_all=deny_all)


@dataclass(frozen=True)
class _Step:
    module: str | None  # None: same module as the previous step
    name: str  # '*' matches any name
    predicates: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Rule:
    """One compiled ``rule`` of a ``rule-list``."""

    name: str
    module: str = "*"
    rpc_name: str | None = None
    notification_name: str | None = None
    path: tuple[_Step, ...] | None = None  # () : every data node
    ops: frozenset[str] = ALL_OPS
    permit: bool = False

    @property
    def typed(self) -> bool:
        return self.rpc_name is not None or self.notification_name is not None or self.path is not None

    def matches(self, op: str, target: Target) -> bool:
        if op not in self.ops:
            return False
        if self.module != "*" and self.module != target.module:
            return False
        if self.rpc_name is not None:
            return target.kind == "rpc" and self.rpc_name in ("*", target.name)
        if self.notification_name is not None:
            return target.kind == "notification" and self.notification_name in ("*", target.name)
        if self.path is not None:
            return target.kind == "data" and _path_matches(self.path, target.path)
        return True


class NacmConfigError(ValueError):
    """The /nacm configuration holds something this engine cannot evaluate (one line)."""


_PRED = re.compile(r"""\[\s*(?:[\w.-]+:)?([\w.-]+)\s*=\s*(?:'([^']*)'|"([^"]*)")\s*\]""")


def parse_path(text: str) -> tuple[_Step, ...]:
    """A ``node-instance-identifier`` (``/m:a/b[k='v']``); ``/`` and ``*`` mean every node."""
    text = text.strip()
    if text in ("/", "*", ""):
        return ()
    if not text.startswith("/"):
        raise NacmConfigError(f"NACM rule path {text!r} must start with '/'")
    steps: list[_Step] = []
    for raw in _split_steps(text[1:]):
        bracket = raw.find("[")
        head, preds = (raw, "") if bracket < 0 else (raw[:bracket], raw[bracket:])
        module, _, name = head.rpartition(":")
        matched = _PRED.findall(preds)
        if _PRED.sub("", preds).strip():
            raise NacmConfigError(f"NACM rule path {text!r}: unsupported predicate {preds!r}")
        steps.append(_Step(module or None, name, tuple((k, a or b) for k, a, b in matched)))
    return tuple(steps)


def _split_steps(text: str) -> list[str]:
    out, depth, quote, cur = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "/" and depth == 0:
            out.append(cur)
            cur = ""
            continue
        cur += ch
    out.append(cur)
    return [s for s in out if s]


def _path_matches(rule: tuple[_Step, ...], node: tuple[Segment, ...]) -> bool:
    if len(rule) > len(node):
        return False
    module = None
    for step, seg in zip(rule, node, strict=False):
        module = step.module or module
        if step.name != "*" and (step.name != seg.name or (module is not None and module != seg.module)):
            return False
        if step.predicates:
            keys = dict(seg.keys)
            if any(keys.get(k) != v for k, v in step.predicates):
                return False
    return True


def _ops(value: Any) -> frozenset[str]:
    if value is None or value == "*":
        return ALL_OPS
    words = value.split() if isinstance(value, str) else list(value)
    unknown = set(words) - ALL_OPS
    if unknown:
        raise NacmConfigError(f"NACM access-operations {value!r}: unknown {sorted(unknown)}")
    return frozenset(words)


def _rule(raw: dict[str, Any]) -> Rule:
    path = raw.get("path")
    return Rule(name=str(raw.get("name", "")), module=str(raw.get("module-name", "*")),
                rpc_name=raw.get("rpc-name"), notification_name=raw.get("notification-name"),
                path=parse_path(path) if path is not None else None, ops=_ops(raw.get("access-operations")),
                permit=raw.get("action") == "permit")


@dataclass(frozen=True)
class _RuleList:
    name: str
    groups: frozenset[str]
    rules: tuple[Rule, ...]


@dataclass
class Policy:
    """A compiled ``/nacm`` configuration."""

    enabled: bool = True
    read_permit: bool = True
    write_permit: bool = False
    exec_permit: bool = True
    external_groups: bool = True
    groups: dict[str, frozenset[str]] = field(default_factory=dict)  # user -> groups
    rule_lists: tuple[_RuleList, ...] = ()
    _per_user: dict[tuple[str, frozenset[str]], tuple[Rule, ...]] = field(default_factory=dict, repr=False)
    _cache: dict[tuple[Any, ...], bool] = field(default_factory=dict, repr=False)

    @classmethod
    def compile(cls, nacm: dict[str, Any] | None) -> Policy:
        """From the RFC 7951 JSON of ``/ietf-netconf-acm:nacm`` (or None: the YANG defaults)."""
        n = nacm or {}
        members: dict[str, set[str]] = {}
        for g in (n.get("groups") or {}).get("group", []):
            for user in g.get("user-name", []):
                members.setdefault(user, set()).add(g["name"])
        lists = tuple(_RuleList(rl["name"], frozenset(rl.get("group", [])),
                                tuple(_rule(r) for r in rl.get("rule", [])))
                      for rl in n.get("rule-list", []))
        return cls(enabled=n.get("enable-nacm", True) is not False,
                   read_permit=n.get("read-default", "permit") == "permit",
                   write_permit=n.get("write-default", "deny") == "permit",
                   exec_permit=n.get("exec-default", "permit") == "permit",
                   external_groups=n.get("enable-external-groups", True) is not False,
                   groups={u: frozenset(g) for u, g in members.items()}, rule_lists=lists)

    def groups_of(self, user: str, external: Iterable[str] = ()) -> frozenset[str]:
        found = set(self.groups.get(user, ()))
        if self.external_groups:
            found.update(external)
        return frozenset(found)

    def rules_for(self, user: str, external: frozenset[str] = frozenset()) -> tuple[Rule, ...]:
        """The rules of every rule-list that applies to *user*, in order (cached)."""
        key = (user, external)
        rules = self._per_user.get(key)
        if rules is None:
            groups = self.groups_of(user, external)
            rules = tuple(r for rl in self.rule_lists if "*" in rl.groups or rl.groups & groups
                          for r in rl.rules)
            self._per_user[key] = rules
        return rules

    def permits(self, user: str, op: str, target: Target, external: frozenset[str] = frozenset()) -> bool:
        """RFC 8341 Section 3.4 decision for *user* doing *op* on *target*."""
        if not self.enabled:
            return True
        key = (user, external, op, target) if not any(s.keys for s in target.path) else None
        if key is not None:
            hit = self._cache.get(key)
            if hit is not None:
                return hit
        decision = self._decide(user, op, target, external)
        if key is not None:
            if len(self._cache) > 65536:
                self._cache.clear()
            self._cache[key] = decision
        return decision

    def _decide(self, user: str, op: str, target: Target, external: frozenset[str]) -> bool:
        if target.kind == "rpc" and (target.module, target.name) in ALWAYS_PERMITTED_RPCS:
            return True
        if target.kind == "notification" and target.name in ALWAYS_PERMITTED_NOTIFICATIONS:
            return True
        for rule in self.rules_for(user, external):
            if rule.matches(op, target):
                return rule.permit
        if target.deny_all:
            return False
        if target.kind == "rpc":
            return self.exec_permit
        if op in WRITE_OPS:
            return False if target.deny_write else self.write_permit
        return self.read_permit

    def reads_everything(self, user: str, external: frozenset[str] = frozenset()) -> bool:
        """Whether the first rule of *user* that can match a read of data permits every node
        (e.g. the administrators' ``permit-all``): reads need no filtering then."""
        if not self.enabled:
            return True
        for rule in self.rules_for(user, external):
            if READ not in rule.ops or rule.rpc_name is not None or rule.notification_name is not None:
                continue
            return rule.permit and rule.module == "*" and not rule.path
        return False

    def needs_keys(self, user: str, external: frozenset[str] = frozenset()) -> bool:
        """Whether a rule of *user* has list-key predicates (else decisions depend on schema only)."""
        return any(s.predicates for r in self.rules_for(user, external) if r.path for s in r.path)


def default_nacm(administrators: Sequence[str]) -> dict[str, Any]:
    """The ``/nacm`` installed when running has none: only the administrators may write."""
    return {NACM_TOP: {
        "enable-nacm": True, "read-default": "permit", "write-default": "deny", "exec-default": "permit",
        "enable-external-groups": False,
        "groups": {"group": [{"name": "admin", "user-name": list(dict.fromkeys(administrators))}]},
        "rule-list": [{"name": "admin", "group": ["admin"],
                       "rule": [{"name": "permit-all", "module-name": "*", "access-operations": "*",
                                 "action": "permit", "comment": "the administrators configured at bootstrap"}]}],
    }}
