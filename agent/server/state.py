"""Operational state of a running ``DotsServer`` in the shape of ``/dots-agent:dots-agent/server``.

Theory of operation: the management plane asks :class:`ServerState` (a
:class:`mgmt.StateProvider`) for the ``config false`` nodes whenever a ``<get>`` or RESTCONF
``GET`` needs them.  Nothing is cached: each call reads the live objects of the server --
``SessionRegistry.sessions`` (one entry per (D)TLS association: peer, transport, cuid, the
configuration negotiated for that cuid, heartbeat health from its ``Liveness`` machine),
``MitigationService.entries`` (every request with the scope members the server would put in a
status message: status, remaining lifetime, dropped counters) and the counters of the service
and of the CoAP resource -- and renders RFC 7951 JSON with the node names of ``dots-agent``.
The library parses the result against the module, so a wrong name fails loudly in tests.

:class:`StatusNotifier` is a ``MitigationService`` observer: it remembers the last status of
every request and sends ``dots-agent:mitigation-status-change`` (role ``server``) through
:meth:`mgmt.Management.notify` when it differs.  Observers are synchronous, so each
notification is a task on the loop (they are created, and therefore sent, in order).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from agent.numbers.rfc9132 import Status
from agent.protocol.session import Liveness, Phase

from .sessions import Session, SessionRegistry, config_members

if TYPE_CHECKING:
    from .app import DotsServer
    from .mitigations import Entry, MitigationService

log = logging.getLogger("dots.server")
ROOT = "dots-agent:dots-agent"
MODULE = "dots-agent"

# Members of a status scope that the module's 'mitigation-scope-state' grouping has.
SCOPE_STATE_KEYS = ("target-prefix", "target-port-range", "target-protocol", "target-fqdn", "target-uri",
                    "alias-name", "lifetime", "trigger-mitigation", "mid", "mitigation-start", "status",
                    "conflict-information", "bytes-dropped", "bps-dropped", "pkts-dropped", "pps-dropped",
                    "attack-status")


def iso(epoch: float) -> str:
    """yang:date-and-time of an epoch time."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def heartbeat_state(liveness: Liveness, now: float, last_rx_epoch: float) -> dict[str, Any]:
    """The 'heartbeat' container of a session (RFC 9132 §4.7 health)."""
    if liveness.config.heartbeat_interval <= 0:
        status = "disabled"
    elif liveness.phase is Phase.LOST:
        status = "lost"
    elif liveness.unanswered > 0 or liveness.phase is Phase.DEGRADED:
        status = "missing"
    else:
        status = "healthy"
    return {"status": status, "last-heard": iso(last_rx_epoch), "missed": liveness.unanswered,
            "peer-hb-status": liveness.peer_hb_status(now)}


def scope_state(members: dict[str, Any]) -> dict[str, Any]:
    """Status-scope members restricted to what the module models (drops e.g. call-home leaves)."""
    return {k: v for k, v in members.items() if k in SCOPE_STATE_KEYS}


class CountingSessionRegistry(SessionRegistry):
    """A :class:`SessionRegistry` that counts the sessions it has seen (statistics)."""

    established = 0

    async def touch(self, remote: Any, cuid: str, now: float) -> Session:
        before = self.sessions.get(self.key_of(remote))
        session = await super().touch(remote, cuid, now)
        if session is not before:
            self.established += 1
        return session


