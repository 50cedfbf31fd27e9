"""The DOTS client: mitigation requests, status, Observe, session configuration, heartbeats.

Theory of operation
-------------------
A :class:`DotsClient` owns one signal channel session at a time (a
:class:`~agent.client.connection.Connection`, made by the ``Connector`` seam) and a background
task that keeps it alive:

* **Requests.**  Mitigation requests (PUT/GET/DELETE on ``mitigate``) are Non-confirmable over
  DTLS and repeated until a response arrives (RFC 9132 §4.4), paced by ``client_pacing``: a
  shared :class:`NonPacer` allows at most one NON every 3 s until an RTT estimate exists
  (SC-014; the connect-time Confirmable ``GET /config`` provides the first estimate, so a first
  mitigation request normally leaves at once) and one per SRTT afterwards (SC-013).  Every
  repetition is a fresh CoAP request (PUT is idempotent at the server: a repeat is a 2.04
  refresh); the first answer wins.  Session configuration requests are Confirmable with the
  negotiated ack-timeout / ack-random-factor / max-retransmit (SC-117, ``agent.tuning``).  Over
  TLS every request is sent once (the transport is reliable).
* **Identifiers.**  'mid' and 'sid' come from :class:`~agent.client.state.ClientState`
  (monotonic, SC-031/SC-119; mid rollover SC-032 once no attack is mitigated -- preconfigured
  requests do not count -- after which the preconfigured requests are withdrawn and recreated
  with the mids restarting at 0, SC-033), which also keeps each request's parameters
  so :meth:`DotsClient.refresh` and :meth:`DotsClient.efficacy_update` repeat them unchanged
  (SC-073, SC-098).  When the state knows no mid yet, the server is asked which mids it still
  holds for our cuid so a lost state file does not make us reuse one.
* **Heartbeats (§4.7).**  The :class:`Liveness` machine (role DOTS client) decides: a NON
  ``PUT /hb`` with 'peer-hb-status' every heartbeat-interval; a 2.04 (or any other traffic
  from the server) proves the session alive.  The server's own heartbeat PUTs are answered
  2.04 by the client's CoAP site.  On ``SessionLost`` the session is closed and re-established
  (resuming (D)TLS where possible, SC-143) no more often than every 60 s (SC-144,
  ``ReconnectBackoff``).  Requests waiting for an answer are kept (and repeated) across the
  reconnection until their own deadline.
* **Link saturation (§4.7).**  While mitigating, a reached threshold makes the session
  ``DEGRADED``, not lost: it is kept and heartbeats keep going over it (SC-146/SC-147), and a
  *parallel* session is established (``Reconnect(parallel=True)``, SC-148; paced like any
  re-establishment).  Mitigation requests (PUT/GET/DELETE on ``mitigate``, not Observe
  registrations) then go over both sessions, the first answer wins (SC-149) -- so a new
  request may come back as a 2.04 when its copy over the silent session created it.  The
  parallel session is heartbeated too.  Any traffic on the old session
  (``CancelParallelSession``) closes the parallel one; if instead the old session leaves
  ``parallel_promote_after`` further heartbeats (default: missing-hb-allowed) unanswered while
  the parallel one answers, or fails outright, the parallel session becomes the session (a
  new generation) and the old one is closed.
* **Message size (§7.3).**  Over DTLS a request must fit the PMTU (``pmtu``, 1280 by default)
  minus IPv6/UDP, DTLS record and AEAD overhead; :meth:`DotsClient.mitigate` refuses a larger
  one (:class:`~agent.client.split.RequestTooLargeError`) and :meth:`DotsClient.mitigate_all`
  splits its target lists over several PUTs with their own mids (SC-170).  Over TLS there is no
  limit unless ``tls_max_message`` is set.
* **Paths (§4.3).**  The server may have several addresses (a name, or a comma-separated
  list); the ``Connector`` races them by Happy Eyeballs over DTLS and TLS, caches the outcome
  (SC-009), uses the 100 ms Connection Attempt Delay while mitigating (SC-011) and resumes
  (D)TLS sessions (SC-012).  When the session does not run over the most preferred path, the
  better paths are probed in idle time every ``probe_interval`` (>= 5 min, SC-010) and the
  session migrates to the first that answers.
* **Redirection (§4.6, :mod:`agent.client.redirect`).**  A 5.03 with 'redirected-signal'
  (to any request, to the connect-time ``GET /config`` or in a notification) moves the session
  to the alternate server -- its addresses without DNS, its name checked in its certificate
  -- re-sends the request (SC-136) and the still-active requests, and re-registers
  observations.  After the TTL the client returns to the provisioned server, except while
  mitigating (SC-134).  A redirection to a server used within 5 minutes is ignored and
  logged as a loop (SC-138/SC-139): the request fails with a 5.03 ``DotsError`` whose
  ``details["redirect-loop"]`` is set, for a caller such as ``FallbackClient`` to try the
  next provisioned server.
* **Observe.**  :meth:`DotsClient.watch` registers with ``Observe: 0`` and yields every
  notification; after a reconnection it registers again on the new session.
* **Configuration freshness.**  A non-zero Max-Age on a config answer schedules a re-GET of
  the configuration before it expires, except while mitigations are active (SC-129, SC-130).

Example::

    from agent.client import DotsClient
    from agent.transports.credentials import Credentials

    creds = Credentials.from_pki_dir("pki", "client")
    async with DotsClient("dots.example.net", creds, transport="auto", state="state.json") as c:
        result = await c.mitigate(target_prefixes=["192.0.2.0/24"], ports=[80, (1000, 2000)],
                                  protocols=[6], lifetime=3600)
        print(result.mid, result.code, result.lifetime)
        async for update in c.watch(result.mid):
            print(update.scopes[0]["status"])
            if update.final or update.scopes[0]["status"] == "attack-successfully-mitigated":
                break
        await c.withdraw(result.mid)
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiocoap
from aiocoap import error as coap_error
from aiocoap import numbers as coap
from aiocoap.optiontypes import BlockOption
from aiocoap.resource import Resource, Site

from agent.aio import cancel_and_wait
from agent.codec import CodecError, Direction, Message, MessageType, decode_cbor
from agent.codec import cbor as codec_cbor
from agent.codec.messages import from_members
from agent.numbers import rfc9132
from agent.pki import certificate_cuid
from agent.protocol.client_pacing import GiveUp, NonPacer, NonRequest
from agent.protocol.session import (
    CancelParallelSession,
    Liveness,
    Phase,
    Reconnect,
    Role,
    SendHeartbeat,
    SessionConfig,
    SessionLost,
)
from agent.transports.credentials import Credentials
from agent.tuning import tuning

from .connection import Connection, Connector, DotsConnectionError, ServerSpec, parse_servers
from .redirect import Redirection, RedirectMemory
from .results import (
    CONFIG_NAMES,
    DECIMAL_ATTRS,
    ConfigResult,
    ConflictInformation,
    DotsError,
    MitigationResult,
    StatusUpdate,
    session_config_from,
)
from .split import MessageLimit, RequestTooLargeError, coap_request_size, split_scope
from .state import ClientState

log = logging.getLogger("dots.client")
CF = rfc9132.CONTENT_FORMAT_DOTS_CBOR
ATTACK_STATUSES = ("under-attack", "attack-successfully-mitigated")
MAX_REDIRECT_HOPS = 4
Port = int | tuple[int, int]


def _code(msg: aiocoap.Message) -> str:
    return str(msg.code.dotted)


def _diagnostic(msg: aiocoap.Message) -> str:
    if msg.opt.content_format == CF:
        return ""
    return msg.payload.decode("utf-8", "replace").strip()


def _members(msg: aiocoap.Message) -> dict[str, Any]:
    """RFC 7951 members of a dots+cbor payload ({} when there is none).

    Validated through the codec; a body the YANG validation refuses (e.g. the partial scope
    of a 4.09 answer) is still read through the codec's CBOR-to-JSON mapping.
    """
    if not msg.payload or msg.opt.content_format != CF:
        return {}
    try:
        return decode_cbor(msg.payload, Direction.RESPONSE).members()
    except CodecError as exc:
        log.debug("response body does not validate (%s); reading it without YANG checks", exc)
        try:
            obj = codec_cbor.loads(msg.payload)
            for mtype in MessageType:
                if isinstance(obj, dict) and mtype.key in obj:
                    return codec_cbor.map_to_json(obj[mtype.key], f"/{mtype.value[1]}")
        except CodecError:
            pass
        raise DotsError(_code(msg), f"undecodable response body: {exc}") from None


def _raise_for(msg: aiocoap.Message) -> None:
    if msg.code.is_successful():
        return
    members = _members(msg) if msg.opt.content_format == CF else {}
    conflict = None
    for scope in members.get("scope", []):
        conflict = ConflictInformation.from_members(scope.get("conflict-information")) or conflict
    diagnostic = _diagnostic(msg) or (conflict.describe() if conflict else "")
    raise DotsError(_code(msg), diagnostic, conflict=conflict, max_age=msg.opt.max_age)


def _scope_message(scope: dict[str, Any]) -> bytes:
    """A one-scope mitigation request through the codec (checks it like the server will)."""
    return from_members(MessageType.MITIGATION, {"scope": [scope]}, Direction.REQUEST).to_cbor()


def build_scope(target_prefixes: Iterable[str] = (), ports: Iterable[Port] = (), protocols: Iterable[int] = (),
                fqdns: Iterable[str] = (), uris: Iterable[str] = (), aliases: Iterable[str] = (),
                lifetime: int | None = rfc9132.DEFAULT_LIFETIME,
                trigger_mitigation: bool | None = None) -> dict[str, Any]:
    """RFC 7951 members of one request scope, built through the typed objects."""
    msg = Message.new(MessageType.MITIGATION)
    s = msg.signal.scope[msg.signal.scope.add()]

    def put(what: str, value: Any, add: Callable[[Any], Any]) -> None:
        # the typed objects' own messages name pyangbind internals: say what was wrong instead
        try:
            add(value)
        except (ValueError, TypeError, KeyError, OverflowError):
            raise ValueError(f"invalid {what} {str(value)!r}") from None

    for p in target_prefixes:
        put("prefix", str(p), s.target_prefix.append)
    for port in ports:
        lo, hi = (port, port) if isinstance(port, int) else port
        if not (0 <= int(lo) <= int(hi) <= 65535):
            raise ValueError(f"invalid port range {lo}-{hi}")
        entry = s.target_port_range.add(int(lo))
        if hi != lo:
            entry._set_upper_port(int(hi))
    for proto in protocols:
        put("protocol number", proto, lambda v: s.target_protocol.append(int(v)))
    for f in fqdns:
        put("FQDN", f, s.target_fqdn.append)
    for u in uris:
        put("URI", u, s.target_uri.append)
    for a in aliases:
        put("alias name", a, s.alias_name.append)
    if lifetime is not None:
        put("lifetime", lifetime, lambda v: s._set_lifetime(int(v)))
    if trigger_mitigation is not None:
        s._set_trigger_mitigation(bool(trigger_mitigation))
    scope: dict[str, Any] = msg.members()["scope"][0]
    if not any(k in scope for k in ("target-prefix", "target-fqdn", "target-uri", "alias-name")):
        raise ValueError("a mitigation request needs at least one target prefix, FQDN, URI or alias")
    return scope


class _HeartbeatResource(Resource):
    """``/.well-known/dots/hb`` on the client side: the server's heartbeats (§4.7), answered 2.04."""

    def __init__(self, on_heartbeat: Callable[[bool], None]) -> None:
        super().__init__()
        self.on_heartbeat = on_heartbeat

    async def render_put(self, request: aiocoap.Message) -> aiocoap.Message:
        if request.opt.content_format != CF:
            return aiocoap.Message(code=coap.UNSUPPORTED_CONTENT_FORMAT, payload=b"application/dots+cbor expected")
        try:
            msg = decode_cbor(request.payload, Direction.REQUEST, expect=MessageType.HEARTBEAT)
        except CodecError as exc:
            return aiocoap.Message(code=coap.BAD_REQUEST, payload=str(exc).encode()[:256])
        self.on_heartbeat(bool(msg.members().get("peer-hb-status")))
        return aiocoap.Message(code=coap.CHANGED)


