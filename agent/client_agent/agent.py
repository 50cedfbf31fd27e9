"""The DOTS client agent: configured mitigation requests become DOTS signals, and back.

Theory of operation
-------------------
The agent is a :class:`mgmt.ConfigSubscriber` and a :class:`mgmt.StateProvider` of the
``/dots-agent:dots-agent/client`` subtree.

* **Links.**  Each ``client/server`` entry is a :class:`ServerLink` holding one
  :class:`~agent.client.DotsClient` (connected lazily, on first need; the DotsClient itself
  keeps the session alive and re-establishes it).  A changed server entry replaces its link;
  the requests bound to it are signalled again on the new one.
* **Requests.**  Each ``mitigation-request`` entry is a :class:`RequestSlot` with its own
  task that converges *applied* (what the server was last told) to *desired* (the entry in
  running): created -> ``mitigate`` (PUT, new mid); lifetime changed -> ``refresh`` (same mid,
  SC-073); anything else changed -> ``mitigate`` with a new mid, then ``withdraw`` the old
  one (make before break); deleted or ``enabled false`` -> ``withdraw`` (DELETE).  A slot
  also renews its request before the granted lifetime ends.  The task retries after
  ``reconnect-interval`` when the server cannot be reached; a DOTS error (4.xx) is recorded
  and not retried until the entry changes.
* **Answers.**  After a successful PUT the slot ``watch``es its mid (Observe); every status
  the server reports (status, lifetime, counters, conflict) is kept and shown, with the mid
  and the last response code, in the entry's ``state`` node of ``<get>``.
* **Parties.**  Each entry is a party of its server's DOTS client (kind "configured request",
  :mod:`agent.client.parties`); so is each alert of the ``alert-endpoint`` (kind "alert
  source", signalled to the first configured server).  A request overlapping another party's
  live request -- or one of another process using the same client certificate -- is not sent
  (it would replace it, RFC 9132 §4.4.1): the entry keeps the reason in the log and retries
  when it changes.  The alert endpoint is not started without a token (``token``/``token-file``;
  the configuration is refused) and reads its limits from ``max-body-size``, ``max-header-size``
  and ``max-connections``.
* **Commit is not blocked by the network**: ``apply`` only records the new desired state and
  wakes the slots, so a NETCONF commit returns at once; the outcome shows up in ``<get>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agent.alerts import AlertBridge, AlertServer
from agent.client import DotsClient, DotsConnectionError, DotsError
from agent.client.parties import Party, PartyConflict, PartyGate
from agent.client.results import MitigationResult
from agent.http_front import HttpLimits
from agent.server.sessions import config_members
from agent.server.state import heartbeat_state, scope_state

from .config import ROOT, AlertEndpointSpec, ClientConfig, RequestSpec, ServerSpec, parse

log = logging.getLogger("dots.client.agent")


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class ServerLink:
    """One configured DOTS server and the DotsClient session to it."""

    def __init__(self, spec: ServerSpec, state_dir: Path, client_factory: Callable[..., DotsClient]) -> None:
        self.spec = spec
        self.state_dir = state_dir
        self._factory = client_factory
        self.client: DotsClient | None = None
        self.gate: PartyGate | None = None
        self._lock = asyncio.Lock()
        self.connected_at: float | None = None
        self.closed = False

    async def ready(self) -> DotsClient:
        """The connected DotsClient (connects on first use; raises DotsConnectionError)."""
        async with self._lock:
            if self.closed:
                raise DotsConnectionError(f"server {self.spec.name} was reconfigured")
            if self.client is None:
                if not self.spec.addresses:
                    raise DotsConnectionError(f"server {self.spec.name} has no address")
                client = self._factory((self.spec.addresses[0], self.spec.port), self.spec.credentials(),
                                       self.spec.transport, state=self.spec.state_file(self.state_dir))
                await client.connect()
                self.client = client
                self.gate = PartyGate(client)
                self.connected_at = time.time()
                log.info("session with %s (%s:%s, %s) established", self.spec.name, self.spec.addresses[0],
                         self.spec.port, client.transport)
            return self.client

    async def party_gate(self) -> PartyGate:
        await self.ready()
        assert self.gate is not None
        return self.gate

    async def close(self) -> None:
        self.closed = True
        if self.client is not None:
            client, self.client = self.client, None
            await client.close()


class RequestSlot:
    """One ``mitigation-request`` entry: converges the server to the configured request."""

    def __init__(self, agent: ClientAgent, name: str) -> None:
        self.agent = agent
        self.name = name
        self.desired: RequestSpec | None = None
        self.applied: RequestSpec | None = None
        self.link: ServerLink | None = None  # where 'applied' was signalled
        self.mid: int | None = None
        self.last_code: str | None = None
        self.last_update: float | None = None
        self.diagnostic = ""
        self.server_scope: dict[str, Any] = {}
        self.granted_lifetime: int | None = None
        self.renew_due = False
        self.wake = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None
        self._renew: asyncio.TimerHandle | None = None
        self.party = Party("configured request", name)
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"mitigation-request {name}")

    # -- driving ------------------------------------------------------------------------
    def want(self, spec: RequestSpec | None) -> None:
        if spec != self.desired:
            self.desired = spec
            self.wake.set()

    def poke(self) -> None:
        self.wake.set()

    @property
    def done(self) -> bool:
        return self.desired is None and self.applied is None

    async def _run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            try:
                await self._converge()
            except DotsError as exc:
                self._record(exc.code, exc.diagnostic)
                log.warning("mitigation-request %s: %s", self.name, exc)
            except PartyConflict as exc:  # not retried until the entry changes
                self.diagnostic = str(exc)
                log.warning("mitigation-request %s: not sent: %s", self.name, exc)
            except DotsConnectionError as exc:
                self.diagnostic = str(exc)
                delay = self.agent.config.reconnect_interval
                log.warning("mitigation-request %s: %s (retry in %s s)", self.name, exc, delay)
                asyncio.get_running_loop().call_later(delay, self.wake.set)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep the slot alive whatever happens
                log.exception("mitigation-request %s failed", self.name)
                self.diagnostic = f"{type(exc).__name__}: {exc}"
            if self.done:
                self.agent.slot_finished(self)
                return

    def _record(self, code: str, diagnostic: str = "") -> None:
        self.last_code = code
        self.diagnostic = diagnostic
        self.last_update = time.time()
        self.agent.count_response(code)

    async def _converge(self) -> None:
        cfg = self.agent.config
        want = self.desired if self.desired is not None and self.desired.enabled and cfg.enabled else None
        spec = cfg.server_for(want) if want is not None else None
        link = self.agent.link(spec.name) if spec is not None else None
        if want is not None and link is None:
            raise DotsConnectionError(f"no DOTS server configured for {self.name}")
        have = self.applied
        if have is not None and (want is None or link is not self.link or (self.link and self.link.closed)):
            await self._withdraw()
            have = None
        if want is None or link is None:
            return
        if have is not None and want == have and not self.renew_due:
            return
        client = await link.ready()
        gate = await link.party_gate()
        self.agent.requests_sent += 1
        if have is not None and self.mid is not None and want.same_request(have):
            self.renew_due = False
            result = await gate.refresh(self.party, self.mid, want.lifetime)
        else:
            old = self.mid if have is not None else None
            result = await gate.mitigate(self.party, **want.mitigate_kwargs())
            self._stop_watch()
            self.mid = result.mid
            if old is not None and old != result.mid:
                self.agent.requests_sent += 1
                with contextlib.suppress(DotsError, PartyConflict):
                    self.agent.count_response(await gate.withdraw(self.party, old))
        self.applied, self.link = want, link
        self._accepted(result, client)

    def _accepted(self, result: MitigationResult, client: DotsClient) -> None:
        self._record(result.code, result.conflict.describe() if result.conflict else "")
        self.granted_lifetime = result.lifetime
        log.info("mitigation-request %s: mid %s %s (lifetime %s)", self.name, result.mid, result.code,
                 result.lifetime)
        if self._watch is None or self._watch.done():
            self._watch = asyncio.get_running_loop().create_task(self._follow(client, result.mid))
        self._schedule_renewal(result.lifetime)

    def _schedule_renewal(self, lifetime: int | None) -> None:
        if self._renew is not None:
            self._renew.cancel()
            self._renew = None
        if lifetime is None or lifetime <= 0:
            return
        delay = max(1.0, lifetime - max(5.0, min(60.0, lifetime * 0.2)))

        def due() -> None:
            self.renew_due = True
            self.wake.set()

        self._renew = asyncio.get_running_loop().call_later(delay, due)

    async def _withdraw(self) -> None:
        link, mid = self.link, self.mid
        self._stop_watch()
        if self._renew is not None:
            self._renew.cancel()
            self._renew = None
        if link is not None and mid is not None and not link.closed:
            gate = await link.party_gate()
            self.agent.requests_sent += 1
            code = await gate.withdraw(self.party, mid)
            self._record(code)
            log.info("mitigation-request %s: mid %s withdrawn (%s)", self.name, mid, code)
        self.applied = None
        self.link = None
        self.mid = None
        self.server_scope = {}

    async def _follow(self, client: DotsClient, mid: int) -> None:
        """Observe the request: keep what the server reports about it."""
        try:
            async for update in client.watch(mid):
                if self.mid != mid:
                    return
                if update.scopes:
                    previous = self.server_scope.get("status")
                    self.server_scope = dict(update.scopes[0])
                    self.last_update = time.time()
                    status = self.server_scope.get("status")
                    if status is not None and status != previous:
                        self.agent.status_changed(self, mid, status, previous)
                if update.final:
                    self.last_code = update.code
                    return
        except asyncio.CancelledError:
            raise
        except (DotsError, DotsConnectionError) as exc:
            log.info("mitigation-request %s: observation of mid %s ended: %s", self.name, mid, exc)
        except Exception:
            log.exception("mitigation-request %s: observation failed", self.name)

    def _stop_watch(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    async def close(self) -> None:
        self._stop_watch()
        if self._renew is not None:
            self._renew.cancel()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task

    # -- state ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.link is not None:
            out["server"] = self.link.spec.name
        elif self.desired is not None:
            spec = self.agent.config.server_for(self.desired)
            if spec is not None:
                out["server"] = spec.name
        if self.mid is not None:
            out["mid"] = self.mid
        if self.last_code is not None:
            out["last-response-code"] = self.last_code
        if self.last_update is not None:
            out["last-update"] = iso(self.last_update)
        scope = scope_state(self.server_scope)
        if scope:
            out["scope"] = scope
        return out


class ClientAgent:
    """ConfigSubscriber + StateProvider of ``/dots-agent/client``."""

    def __init__(self, state_dir: Path, client_factory: Callable[..., DotsClient] = DotsClient) -> None:
        self.state_dir = state_dir
        self.client_factory = client_factory
        self.config = ClientConfig()
        self.links: dict[str, ServerLink] = {}
        self.slots: dict[str, RequestSlot] = {}
        self.requests_sent = 0
        self.responses: dict[str, int] = {}
        self.started = time.time()
        self._closing: set[asyncio.Task[None]] = set()
        self._connecting: set[str] = set()
        self.on_status_change: Callable[[dict[str, Any]], Awaitable[None]] | None = None
        self.alerts: AlertServer | None = None
        self._alerts_spec: AlertEndpointSpec | None = None

    # -- ConfigSubscriber -------------------------------------------------------------
    async def apply(self, new_running: dict[str, Any], old: dict[str, Any]) -> None:
        """Record the new desired state and wake the requests (does not wait for the network)."""
        config = parse(new_running)  # ValueError: refused, running rolls back
        log.info("running configuration changed: %d server(s), %d mitigation request(s)",
                 len(config.servers), len(config.requests))
        self.reconfigure(config)

    def reconfigure(self, config: ClientConfig) -> None:
        self.config = config
        for name, link in list(self.links.items()):
            if config.servers.get(name) != link.spec:
                del self.links[name]
                link.closed = True
                self._spawn(link.close())
        for name, slot in self.slots.items():
            if name not in config.requests:
                slot.want(None)
        for name, spec in config.requests.items():
            slot = self.slots.get(name)
            if slot is None:
                slot = self.slots[name] = RequestSlot(self, name)
            slot.want(spec)
        for slot in self.slots.values():  # e.g. its server changed, or the agent was disabled
            slot.poke()
        want_alerts = config.alert_endpoint if config.enabled and config.servers else None
        if want_alerts != self._alerts_spec:
            self._alerts_spec = want_alerts
            self._spawn(self._restart_alerts(want_alerts))
        if config.enabled:  # hold a session to every configured server
            for name in config.servers:
                link = self.link(name)
                if link is not None and link.client is None and name not in self._connecting:
                    self._connecting.add(name)
                    self._spawn(self._keep_connected(link))

    async def _restart_alerts(self, spec: AlertEndpointSpec | None) -> None:
        """(Re)start the alert endpoint for *spec* (None: stop it); alerts go to the first server."""
        if self.alerts is not None:
            old, self.alerts = self.alerts, None
            await old.close()
        if spec is None or spec is not self._alerts_spec:
            return

        async def gate() -> PartyGate:
            name = next(iter(self.config.servers), None)
            link = self.link(name) if name is not None else None
            if link is None:
                raise DotsConnectionError("no DOTS server configured for the alert endpoint")
            return await link.party_gate()

        limits = HttpLimits(max_body=spec.max_body, max_header=spec.max_header, max_connections=spec.max_connections)
        server = AlertServer(AlertBridge(gate, self.state_dir / "alerts.json", default_lifetime=spec.default_lifetime),
                             spec.address, spec.port, token=spec.token, limits=limits, path=spec.path)
        try:
            await server.start()
        except OSError as exc:
            log.error("alert endpoint on %s:%s not started: %s", spec.address, spec.port, exc.strerror)
            return
        self.alerts = server

    async def _keep_connected(self, link: ServerLink) -> None:
        """Connect *link* now (retrying every reconnect-interval) instead of on first need."""
        try:
            while not link.closed and self.links.get(link.spec.name) is link:
                try:
                    await link.ready()
                    return
                except DotsConnectionError as exc:
                    log.warning("server %s: %s (retry in %s s)", link.spec.name, exc, self.config.reconnect_interval)
                await asyncio.sleep(self.config.reconnect_interval)
        finally:
            self._connecting.discard(link.spec.name)

    def link(self, name: str) -> ServerLink | None:
        link = self.links.get(name)
        if link is None:
            spec = self.config.servers.get(name)
            if spec is None:
                return None
            self.state_dir.mkdir(parents=True, exist_ok=True)
            link = self.links[name] = ServerLink(spec, self.state_dir, self.client_factory)
        return link

    def slot_finished(self, slot: RequestSlot) -> None:
        if self.slots.get(slot.name) is slot:
            del self.slots[slot.name]

    def status_changed(self, slot: RequestSlot, mid: int, status: str, previous: str | None) -> None:
        """The server reported a new status for a request: tell ``on_status_change``."""
        if self.on_status_change is None:
            return
        event: dict[str, Any] = {"role": "client", "mid": mid, "status": status}
        if previous is not None:
            event["previous-status"] = previous
        link = slot.link
        if link is not None:
            event["peer"] = link.spec.name
            if link.client is not None:
                event["cuid"] = link.client.cuid
        self._spawn(self.on_status_change(event))

    def count_response(self, code: str) -> None:
        self.responses[code] = self.responses.get(code, 0) + 1

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # -- StateProvider -------------------------------------------------------------------
    async def state(self) -> dict[str, Any]:
        node: dict[str, Any] = {}
        entries = [{"name": name, "state": slot.state()} for name, slot in sorted(self.slots.items())
                   if slot.desired is not None]
        if entries:
            node["mitigation-request"] = entries
        sessions = [s for s in (self._session(link) for link in self.links.values()) if s]
        if sessions:
            node["sessions"] = {"session": sessions}
        stats: dict[str, Any] = {"discontinuity-time": iso(self.started), "requests-sent": str(self.requests_sent)}
        if self.responses:
            stats["responses"] = [{"code": c, "count": str(n)} for c, n in sorted(self.responses.items())]
        node["statistics"] = stats
        return {ROOT: {"client": node}}

    def _session(self, link: ServerLink) -> dict[str, Any] | None:
        client = link.client
        if client is None or not client.connected:
            return None
        out: dict[str, Any] = {"session-id": link.spec.name, "role": "client"}
        host = link.spec.addresses[0]
        if _is_ip(host):
            out["peer-address"] = host
        out["peer-port"] = link.spec.port
        if client.transport:
            out["transport"] = client.transport
        out["cuid"] = client.cuid
        if link.connected_at is not None:
            out["established"] = iso(link.connected_at)
        out["active-config"] = "mitigating" if any(
            s.link is link and s.applied is not None for s in self.slots.values()) else "idle"
        cfg = client.session_config
        out["negotiated-config"] = {"mitigating-config": config_members(cfg.mitigating),
                                    "idle-config": config_members(cfg.idle)}
        liveness = client.liveness
        if liveness is not None:
            mono = time.monotonic()
            out["heartbeat"] = heartbeat_state(liveness, mono, time.time() - (mono - liveness.last_rx))
        out["server"] = link.spec.name
        return out

    async def close(self) -> None:
        self._alerts_spec = None
        if self.alerts is not None:
            await self.alerts.close()
            self.alerts = None
        for slot in list(self.slots.values()):
            await slot.close()
        for link in list(self.links.values()):
            await link.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
