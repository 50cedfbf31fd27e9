"""Call Home DOTS server decisions and enforcement: scope, NAT44, consent (RFC 9066 §5.3).

Theory of operation
-------------------
:class:`CallHomeService` is the base :class:`~agent.server.mitigations.MitigationService` (same
lifecycle machines, store, ordered enforcer, timers, counters, Observe) with the Call Home rules
added around it:

* **Policy.**  :class:`CallHomeSettings` turns on ``ServerPolicy(call_home=True)``, so the pure
  decision function refuses ``trigger-mitigation=false`` (CH-017/CH-018) and a request without
  ``target-prefix`` (CH-014) or ``source-prefix`` with 4.00.  Any routable target is in scope
  (§5.3.1); target-fqdn/target-uri are logged for the administrator only, never resolved or
  enforced (CH-015).  No base 5.03 redirect is ever sent (CH-005).
* **Source scope (CH-019).**  Before the decision, every ``source-prefix`` is *translated*:
  inside the internal prefixes it stays; otherwise, with NAT44 configured, the external
  address/port is mapped to internal device(s) through static mappings or the conntrack table
  (§5.3.2, :mod:`agent.callhome.nat`).  Anything else is refused with 4.00 and nothing is
  installed.  The entry keeps the scope *as the client sent it* (a refresh must repeat it
  unchanged, and the client's status shows its own terms); the translation is remembered per
  (cuid, mid) and is what :meth:`_action` gives the mitigator: drop traffic from the internal
  device(s) to the target(s), with the request's source-port / ICMP-type ranges (when the source
  was translated, the external port range is replaced by the mapped internal ports, or dropped
  for dynamic NAT, where the device's ports change per flow).
* **Legitimate traffic.**  Sources inside a configured ``legitimate`` list are refused with
  4.09 and conflict-cause 4 (request-rejected-legitimate-traffic).
* **Consent (CH-020/CH-021).**  ``consent="auto"`` enforces at once.  ``"manual"`` answers
  2.01 with status 1 (attack-mitigation-in-progress) as §5.3.1 prescribes, stores the request
  and keeps it *pending*: :meth:`_enforceable` is False for it, so neither the enforcer nor a
  restart's reconcile installs anything.  :meth:`approve` installs it; :meth:`reject` withdraws
  it (status 7) and its status then carries conflict-cause 4, which Observe pushes to the
  client as the "notification message" of §5.3.1.  Undecided requests are rejected after
  ``approval_timeout`` seconds.
* **Status 2.**  Once the mitigator has installed the rules, the request moves to
  attack-successfully-mitigated (2) and observers are told (§5.3.1 "if the attack traffic is
  blocked ... status code 2").
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from agent.mitigators.interface import MitigationAction, Mitigator
from agent.numbers.rfc9132 import ConflictCause, Status
from agent.protocol import mitigation as lifecycle
from agent.protocol.server_rules import ConflictInfo, ServerPolicy
from agent.protocol.targets import IPNetwork, Targets
from agent.server import scope as scopes
from agent.server.mitigations import Entry, MitigationService, PutOutcome, Work
from agent.server.settings import ServerSettings
from agent.store.interface import Store

from .nat import NatMapper

log = logging.getLogger("dots.callhome")

CONSENT_MODES = ("auto", "manual")
LEGITIMATE = ConflictCause.REQUEST_REJECTED_LEGITIMATE_TRAFFIC


@dataclass(frozen=True)
class CallHomeSettings(ServerSettings):
    """Server settings with the RFC 9066 Call Home DOTS server rules on (never a 5.03 redirect)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "redirect", None)  # CH-005: no base redirected signaling

    def policy(self) -> ServerPolicy:
        return replace(super().policy(), call_home=True)


@dataclass
class PendingApproval:
    """A Call Home request waiting for the administrator (YANG ``pending-approvals``)."""

    cuid: str
    mid: int
    received: float
    expires: float
    scope: dict[str, Any]
    enforced_sources: tuple[str, ...]
    timer: asyncio.TimerHandle | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"cuid": self.cuid, "mid": self.mid, "received": self.received, "expires": self.expires,
                "scope": self.scope, "enforced-sources": list(self.enforced_sources)}


