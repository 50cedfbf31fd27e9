"""The NACM engine (mgmt/nacm.py) on its own: RFC 8341 Section 3.4 decisions, no libyang."""

from __future__ import annotations

import time

import pytest

from mgmt.nacm import (
    CREATE,
    DELETE,
    EXEC,
    NACM_TOP,
    READ,
    UPDATE,
    NacmConfigError,
    Policy,
    Segment,
    Target,
    default_nacm,
    parse_path,
)

A = "dots-agent"


def node(*names: str, keys: dict[int, tuple[tuple[str, str], ...]] | None = None, module: str = A,
         deny_write: bool = False, deny_all: bool = False) -> Target:
    keys = keys or {}
    return Target.data([Segment(module, n, keys.get(i, ())) for i, n in enumerate(names)], deny_write, deny_all)


CLIENT_A = node("dots-agent", "server", "clients", "client", "protected-prefix",
                keys={3: (("name", "customer-a"),)})
CLIENT_B = node("dots-agent", "server", "clients", "client", "protected-prefix",
                keys={3: (("name", "customer-b"),)})


def policy(rule_lists: list[dict], **top: object) -> Policy:
    return Policy.compile({"groups": {"group": [{"name": "admin", "user-name": ["root"]},
                                                {"name": "ops", "user-name": ["olga", "oscar"]}]},
                           "rule-list": rule_lists, **top})


def test_yang_defaults_without_nacm():
    p = Policy.compile(None)
    assert p.permits("anyone", READ, CLIENT_A)
    assert not p.permits("anyone", UPDATE, CLIENT_A)  # write-default deny
    assert p.permits("anyone", EXEC, Target.rpc("ietf-netconf", "get"))
    assert not p.permits("anyone", EXEC, Target.rpc("ietf-netconf", "kill-session"))
    assert not p.permits("anyone", EXEC, Target.rpc("ietf-netconf", "delete-config"))


def test_default_nacm_lets_only_the_administrators_write():
    p = Policy.compile(default_nacm(["root", "root"])[NACM_TOP])
    for op in (CREATE, UPDATE, DELETE):
        assert p.permits("root", op, CLIENT_A) and not p.permits("olga", op, CLIENT_A)
    assert p.permits("root", READ, node("dots-agent", "management", "user", "password", deny_all=True))
    assert not p.permits("olga", READ, node("dots-agent", "management", "user", "password", deny_all=True))
    assert p.permits("root", EXEC, Target.rpc(A, "approve-mitigation", deny_all=True))
    assert not p.permits("olga", EXEC, Target.rpc(A, "approve-mitigation", deny_all=True))
    assert p.permits("olga", READ, CLIENT_A)
    assert p.reads_everything("root") and not p.reads_everything("olga")  # no read filtering for root


def test_first_matching_rule_wins_across_rule_lists():
    p = policy([
        {"name": "first", "group": ["ops"], "rule": [
            {"name": "a-ok", "module-name": A,
             "path": "/dots-agent:dots-agent/server/clients/client[name='customer-a']",
             "access-operations": "update create", "action": "permit"},
            {"name": "no-clients", "module-name": "*", "path": "/dots-agent:dots-agent/server/clients",
             "access-operations": "*", "action": "deny"}]},
        {"name": "second", "group": ["*"], "rule": [
            {"name": "all", "module-name": "*", "access-operations": "*", "action": "permit"}]}])
    assert p.permits("olga", UPDATE, CLIENT_A)
    assert not p.permits("olga", UPDATE, CLIENT_B)  # predicate does not match: next rule denies
    assert not p.permits("olga", DELETE, CLIENT_A)  # access-operations of a-ok do not include delete
    assert not p.permits("olga", READ, CLIENT_B)
    assert p.permits("olga", UPDATE, node("dots-agent", "server", "lifetime"))  # second list, '*' group
    assert p.permits("nobody", UPDATE, CLIENT_B)  # '*' applies to users in no group too


def test_module_and_wildcard_paths():
    p = policy([{"name": "l", "group": ["ops"], "rule": [
        {"name": "other-module", "module-name": "ietf-interfaces", "access-operations": "*", "action": "permit"},
        {"name": "everything", "module-name": "*", "path": "/", "access-operations": "read", "action": "deny"}]}])
    assert not p.permits("olga", READ, CLIENT_A)
    assert p.permits("olga", UPDATE, node("interfaces", "interface", module="ietf-interfaces"))