class ServerState:
    """StateProvider of ``/dots-agent/server`` (sessions, mitigations, statistics)."""

    def __init__(self, server: DotsServer) -> None:
        self.server = server
        self.started = time.time()

    async def state(self) -> dict[str, Any]:
        server = self.server
        now = time.time()
        node: dict[str, Any] = {}
        sessions = [await self._session(s, now) for s in list(server.sessions.sessions.values())]
        if sessions:
            node["sessions"] = {"session": sessions}
        mitigations = [self._mitigation(e) for _k, e in sorted(server.service.entries.items())
                       if e.committed]  # nothing reported before the store committed it
        if mitigations:
            node["mitigations"] = {"mitigation": mitigations}
        node["statistics"] = self._statistics()
        node["listener-statistics"] = server.admission.stats.to_yang()
        return {ROOT: {"server": node}}

    async def _session(self, s: Session, now: float) -> dict[str, Any]:
        server = self.server
        peer = s.peer or (s.key[1] if isinstance(s.key[1], tuple) else None)
        sid, cfg = await server.sessions.config_of(s.cuid)
        out: dict[str, Any] = {"session-id": f"{s.transport}:{peer[0]}:{peer[1]}" if peer else
                               f"{s.transport}:{id(s.remote)}",
                               "role": "server"}
        if peer is not None:
            out["peer-address"], out["peer-port"] = peer[0].split("%", 1)[0], peer[1]
        out["transport"] = s.transport
        out["cuid"] = s.cuid
        out["established"] = iso(s.started)
        out["active-config"] = "mitigating" if server.service.any_active(s.cuid) else "idle"
        if sid is not None:
            out["sid"] = sid
        out["negotiated-config"] = {"mitigating-config": config_members(cfg.mitigating),
                                    "idle-config": config_members(cfg.idle)}
        out["heartbeat"] = heartbeat_state(s.liveness, now, s.liveness.last_rx)
        policy = next((c for c in server.settings.clients if c.cuid == s.cuid), None)
        if policy is not None:
            out["client-name"] = policy.name
        return out

    def _mitigation(self, e: Entry) -> dict[str, Any]:
        r = e.record
        out: dict[str, Any] = {"cuid": e.cuid, "mid": e.mid}
        if r.cdid:
            out["cdid"] = r.cdid
        policy = next((c for c in self.server.settings.clients if c.cuid == e.cuid), None)
        if policy is not None:
            out["client-name"] = policy.name
        out["created"] = iso(r.created_at)
        out["last-updated"] = iso(r.updated_at)
        if e.mitigator_name:
            out["mitigator"] = f"{MODULE}:{e.mitigator_name}"
        out["scope"] = scope_state(self.server.service.status_members(e))
        return out

    def _statistics(self) -> dict[str, Any]:
        server = self.server
        stats = server.service.stats
        counters = server.resource.counters
        out: dict[str, Any] = {
            "discontinuity-time": iso(self.started),
            "requests-received": str(counters.requests),
            "mitigation-requests-received": str(stats.puts),
            "mitigation-requests-accepted": str(stats.created + stats.changed),
            "withdrawals-received": str(stats.deletes),
        }
        if isinstance(server.sessions, CountingSessionRegistry):
            out["sessions-established"] = str(server.sessions.established)
        rejected = sorted((code, n) for code, n in counters.by_code.items() if code[:1] in "45")
        if rejected:
            out["rejected"] = [{"code": code, "count": str(n)} for code, n in rejected]
        return out


def entry_status(entry: Entry, present: bool) -> Status:
    """The status to report for *entry*; a request that left the service is terminated."""
    status = entry.machine.status if present else None
    return status or Status.ATTACK_MITIGATION_TERMINATED


class StatusNotifier:
    """MitigationService observer -> ``mitigation-status-change`` notifications (one per change).

    ``role`` is the agent's role in the notification (``server``, ``call-home-server``);
    ``peer_of`` names the peer of a request (default: its cuid).
    """

    def __init__(self, service: MitigationService, notify: Callable[[dict[str, Any]], Awaitable[int]], *,
                 role: str = "server", peer_of: Callable[[Entry], str] | None = None) -> None:
        self.service = service
        self._notify = notify
        self.role = role
        self.peer_of = peer_of or (lambda e: e.cuid)
        self.last: dict[tuple[str, int], str] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        for key, e in service.entries.items():  # restored from the store
            if e.machine.status is not None:
                self.last[key] = e.machine.status.yang

    def __call__(self, entry: Entry) -> None:
        key = (entry.cuid, entry.mid)
        present = self.service.get(entry.cuid, entry.mid) is entry
        status = entry_status(entry, present).yang
        previous = self.last.get(key)
        if present:
            self.last[key] = status
        else:
            self.last.pop(key, None)
        if status == previous:
            return
        event: dict[str, Any] = {"role": self.role, "cuid": entry.cuid, "mid": entry.mid, "status": status}
        if previous is not None:
            event["previous-status"] = previous
        event["peer"] = self.peer_of(entry)
        task = asyncio.get_running_loop().create_task(self._send({f"{MODULE}:mitigation-status-change": event}))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, event: dict[str, Any]) -> None:
        try:
            await self._notify(event)
        except Exception:  # a notification must never break the service
            log.exception("mitigation-status-change notification failed")