class ConsentError(LookupError):
    """approve/reject of something that is not pending."""


def _contained(net: IPNetwork, prefixes: Iterable[IPNetwork]) -> bool:
    return any(net.version == p.version and net.subnet_of(p) for p in prefixes)  # type: ignore[arg-type]


class CallHomeService(MitigationService):
    """MitigationService with the Call Home DOTS server rules (see the module docstring)."""

    RESOLVE_NAMES = False  # target-fqdn/uri are for the administrator's information only (§5.3.1)

    def __init__(self, store: Store, mitigators: Callable[[str], Awaitable[Mitigator]],
                 settings: ServerSettings, *, internal_prefixes: Iterable[str | IPNetwork],
                 consent: str = "auto", nat: NatMapper | None = None,
                 legitimate: Iterable[str | IPNetwork] = (), approval_timeout: float = 3600.0,
                 clock: Callable[[], float] = time.time, counter_interval: float = 5.0) -> None:
        if consent not in CONSENT_MODES:
            raise ValueError(f"consent must be one of {', '.join(CONSENT_MODES)}")
        super().__init__(store, mitigators, settings, clock=clock, counter_interval=counter_interval)
        self.internal = [ipaddress.ip_network(p, strict=False) for p in internal_prefixes]
        if not self.internal:
            raise ValueError("a Call Home DOTS server needs at least one internal prefix")
        self.consent = consent
        self.nat = nat
        self.legitimate = [ipaddress.ip_network(p, strict=False) for p in legitimate]
        self.approval_timeout = approval_timeout
        self.pending: dict[tuple[str, int], PendingApproval] = {}
        self.rejected: dict[tuple[str, int], str] = {}  # -> reason
        self.translations: dict[tuple[str, int], Targets] = {}
        self.installed_at: dict[tuple[str, int], float] = {}  # when the mitigator confirmed

    # -- translation (CH-019, §5.3.2) ----------------------------------------------------------
    async def translate(self, targets: Targets) -> Targets | str:
        """The enforced scope of a request, or why its sources are outside this domain."""
        sources: list[IPNetwork] = []
        ports: list[tuple[int, int]] = list(targets.source_port_ranges)
        translated = False
        for src in sorted(targets.source_prefixes, key=lambda n: (n.version, str(n))):
            if _contained(src, self.internal):
                sources.append(src)
                continue
            found = await self.nat.lookup(src, targets.source_port_ranges, targets.prefixes) \
                if self.nat is not None and self.nat.enabled else []
            internal = [(a, p) for a, p in found if any(a.version == n.version and a in n for n in self.internal)]
            if not internal:
                return (f"source-prefix {src} is outside the Call Home DOTS server domain "
                        f"({', '.join(map(str, self.internal))})"
                        + (" and matches no NAT44 mapping" if self.nat is not None and self.nat.enabled else ""))
            translated = True
            if ports:
                ports = []
            for addr, port in internal:
                sources.append(ipaddress.ip_network(addr))
                if port is not None and targets.source_port_ranges:
                    ports.append((port, port))
            log.info("NAT44: source %s%s is internal %s", src,
                     f" ports {list(targets.source_port_ranges)}" if targets.source_port_ranges else "",
                     ", ".join(f"{a}" + (f":{p}" if p is not None else "") for a, p in internal))
        if translated and any(not _contained(s, self.internal) for s in sources):
            return "a request may not mix translated and untranslated external sources"
        return replace(targets, source_prefixes=frozenset(sources), source_port_ranges=tuple(ports))

    def _is_legitimate(self, enforced: Targets) -> bool:
        return bool(self.legitimate) and all(_contained(s, self.legitimate) for s in enforced.source_prefixes)

    # -- PUT -----------------------------------------------------------------------------------
    async def put(self, cuid: str, mid: int, members: dict[str, Any], *, if_match: bool = False,
                  cdid: str | None = None) -> PutOutcome:
        key = (cuid, mid)
        request = scopes.request_part(members)
        targets = scopes.targets_of(request)
        existing = self.get(cuid, mid)
        is_new = existing is None or existing.targets != targets
        enforced: Targets | None = None
        if targets.source_prefixes and targets.prefixes:
            if not is_new and key in self.translations:
                enforced = self.translations[key]  # a refresh: the device may be silent (blocked) now
            else:
                result = await self.translate(targets)
                if isinstance(result, str):
                    self.stats.puts += 1
                    return self._reject("4.00", result)
                enforced = result
            if self._is_legitimate(enforced):
                self.stats.puts += 1
                return self._reject("4.09", "the attack traffic is classified as legitimate traffic",
                                    ConflictInfo(LEGITIMATE))
        if targets.fqdns or targets.uris:
            log.info("Call Home request %s/%s names %s: informational only (RFC 9066 §5.3.1)", cuid, mid,
                     ", ".join(sorted(targets.fqdns | targets.uris)))
        previous = self.translations.get(key)
        pending_added = False
        if enforced is not None:
            self.translations[key] = enforced
            if is_new and self.consent == "manual" and key not in self.pending:
                now = self.clock()
                self.pending[key] = PendingApproval(cuid, mid, now, now + self.approval_timeout, dict(request),
                                                    tuple(str(s) for s in sorted(enforced.source_prefixes, key=str)))
                pending_added = True

        def undo() -> None:
            if pending_added:
                self.pending.pop(key, None)
            if previous is None:
                self.translations.pop(key, None)
            else:
                self.translations[key] = previous

        try:
            outcome = await super().put(cuid, mid, members, if_match=if_match, cdid=cdid)
        except BaseException:  # not stored (StoreError): the request left nothing behind
            undo()
            raise
        if not outcome.code.startswith("2") or outcome.ignored:
            undo()
        elif pending_added:
            self._arm_approval_timeout(self.pending[key])
            log.warning("Call Home request %s/%s is waiting for administrator consent (sources %s -> "
                        "targets %s)", cuid, mid, ", ".join(self.pending[key].enforced_sources),
                        ", ".join(sorted(map(str, targets.prefixes))))
        if outcome.code == "2.01" and key in self.rejected:
            self.rejected.pop(key, None)
        return outcome

    # -- enforcement hooks -----------------------------------------------------------------------
    def is_pending(self, entry: Entry) -> bool:
        return (entry.cuid, entry.mid) in self.pending

    def _enforceable(self, entry: Entry) -> bool:  # type: ignore[override]
        return not self.is_pending(entry) and bool(entry.targets.prefixes or entry.targets.source_prefixes)

    def _action(self, entry: Entry) -> MitigationAction:
        enforced = self.translations.get((entry.cuid, entry.mid), entry.targets)
        return scopes.action_of(entry.key, enforced, rate_limit_pps=self.settings.rate_limit_pps)

    async def _install(self, entry: Entry) -> None:
        if self.is_pending(entry):
            log.info("not enforcing %s: awaiting administrator consent", entry.key)
            return
        if (entry.cuid, entry.mid) not in self.translations and entry.targets.source_prefixes:
            # restored from the store after a restart: translate again (static mappings survive)
            result = await self.translate(entry.targets)
            if isinstance(result, Targets):
                self.translations[(entry.cuid, entry.mid)] = result
        await super()._install(entry)
        async with self._lock:
            if self.entries.get((entry.cuid, entry.mid)) is not entry:
                return
            if entry.machine.state is not Status.ATTACK_MITIGATION_IN_PROGRESS:
                return
            if not await self._report(entry, Status.ATTACK_SUCCESSFULLY_MITIGATED):
                return  # status 2 is reported once stored
            self.installed_at[(entry.cuid, entry.mid)] = time.monotonic()
        self._notify(entry)

    async def _remove(self, entry: Entry) -> None:
        await super()._remove(entry)
        key = (entry.cuid, entry.mid)
        if self.entries.get(key) is not entry:  # gone for good (not a make-before-break re-apply)
            self.translations.pop(key, None)
            self.installed_at.pop(key, None)
            p = self.pending.pop(key, None)
            if p is not None and p.timer is not None:
                p.timer.cancel()

    def _restore(self, rec: Any) -> Entry:
        entry = super()._restore(rec)
        if self.consent == "manual" and entry.machine.state is Status.ATTACK_MITIGATION_IN_PROGRESS:
            # restored but never approved: pending again, so reconcile does not enforce it
            now = self.clock()
            self.pending[(entry.cuid, entry.mid)] = PendingApproval(
                entry.cuid, entry.mid, now, now + self.approval_timeout, dict(entry.members), ())
        return entry

    async def start(self) -> None:
        await super().start()
        for p in self.pending.values():
            self._arm_approval_timeout(p)

    # -- consent ---------------------------------------------------------------------------------
    def _arm_approval_timeout(self, p: PendingApproval) -> None:
        loop = asyncio.get_running_loop()
        delay = max(0.0, p.expires - self.clock())
        p.timer = loop.call_later(delay, lambda: loop.create_task(
            self._expire_pending(p.cuid, p.mid)))

    async def _expire_pending(self, cuid: str, mid: int) -> None:
        if (cuid, mid) in self.pending:
            try:
                await self.reject(cuid, mid, "no administrator decision before the approval timeout")
            except ConsentError:
                pass

    def pending_approvals(self) -> list[PendingApproval]:
        return sorted(self.pending.values(), key=lambda p: (p.received, p.cuid, p.mid))

    async def approve(self, cuid: str, mid: int, comment: str = "") -> Status:
        """Administrator consent: enforce the pending request; returns its status afterwards."""
        p = self.pending.pop((cuid, mid), None)
        entry = self.get(cuid, mid)
        if p is None or entry is None:
            raise ConsentError(f"no pending Call Home request {cuid}/{mid}")
        if p.timer is not None:
            p.timer.cancel()
        log.warning("administrator approved %s/%s%s", cuid, mid, f" ({comment})" if comment else "")
        if entry.machine.installed:
            await self._queue_op("apply", entry)
        return entry.machine.status or Status.ATTACK_MITIGATION_TERMINATED

    async def reject(self, cuid: str, mid: int, reason: str = "") -> Status:
        """Administrator refusal: the request is withdrawn (7) with conflict-cause 4."""
        p = self.pending.pop((cuid, mid), None)
        entry = self.get(cuid, mid)
        if p is None or entry is None:
            raise ConsentError(f"no pending Call Home request {cuid}/{mid}")
        if p.timer is not None:
            p.timer.cancel()
        log.warning("administrator rejected %s/%s as legitimate traffic%s", cuid, mid,
                    f" ({reason})" if reason else "")
        work = Work.gated()
        async with self._lock:
            if entry.machine.allowed(lifecycle.Event.SERVER_WITHDRAW):
                now = self.clock()
                work.keep((cuid, mid), entry)
                self.rejected[(cuid, mid)] = reason or "rejected by the administrator"
                transition = entry.machine.server_withdraw(now)
                entry.record = self._record(entry, now)
                self._plan(entry, transition.effects, work)
            work.seal()
        try:
            await self._finish(work)
        except BaseException:  # not stored: still pending, nothing withdrawn or notified
            self.rejected.pop((cuid, mid), None)
            if self.get(cuid, mid) is entry:
                self.pending[(cuid, mid)] = p
                self._arm_approval_timeout(p)
            raise
        return entry.machine.status or Status.ATTACK_MITIGATION_TERMINATED

    # -- status ----------------------------------------------------------------------------------
    def status_members(self, entry: Entry, content: str = "a") -> dict[str, Any]:
        out = super().status_members(entry, content)
        if (entry.cuid, entry.mid) in self.rejected and content in ("a", "n"):
            info = dict(out.get("conflict-information") or {})
            info["conflict-cause"] = LEGITIMATE.yang
            out["conflict-information"] = info
        return out

    def describe(self) -> list[dict[str, Any]]:
        """Every request with its enforcement state (for the CLI / management plane)."""
        out = []
        for (cuid, mid), e in sorted(self.entries.items()):
            enforced = self.translations.get((cuid, mid))
            r = e.record
            out.append({
                "cuid": cuid, "mid": mid, "status": (e.machine.status or Status.ATTACK_MITIGATION_TERMINATED).yang,
                "pending-consent": (cuid, mid) in self.pending, "rejected": self.rejected.get((cuid, mid)),
                "scope": e.members,
                "enforced-sources": sorted(map(str, enforced.source_prefixes)) if enforced else [],
                "bytes-dropped": r.bytes_dropped, "pkts-dropped": r.pkts_dropped,
            })
        return out