def test_default_deny_extensions():
    p = policy([], **{"write-default": "permit"})
    key = node("dots-agent", "credentials", "credential", "private-key-file", deny_write=True)
    assert p.permits("olga", READ, key) and not p.permits("olga", UPDATE, key)
    secret = node("dots-agent", "management", "user", "password", deny_all=True)
    assert not p.permits("olga", READ, secret) and not p.permits("olga", CREATE, secret)
    explicit = policy([{"name": "l", "group": ["ops"], "rule": [
        {"name": "pw", "module-name": A, "path": "/dots-agent:dots-agent/management/user/password",
         "access-operations": "read", "action": "permit"}]}])
    assert explicit.permits("olga", READ, secret)  # a rule overrides the extension


def test_rpc_and_notification_rules():
    p = policy([{"name": "l", "group": ["ops"], "rule": [
        {"name": "no-edit", "module-name": "ietf-netconf", "rpc-name": "edit-config", "access-operations": "exec",
         "action": "deny"},
        {"name": "no-close", "module-name": "*", "rpc-name": "*", "access-operations": "exec", "action": "deny"},
        {"name": "no-events", "module-name": A, "notification-name": "mitigation-status-change",
         "access-operations": "read", "action": "deny"}]}])
    assert not p.permits("olga", EXEC, Target.rpc("ietf-netconf", "edit-config"))
    assert p.permits("olga", EXEC, Target.rpc("ietf-netconf", "close-session"))  # always
    assert not p.permits("olga", EXEC, Target.rpc(A, "approve-mitigation"))
    assert not p.permits("olga", READ, Target.notification(A, "mitigation-status-change"))
    assert p.permits("olga", READ, Target.notification(A, "session-status-change"))
    assert p.permits("olga", READ, Target.notification("nc-notifications", "replayComplete"))
    # an rpc-name rule never matches data, a path rule never an operation
    assert p.permits("olga", READ, CLIENT_A)


def test_disabled_and_groups():
    off = policy([], **{"enable-nacm": False})
    assert off.permits("olga", DELETE, CLIENT_A) and off.permits("x", EXEC, Target.rpc("ietf-netconf", "kill-session"))
    p = policy([{"name": "l", "group": ["ext"], "rule": [
        {"name": "r", "module-name": "*", "access-operations": "*", "action": "permit"}]}])
    assert p.permits("eve", UPDATE, CLIENT_A, external=frozenset({"ext"}))
    closed = policy([{"name": "l", "group": ["ext"], "rule": [
        {"name": "r", "module-name": "*", "access-operations": "*", "action": "permit"}]}],
        **{"enable-external-groups": False})
    assert not closed.permits("eve", UPDATE, CLIENT_A, external=frozenset({"ext"}))


def test_bad_configuration_is_one_line():
    with pytest.raises(NacmConfigError, match="access-operations"):
        policy([{"name": "l", "group": ["ops"], "rule": [{"name": "r", "access-operations": "write"}]}])
    with pytest.raises(NacmConfigError, match="must start with"):
        parse_path("dots-agent:dots-agent")
    with pytest.raises(NacmConfigError, match="predicate"):
        parse_path("/a:b[count(x)>1]")
    assert parse_path("/a:b/c[k='v'][j=\"w\"]/a:d")[1].predicates == (("k", "v"), ("j", "w"))


def test_decisions_are_cheap():
    rules = [{"name": f"r{i}", "module-name": A, "path": f"/dots-agent:dots-agent/server/x{i}",
              "access-operations": "read", "action": "deny"} for i in range(50)]
    p = policy([{"name": "l", "group": ["ops"], "rule": rules}])
    targets = [node("dots-agent", "server", "clients", "client", f"leaf{i}") for i in range(200)]
    started = time.perf_counter()
    for _ in range(50):
        for t in targets:
            p.permits("olga", READ, t)
    per = (time.perf_counter() - started) / (50 * len(targets))
    assert per < 50e-6, per
