"""The Call Home DOTS server (CPE side, RFC 9066): it calls the provider, then acts as a DOTS server.

Theory of operation
-------------------
Role reversal happens at the (D)TLS layer only (§5.1).  :class:`CallHomeServer` owns one aiocoap
Context whose ``serversite`` is a :class:`~agent.callhome.resource.CallHomeResource` (the base
DOTS server resources + redirect) and whose transports are *client* transports: our
:class:`~agent.transports.tls.DotsTLSClient` (TCP + TLS, with :meth:`connect` to open a
connection without sending a request) or our DTLS client transport.  CoAP over TLS is
symmetric and the DTLS client transport hands every decoded message to aiocoap's message
manager, so requests arriving from the (D)TLS *server* side are served by the site exactly like
requests arriving at a listening DOTS server; nothing in aiocoap had to change.

**Dialer.**  A background task keeps one association to the Call Home DOTS client (the
configured address, or an alternate one after a redirect while its TTL lasts):

1. connect (TLS handshake / DTLS handshake, mutual X.509; the peer's certificate must chain to
   our CA and match the reference identifier: ``client_name`` or the host / ``alt-ch-client``);
2. serve: a :class:`~agent.protocol.session.Liveness` machine with role ``CALL_HOME_SERVER``
   is bound to the association (the client's requests and heartbeats feed it through
   :class:`~agent.callhome.resource.CallHomeSessions`); every ``heartbeat-interval`` the CPE
   sends a heartbeat ``PUT /.well-known/dots/hb`` itself.  Those heartbeats also keep NAT and
   firewall bindings on the path alive: the ``heartbeat-interval`` the CPE offers (and the
   maximum it accepts, §5.2.1) is lowered below ``binding_timeout`` when one is configured.
   Any traffic from the client keeps the session even past ``missing-hb-allowed`` (CH-003);
   without any traffic the machine declares the session lost and asks for a reconnection
   (CH-004);
3. on loss (liveness verdict, TCP/DTLS closure, redirect) the association is closed and a new
   one established at once, then with back-off ``reconnect_min`` doubling to
   ``reconnect_max`` (+ up to 25 % jitter).  (D)TLS sessions are resumed: the TLS
   ``ResumingSSLContext`` and the DTLS session cache live as long as the server.

The mitigation requests themselves are handled by :class:`~agent.callhome.service.CallHomeService`
(source scope, NAT44 mapping, consent, nftables).  Base signal channel and Call Home can run in
the same process: they are separate Contexts with separate ports (Appendix B).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiocoap
from aiocoap import Message
from aiocoap import numbers as coap

from agent.aio import cancel_and_wait
from agent.mitigators.interface import Mitigator
from agent.mitigators.log import LogMitigator
from agent.numbers import rfc9132
from agent.protocol.server_rules import AcceptableRanges
from agent.protocol.session import Liveness, Reconnect, Role, SendHeartbeat, SessionConfig, SessionLost
from agent.server.heartbeats import heartbeat_body
from agent.store.sqlite import SqliteStore
from agent.transports import tls
from agent.transports.credentials import Credentials
from agent.transports.dtls import DTLSClientRemote, DTLSClientTransport, add_dtls_client
from agent.transports.identity import peer_cuid
from agent.tuning import tuning

from .nat import NatMapper, StaticMapping
from .resource import CallHomeResource, CallHomeSessions, Redirect
from .service import CONSENT_MODES, CallHomeService, CallHomeSettings

log = logging.getLogger("dots.callhome")
HB_PATH = (*rfc9132.WELL_KNOWN, rfc9132.PATH_HEARTBEAT)
TRANSPORTS = ("tls", "dtls")


@dataclass
class CallHomeServerOptions:
    """Configuration of the CPE side (the YANG ``call-home/call-home-server`` container)."""

    credentials: Credentials
    client: tuple[str, int]  # the Call Home DOTS client; RFC 9066 has no default port
    internal_prefixes: list[str]
    client_name: str | None = None  # reference identifier of its certificate (default: the host)
    transport: str = "dtls"
    consent: str = "auto"
    mitigator: str = "log"
    netns: str | None = None
    nft_table: str = "dots_callhome"
    db: Path = Path("dots-callhome.db")
    nat_static: list[StaticMapping] = field(default_factory=list)
    nat_conntrack: bool = False
    legitimate: list[str] = field(default_factory=list)
    approval_timeout: float = 3600.0
    binding_timeout: float | None = None  # NAT/firewall binding lifetime on the path (seconds)
    session_config: SessionConfig | None = None  # offered defaults (before the binding adjustment)
    reconnect_min: float = rfc9132.RECONNECT_MIN_INTERVAL
    reconnect_max: float = rfc9132.RECONNECT_RECOMMENDED_INTERVAL
    connect_timeout: float = 10.0
    counter_interval: float = 5.0
    terminating_period: int = rfc9132.ACTIVE_BUT_TERMINATING  # SC-106; a CPE rule needs no route propagation
    peer_name: str = ""  # name of the configured peer being called (management plane)


# Options a running CallHomeServer cannot change (they shape its transports and enforcer).
RESTART_OPTIONS = ("credentials", "transport", "mitigator", "nft_table", "netns", "db")


def adjust_for_bindings(config: SessionConfig, acceptable: AcceptableRanges, binding_timeout: float | None
                        ) -> tuple[SessionConfig, AcceptableRanges]:
    """§5.2.1: keep ``heartbeat-interval`` under the on-path NAT/firewall binding timer.

    The interval becomes at most two thirds of ``binding_timeout`` (never below the range's
    minimum) in both sets, and the acceptable maximum is lowered the same way so a client cannot
    negotiate a longer one.
    """
    if not binding_timeout:
        return config, acceptable
    lo, hi = acceptable.ranges["heartbeat-interval"]
    cap = max(int(lo), min(int(hi), int(binding_timeout * 2 / 3)))
    sets = [replace(s, heartbeat_interval=min(s.heartbeat_interval, cap)) if s.heartbeat_interval else s
            for s in (config.mitigating, config.idle)]
    ranges = dict(acceptable.ranges)
    ranges["heartbeat-interval"] = (lo, cap)
    return SessionConfig(mitigating=sets[0], idle=sets[1]), replace(acceptable, ranges=ranges)


@dataclass
class Association:
    """One (D)TLS association the CPE opened to a Call Home DOTS client."""

    transport: str
    remote: Any
    host: str
    port: int
    name: str
    cuid: str
    resumed: bool
    handshake_ms: float
    established: float = field(default_factory=time.time)
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"transport": self.transport, "peer": f"{self.host}:{self.port}", "name": self.name,
                "cuid": self.cuid, "resumed": self.resumed, "handshake-ms": round(self.handshake_ms, 1),
                "established": self.established}


class CallHomeServer:
    """CPE side of DOTS Call Home (see the module docstring)."""

    def __init__(self, options: CallHomeServerOptions) -> None:
        if options.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}")
        self.options = options
        base = options.session_config or SessionConfig()
        defaults, acceptable = adjust_for_bindings(base, AcceptableRanges(), options.binding_timeout)
        self.settings = CallHomeSettings(mitigator=options.mitigator, nft_table=options.nft_table,
                                         defaults=defaults, acceptable=acceptable,
                                         terminating_period=options.terminating_period,
                                         terminating_max=max(options.terminating_period,
                                                             rfc9132.ACTIVE_BUT_TERMINATING_MAX))
        self.store = SqliteStore(options.db)
        self._mitigators: dict[str, Mitigator] = {}
        nat = NatMapper(options.nat_static, conntrack=options.nat_conntrack, netns=options.netns) \
            if options.nat_static or options.nat_conntrack else None
        self.service = CallHomeService(self.store, self.mitigator, self.settings,
                                       internal_prefixes=options.internal_prefixes, consent=options.consent,
                                       nat=nat, legitimate=options.legitimate,
                                       approval_timeout=options.approval_timeout,
                                       counter_interval=options.counter_interval)
        self.sessions = CallHomeSessions(self.store, self.settings.defaults)
        self.resource = CallHomeResource(self.service, self.sessions, lambda: self.settings,
                                         on_redirect=self._redirected)
        self.context: aiocoap.Context | None = None
        self._tls: tls.DotsTLSClient | None = None
        self._tls_ssl = tls.client_ssl_context(options.credentials)
        self._dtls: DTLSClientTransport | None = None
        self.association: Association | None = None
        self.connected = asyncio.Event()
        self.redirect: Redirect | None = None
        self._redirect_until: float | None = None
        self._redirect_failures = 0
        self._dialer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self.history: list[dict[str, Any]] = []  # established associations (most recent last)
        self._wake = asyncio.Event()  # cuts a reconnection back-off short (new peer configured)
        self.heartbeats_sent = 0
        self.heartbeats_answered = 0

    async def mitigator(self, name: str) -> Mitigator:
        existing = self._mitigators.get(name)
        if existing is not None:
            return existing
        if name == "log":
            m: Mitigator = LogMitigator()
        elif name == "nftables":
            from agent.mitigators.nftables import NftablesMitigator

            m = NftablesMitigator(table=self.settings.nft_table, netns=self.options.netns)
        else:
            raise ValueError(f"mitigator {name!r} is not available")
        self._mitigators[name] = m
        return m

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        await self.store.open()
        await self.service.start()
        loop = asyncio.get_running_loop()
        self.context = aiocoap.Context(loop=loop, serversite=self.resource, loggername="coap-callhome")
        ctx = self.context
        if self.options.transport == "tls":
            ssl_context = self._tls_ssl

            async def make(tman: Any) -> tls.DotsTLSClient:
                t = await tls.DotsTLSClient.create_client_transport(tman, ctx.log, ctx.loop)
                t.ssl_context = ssl_context
                return t

            self._tls = await tls.append_token_transport(ctx, make)
            self._tls.on_connection_lost = self._tls_lost
        else:
            self._dtls = await add_dtls_client(ctx, self.options.credentials,
                                               handshake_timeout=self.options.connect_timeout,
                                               dead_peer_timeout=None)
            self._dtls.on_closed = self._dtls_lost
        self._dialer = loop.create_task(self._dial_forever(), name="Call Home dialer")
        log.info("Call Home DOTS server: calling %s:%s over %s; internal prefixes %s; consent %s; mitigator %s",
                 *self.options.client, self.options.transport, ", ".join(self.options.internal_prefixes),
                 self.options.consent, self.options.mitigator)

    async def stop(self) -> None:
        self._closing = True
        await cancel_and_wait([self._dialer, *self._tasks])
        if self.context is not None:
            await self.context.shutdown()
        await self.service.stop()
        for m in self._mitigators.values():
            await m.close()
        await self.store.close()

    async def wait_connected(self, timeout: float) -> Association:
        await asyncio.wait_for(self.connected.wait(), timeout)
        assert self.association is not None
        return self.association

    # -- dialing -------------------------------------------------------------------------------
    def _targets(self) -> tuple[list[tuple[str, int]], str, bool]:
        """Addresses to call, the reference identifier, and whether they come from a redirect."""
        port = self.options.client[1]
        r = self.redirect
        if r is not None and (self._redirect_until is None or time.monotonic() < self._redirect_until):
            hosts = list(r.records) or [r.name]
            return [(h, port) for h in hosts], r.name, True
        self.redirect = None
        host = self.options.client[0]
        return [(host, port)], self.options.client_name or host, False

    async def _dial_forever(self) -> None:
        failures = 0
        while not self._closing:
            targets, name, redirected = self._targets()
            assoc: Association | None = None
            errors = []
            for host, port in targets:
                try:
                    assoc = await self._connect(host, port, name)
                    break
                except Exception as exc:  # noqa: BLE001 - any failure: try the next, then back off
                    errors.append(f"{host}:{port}: {exc or type(exc).__name__}")
            if assoc is None:
                failures += 1
                if redirected:
                    self._redirect_failures += 1
                    if self._redirect_failures >= 2:
                        log.warning("alternate Call Home DOTS client %s unreachable: back to %s:%s", name,
                                    *self.options.client)
                        self.redirect = None
                delay = min(self.options.reconnect_max, self.options.reconnect_min * 2 ** (failures - 1))
                delay *= 1 + random.random() * 0.25
                log.warning("cannot call home (%s); next attempt in %.1f s", "; ".join(errors), delay)
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                    failures = 0
                except TimeoutError:
                    pass
                continue
            failures = 0
            self._redirect_failures = 0
            await self._serve(assoc)
            # CH-004: a lost session is re-established at once (resuming (D)TLS), then backs off

    async def _connect(self, host: str, port: int, name: str) -> Association:
        started = time.monotonic()
        timeout = self.options.connect_timeout
        if self._tls is not None:
            self._tls_ssl.override_hostname = name
            conn = await asyncio.wait_for(self._tls.connect(host, port), timeout)
            ssl_object = conn._transport.get_extra_info("ssl_object") if conn._transport else None
            resumed = bool(ssl_object is not None and ssl_object.session_reused)
            remote: Any = conn
            transport = "tls"
        else:
            assert self._dtls is not None
            self._dtls.credentials = replace(self.options.credentials, server_hostname=name)
            dremote = self._dtls.connect(host, port)
            try:
                await asyncio.wait_for(asyncio.shield(dremote.ready), timeout)
            except BaseException:
                dremote.close(TimeoutError("handshake timed out"), notify=False)
                raise
            resumed = dremote.session_reused
            remote = dremote
            transport = "dtls"
        cuid = peer_cuid(remote)
        if cuid is None:
            raise ConnectionError("the Call Home DOTS client presented no certificate")
        ms = (time.monotonic() - started) * 1000
        assoc = Association(transport, remote, host, port, name, cuid, resumed, ms)
        log.info("called home: %s to %s:%s (%s) in %.1f ms, session %s", transport, host, port, name, ms,
                 "resumed" if resumed else "new")
        self.history.append(assoc.as_dict())
        return assoc

    def _tls_lost(self, connection: Any, exc: Exception | None) -> None:
        a = self.association
        if a is not None and a.remote is connection:
            self._mark_lost(a, f"TLS connection closed ({exc or 'by the peer'})")

    def _dtls_lost(self, remote: DTLSClientRemote, reason: Exception) -> None:
        a = self.association
        if a is not None and a.remote is remote:
            self._mark_lost(a, f"DTLS association closed ({reason!r})")

    @staticmethod
    def _mark_lost(a: Association, reason: str) -> None:
        if not a.lost.is_set():
            a.reason = reason
            a.lost.set()

    async def _serve(self, a: Association) -> None:
        """Keep the association alive with heartbeats until it is lost (see the module docstring)."""
        _sid, cfg = await self.sessions.config_of(a.cuid)
        liveness = Liveness(Role.CALL_HOME_SERVER, cfg, time.time(), reliable=a.transport == "tls",
                            mitigating=self.service.any_active(a.cuid))
        self.sessions.bind(a.remote, liveness)
        await self.sessions.touch(a.remote, a.cuid, time.time())  # the session exists from the handshake on
        self.association = a
        self.connected.set()
        try:
            while not a.lost.is_set() and not self._closing:
                deadline = liveness.next_deadline()
                wait = 1.0 if deadline is None else min(1.0, max(0.0, deadline - time.time()))
                try:
                    await asyncio.wait_for(a.lost.wait(), wait)
                    break
                except TimeoutError:
                    pass
                now = time.time()
                session = self.sessions.sessions.get(self.sessions.key_of(a.remote))
                live = session.liveness if session is not None else liveness
                live.set_activity(now, mitigating=self.service.any_active(a.cuid))
                for effect in live.tick(now):
                    if isinstance(effect, SendHeartbeat):
                        self._spawn(self._heartbeat(a, live, effect.peer_hb_status))
                    elif isinstance(effect, SessionLost):
                        self._mark_lost(a, effect.reason)
                    elif isinstance(effect, Reconnect):
                        self._mark_lost(a, a.reason or "heartbeats unanswered")
        finally:
            self.connected.clear()
            self.association = None
            self.sessions.unbind(a.remote)
            log.warning("Call Home session to %s:%s ended: %s", a.host, a.port, a.reason or "stopped")
            self._close(a)

    def _close(self, a: Association) -> None:
        try:
            if a.transport == "tls":
                transport = a.remote._transport
                if transport is not None:
                    transport.close()
            else:
                a.remote.close(ConnectionAbortedError(a.reason or "closed"), notify=True)
        except Exception as exc:  # closing a broken association must not fail
            log.debug("closing the association: %s", exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _heartbeat(self, a: Association, liveness: Liveness, status: bool) -> None:
        assert self.context is not None
        msg = Message(code=coap.PUT, payload=heartbeat_body(status), content_format=rfc9132.CONTENT_FORMAT_DOTS_CBOR,
                      transport_tuning=tuning(liveness.config, False))
        msg.opt.uri_path = HB_PATH
        msg.remote = a.remote
        self.heartbeats_sent += 1
        try:
            response = await asyncio.wait_for(self.context.request(msg).response,
                                              max(1.0, float(liveness.config.heartbeat_interval)))
        except Exception as exc:  # unanswered: the liveness machine counts it
            log.debug("heartbeat to the Call Home DOTS client unanswered: %s", exc)
            return
        if response.code == coap.CHANGED:
            self.heartbeats_answered += 1
            liveness.heartbeat_response(time.time())

    # -- redirect (§5.2.2) ---------------------------------------------------------------------
    async def _redirected(self, target: Redirect) -> None:
        self.redirect = target
        self._redirect_until = time.monotonic() + target.ttl if target.ttl else None
        self._redirect_failures = 0
        a = self.association
        if a is not None:
            self._mark_lost(a, f"redirected to {target.name}")

    # -- live reconfiguration (management plane) -------------------------------------------------
    def check_update(self, options: CallHomeServerOptions) -> None:
        """Raise ValueError for *options* this running server cannot apply without a restart."""
        for attr in RESTART_OPTIONS:
            if getattr(options, attr) != getattr(self.options, attr):
                raise ValueError(f"changing {attr.replace('_', '-')} of a running Call Home DOTS server needs "
                                 "a restart")
        if options.consent not in CONSENT_MODES:
            raise ValueError(f"consent must be one of {', '.join(CONSENT_MODES)}")
        if not options.internal_prefixes:
            raise ValueError("a Call Home DOTS server needs at least one internal prefix")

    def update(self, options: CallHomeServerOptions) -> None:
        """Apply *options* live (checked by :meth:`check_update`).

        Scope (internal prefixes, legitimate sources, NAT44 mappings), consent mode and approval
        timeout take effect for the next request (pending requests keep their deadline and stay
        pending when consent becomes automatic); back-off bounds for the next failure.  A new
        Call Home DOTS client (address, port or reference identifier) closes the current
        association and calls the new one at once.
        """
        old, self.options = self.options, options
        svc = self.service
        svc.internal = [ipaddress.ip_network(p, strict=False) for p in options.internal_prefixes]
        svc.legitimate = [ipaddress.ip_network(p, strict=False) for p in options.legitimate]
        svc.consent = options.consent
        svc.approval_timeout = options.approval_timeout
        if (options.nat_static, options.nat_conntrack) != (old.nat_static, old.nat_conntrack):
            svc.nat = NatMapper(options.nat_static, conntrack=options.nat_conntrack, netns=options.netns) \
                if options.nat_static or options.nat_conntrack else None
        if (options.client, options.client_name) != (old.client, old.client_name):
            log.warning("Call Home DOTS client reconfigured: %s:%s -> %s:%s", *old.client, *options.client)
            self.redirect = None
            a = self.association
            if a is not None:
                self._mark_lost(a, "the Call Home DOTS client was reconfigured")
            self._wake.set()

    # -- management API ------------------------------------------------------------------------
    def pending(self) -> list[dict[str, Any]]:
        return [p.as_dict() for p in self.service.pending_approvals()]

    async def approve(self, cuid: str, mid: int, comment: str = "") -> str:
        """RPC ``approve-mitigation``: enforce a pending request; returns its new status."""
        return (await self.service.approve(cuid, mid, comment)).yang

    async def reject(self, cuid: str, mid: int, reason: str = "") -> str:
        """RPC ``reject-mitigation``: withdraw a pending request with conflict-cause 4."""
        return (await self.service.reject(cuid, mid, reason)).yang

    async def describe(self) -> dict[str, Any]:
        await self.service.refresh_counters()
        a = self.association
        return {"association": a.as_dict() if a else None, "history": self.history[-10:],
                "redirect": vars(self.redirect) if self.redirect else None,
                "heartbeats": {"sent": self.heartbeats_sent, "answered": self.heartbeats_answered},
                "mitigations": self.service.describe(), "pending": self.pending()}

    def control_handlers(self) -> dict[str, Any]:
        async def pending(_req: dict[str, Any]) -> dict[str, Any]:
            return {"pending": self.pending()}

        async def approve(req: dict[str, Any]) -> dict[str, Any]:
            return {"status": await self.approve(str(req["cuid"]), int(req["mid"]), str(req.get("comment", "")))}

        async def reject(req: dict[str, Any]) -> dict[str, Any]:
            return {"status": await self.reject(str(req["cuid"]), int(req["mid"]), str(req.get("reason", "")))}

        async def show(_req: dict[str, Any]) -> dict[str, Any]:
            return await self.describe()

        return {"pending": pending, "approve": approve, "reject": reject, "list": show}


def session_config_for_tests(heartbeat_interval: int, missing_hb_allowed: int,
                             ack_timeout: float = 2.0) -> SessionConfig:
    """A session configuration with short timers (values outside RFC 9132's ranges are fine
    as defaults; only PUTs are range-checked)."""
    from agent.protocol.session import TransmissionConfig

    t = TransmissionConfig(heartbeat_interval=heartbeat_interval, missing_hb_allowed=missing_hb_allowed,
                           ack_timeout=Decimal(str(ack_timeout)))
    return SessionConfig(mitigating=t, idle=t)


def parse_static_mappings(texts: Iterable[str]) -> list[StaticMapping]:
    return [StaticMapping.parse(t) for t in texts]