class _Backoff:
    """``ReconnectBackoff`` timing, optionally compressed for tests (see ``reconnect_min_interval``)."""

    def __init__(self, min_interval: float) -> None:
        from agent.protocol.session import ReconnectBackoff

        self.min_interval = min_interval
        self.scale = min(1.0, min_interval / rfc9132.RECONNECT_MIN_INTERVAL)
        self.backoff = ReconnectBackoff(min_interval=max(min_interval, rfc9132.RECONNECT_MIN_INTERVAL))

    def failed(self) -> float:
        return self.backoff.failed(random.random() * 0.25) * self.scale

    def succeeded(self) -> None:
        self.backoff.succeeded()


class DotsClient:
    """An RFC 9132 DOTS client bound to one server (see the module docstring).

    ``server``: ``"host"``, ``"host:port"``, ``"[v6]:port"`` or ``(host, port)`` (port 4646 by
    default), or several of them (a comma-separated string or a list: the addresses of one
    server, raced by Happy Eyeballs).  ``transport``: ``"tls"``, ``"dtls"`` or ``"auto"``
    (race both, §4.3).  ``state``: a :class:`ClientState`, a path to its JSON file, or None
    (memory only).  ``request_timeout``: seconds a request is repeated before
    :class:`DotsConnectionError`.  ``reconnect_min_interval``: minimum seconds between session
    re-establishment attempts; RFC 9132 requires >= 60 (SC-144), smaller values are for tests
    only.  ``probe_interval``: seconds between probes of better paths (SC-010: >= 300, 24 h
    recommended; smaller values are for tests only).  ``attempt_delay``: Connection Attempt
    Delay outside an attack (100 ms during one, SC-011).  ``follow_redirects``: move to the
    alternate server on a 5.03 redirection (§4.6).  ``redirect_memory``: shared with other
    clients of the same deployment so loops across them are detected too.  ``under_attack``:
    the client is used because of an attack (e.g. ``dots client mitigate``): connection
    attempts use the 100 ms delay from the start (SC-011), not only once a request is active.
    ``pmtu``: the path MTU requests must fit over DTLS (§7.3).  ``tls_max_message``: the
    largest request message over TLS (None: no limit).  ``parallel_promote_after``: further
    unanswered heartbeats on a saturated session after which a working parallel session
    replaces it (None: missing-hb-allowed; see "Link saturation" in the module docstring).
    """

    def __init__(self, server: ServerSpec, credentials: Credentials, transport: str = "auto", *,
                 state: ClientState | str | Path | None = None, heartbeats: bool = True,
                 request_timeout: float = 60.0, connect_timeout: float = 10.0,
                 auto_dtls_timeout: float = 3.0,
                 reconnect_min_interval: float = rfc9132.RECONNECT_MIN_INTERVAL,
                 probe_interval: float = 86400.0, attempt_delay: float | None = None,
                 follow_redirects: bool = True, redirect_memory: RedirectMemory | None = None,
                 under_attack: bool = False, pmtu: int = rfc9132.DEFAULT_PMTU,
                 tls_max_message: int | None = None, parallel_promote_after: int | None = None) -> None:
        endpoints = parse_servers(server)
        self.host, self.port = endpoints[0]
        self.endpoints = endpoints
        self.credentials = credentials
        self.cuid = certificate_cuid(credentials.cert)
        self.state = state if isinstance(state, ClientState) else ClientState(state)
        # SC-092: a request deactivated by a conflict is not sent again before its retry-timer
        self._held: dict[str, float] = {}  # scope key -> monotonic time before which it is held
        self.heartbeats = heartbeats
        self.request_timeout = request_timeout
        self.reconnect_min_interval = reconnect_min_interval
        self.transport_choice = transport
        self.under_attack = under_attack  # the caller signals an attack: 100 ms attempt delay (SC-011)
        self.connect_timeout = connect_timeout
        self.probe_interval = probe_interval
        self.follow_redirects = follow_redirects
        self._he_kw: dict[str, Any] = {} if attempt_delay is None else {"attempt_delay": attempt_delay}
        self._provisioned = Connector(self.host, self.port, credentials, transport, endpoints=endpoints,
                                      connect_timeout=connect_timeout, auto_dtls_timeout=auto_dtls_timeout,
                                      **self._he_kw)
        self._connector = self._provisioned
        self.redirection: Redirection | None = None
        self.redirects = redirect_memory if redirect_memory is not None else RedirectMemory()
        self._probe_at: float | None = None
        self._switch_to: Connector | None = None  # a planned move (redirect TTL expiry): no back-off
        self._redirect_lock = asyncio.Lock()
        self._site = Site()
        self._site.add_resource([*rfc9132.WELL_KNOWN, rfc9132.PATH_HEARTBEAT],
                                _HeartbeatResource(self._peer_heartbeat))
        self._conn: Connection | None = None
        self._connected = asyncio.Event()
        self._wake = asyncio.Event()
        # §4.7 link saturation: a second session opened while the current one is silent
        self._parallel: Connection | None = None
        self._parallel_task: asyncio.Task[None] | None = None
        self._parallel_pacer = NonPacer()
        self._parallel_since = 0.0
        self._parallel_ok_at: float | None = None  # last answer received on the parallel session
        self._hb_since_parallel = 0  # heartbeats sent on the silent session since the parallel one opened
        self.parallel_promote_after = parallel_promote_after
        self.parallel_opened = 0
        self.parallel_dropped = 0
        self.parallel_promoted = 0
        # §7.3: the largest request message (DTLS: from the PMTU; TLS: unlimited unless configured)
        self.pmtu = pmtu
        self.tls_max_message = tls_max_message
        self._mid_lock = asyncio.Lock()
        self.recreated_after_rollover: list[tuple[int, int]] = []  # (old mid, new mid), SC-033
        self._lost_reason: str | None = None
        self._closing = False
        self._generation = 0
        self._last_attempt = 0.0
        self._backoff = _Backoff(reconnect_min_interval)
        self._pacer = NonPacer()
        self.session_config = SessionConfig()
        self.liveness: Liveness | None = None
        self._config_refresh_at: float | None = None
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._mid_synced = False
        self._sid_negotiated = False
        self.heartbeats_sent = 0
        self.heartbeats_answered = 0
        self.heartbeats_received = 0

    # -- lifecycle --------------------------------------------------------------------
    async def __aenter__(self) -> DotsClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def transport(self) -> str | None:
        """The transport of the current session ("tls"/"dtls"), None while disconnected."""
        return self._conn.transport if self._conn is not None else None

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def generation(self) -> int:
        """Incremented on every (re-)established session."""
        return self._generation

    async def connect(self) -> None:
        """Establish the first session (raises :class:`DotsConnectionError`, or a 5.03
        :class:`DotsError` for a redirection that cannot be followed)."""
        self._last_attempt = time.monotonic()
        conn = await self._connector.connect(self._site, self._tx_config(), under_attack=self._attacked())
        conn = await self._follow_probe(conn)
        self._install(conn)
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="DOTS client session")

    @property
    def server(self) -> str:
        """The server the session runs to (the alternate one while redirected)."""
        return self._connector.name if self.redirection is None else self.redirection.alt_server

    def report(self) -> dict[str, Any]:
        """Where the client stands, as plain data (for status output and monitoring)."""
        conn = self._conn
        now = time.monotonic()
        return {
            "server": self.server,
            "provisioned": self._provisioned.name,
            "connected": conn is not None and self._lost_reason is None,
            "transport": conn.transport if conn else None,
            "path": str(conn.candidate) if conn else None,
            "address": conn.host if conn else None,
            "resumed": conn.resumed if conn else None,
            "generation": self._generation,
            "redirect": self.redirection.to_json(now) if self.redirection else None,
            "redirect-loops": len(self.redirects.loops),
            "happy-eyeballs": self._connector.report(),
            "next-probe-in": round(self._probe_at - now, 1) if self._probe_at is not None else None,
            "heartbeats": {"sent": self.heartbeats_sent, "answered": self.heartbeats_answered,
                           "received": self.heartbeats_received},
            "phase": self.liveness.phase.value if self.liveness else None,
            "parallel": {"path": str(self._parallel.candidate) if self._parallel else None,
                         "opened": self.parallel_opened, "dropped": self.parallel_dropped,
                         "promoted": self.parallel_promoted},
        }

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        await cancel_and_wait([self._runner, *self._tasks])
        if self._parallel is not None:
            await self._parallel.close()
            self._parallel = None
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
        self._connected.clear()

    def _tx_config(self) -> Any:
        return self.session_config.for_activity(self._mitigating())

    def _mitigating(self) -> bool:
        return bool(self.state.active(self.cuid))

    def _attacked(self) -> bool:
        """Connection attempts are made during an attack (SC-011)."""
        return self.under_attack or self._mitigating()

    def _install(self, conn: Connection) -> None:
        if self._parallel is not None and self._parallel is not conn:  # it belonged to the old session
            self._drop_parallel("the session was replaced")
        self._parallel = None
        self._conn = conn
        self._generation += 1
        now = time.monotonic()
        if conn.probe.code.is_successful():
            self.session_config = session_config_from(_members(conn.probe))
            self._schedule_config_refresh(conn.probe)
        if conn.probe_rtt < float(self._tx_config().ack_timeout):  # sent once: a valid RTT sample
            self._pacer.rtt.sample(conn.probe_rtt)
        self.liveness = Liveness(Role.CLIENT, self.session_config, now, reliable=conn.reliable,
                                 mitigating=self._mitigating(), send_heartbeats=self.heartbeats)
        self._mark_used(conn)
        # SC-010: a session not on the path §4.3 prefers most is probed for better ones later
        better = any(c.rank < conn.candidate.rank for c in self._connector.candidates)
        self._probe_at = now + self.probe_interval if better else None
        self._connected.set()
        self._wake.set()

    def _mark_used(self, conn: Connection) -> None:
        """SC-138: remember that we communicated with this server (all its names)."""
        names = [conn.host, *(h for h, _ in self._connector.endpoints)]
        if self.redirection is not None and self._connector is not self._provisioned:
            names.append(self.redirection.alt_server)
        self.redirects.used(names)

    def _schedule_config_refresh(self, response: aiocoap.Message) -> None:
        max_age = response.opt.max_age
        if max_age is None:
            max_age = rfc9132.DEFAULT_CONFIG_MAX_AGE
        # SC-129: re-GET before it expires (a little before: 90 %); 0 means "this answer only"
        self._config_refresh_at = time.monotonic() + 0.9 * max_age if max_age > 0 else None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- background: heartbeats, loss, reconnection, config refresh --------------------
    async def _run(self) -> None:
        while not self._closing:
            if self._conn is None or self._lost_reason is not None:
                await self._reestablish(self._lost_reason or "no session")
                continue
            red_at = self.redirection.expires_at if self.redirection is not None else None
            deadlines = [d for d in (self.liveness.next_deadline() if self.liveness and self.heartbeats else None,
                                     self._config_refresh_at, self._probe_at,
                                     red_at if red_at is not None and not math.isinf(red_at) else None)
                         if d is not None]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
            self._wake.clear()
            if self._closing or self._lost_reason is not None or self._conn is None:
                continue
            now = time.monotonic()
            if self._config_refresh_at is not None and now >= self._config_refresh_at:
                self._config_refresh_at = None
                if not self._mitigating():  # SC-130: no refresh while an attack is being mitigated
                    self._spawn(self._refresh_config())
            if self.redirection is not None and self.redirection.expired(now):
                if not self._mitigating():  # SC-134: back to the provisioned server, not during an attack
                    log.info("redirection to %s expired: back to %s", self.redirection.alt_server,
                             self._provisioned.name)
                    self._switch_to = self._provisioned
                    self.redirects.forget([*self.redirection.identities, *(h for h, _ in self._connector.endpoints)])
                    self._session_broken(self._conn, "redirection TTL expired")
                    continue
            if self._probe_at is not None and now >= self._probe_at:
                self._probe_at = now + self.probe_interval
                if not self._mitigating():  # SC-010: probe in idle time only
                    self._spawn(self._probe_better(self._conn))
            if self.liveness is not None and self.heartbeats:
                self._effects(self.liveness.tick(now))

    def _effects(self, effects: Iterable[Any]) -> None:
        for effect in effects:
            if isinstance(effect, SendHeartbeat):
                if self.liveness is not None and self._saturation_heartbeat(self.liveness):
                    continue
                self._spawn(self._send_heartbeat(effect.peer_hb_status, self._conn))
            elif isinstance(effect, SessionLost):
                self._session_broken(self._conn, effect.reason)
            elif isinstance(effect, Reconnect) and effect.parallel:
                log.warning("heartbeats unanswered while mitigating (link saturation?): keeping the session "
                            "and its heartbeats (SC-146, SC-147), opening a parallel session (SC-148)")
                self._start_parallel()
            elif isinstance(effect, CancelParallelSession):
                if self._parallel is not None or self._parallel_task is not None:
                    log.info("the saturated session answers again: the parallel session is closed (§4.7)")
                self._drop_parallel("the saturated session answers again")

    # -- link saturation (§4.7): a parallel session ---------------------------------------
    def _start_parallel(self) -> None:
        """SC-148: try to establish a new session while keeping the silent one."""
        if self._parallel is not None or (self._parallel_task is not None and not self._parallel_task.done()):
            return
        if self._conn is None or self.liveness is None:
            return
        task = asyncio.get_running_loop().create_task(self._open_parallel(self._conn, self.liveness),
                                                      name="DOTS parallel session")
        self._parallel_task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _parallel_wanted(self, base: Connection, liveness: Liveness) -> bool:
        return (not self._closing and base is self._conn and liveness is self.liveness
                and liveness.parallel_attempt and liveness.phase is Phase.DEGRADED)

    async def _open_parallel(self, base: Connection, liveness: Liveness) -> None:
        """Establish the parallel session (paced like any re-establishment, SC-144), as long as
        the current session stays silent; the first one that answers its ``GET /config`` wins."""
        delay = 0.0
        while self._parallel_wanted(base, liveness):
            wait = max(delay, self._last_attempt + self.reconnect_min_interval - time.monotonic())
            if wait > 0:
                await asyncio.sleep(wait)
                if not self._parallel_wanted(base, liveness):
                    return
            self._last_attempt = time.monotonic()
            try:
                conn = await self._connector.connect(self._site, self._tx_config(), under_attack=True)
            except DotsConnectionError as exc:
                delay = self._backoff.failed()
                log.info("parallel session not established (%s); next attempt in %.0f s", exc, delay)
                continue
            if not self._parallel_wanted(base, liveness) or not conn.probe.code.is_successful():
                if not conn.probe.code.is_successful():  # e.g. a redirection: not followed for a parallel session
                    log.info("parallel session answered %s; not used", _code(conn.probe))
                await conn.close()
                return
            self._backoff.succeeded()
            self._parallel = conn
            self._parallel_pacer = NonPacer()
            if conn.probe_rtt < float(self._tx_config().ack_timeout):
                self._parallel_pacer.rtt.sample(conn.probe_rtt)
            self._parallel_since = time.monotonic()
            self._parallel_ok_at = None  # set by its first answered heartbeat or request
            self._hb_since_parallel = 0
            self.parallel_opened += 1
            log.warning("parallel signal channel session over %s: mitigation requests go over both (SC-149)",
                        conn.candidate)
            return

    def _drop_parallel(self, reason: str) -> None:
        """Stop using (or trying to open) the parallel session."""
        task, self._parallel_task = self._parallel_task, None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        par, self._parallel = self._parallel, None
        if par is not None:
            self.parallel_dropped += 1
            log.debug("parallel session over %s closed: %s", par.candidate, reason)
            self._spawn(par.close())

    def _promote_parallel(self, reason: str) -> None:
        """The parallel session works and the old one stays silent: it becomes the session."""
        par, old = self._parallel, self._conn
        if par is None:
            return
        log.warning("signal channel moves to the parallel session over %s: %s", par.candidate, reason)
        self._parallel = None
        self.parallel_promoted += 1
        self._install(par)
        if old is not None:
            self._spawn(old.close())

    def _saturation_heartbeat(self, liveness: Liveness) -> bool:
        """A heartbeat is due on the silent session while a parallel one exists: promote the
        parallel session if the old one stayed silent long enough, else heartbeat both.
        Returns True when the session was promoted (the due heartbeat is then not sent)."""
        par = self._parallel
        if liveness is not self.liveness:
            return False
        if par is None:
            if liveness.phase is Phase.DEGRADED and liveness.parallel_attempt:
                self._start_parallel()  # the attempt failed or the parallel session was lost: again
            return False
        needed = self.parallel_promote_after or liveness.threshold
        now = time.monotonic()
        recent = (needed + 1) * max(1.0, float(liveness.config.heartbeat_interval))
        if (self._hb_since_parallel >= needed and self._parallel_ok_at is not None
                and now - self._parallel_ok_at <= recent):
            self._promote_parallel(f"{self._hb_since_parallel} heartbeats unanswered on the old session "
                                   "while the parallel one answers")
            return True
        self._hb_since_parallel += 1
        self._spawn(self._send_heartbeat(liveness.peer_hb_status(now), par, parallel=True))
        return False

    async def _send_heartbeat(self, status: bool, conn: Connection | None, *, parallel: bool = False) -> None:
        if conn is None or self.liveness is None:
            return
        msg = Message.new(MessageType.HEARTBEAT)
        msg.signal._set_peer_hb_status(status)
        request = aiocoap.Message(code=coap.PUT, uri=conn.uri(rfc9132.PATH_HEARTBEAT), payload=msg.to_cbor(),
                                  content_format=CF, transport_tuning=tuning(self._tx_config(), False))
        self.heartbeats_sent += 1
        liveness = self.liveness
        try:
            response = await asyncio.wait_for(conn.context.request(request).response,
                                              max(1.0, float(liveness.config.heartbeat_interval)))
        except (TimeoutError, coap_error.Error, OSError) as exc:
            log.debug("heartbeat unanswered: %s", exc)
            return
        if parallel:
            if response.code == coap.CHANGED and conn is self._parallel:
                self._parallel_ok_at = time.monotonic()
            return
        if response.code == coap.CHANGED and liveness is self.liveness:
            self.heartbeats_answered += 1
            self._effects(liveness.heartbeat_response(time.monotonic()))

    def _peer_heartbeat(self, peer_hb_status: bool) -> None:
        self.heartbeats_received += 1
        if self.liveness is not None:
            self._effects(self.liveness.heartbeat_received(peer_hb_status, time.monotonic()))

    def _traffic(self, conn: Connection) -> None:
        if conn is self._conn and self.liveness is not None:
            self._effects(self.liveness.any_traffic(time.monotonic()))

    def _session_broken(self, conn: Connection | None, reason: str) -> None:
        if conn is not None and conn is self._conn and self._lost_reason is None and not self._closing:
            log.warning("signal channel session lost: %s", reason)
            self._lost_reason = reason
            self._connected.clear()
            self._wake.set()

    async def _reestablish(self, reason: str) -> None:
        par = self._parallel
        if par is not None and self._switch_to is None:  # the parallel session (§4.7) takes over
            self._lost_reason = None
            self._promote_parallel(f"the old session failed ({reason})")
            return
        old, self._conn = self._conn, None
        self._lost_reason = None
        self._connected.clear()
        if old is not None:
            await old.close()
        planned = self._switch_to
        planned_move = planned is not None
        if planned is not None:  # a move, not a failure: no back-off for the first attempt
            self._switch_to = None
            self._connector, self.redirection = planned, None
        delay = 0.0
        while not self._closing:
            # SC-144: never closer than the minimum interval to the previous attempt
            wait = max(delay, self._last_attempt + self.reconnect_min_interval - time.monotonic())
            if planned is not None:
                wait, planned = 0.0, None
            if wait > 0:
                log.info("re-establishing the signal channel in %.1f s (%s)", wait, reason)
                await asyncio.sleep(wait)
            self._last_attempt = time.monotonic()
            before = self._connector
            try:
                conn = await self._connector.connect(self._site, self._tx_config(), under_attack=self._attacked())
                conn = await self._follow_probe(conn)
            except DotsConnectionError as exc:
                delay = self._backoff.failed()
                reason = str(exc)
                if self.redirection is not None and self.redirection.expired():
                    # SC-134: an expired alternate that is unreachable: the provisioned server again
                    self._connector, self.redirection = self._provisioned, None
                continue
            self._backoff.succeeded()
            self._install(conn)
            if self._connector is not before or planned_move:  # another server: tell it what is active
                self._spawn(self._replay_active(None))
            return

    # -- redirection (§4.6) and path probing (§4.3) -------------------------------------
    def _alternate(self, red: Redirection) -> Connector:
        """A Connector for the alternate server: its records without DNS, its name in its certificate."""
        endpoints = [(a, self.port) for a in red.records] or [(red.alt_server, self.port)]
        creds = dataclasses.replace(self.credentials, server_hostname=red.alt_server)
        return Connector(endpoints[0][0], self.port, creds, self.transport_choice, endpoints=endpoints,
                         connect_timeout=self.connect_timeout, **self._he_kw)

    async def _redirect_connect(self, red: Redirection) -> Connection:
        """A session to the alternate server of *red* (SC-136), unless it is a loop (SC-138)."""
        target = self.redirects.loop(red)
        if target is not None:
            self.redirects.alert(red, target)
            log.error("DOTS redirect loop: %s redirects to %s, which this client used less than %.0f s ago; "
                      "ignoring the redirection (RFC 9132 §4.6)", red.from_server, target, self.redirects.window)
            raise DotsError("5.03", f"redirect loop: {red.from_server} redirects to {red.alt_server}, "
                            "used within the last 5 minutes", max_age=None,
                            details={"redirect": red.to_json(), "redirect-loop": target})
        connector = self._alternate(red)
        try:
            conn = await connector.connect(self._site, self._tx_config(), under_attack=self._attacked())
        except DotsConnectionError as exc:
            raise DotsError("5.03", f"redirected to {red.alt_server}, which is unreachable: {exc}",
                            details={"redirect": red.to_json()}) from None
        log.warning("redirected by %s to %s (%s), TTL %s s", red.from_server, red.alt_server, conn.candidate,
                    "infinite" if math.isinf(red.ttl) else f"{red.ttl:.0f}")
        self._connector, self.redirection = connector, red
        return conn

    async def _follow_probe(self, conn: Connection) -> Connection:
        """The connect-time ``GET /config`` was answered with a redirection: follow it (bounded).

        A redirection that cannot be followed (loop, alternate unreachable) keeps *conn*: the
        requests sent on it will be answered 5.03 and fail (for a caller to go elsewhere).
        """
        for _ in range(MAX_REDIRECT_HOPS):
            red = Redirection.from_response(conn.probe, from_server=self.server)
            if red is None or not self.follow_redirects:
                return conn
            self._mark_used(conn)
            try:
                new = await self._redirect_connect(red)
            except DotsError as exc:
                log.warning("not following the redirection: %s", exc)
                return conn
            await conn.close()
            conn = new
        return conn

    async def _redirected(self, red: Redirection, conn: Connection, resend_mid: int | None) -> None:
        """A request on *conn* got a redirection: move the session and the active requests."""
        async with self._redirect_lock:
            if conn is not self._conn:  # another request moved the session already: just resend
                return
            new = await self._follow_probe(await self._redirect_connect(red))
            self._install(new)
            await conn.close()
        self._spawn(self._replay_active(resend_mid))

    async def _replay_active(self, skip: int | None) -> None:
        """Re-send the active requests on the new server (state sync between servers is not assumed)."""
        for stored in self.state.active(self.cuid):
            if stored.mid == skip:
                continue
            try:
                await self.refresh(stored.mid)
            except (DotsError, DotsConnectionError) as exc:
                log.warning("request %s not re-sent to %s: %s", stored.mid, self.server, exc)

    async def _probe_better(self, conn: Connection | None) -> None:
        """SC-010: try the paths §4.3 prefers to the current one; migrate to the first that answers."""
        if conn is None:
            return
        better = await self._connector.better_candidates(conn.candidate)
        if not better:
            self._probe_at = None
            return
        log.info("probing better paths than %s: %s", conn.candidate, ", ".join(map(str, better)))
        try:
            new = await self._connector.connect(self._site, self._tx_config(), candidates=better)
        except DotsConnectionError as exc:
            log.info("no better path yet: %s", exc)
            return
        if conn is not self._conn or self._closing or not new.probe.code.is_successful():
            await new.close()
            return
        log.info("signal channel migrates from %s to %s (SC-010)", conn.candidate, new.candidate)
        self._install(new)
        await conn.close()

    async def _refresh_config(self) -> None:
        try:
            await self.get_config(self.state.last_sid(self.cuid) if self._sid_negotiated else None)
        except (DotsError, DotsConnectionError) as exc:
            log.info("configuration refresh failed: %s", exc)

    # -- request machinery ------------------------------------------------------------
    async def _wait_connected(self, deadline: float) -> Connection:
        while self._conn is None or self._lost_reason is not None:
            if self._closing:
                raise DotsConnectionError("client closed")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DotsConnectionError(f"no signal channel session to {self.host}:{self.port}")
            try:
                await asyncio.wait_for(self._connected.wait(), remaining)
            except TimeoutError:
                pass
        return self._conn

    async def _request(self, method: coap.Code, *segments: str, payload: bytes | None = None,
                       query: Sequence[str] = (), if_match: bool = False, confirmable: bool = False,
                       observe: bool = False, timeout: float | None = None, blockwise: bool = True,
                       block2: Any = None, etag: bytes | None = None
                       ) -> tuple[aiocoap.Message, Any]:
        """Send until answered; returns (response, aiocoap request).  Transport failures
        re-establish the session and retry until *timeout*; then DotsConnectionError."""
        deadline = time.monotonic() + (self.request_timeout if timeout is None else timeout)
        while True:
            conn = await self._wait_connected(deadline)

            def make(conn: Connection) -> aiocoap.Message:
                msg = aiocoap.Message(code=method, uri=conn.uri(*segments),
                                      transport_tuning=tuning(self._tx_config(), confirmable))
                if query:
                    msg.opt.uri_query = tuple(query)
                if payload is not None:
                    msg.payload = payload
                    msg.opt.content_format = CF
                if if_match:
                    msg.opt.if_match = [b""]
                if observe:
                    msg.opt.observe = 0
                if block2 is not None:
                    msg.opt.block2 = block2
                if etag is not None:
                    msg.opt.etags = [etag]
                return msg

            par = self._parallel
            # SC-149: mitigation requests go over the silent session *and* the parallel one
            dual = par is not None and par is not conn and segments[:1] == (rfc9132.PATH_MITIGATE,) and not observe
            try:
                if dual and par is not None:
                    result, answered = await self._both(conn, par, make, deadline, blockwise, confirmable)
                else:
                    result, answered = await self._exchange(conn, make, deadline, blockwise, confirmable), conn
            except _Broken as exc:
                self._session_broken(conn, exc.reason)
                continue
            self._traffic(answered)  # only counts for the current session
            if answered is self._parallel:
                self._parallel_ok_at = time.monotonic()
            red = Redirection.from_response(result[0], from_server=self.server) if self.follow_redirects else None
            if red is not None:  # SC-136: the request failed; re-send it to the alternate server
                mid = next((int(x[4:]) for x in segments if x.startswith("mid=")), None)
                await self._redirected(red, conn, mid if method == coap.PUT else None)
                continue
            return result

    async def _exchange(self, conn: Connection, make: Callable[[Connection], aiocoap.Message], deadline: float,
                        blockwise: bool, confirmable: bool) -> tuple[aiocoap.Message, Any]:
        """One request on *conn*: sent once (TLS, CON) or repeated until answered (NON)."""
        if conn.reliable or confirmable:
            return await self._once(conn, lambda: make(conn), deadline, blockwise)
        pacer = self._parallel_pacer if conn is self._parallel else self._pacer
        return await self._non(conn, lambda: make(conn), deadline, blockwise, pacer=pacer)

    async def _both(self, conn: Connection, par: Connection, make: Callable[[Connection], aiocoap.Message],
                    deadline: float, blockwise: bool, confirmable: bool
                    ) -> tuple[tuple[aiocoap.Message, Any], Connection]:
        """SC-149: the same request over the current and the parallel session; the first answer
        wins and the other copy stops.  Raises what the current session's copy raised when
        neither answers (a failure of the parallel copy only drops the parallel session)."""
        tasks = {asyncio.ensure_future(self._exchange(c, make, deadline, blockwise, confirmable)): c
                 for c in (conn, par)}
        failure: BaseException | None = None
        try:
            while tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    c = tasks.pop(task)
                    exc = task.exception()
                    if exc is None:
                        return task.result(), c
                    if c is par:
                        log.info("request on the parallel session failed: %s", exc)
                        if isinstance(exc, _Broken) and par is self._parallel:
                            self._drop_parallel(f"it failed: {exc}")
                    else:
                        failure = exc
                        if isinstance(exc, _Broken):  # the parallel session may take over (_reestablish)
                            self._session_broken(conn, exc.reason)
            assert failure is not None
            raise failure
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _once(self, conn: Connection, make: Callable[[], aiocoap.Message], deadline: float,
                    blockwise: bool = True) -> tuple[aiocoap.Message, Any]:
        req = conn.context.request(make(), handle_blockwise=blockwise)
        try:
            response = await asyncio.wait_for(asyncio.shield(req.response), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            req.response.cancel()
            raise DotsConnectionError(f"no answer from {self.host}:{self.port}") from None
        except (coap_error.Error, OSError) as exc:
            raise _Broken(str(exc) or type(exc).__name__) from None
        return response, req

    async def _non(self, conn: Connection, make: Callable[[], aiocoap.Message], deadline: float,
                   blockwise: bool = True, *, pacer: NonPacer | None = None) -> tuple[aiocoap.Message, Any]:
        nr = NonRequest(pacer or self._pacer, time.monotonic(), deadline=deadline)
        pending: list[Any] = []
        try:
            while True:
                now = time.monotonic()
                step = nr.next_send(now)
                send_at = deadline if isinstance(step, GiveUp) else step.at
                if isinstance(step, GiveUp) and not pending or now >= deadline:
                    raise DotsConnectionError(f"no answer from {self.host}:{self.port} "
                                              f"after {len(nr.sends)} transmission(s)")
                if send_at > now:
                    if pending:
                        done, _ = await asyncio.wait([r.response for r in pending], timeout=send_at - now,
                                                     return_when=asyncio.FIRST_COMPLETED)
                        for req in [r for r in pending if r.response in done]:
                            pending.remove(req)
                            exc = req.response.exception()
                            if exc is None:
                                nr.response(time.monotonic())
                                return req.response.result(), req
                            if not pending:
                                raise _Broken(str(exc) or type(exc).__name__)
                        continue
                    await asyncio.sleep(send_at - now)
                    continue
                if isinstance(step, GiveUp):
                    continue
                pending.append(conn.context.request(make(), handle_blockwise=blockwise))
                nr.sent(time.monotonic())
        finally:
            for req in pending:
                req.response.cancel()
                if req.observation is not None and not req.observation.cancelled:
                    req.observation.cancel()

    # -- identifiers ----------------------------------------------------------------------
    async def _allocate_mid(self) -> int:
        if not self._mid_synced and self.state.last_mid(self.cuid) is None:
            # A fresh state: never reuse a mid the server still holds for this cuid.
            try:
                held = [int(s["mid"]) for s in await self.status() if "mid" in s]
            except DotsError:
                held = []
            if held:
                self.state.raise_mid_floor(self.cuid, max(held))
        self._mid_synced = True
        async with self._mid_lock:
            mid, rolled = self.state.allocate_mid_checked(self.cuid)
            if rolled:
                mid = await self._recreate_preconfigured(mid)
            return mid

    async def _recreate_preconfigured(self, first: int) -> int:
        """SC-033: 'mid' rolled over to *first* (0): recreate the preconfigured requests
        ('trigger-mitigation' false) with the mids restarting there; returns the next free mid.

        Each old request is withdrawn before its copy is created: the server would refuse a
        lower mid overlapping a higher one of the same client (§4.4.1, 4.09).  A request whose
        DELETE fails is kept under its old mid; one whose new PUT fails is lost (logged).
        """
        mid = first
        for stored in self.state.preconfigured(self.cuid):
            if stored.mid < first:
                continue
            log.info("mid rollover: recreating preconfigured request %s as mid %s (SC-033)", stored.mid, mid)
            try:
                await self.withdraw(stored.mid)
            except (DotsError, DotsConnectionError) as exc:
                log.error("mid rollover: preconfigured request %s not recreated (withdrawal failed: %s)",
                          stored.mid, exc)
                continue
            try:
                await self._put_scope(mid, dict(stored.scope))
                self.recreated_after_rollover.append((stored.mid, mid))
            except (DotsError, DotsConnectionError) as exc:
                log.error("mid rollover: preconfigured request %s withdrawn but its copy (mid %s) failed: %s",
                          stored.mid, mid, exc)
            mid = self.state.allocate_mid(self.cuid)  # a mid once sent is not reused
        return mid

    def _activity_changed(self) -> None:
        if self.liveness is not None and self.liveness.phase is not Phase.LOST:
            self._effects(self.liveness.set_activity(time.monotonic(), mitigating=self._mitigating()))

    # -- mitigation API ---------------------------------------------------------------------
    async def mitigate(self, target_prefixes: Iterable[str] = (), ports: Iterable[Port] = (),
                       protocols: Iterable[int] = (), fqdns: Iterable[str] = (), uris: Iterable[str] = (),
                       lifetime: int = rfc9132.DEFAULT_LIFETIME, trigger_mitigation: bool = True, *,
                       aliases: Iterable[str] = (), mid: int | None = None) -> MitigationResult:
        """Request mitigation (PUT mitigate/cuid/mid, §4.4.1); raises DotsError (e.g. 4.09 + conflict).

        A request too large for one message (§7.3, :meth:`message_limit`) is not sent:
        :class:`~agent.client.split.RequestTooLargeError` (its ``pieces`` says how many PUTs it
        needs) -- :meth:`mitigate_all` splits it (SC-170).
        """
        scope = build_scope(target_prefixes, ports, protocols, fqdns, uris, aliases, lifetime,
                            trigger_mitigation)
        if not self._fits(scope):
            pieces = len(split_scope(scope, self._fits))  # raises if even splitting cannot help
            raise RequestTooLargeError(f"the request does not fit one message within {self.message_limit().message} "
                                       f"bytes (RFC 9132 §7.3): it needs {pieces} PUTs; use mitigate_all()", pieces)
        if mid is None:
            mid = await self._allocate_mid()
        return await self._put_scope(mid, scope, created_ok=True)

    async def mitigate_all(self, target_prefixes: Iterable[str] = (), ports: Iterable[Port] = (),
                           protocols: Iterable[int] = (), fqdns: Iterable[str] = (), uris: Iterable[str] = (),
                           lifetime: int = rfc9132.DEFAULT_LIFETIME, trigger_mitigation: bool = True, *,
                           aliases: Iterable[str] = ()) -> list[MitigationResult]:
        """Request mitigation like :meth:`mitigate`, split into several PUTs with their own mids
        when it does not fit one message (SC-170, :mod:`agent.client.split`); one result per PUT,
        in order (a single one when no split is needed).

        The pieces are sent one after the other.  A failure raises that piece's error after the
        earlier pieces were created: a :class:`DotsError` then has ``details["created"]`` (their
        mids) and ``details["pieces"]``.
        """
        scope = build_scope(target_prefixes, ports, protocols, fqdns, uris, aliases, lifetime,
                            trigger_mitigation)
        pieces = split_scope(scope, self._fits)
        if len(pieces) > 1:
            log.info("request split into %d PUTs to fit %d-byte messages (RFC 9132 §7.3)", len(pieces),
                     self.message_limit().message)
        results: list[MitigationResult] = []
        for piece in pieces:
            mid = await self._allocate_mid()
            try:
                results.append(await self._put_scope(mid, piece, created_ok=True))
            except DotsError as exc:
                exc.details.update({"created": [r.mid for r in results], "pieces": len(pieces)})
                raise
        return results

    def message_limit(self) -> MessageLimit:
        """The largest request message (§7.3).  DTLS (also for ``transport="auto"``, since the
        session may run or move to DTLS): ``pmtu`` minus IPv6/UDP headers, the DTLS 1.2 record
        header and the AEAD expansion.  TLS: ``tls_max_message`` (default: no limit)."""
        limits = []
        if self.transport_choice in ("dtls", "auto"):
            limits.append(MessageLimit.for_dtls(self.pmtu))
        if self.tls_max_message is not None and self.transport_choice in ("tls", "auto"):
            limits.append(MessageLimit(self.tls_max_message, self.tls_max_message))
        if not limits:
            return MessageLimit.unlimited()
        return MessageLimit(min(x.message for x in limits), min(x.payload for x in limits))

    def _fits(self, scope: dict[str, Any]) -> bool:
        """Whether a PUT of *scope* fits :meth:`message_limit` -- checked for its largest form
        (the longest mid, an efficacy update's 'attack-status' and If-Match) so the renewals and
        efficacy updates of a request fit as well."""
        limit = self.message_limit()
        if limit.message >= MessageLimit.unlimited().message:
            return True
        payload = _scope_message({**scope, "attack-status": "attack-successfully-mitigated"})
        path = (*rfc9132.WELL_KNOWN, rfc9132.PATH_MITIGATE, f"cuid={self.cuid}", f"mid={2**32 - 1}")
        return (len(payload) <= limit.payload
                and coap_request_size(path, payload, if_match=True) <= limit.message)

    @staticmethod
    def _scope_key(scope: dict[str, Any]) -> str:
        """The identity of "the same mitigation request": its parameters apart from lifetime."""
        return json.dumps({k: v for k, v in scope.items() if k not in ("lifetime", "attack-status")},
                          sort_keys=True)

    def _hold(self, scope: dict[str, Any], conflict: ConflictInformation | None) -> None:
        if conflict is not None and conflict.retry_timer:
            self._held[self._scope_key(scope)] = time.monotonic() + conflict.retry_timer

    async def _put_scope(self, mid: int, scope: dict[str, Any], *, if_match: bool = False,
                         created_ok: bool = True) -> MitigationResult:
        key = self._scope_key(scope)
        until = self._held.get(key)
        if until is not None:
            wait = until - time.monotonic()
            if wait > 0:  # SC-092: not before the retry-timer of the conflict expires
                raise DotsError("4.09", f"held after a conflict: the retry-timer expires in {wait:.0f} s "
                                "(RFC 9132 §4.4.2.1); not sent", details={"retry-in": round(wait)})
            del self._held[key]
        payload = _scope_message(scope)
        response, _ = await self._request(coap.PUT, rfc9132.PATH_MITIGATE, f"cuid={self.cuid}", f"mid={mid}",
                                          payload=payload, if_match=if_match)
        try:
            _raise_for(response)
        except DotsError as exc:
            self._hold(scope, exc.conflict)
            raise
        members = _members(response)
        answer = (members.get("scope") or [{}])[0]
        lifetime = answer.get("lifetime")
        result = MitigationResult(mid, _code(response), int(lifetime) if lifetime is not None else None,
                                  ConflictInformation.from_members(answer.get("conflict-information")))
        if result.conflict is not None and result.conflict.conflict_status == "request-inactive-other-active":
            self._hold(scope, result.conflict)
        request = {k: v for k, v in scope.items() if k != "attack-status"}
        self.state.remember(self.cuid, mid, request,
                            result.lifetime if result.lifetime is not None else scope.get("lifetime"))
        self._activity_changed()
        return result

    def _stored_scope(self, mid: int) -> dict[str, Any]:
        stored = self.state.request(self.cuid, mid)
        if stored is None:
            raise ValueError(f"mid {mid} is unknown to this client's state: its parameters are needed to "
                             "repeat the request (RFC 9132 §4.4.3)")
        return dict(stored.scope)

    async def refresh(self, mid: int, lifetime: int | None = None) -> MitigationResult:
        """Lifetime renewal: the same PUT again (same mid and parameters, SC-073)."""
        scope = self._stored_scope(mid)
        if lifetime is not None:
            scope["lifetime"] = lifetime
        elif "lifetime" not in scope:
            scope["lifetime"] = rfc9132.DEFAULT_LIFETIME
        return await self._put_scope(mid, scope)

    async def efficacy_update(self, mid: int, attack_status: str, lifetime: int | None = None) -> MitigationResult:
        """Efficacy update (§4.4.3): PUT with an empty If-Match, the original parameters and
        'attack-status' ("under-attack" or "attack-successfully-mitigated")."""
        if attack_status not in ATTACK_STATUSES:
            raise ValueError(f"attack-status must be one of {', '.join(ATTACK_STATUSES)}")
        scope = self._stored_scope(mid)
        if lifetime is not None:
            scope["lifetime"] = lifetime
        scope["attack-status"] = attack_status
        return await self._put_scope(mid, scope, if_match=True)

    async def status(self, mid: int | None = None, content: str = "a") -> list[dict[str, Any]]:
        """GET the status of one request or of all of ours (§4.4.2).  [] when there is none
        (for ``mid=None``); a 4.04 for a given mid raises DotsError."""
        segments = [rfc9132.PATH_MITIGATE, f"cuid={self.cuid}"] + ([f"mid={mid}"] if mid is not None else [])
        query = [f"c={content}"] if content != "a" else []
        response, _ = await self._request(coap.GET, *segments, query=query, blockwise=False)
        if mid is None and response.code == coap.NOT_FOUND:
            return []
        _raise_for(response)
        response = await self._remaining_blocks(response, segments, query)
        return list(_members(response).get("scope", []))

    async def _remaining_blocks(self, first: aiocoap.Message, segments: Sequence[str], query: Sequence[str]
                                ) -> aiocoap.Message:
        """The rest of a Block2 answer (§4.4.2): GETs with NUM > 0 at the block size the server
        chose (SC-081), each repeating the ETag of block 0 (SC-083); the blocks must keep it."""
        b2 = first.opt.block2
        if b2 is None or not b2.more:
            return first
        if b2.block_number != 0:
            raise DotsError(_code(first), f"block-wise answer starts at block {b2.block_number}, not 0")
        etag = first.opt.etag
        payload = bytearray(first.payload)
        szx = b2.size_exponent
        while True:
            num = len(payload) // (1 << (szx + 4))
            response, _ = await self._request(coap.GET, *segments, query=query, blockwise=False,
                                              block2=BlockOption.BlockwiseTuple(num, False, szx), etag=etag)
            _raise_for(response)
            rb = response.opt.block2
            if rb is None:  # the server sent the whole representation this time
                return response
            if response.opt.etag != etag or rb.block_number != num:
                raise DotsError(_code(response), "the status changed during the block-wise transfer "
                                f"(block {rb.block_number}, ETag {response.opt.etag!r}); ask again")
            payload += response.payload
            if not rb.more:
                break
            szx = rb.size_exponent
        return first.copy(payload=bytes(payload), block2=None)

    async def withdraw(self, mid: int) -> str:
        """DELETE the request (§4.4.4); the server answers 2.02 even for an unknown mid."""
        response, _ = await self._request(coap.DELETE, rfc9132.PATH_MITIGATE, f"cuid={self.cuid}", f"mid={mid}")
        _raise_for(response)
        self.state.forget(self.cuid, mid)
        self._activity_changed()
        return _code(response)

    async def watch(self, mid: int | None = None, content: str = "a") -> AsyncIterator[StatusUpdate]:
        """Observe one request or all of ours (§4.4.2.1); re-registers after a reconnection.

        Yields the current state first, then each notification.  Ends after yielding a final
        update (e.g. 4.04 once the observed request is gone).  The first answer raises
        DotsError if it is an error (e.g. 4.04: nothing to observe).
        """
        segments = [rfc9132.PATH_MITIGATE, f"cuid={self.cuid}"] + ([f"mid={mid}"] if mid is not None else [])
        query = [f"c={content}"] if content != "a" else []
        first = True
        while not self._closing:
            generation = self.generation
            conn = self._conn
            try:
                response, req = await self._request(coap.GET, *segments, query=query, observe=True,
                                                    timeout=None if first else 365 * 86400.0)
            except DotsConnectionError:
                if self._closing:
                    return
                raise
            if first:
                _raise_for(response)
            elif not response.code.is_successful():
                yield StatusUpdate(_code(response), [], diagnostic=_diagnostic(response))
                return
            first = False
            yield StatusUpdate(_code(response), list(_members(response).get("scope", [])),
                               response.opt.observe)
            if req.observation is None:
                return
            try:
                async for note in req.observation:
                    if conn is not None:
                        self._traffic(conn)
                    red = Redirection.from_response(note, from_server=self.server) if self.follow_redirects else None
                    if red is not None and conn is not None:  # §4.6: a redirection in a notification
                        await self._redirected(red, conn, None)
                        break
                    update = StatusUpdate(_code(note), list(_members(note).get("scope", []))
                                          if note.code.is_successful() else [], note.opt.observe,
                                          _diagnostic(note))
                    yield update
                    if update.final:
                        return
            except (coap_error.Error, OSError) as exc:
                log.info("observation interrupted (%s); registering again", exc)
                if self.generation == generation:
                    self._session_broken(conn, f"observation failed: {exc}")
            finally:
                if not req.observation.cancelled:
                    req.observation.cancel()
            # the server ended the observation without a final error, or the session changed

    # -- session configuration API ------------------------------------------------------
    async def get_config(self, sid: int | None = None) -> ConfigResult:
        """GET /config (current values with min/max) or /config/sid=N (the negotiated ones)."""
        segments = [rfc9132.PATH_CONFIG] + ([f"sid={sid}"] if sid is not None else [])
        response, _ = await self._request(coap.GET, *segments, confirmable=True)
        _raise_for(response)
        result = ConfigResult(_members(response), sid, response.opt.max_age, _code(response))
        self._apply_config(result.config)
        self._schedule_config_refresh(response)
        return result

    def _apply_config(self, config: SessionConfig) -> None:
        self.session_config = config
        if self.liveness is not None and self.liveness.phase is not Phase.LOST:
            self._effects(self.liveness.set_config(config, time.monotonic()))
        self._wake.set()

    async def set_config(self, heartbeat_interval: int | None = None, missing_hb_allowed: int | None = None,
                         probing_rate: int | None = None, max_retransmit: int | None = None,
                         ack_timeout: Decimal | float | str | None = None,
                         ack_random_factor: Decimal | float | str | None = None, *,
                         sets: Sequence[str] = ("mitigating-config", "idle-config")) -> ConfigResult:
        """PUT /config/sid=N (CON, §4.5.2) with a new monotonically increasing sid.

        Raises DotsError; for 4.22 (a value out of range) the acceptable ranges are fetched
        (SC-126) and put in ``error.details["acceptable"]``.
        """
        values = {"heartbeat_interval": heartbeat_interval, "missing_hb_allowed": missing_hb_allowed,
                  "probing_rate": probing_rate, "max_retransmit": max_retransmit,
                  "ack_timeout": ack_timeout, "ack_random_factor": ack_random_factor}
        node: dict[str, Any] = {}
        for name, attr in CONFIG_NAMES.items():
            value = values[attr]
            if value is None:
                continue
            if attr in DECIMAL_ATTRS:
                node[name] = {"current-value-decimal": f"{Decimal(str(value)):.2f}"}
            else:
                node[name] = {"current-value": int(value)}
        if not node:
            raise ValueError("set_config needs at least one value (SC-120)")
        body = from_members(MessageType.SIGNAL_CONFIG, {s: node for s in sets}, Direction.REQUEST).to_cbor()
        sid = self.state.allocate_sid(self.cuid)
        response, _ = await self._request(coap.PUT, rfc9132.PATH_CONFIG, f"sid={sid}", payload=body,
                                          confirmable=True)
        if response.code == coap.UNPROCESSABLE_ENTITY:
            error = DotsError(_code(response), _diagnostic(response) or "a value is out of the acceptable range")
            try:
                error.details["acceptable"] = (await self.get_config()).members
            except (DotsError, DotsConnectionError):
                pass
            raise error
        _raise_for(response)
        code = _code(response)
        try:
            result = await self.get_config(sid)
        except DotsError as exc:
            if exc.code == "4.04":
                raise DotsError(code, f"the server ignored sid {sid} (it holds a higher sid for this client; "
                                "reset the configuration first)") from None
            raise
        self._sid_negotiated = True
        return ConfigResult(result.members, sid, result.max_age, code)

    async def reset_config(self) -> str:
        """DELETE /config/sid=N (§4.5.4): back to the server's defaults."""
        sid = self.state.last_sid(self.cuid)
        segments = [rfc9132.PATH_CONFIG] + ([f"sid={sid}"] if sid is not None else [])
        response, _ = await self._request(coap.DELETE, *segments, confirmable=True)
        _raise_for(response)
        self._sid_negotiated = False
        try:
            await self.get_config()
        except (DotsError, DotsConnectionError) as exc:
            log.info("could not read the default configuration: %s", exc)
        return _code(response)


class _Broken(Exception):
    """The session failed under a request (association closed, connection reset...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
