"""The server's mitigation requests: decisions, lifecycle, persistence, enforcement, observers.

Theory of operation
-------------------
Each request (cuid, mid) is an ``Entry``: the sans-I/O ``Mitigation`` state machine, the
request's scope (RFC 7951 members), its ``Targets`` and the stored ``MitigationRecord``.
``put``/``delete`` are called by the CoAP resources with decoded, authenticated input.

A change happens in two halves:

1. Under ``_lock`` and without awaiting anything: ``decide_mitigation_put`` (pure) decides
   against the relevant requests, the machines transition, and the resulting work is queued in
   order: store writes go to the store's single writer (which commits waiting writes together,
   one fsync for many) and mitigator operations to the ``_enforcer`` queue (one consumer, so
   apply/remove of a key can never be reordered).
2. Outside the lock the caller awaits its own store write (the answer leaves only once the
   request is durable) and its mitigator operation, then observers are notified.

So concurrent requests from many clients share commits instead of queueing behind each
other's fsync.  Decisions only look at the client's own requests and at other clients'
requests whose prefixes intersect (``PrefixIndex``), not at every request the server holds.

Effects only after persistence: a client's change (PUT, DELETE, Call Home consent) carries a
*gate*, a future resolved once its store writes are settled.  Its mitigator operations are queued
in decision order with that gate; the enforcer awaits the gate and skips them when a write
failed, and observers are called only after the commit.  On a failure the change is undone under
the lock: each touched request is brought back to what the store holds (the snapshot taken
before the change when nothing committed since), the operations needed to match that state are
queued, and the caller gets :class:`StoreError` (answered 5.03 with Max-Age by the resources).
Timer-driven changes (expiry, signal loss) are not gated: they follow the clock, and a restart
applies the same rules to the stored records.  A request created by a PUT is left out of status
answers (``reported``) until its commit.

Timers: one ``loop.call_at`` handle per entry, re-armed on every ``ScheduleTimer`` effect.
Counters: a poller reads the mitigator's counters every ``counter_interval`` seconds, derives
bps/pps from the deltas, stores them and notifies observers when they changed.
After a restart ``start`` rebuilds the entries from the store and ``reconcile``s the mitigators
so that exactly the active requests are enforced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agent.mitigators.interface import Mitigator, MitigatorError
from agent.numbers.rfc9132 import AttackStatus, ConflictStatus, Status
from agent.protocol import mitigation as lifecycle
from agent.protocol.mitigation import Mitigation
from agent.protocol.server_rules import (
    Accept,
    ConflictInfo,
    ExistingRequest,
    Ignore,
    PutRequest,
    Reject,
    decide_mitigation_put,
)
from agent.protocol.targets import Targets, forbidden_reason, within
from agent.store.interface import MitigationRecord, Store, StoreError

from . import scope as scopes
from .changes import Snapshot, Work
from .index import PrefixIndex
from .resolve import Resolution, Resolver, resolve_targets, system_resolver
from .settings import ServerSettings

log = logging.getLogger("dots.server")
audit = logging.getLogger("dots.audit")  # accepted changes, with the cuid that made them

Observer = Callable[["Entry"], None]  # called with the entry that changed (or was removed)


@dataclass
class Entry:
    cuid: str
    mid: int
    machine: Mitigation
    members: dict[str, Any]  # the request part of the scope
    targets: Targets
    record: MitigationRecord
    timer: asyncio.TimerHandle | None = None
    last_counters: tuple[float, int, int] | None = None  # (time, bytes, pkts)
    mitigator_name: str = ""
    resolved: tuple[str, ...] = ()  # host prefixes of target-fqdn / target-uri (SC-038/039)
    committed: bool = True  # False while the PUT that created it waits for its commit (not reported)

    @property
    def key(self) -> str:
        return f"{self.cuid}/{self.mid}"

    def existing(self, now: float) -> ExistingRequest:
        m = self.machine
        return ExistingRequest(self.cuid, self.mid, self.targets, m.trigger_mitigation, m.state,
                               m.remaining_lifetime(now), client_id=self.cuid, granted_lifetime=m.granted_lifetime)


@dataclass(frozen=True)
class PutOutcome:
    """What the resource answers: a code, and a diagnostic or the entry to describe."""

    code: str
    diagnostic: str = ""
    entry: Entry | None = None
    lifetime: int | None = None
    conflict: ConflictInfo | None = None
    ignored: bool = False


@dataclass
class Stats:
    puts: int = 0
    created: int = 0
    changed: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    deletes: int = 0


class MitigationService:
    # Resolve target-fqdn / target-uri to addresses and enforce on them (RFC 9132 SC-038/039).
    # Call Home (RFC 9066 §5.3.1) treats them as information for the administrator only.
    RESOLVE_NAMES = True

    def __init__(self, store: Store, mitigators: Callable[[str], Awaitable[Mitigator]],
                 settings: ServerSettings, *, clock: Callable[[], float] = time.time,
                 counter_interval: float = 5.0, resolver: Resolver = system_resolver) -> None:
        self.resolver = resolver
        self.store = store
        self._mitigator_for = mitigators
        self.settings = settings
        self.clock = clock
        self.counter_interval = counter_interval
        self.entries: dict[tuple[str, int], Entry] = {}
        self.by_client: dict[str, dict[int, Entry]] = {}
        self.index = PrefixIndex()
        self.observers: list[Observer] = []
        # called with (cuid, mid, members, code, diagnostic) when a PUT is refused
        self.reject_observers: list[Callable[[str, int, dict[str, Any], str, str], None]] = []
        self.stats = Stats()
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self._ops: asyncio.Queue[tuple[str, Entry, asyncio.Future[None], asyncio.Future[bool] | None]] = \
            asyncio.Queue()
        self._enforcer: asyncio.Task[None] | None = None

    # -- start / stop ----------------------------------------------------------------------
    async def start(self) -> None:
        """Rebuild state from the store and make the mitigators enforce exactly what is active."""
        now = self.clock()
        for rec in await self.store.purge_expired(now):
            log.info("expired while stopped: %s/%s", rec.cuid, rec.mid)
        by_mitigator: dict[str, list[Any]] = {}
        for rec in await self.store.list_mitigations():
            entry = self._restore(rec)
            if self.RESOLVE_NAMES and (entry.targets.fqdns or entry.targets.uris):  # resolved again at restart
                res = await resolve_targets(entry.targets.fqdns, entry.targets.uris, self.resolver)
                client = self.settings.client(entry.cuid)
                allowed = client.prefixes if client is not None else ()
                # the same checks as on the PUT: a name now pointing elsewhere is not enforced there
                entry.resolved = tuple(p for p in res.prefixes
                                       if not self._check_resolved(Resolution([p]), entry.targets, allowed))
            self._add(entry)
            self._arm(entry)
            if entry.machine.installed and self._enforceable(entry):
                by_mitigator.setdefault(entry.mitigator_name, []).append(self._action(entry))
        for name in set(by_mitigator) | {self.settings.mitigator}:
            mitigator = await self._mitigator_for(name)
            await mitigator.reconcile(by_mitigator.get(name, []))
        if self.entries:
            log.info("restored %d mitigation request(s) from the store", len(self.entries))
        loop = asyncio.get_running_loop()
        self._enforcer = loop.create_task(self._enforce_loop())
        self._poller = loop.create_task(self._poll_counters())

    async def stop(self) -> None:
        for task in (self._poller, self._enforcer):
            if task:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        for e in self.entries.values():
            if e.timer:
                e.timer.cancel()

    def _restore(self, rec: MitigationRecord) -> Entry:
        members = scopes.from_cbor(rec.scope)
        m = Mitigation(rec.mid, trigger_mitigation=rec.trigger_mitigation,
                       terminating_period=self.settings.terminating_period,
                       terminating_max=self.settings.terminating_max)
        m.state = Status(rec.status)
        m.granted_lifetime = rec.lifetime
        m.expires_at = rec.expires_at
        m.terminating_until = rec.terminating_until
        return Entry(rec.cuid, rec.mid, m, members, scopes.targets_of(members), rec,
                     mitigator_name=rec.mitigator or self.settings.mitigator)

    # -- indexes -----------------------------------------------------------------------------
    def _add(self, entry: Entry) -> None:
        self.entries[(entry.cuid, entry.mid)] = entry
        self.by_client.setdefault(entry.cuid, {})[entry.mid] = entry
        self.index.add((entry.cuid, entry.mid), self._enforce_targets(entry).prefixes)

    def _forget(self, entry: Entry) -> None:
        if entry.timer:
            entry.timer.cancel()
            entry.timer = None
        if self.entries.get((entry.cuid, entry.mid)) is entry:
            del self.entries[(entry.cuid, entry.mid)]
            self.index.remove((entry.cuid, entry.mid))
            mine = self.by_client.get(entry.cuid, {})
            mine.pop(entry.mid, None)
            if not mine:
                self.by_client.pop(entry.cuid, None)

    def of_client(self, cuid: str) -> list[Entry]:
        return [e for _m, e in sorted(self.by_client.get(cuid, {}).items())]

    def reported(self, cuid: str, mid: int | None = None) -> list[Entry]:
        """What status answers show: committed requests only (one mid, or all of the client)."""
        if mid is None:
            return [e for e in self.of_client(cuid) if e.committed]
        e = self.entries.get((cuid, mid))
        return [e] if e is not None and e.committed else []

    def get(self, cuid: str, mid: int) -> Entry | None:
        return self.entries.get((cuid, mid))

    def any_active(self, cuid: str) -> bool:
        return any(e.machine.active for e in self.by_client.get(cuid, {}).values())

    def _relevant(self, cuid: str, targets: Targets) -> list[ExistingRequest]:
        """The client's own requests and other clients' requests that may overlap *targets*."""
        now = self.clock()
        out = [e.existing(now) for e in self.by_client.get(cuid, {}).values() if isinstance(e.machine.state, Status)]
        keys = self.index.candidates(targets.prefixes)
        if targets.fqdns or targets.uris:  # names overlap whatever their addresses
            keys.update(k for k, e in self.entries.items() if (e.targets.fqdns & targets.fqdns)
                        or (e.targets.uris & targets.uris))
        for key in keys:
            e = self.entries.get(key)  # type: ignore[arg-type]
            if e is not None and e.cuid != cuid and isinstance(e.machine.state, Status):
                out.append(e.existing(now))
        return out

    # -- PUT -------------------------------------------------------------------------------
    async def put(self, cuid: str, mid: int, members: dict[str, Any], *, if_match: bool = False,
                  cdid: str | None = None) -> PutOutcome:
        """A decoded mitigation request (one scope's RFC 7951 members) from an authenticated client."""
        self.stats.puts += 1
        client = self.settings.client(cuid)
        if client is None:
            return self._refused(cuid, mid, members, self._reject("4.03", f"client {cuid} is not authorised"))
        request = scopes.request_part(members)
        targets = scopes.targets_of(request)
        attack = members.get("attack-status")
        req = PutRequest(
            cuid=cuid, mid=mid, targets=targets, lifetime=members.get("lifetime"),
            trigger_mitigation=bool(members.get("trigger-mitigation", True)),
            attack_status=AttackStatus[attack.upper().replace("-", "_")] if attack else None,
            if_match=if_match, client_id=cuid)
        if targets.aliases:
            return self._refused(cuid, mid, members, self._reject(
                "4.00", "alias-name needs the DOTS data channel, which this server does not provide "
                "(RFC 9132 §4.4.1.3)"))
        limits = self.settings
        count = len(targets.prefixes) + len(targets.fqdns) + len(targets.uris) + len(targets.source_prefixes)
        if count > limits.max_targets_per_request:
            return self._refused(cuid, mid, members, self._reject(
                "4.00", f"{count} targets in one request; this server accepts at most "
                f"{limits.max_targets_per_request} (split the request, RFC 9132 §7.3)"))
        if len(targets.fqdns) + len(targets.uris) > limits.max_names_per_request:
            return self._refused(cuid, mid, members, self._reject(
                "4.00", f"at most {limits.max_names_per_request} target-fqdn/target-uri entries per request"))
        if client.fqdns and targets.fqdns:
            protected = [f.lower().rstrip(".") for f in client.fqdns]
            outside = sorted(n for n in targets.fqdns
                             if not any(n == p or n.endswith("." + p) for p in protected))
            if outside:
                return self._refused(cuid, mid, members, self._reject(
                    "4.00", f"target-fqdn outside the client's protected names: {', '.join(outside)}"))
        mine = self.by_client.get(cuid, {})
        if mid not in mine and len(mine) >= limits.mitigation_limit(cuid):
            return self._refused(cuid, mid, members, self._reject(
                "4.00", f"this client holds {len(mine)} mitigation requests, the most this server "
                "accepts from one client (RFC 9132 §4.4.1.3: a server MAY reject near capacity)"))
        resolved: tuple[str, ...] = ()
        if self.RESOLVE_NAMES and (targets.fqdns or targets.uris):  # SC-038/039: names get the prefix checks
            res = await resolve_targets(targets.fqdns, targets.uris, self.resolver)
            problem = self._check_resolved(res, targets, client.prefixes)
            if problem:
                return self._refused(cuid, mid, members, self._reject("4.00", problem))
            resolved = tuple(res.prefixes)
        async with self._lock:
            decision = decide_mitigation_put(req, self._relevant(cuid, targets), policy=self.settings.policy(),
                                             allowed_prefixes=client.prefixes)
            if isinstance(decision, Reject):
                return self._refused(cuid, mid, members,
                                     self._reject(decision.code, decision.diagnostic, decision.conflict))
            if isinstance(decision, Ignore):
                log.info("ignored PUT %s/%s: %s", cuid, mid, decision.reason)
                return PutOutcome("2.04", decision.reason, ignored=True)
            outcome, work = self._accept(cuid, mid, request, targets, decision, cdid, client.mitigator, resolved)
        await self._finish(work)
        entry = outcome.entry
        assert entry is not None
        audit.info("signal channel: PUT %s/%s -> %s (status %s, lifetime %s)", cuid, mid, outcome.code,
                 entry.machine.status and int(entry.machine.status), outcome.lifetime)
        return outcome

    @staticmethod
    def _check_resolved(res: Resolution, targets: Targets, allowed: Any) -> str | None:
        if res.failed and not res.prefixes and not targets.prefixes:
            return f"target name(s) could not be resolved: {', '.join(res.failed)}"
        named = Targets.of(prefixes=res.prefixes)
        for net in named.prefixes:
            reason = forbidden_reason(net)
            if reason:
                return f"{net} (resolved from a target name) is {reason}"
        if allowed is not None and res.prefixes and not within(named, allowed):
            return "an address resolved from target-fqdn/target-uri is outside the DOTS client domain"
        return None

    def _refused(self, cuid: str, mid: int, members: dict[str, Any], outcome: PutOutcome) -> PutOutcome:
        for obs in list(self.reject_observers):
            try:
                obs(cuid, mid, members, outcome.code, outcome.diagnostic)
            except Exception:  # an observer must not break the service
                log.exception("reject observer failed")
        return outcome

    def _reject(self, code: str, diagnostic: str, conflict: ConflictInfo | None = None) -> PutOutcome:
        self.stats.rejected[code] = self.stats.rejected.get(code, 0) + 1
        return PutOutcome(code, diagnostic, conflict=conflict)

    def _accept(self, cuid: str, mid: int, request: dict[str, Any], targets: Targets, decision: Accept,
                cdid: str | None, mitigator: str | None, resolved: tuple[str, ...] = ()) -> tuple[PutOutcome, Work]:
        now = self.clock()
        work = Work.gated()
        work.keep((cuid, mid), self.entries.get((cuid, mid)))
        removed: list[Entry] = []
        for old_mid in decision.replaces:  # lower overlapping mids of this client go (SC-065)
            old = self.entries.get((cuid, old_mid))
            if old is not None:
                work.keep((cuid, old_mid), old)
                old.machine.replaced(now, mid)
                removed.append(old)
        entry = self.entries.get((cuid, mid))
        if entry is None or (decision.created and not decision.resumes_terminating):
            machine = Mitigation(mid, trigger_mitigation=bool(request.get("trigger-mitigation", True)),
                                 terminating_period=self.settings.terminating_period,
                                 terminating_max=self.settings.terminating_max)
            rec = MitigationRecord(cuid=cuid, mid=mid, scope=scopes.to_cbor(request), status=1,
                                   lifetime=decision.lifetime, cdid=cdid,
                                   trigger_mitigation=machine.trigger_mitigation, created_at=now,
                                   mitigator=mitigator or self.settings.mitigator)
            entry = Entry(cuid, mid, machine, request, targets, rec, mitigator_name=rec.mitigator, resolved=resolved,
                          committed=False)
            work.created.append(entry)
            if decision.inactive and decision.conflict is not None:
                transition = machine.accept_inactive(now, decision.conflict.retry_timer or 0)
            else:
                transition = machine.accept(now, decision.lifetime)
            self.stats.created += 1
        else:
            machine = entry.machine
            if resolved:
                entry.resolved = resolved
            if decision.attack_status is not None:
                transition = machine.efficacy_update(now, decision.attack_status, decision.lifetime)
            else:
                transition = machine.lifetime_renewed(now, decision.lifetime)
            self.stats.changed += 1
        entry.record = self._record(entry, now)
        deactivated = []
        for d in decision.deactivates:  # overlapped preconfigured requests step aside (SC-068)
            other = self.entries.get((cuid, d))
            if other is not None and other.machine.allowed(lifecycle.Event.SERVER_WITHDRAW):
                work.keep((cuid, d), other)
                other.machine.server_withdraw(now)
                other.record = self._record(other, now)
                deactivated.append(other)
        work.writes.append(asyncio.ensure_future(self.store.replace_mitigations(
            [(cuid, e.mid) for e in removed], [entry.record, *(d.record for d in deactivated)])))
        self._add(entry)
        self._plan(entry, transition.effects, work, persisted=True)
        for old in removed:  # make-before-break: the new rules are queued before the old go
            self._forget(old)
            work.enforce.append(self._queue_op("remove", old, work.gate))
            work.notify.append(old)
        for d in deactivated:
            work.enforce.append(self._queue_op("remove", d, work.gate))
            work.notify.append(d)
        work.seal()
        code = "2.01" if decision.created else "2.04"
        return PutOutcome(code, entry=entry, lifetime=decision.lifetime, conflict=decision.conflict), work

    def _record(self, entry: Entry, now: float) -> MitigationRecord:
        m = entry.machine
        status = m.status or Status.ATTACK_MITIGATION_TERMINATED
        start = entry.record.mitigation_start
        if m.installed and start is None:
            start = now
        return entry.record.replace(status=int(status), lifetime=m.granted_lifetime, expires_at=m.expires_at,
                                    terminating_until=m.terminating_until, updated_at=now,
                                    mitigation_start=start)

    # -- DELETE ----------------------------------------------------------------------------
    async def delete(self, cuid: str, mid: int) -> None:
        """Withdraw (§4.4.4): active-but-terminating, then terminated.  Unknown mids are fine."""
        self.stats.deletes += 1
        async with self._lock:
            entry = self.entries.get((cuid, mid))
            if entry is None or not entry.machine.allowed(lifecycle.Event.CLIENT_WITHDRAW):
                return
            now = self.clock()
            work = Work.gated()
            work.keep((cuid, mid), entry)
            transition = entry.machine.client_withdraw(now)
            entry.record = self._record(entry, now)
            if transition.state is lifecycle.GONE:
                work.writes.append(asyncio.ensure_future(self.store.delete_mitigation(cuid, mid)))
                self._forget(entry)
                work.notify.append(entry)  # observers learn that it ended
            else:
                work.writes.append(asyncio.ensure_future(self.store.put_mitigation(entry.record)))
            self._plan(entry, transition.effects, work, persisted=True)
            work.seal()
        await self._finish(work)
        outcome = ("withdrawn" if transition.state is lifecycle.GONE
                   else f"status {int(entry.machine.status or 0)}, terminating")
        audit.info("signal channel: DELETE %s/%s -> 2.02 (%s)", cuid, mid, outcome)

    # -- timers, signal loss -------------------------------------------------------------
    def _arm(self, entry: Entry) -> None:
        if entry.timer:
            entry.timer.cancel()
            entry.timer = None
        deadline = entry.machine.next_deadline()
        if deadline is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, deadline - self.clock())
        entry.timer = loop.call_later(delay, lambda: loop.create_task(self._fire(entry)))

    async def _fire(self, entry: Entry) -> None:
        async with self._lock:
            if self.entries.get((entry.cuid, entry.mid)) is not entry:
                return
            now = self.clock()
            try:
                transition = entry.machine.on_timer(now)
            except lifecycle.NotYetDue:
                self._arm(entry)
                return
            if not transition.effects:
                self._arm(entry)
                return
            entry.record = self._record(entry, now)
            work = Work()
            self._plan(entry, transition.effects, work)
            if entry.machine.state is Status.ATTACK_MITIGATION_TERMINATED:
                entry.machine.purge(now)
                work.writes.append(asyncio.ensure_future(self.store.delete_mitigation(entry.cuid, entry.mid)))
                self._forget(entry)
                work.notify.append(entry)
                log.info("terminated %s/%s", entry.cuid, entry.mid)
        await self._finish(work)

    async def signal_lost(self, cuid: str) -> None:
        """The client's session is gone: arm-on-loss requests (status 8) start (§4.4.1)."""
        work = Work()
        async with self._lock:
            now = self.clock()
            for entry in self.of_client(cuid):
                if entry.machine.state is Status.ATTACK_MITIGATION_SIGNAL_LOSS:
                    transition = entry.machine.signal_lost(now)
                    entry.record = self._record(entry, now)
                    self._plan(entry, transition.effects, work)
                    log.info("signal lost: activated %s/%s", cuid, entry.mid)
        await self._finish(work)

    # -- effects ---------------------------------------------------------------------------
    def _plan(self, entry: Entry, effects: list[Any], work: Work, *, persisted: bool = False) -> None:
        """Queue what the machine's effects ask for (synchronously: called under the lock)."""
        for effect in effects:
            if isinstance(effect, lifecycle.Persist) and not persisted:
                if effect.deleted:
                    work.writes.append(asyncio.ensure_future(self.store.delete_mitigation(entry.cuid, entry.mid)))
                else:
                    work.writes.append(asyncio.ensure_future(self.store.put_mitigation(entry.record)))
            elif isinstance(effect, lifecycle.InstallMitigation):
                work.enforce.append(self._queue_op("apply", entry, work.gate))
            elif isinstance(effect, lifecycle.RemoveMitigation):
                work.enforce.append(self._queue_op("remove", entry, work.gate))
            elif isinstance(effect, lifecycle.NotifyObservers):
                work.notify.append(entry)
            elif isinstance(effect, lifecycle.ScheduleTimer):
                self._arm(entry)

    async def _finish(self, work: Work) -> None:
        """Durable first, then enforced, then observers (the caller answers after this).

        A gated change whose writes failed is undone (:meth:`_undo`) and raises StoreError:
        nothing of it was enforced or notified.
        """
        failed = await work.failure()
        if failed is not None and work.gate is not None:
            await asyncio.gather(*work.enforce)  # skipped by the enforcer (gate closed)
            await self._undo(work)
            raise failed  # StoreError: 5.03; anything else (a bug) stays an internal error
        if failed is not None:  # ungated (timers): the in-memory change stands, restart re-derives
            log.error("could not store a timer-driven change: %s", failed)
        for entry in work.created:
            entry.committed = True
        if work.enforce:
            await asyncio.gather(*work.enforce)
        seen: set[int] = set()
        for entry in work.notify:
            if id(entry) not in seen:
                seen.add(id(entry))
                self._notify(entry)

    async def _undo(self, work: Work) -> None:
        """Bring every request the failed change touched back to what the store holds."""
        ops: list[asyncio.Future[None]] = []
        async with self._lock:
            for key, snap in work.snapshots.items():
                try:
                    committed = await self.store.get_mitigation(*key)
                except StoreError as exc:  # unreadable too: the state before the change is the best guess
                    log.error("cannot read %s/%s back after a failed write: %s", *key, exc)
                    committed = snap.record
                current = self.entries.get(key)
                if committed == snap.record:  # nothing committed since: exactly the state before
                    restored = snap.restore()
                    if current is not None and current is not restored:
                        self._forget(current)
                    if restored is not None:
                        self._add(restored)
                        self._arm(restored)
                    continue  # the mitigator never saw the change (its operations were skipped)
                # a later change committed in between: follow the store
                if committed is None:
                    if current is not None:
                        self._forget(current)
                        ops.append(self._queue_op("remove", current))
                    continue
                if current is None or current.record != committed:
                    entry = self._restore(committed)
                    entry.resolved = (current or snap.entry or entry).resolved
                    if current is not None:
                        self._forget(current)
                    self._add(entry)
                    self._arm(entry)
                    current = entry
                ops.append(self._queue_op("apply" if current.machine.installed else "remove", current))
        if ops:
            await asyncio.gather(*ops)
        log.warning("undid a change that could not be stored (%s)",
                    ", ".join(f"{c}/{m}" for c, m in work.snapshots))

    def _queue_op(self, op: str, entry: Entry, gate: asyncio.Future[bool] | None = None) -> asyncio.Future[None]:
        """Queue a mitigator operation; with a *gate* it runs only if that change committed."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ops.put_nowait((op, entry, fut, gate))
        return fut

    async def _enforce_loop(self) -> None:
        """The one consumer of mitigator operations, so they happen in the order decided."""
        while True:
            op, entry, fut, gate = await self._ops.get()
            try:
                if gate is not None and not await asyncio.shield(gate):
                    log.info("not %s %s: the change was not stored", "applying" if op == "apply" else "removing",
                             entry.key)
                elif op == "apply":
                    await self._install(entry)
                else:
                    await self._remove(entry)
            except Exception:  # never lose the loop
                log.exception("mitigator operation %s %s failed", op, entry.key)
            if not fut.done():
                fut.set_result(None)

    @staticmethod
    def _enforce_targets(entry: Entry) -> Targets:
        """The request's targets plus the addresses its names resolved to."""
        return scopes.targets_of(entry.members, list(entry.resolved)) if entry.resolved else entry.targets

    def _enforceable(self, entry: Entry) -> bool:
        t = self._enforce_targets(entry)
        return bool(t.prefixes or t.source_prefixes)

    def actions_for(self, mitigator: str) -> list[Any]:
        """What back-end *mitigator* must enforce now (every installed request it handles)."""
        return [self._action(e) for e in self.entries.values()
                if e.mitigator_name == mitigator and e.machine.installed and self._enforceable(e)]

    def _action(self, entry: Entry) -> Any:
        return scopes.action_of(entry.key, self._enforce_targets(entry), rate_limit_pps=self.settings.rate_limit_pps)

    async def _install(self, entry: Entry) -> None:
        if not self._enforceable(entry):
            return  # nothing enforceable (e.g. only an FQDN that resolved to nothing)
        try:
            mitigator = await self._mitigator_for(entry.mitigator_name)
            await mitigator.apply(self._action(entry))
        except (MitigatorError, OSError, ValueError) as exc:
            log.error("mitigator %s failed for %s: %s", entry.mitigator_name, entry.key, exc)
            async with self._lock:
                if not (entry.machine.allowed(lifecycle.Event.REPORT_CAPACITY_EXCEEDED) and
                        self.entries.get((entry.cuid, entry.mid)) is entry):
                    return
                if not await self._report(entry, Status.ATTACK_EXCEEDED_CAPABILITY):
                    return
            self._notify(entry)

    async def _report(self, entry: Entry, status: Status) -> bool:
        """The mitigator's report changes the status (under the lock): stored, or not at all."""
        before = Snapshot.of(entry)
        now = self.clock()
        entry.machine.mitigator_reports(now, status)
        entry.record = self._record(entry, now)
        try:
            await self.store.put_mitigation(entry.record)
        except StoreError as exc:
            before.restore()
            log.error("status %s of %s not stored, so not reported: %s", status.yang, entry.key, exc)
            return False
        return True

    async def _remove(self, entry: Entry) -> None:
        try:
            mitigator = await self._mitigator_for(entry.mitigator_name)
            await mitigator.remove(entry.key)
        except (MitigatorError, OSError) as exc:
            log.error("mitigator %s could not remove %s: %s", entry.mitigator_name, entry.key, exc)

    def _notify(self, entry: Entry) -> None:
        for obs in list(self.observers):
            try:
                obs(entry)
            except Exception:  # an observer must not break the service
                log.exception("observer failed")

    # -- counters ----------------------------------------------------------------------------
    async def _poll_counters(self) -> None:
        while True:
            await asyncio.sleep(self.counter_interval)
            try:
                await self.refresh_counters()
            except Exception:
                log.exception("counter refresh failed")

    async def refresh_counters(self) -> None:
        now = self.clock()
        for entry in [e for e in self.entries.values() if e.machine.installed and self._enforceable(e)]:
            try:
                mitigator = await self._mitigator_for(entry.mitigator_name)
                c = await mitigator.counters(entry.key)
            except (MitigatorError, OSError, KeyError):
                continue
            bps = pps = 0
            if entry.last_counters is not None:
                t0, b0, p0 = entry.last_counters
                dt = max(now - t0, 1e-6)
                bps = int(max(0, c.bytes_dropped - b0) * 8 / dt)
                pps = int(max(0, c.pkts_dropped - p0) / dt)
            entry.last_counters = (now, c.bytes_dropped, c.pkts_dropped)
            r = entry.record
            if (c.bytes_dropped, c.pkts_dropped, bps, pps) != (r.bytes_dropped, r.pkts_dropped,
                                                                r.bps_dropped, r.pps_dropped):
                try:  # reported once stored
                    await self.store.update_counters(entry.cuid, entry.mid, bytes_dropped=c.bytes_dropped,
                                                     pkts_dropped=c.pkts_dropped, bps_dropped=bps,
                                                     pps_dropped=pps, updated_at=now)
                except StoreError as exc:
                    log.error("counters of %s not stored, so not reported: %s", entry.key, exc)
                    continue
                entry.record = entry.record.replace(bytes_dropped=c.bytes_dropped, pkts_dropped=c.pkts_dropped,
                                                    bps_dropped=bps, pps_dropped=pps, updated_at=now)
                self._notify(entry)

    # -- status reporting (the resources turn this into messages) --------------------------
    def status_members(self, entry: Entry, content: str = "a") -> dict[str, Any]:
        """RFC 7951 members of one scope in a status response (§4.4.2; Table 2 ``c`` filter)."""
        now = self.clock()
        m, r = entry.machine, entry.record
        out: dict[str, Any] = {"mid": entry.mid}
        if content in ("a", "c"):
            out.update(entry.members)
        if content in ("a", "n"):
            if r.mitigation_start is not None and m.state is not Status.ATTACK_MITIGATION_SIGNAL_LOSS:
                out["mitigation-start"] = str(int(r.mitigation_start))
            out["lifetime"] = m.remaining_lifetime(now)
            out["status"] = (m.status or Status.ATTACK_MITIGATION_TERMINATED).yang
            if m.conflict_status is not None:
                out["conflict-information"] = {"conflict-status": ConflictStatus(m.conflict_status).yang}
            out["bytes-dropped"] = str(r.bytes_dropped)
            out["bps-dropped"] = str(r.bps_dropped)
            out["pkts-dropped"] = str(r.pkts_dropped)
            out["pps-dropped"] = str(r.pps_dropped)
        elif content == "c":
            out["lifetime"] = m.remaining_lifetime(now)
        return out
