"""The Call Home DOTS client (provider side, RFC 9066): it waits to be called, then signals attacks.

Theory of operation
-------------------
:class:`CallHomeClient` listens as the (D)TLS *server* (TLS/TCP and/or DTLS/UDP on configured
ports; RFC 9066 has no default port) with mutual X.509.  Our transports report each completed
handshake (``on_connection_made`` / ``on_established``) and each closure, and every accepted
association becomes a :class:`CallHomePeer`, identified by the Call Home DOTS server's
certificate (its cuid).  The peer's ``remote`` is put on every request we send, so the
requests travel back over the association the CPE opened.

On a new association the client first retrieves the session configuration (``GET config``,
§5.2.1), then a :class:`~agent.protocol.session.Liveness` machine with role
``CALL_HOME_CLIENT`` drives heartbeats: a ``PUT hb`` every heartbeat-interval, the CPE's own
heartbeats answered 2.04 by our site, an immediate heartbeat when the CPE says it does not hear
us (CH-001, MAY).  While an attack is being reported the machine never gives the session up
(CH-002); otherwise a session with neither heartbeat answers nor traffic is dropped -- the
client cannot reconnect (only the Call Home DOTS server initiates (D)TLS), it waits for the
CPE to call again.

Mitigation requests carry the RFC 9066 source attributes (``source-prefix`` mandatory,
``source-port-range``, ``source-icmp-type-range``), are sent Non-confirmable and repeated
(1 s, 2 s, 4 s ...) over DTLS until answered, once over TLS.  A 5.03 carrying a base DOTS
redirect is silently discarded (CH-006): only the CPE may open a new connection.  A client
must check that source prefixes are within the CPE's domain (CH-013): ``domains`` maps peer
cuids to their prefixes (no entry: not checked here, the CPE checks anyway).
``redirect`` sends the Non-confirmable ``PUT /.well-known/dots/redirect`` of §5.2.2.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiocoap
from aiocoap import Message
from aiocoap import numbers as coap
from aiocoap.resource import Resource

from agent.aio import cancel_and_wait
from agent.codec import CodecError, Direction, MessageType, decode_cbor
from agent.codec.messages import encode_members
from agent.numbers import rfc9066, rfc9132
from agent.pki import certificate_cuid
from agent.protocol.session import Liveness, Role, SendHeartbeat, SessionConfig, SessionLost
from agent.server.heartbeats import heartbeat_body
from agent.server.options import refuse_options
from agent.server.resources import error
from agent.transports import tls
from agent.transports.credentials import Credentials
from agent.transports.dtls import add_dtls_server
from agent.transports.identity import peer_address, peer_cuid
from agent.transports.limits import Admission
from agent.tuning import tuning

log = logging.getLogger("dots.callhome")
CF = rfc9132.CONTENT_FORMAT_DOTS_CBOR
CH = f"{rfc9066.MODULE}:"
Range = int | tuple[int, int]


class CallHomeError(Exception):
    """A request was refused (``code`` 4.xx/5.xx, ``diagnostic``, ``members`` of a dots body)."""

    def __init__(self, code: str, diagnostic: str, members: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code} {diagnostic}".strip())
        self.code = code
        self.diagnostic = diagnostic
        self.members = members or {}


@dataclass
class Answer:
    """A response: code, RFC 7951 members of its body, round-trip time (s)."""

    code: str
    members: dict[str, Any]
    rtt: float
    diagnostic: str = ""

    @property
    def scopes(self) -> list[dict[str, Any]]:
        return list(self.members.get("scope", []))


def _ranges(items: Iterable[Range], lo: str, hi: str) -> list[dict[str, int]]:
    out = []
    for r in items:
        a, b = (r, r) if isinstance(r, int) else r
        out.append({lo: int(a)} if a == b else {lo: int(a), hi: int(b)})
    return out


def call_home_scope(target_prefixes: Iterable[str], source_prefixes: Iterable[str], *,
                    source_ports: Iterable[Range] = (), source_icmp_types: Iterable[Range] = (),
                    target_ports: Iterable[Range] = (), protocols: Iterable[int] = (),
                    fqdns: Iterable[str] = (), uris: Iterable[str] = (),
                    lifetime: int = rfc9132.DEFAULT_LIFETIME) -> dict[str, Any]:
    """RFC 7951 members of a Call Home mitigation scope (§5.3.1; trigger-mitigation is left out:
    its default, true, is the only value allowed, CH-017)."""
    scope: dict[str, Any] = {"target-prefix": [str(p) for p in target_prefixes],
                             f"{CH}source-prefix": [str(p) for p in source_prefixes]}
    if not scope["target-prefix"]:
        raise ValueError("target-prefix is mandatory in a Call Home request (CH-014)")
    if not scope[f"{CH}source-prefix"]:
        raise ValueError("source-prefix is mandatory in a Call Home request")
    if tp := _ranges(target_ports, "lower-port", "upper-port"):
        scope["target-port-range"] = tp
    if protocols:
        scope["target-protocol"] = [int(p) for p in protocols]
    if fqdns:
        scope["target-fqdn"] = list(fqdns)
    if uris:
        scope["target-uri"] = list(uris)
    if sp := _ranges(source_ports, "lower-port", "upper-port"):
        scope[f"{CH}source-port-range"] = sp
    if it := _ranges(source_icmp_types, "lower-type", "upper-type"):
        scope[f"{CH}source-icmp-type-range"] = it
    scope["lifetime"] = int(lifetime)
    return scope


def _members(msg: Message) -> dict[str, Any]:
    if msg.opt.content_format != CF or not msg.payload:
        return {}
    try:
        return decode_cbor(msg.payload, Direction.RESPONSE).members()
    except CodecError:
        from agent.codec import cbor

        root = cbor.map_to_json(cbor.loads(msg.payload))
        body = next(iter(root.values()), {}) if isinstance(root, dict) else {}
        return body if isinstance(body, dict) else {}


@dataclass
class SentRequest:
    """A mitigation request this client sent to a Call Home DOTS server, and what it last heard of it
    (the management plane's ``call-home-client/requests``)."""

    peer_cuid: str
    mid: int
    scope: dict[str, Any]  # RFC 7951 members as sent (Call Home leaves prefixed)
    sent: float
    code: str
    last_update: float | None = None
    reported: dict[str, Any] | None = None  # the scope as last reported by the server

    @property
    def status(self) -> str | None:
        return None if self.reported is None else self.reported.get("status")


@dataclass
class CallHomePeer:
    """One association a Call Home DOTS server (CPE) opened to us."""

    client: CallHomeClient
    remote: Any
    transport: str
    cuid: str  # the CPE's identity (from its certificate)
    address: tuple[str, int] | None
    connected_at: float = field(default_factory=time.time)
    liveness: Liveness | None = None
    config: SessionConfig = field(default_factory=SessionConfig)
    closed: bool = False
    next_mid: int | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    discarded_redirects: int = 0

    @property
    def reliable(self) -> bool:
        return self.transport == "tls"

    def as_dict(self) -> dict[str, Any]:
        return {"cuid": self.cuid, "transport": self.transport, "address": self.address,
                "connected-at": self.connected_at, "ready": self.ready.is_set(),
                "heartbeat-interval": self.config.idle.heartbeat_interval}

    # -- requests ------------------------------------------------------------------------------
    async def request(self, method: coap.Code, *segments: str, payload: bytes | None = None,
                      query: Sequence[str] = (), timeout: float = 30.0) -> Answer:
        """Send over this association until answered (NON repeated over DTLS); see module docstring."""
        ctx = self.client.context
        assert ctx is not None
        started = time.monotonic()
        deadline = started + timeout
        pending: list[Any] = []
        interval = 1.0
        next_send = started
        try:
            while True:
                if self.closed:
                    raise ConnectionError("the Call Home DOTS server's association is closed")
                now = time.monotonic()
                if now >= deadline:
                    raise TimeoutError(f"no answer from the Call Home DOTS server {self.cuid} in {timeout:.0f} s")
                if now >= next_send and (not self.reliable or not pending):
                    msg = Message(code=method, transport_tuning=tuning(self.config.idle, False),
                                  uri_path=(*rfc9132.WELL_KNOWN, *segments))
                    if query:
                        msg.opt.uri_query = tuple(query)
                    if payload is not None:
                        msg.payload = payload
                        msg.opt.content_format = CF
                    msg.remote = self.remote
                    pending.append(ctx.request(msg))
                    next_send = now + interval if not self.reliable else deadline
                    interval = min(interval * 2, 8.0)
                wait = max(0.01, min(next_send, deadline) - time.monotonic())
                if not pending:  # e.g. the only answer was a discarded 5.03 (over TLS nothing is resent)
                    await asyncio.sleep(wait)
                    continue
                done, _ = await asyncio.wait([p.response for p in pending], timeout=wait,
                                             return_when=asyncio.FIRST_COMPLETED)
                for d in done:
                    pending = [p for p in pending if p.response is not d]
                    try:
                        response = d.result()
                    except Exception as exc:  # a transport error: the association is gone
                        if self.reliable or self.closed:
                            raise ConnectionError(str(exc) or type(exc).__name__) from None
                        continue
                    if self.liveness is not None:
                        self.liveness.any_traffic(time.time())
                    if response.code == coap.SERVICE_UNAVAILABLE and _members(response).get(
                            "alt-server") is not None:
                        self.discarded_redirects += 1  # CH-006: silently discarded
                        log.info("discarded a 5.03 redirect from Call Home DOTS server %s (CH-006)", self.cuid)
                        continue
                    diag = "" if response.opt.content_format == CF else response.payload.decode("utf-8", "replace")
                    return Answer(str(response.code.dotted), _members(response), time.monotonic() - started, diag)
        finally:
            for p in pending:
                p.response.cancel()

    async def get_config(self) -> Answer:
        return await self.request(coap.GET, rfc9132.PATH_CONFIG, timeout=10.0)

    async def _allocate_mid(self) -> int:
        if self.next_mid is None:
            answer = await self.request(coap.GET, rfc9132.PATH_MITIGATE, f"cuid={self.client.cuid}",
                                        query=("c=c",))
            mids = [int(s["mid"]) for s in answer.scopes if "mid" in s] if answer.code == "2.05" else []
            self.next_mid = max(mids, default=0) + 1
        mid = self.next_mid
        self.next_mid += 1
        return mid

    async def mitigate(self, target_prefixes: Iterable[str], source_prefixes: Iterable[str], *,
                       source_ports: Iterable[Range] = (), source_icmp_types: Iterable[Range] = (),
                       target_ports: Iterable[Range] = (), protocols: Iterable[int] = (),
                       fqdns: Iterable[str] = (), uris: Iterable[str] = (),
                       lifetime: int = rfc9132.DEFAULT_LIFETIME, mid: int | None = None,
                       timeout: float = 30.0) -> tuple[int, Answer]:
        """PUT a Call Home mitigation request; returns (mid, answer).  Raises CallHomeError on 4.xx."""
        sources = [str(s) for s in source_prefixes]
        self.client.check_domain(self.cuid, sources)
        scope = call_home_scope(target_prefixes, sources, source_ports=source_ports,
                                source_icmp_types=source_icmp_types, target_ports=target_ports,
                                protocols=protocols, fqdns=fqdns, uris=uris, lifetime=lifetime)
        if mid is None:
            mid = await self._allocate_mid()
        body = encode_members(MessageType.MITIGATION, {"scope": [scope]})
        answer = await self.request(coap.PUT, rfc9132.PATH_MITIGATE, f"cuid={self.client.cuid}", f"mid={mid}",
                                    payload=body, timeout=timeout)
        self.client._record_sent(self.cuid, mid, scope, answer)
        if not answer.code.startswith("2"):
            raise CallHomeError(answer.code, answer.diagnostic, answer.members)
        self.client.reporting.add((self.cuid, mid))
        self.client._activity(self)
        return mid, answer

    async def status(self, mid: int | None = None) -> list[dict[str, Any]]:
        segments = [rfc9132.PATH_MITIGATE, f"cuid={self.client.cuid}"] + ([f"mid={mid}"] if mid is not None else [])
        answer = await self.request(coap.GET, *segments)
        if answer.code == "4.04":
            return []
        if not answer.code.startswith("2"):
            raise CallHomeError(answer.code, answer.diagnostic, answer.members)
        for scope in answer.scopes:
            self.client._record_status(self.cuid, scope)
        return answer.scopes

    async def wait_status(self, mid: int, statuses: Iterable[str], timeout: float = 30.0,
                          poll: float = 0.2) -> dict[str, Any]:
        """Poll until the request's status is one of ``statuses``; returns that scope."""
        wanted = set(statuses)
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            scopes = await self.status(mid)
            if scopes:
                last = scopes[0]
                if last.get("status") in wanted:
                    return last
            await asyncio.sleep(poll)
        raise TimeoutError(f"mid {mid} did not reach {sorted(wanted)} (last: {last.get('status')})")

    async def withdraw(self, mid: int) -> str:
        answer = await self.request(coap.DELETE, rfc9132.PATH_MITIGATE, f"cuid={self.client.cuid}", f"mid={mid}")
        sent = self.client.requests.get((self.cuid, mid))
        if sent is not None:
            sent.code = answer.code
            if answer.code == "2.02":  # the server now reports it withdrawn (RFC 9132 status 6)
                self.client._record_status(self.cuid, {**(sent.reported or {}), "mid": mid,
                                                       "status": "dots-client-withdrawn-mitigation"})
        if not answer.code.startswith("2"):
            raise CallHomeError(answer.code, answer.diagnostic, answer.members)
        self.client.reporting.discard((self.cuid, mid))
        self.client._activity(self)
        return answer.code

    async def redirect(self, alt_ch_client: str, records: Iterable[str] = (), ttl: int | None = None) -> str:
        """§5.2.2: ask the CPE to call the alternate Call Home DOTS client instead (NON PUT)."""
        members: dict[str, Any] = {f"{CH}alt-ch-client": alt_ch_client}
        recs = [str(ipaddress.ip_address(r)) for r in records]
        if recs:
            members[f"{CH}alt-ch-client-record"] = recs
        if ttl is not None:
            members[f"{CH}ttl"] = int(ttl)
        body = encode_members(MessageType.REDIRECTED_SIGNAL, members)
        answer = await self.request(coap.PUT, rfc9066.PATH_REDIRECT, f"cuid={self.client.cuid}", payload=body,
                                    timeout=10.0)
        if not answer.code.startswith("2"):
            raise CallHomeError(answer.code, answer.diagnostic, answer.members)
        return answer.code


class _Site(Resource):
    """Our CoAP site: the Call Home DOTS server's heartbeats (2.04); nothing else."""

    def __init__(self, client: CallHomeClient) -> None:
        super().__init__()
        self.client = client

    async def render(self, request: Message) -> Message:
        refused = refuse_options(request)  # RFC 7252 §5.4.1, as on every DOTS resource
        if refused is not None:
            return error(refused[0], refused[1])
        path = tuple(request.opt.uri_path)
        if path != (*rfc9132.WELL_KNOWN, rfc9132.PATH_HEARTBEAT):
            return error(coap.NOT_FOUND, "a Call Home DOTS client serves only heartbeats")
        if request.code != coap.PUT:
            return Message(code=coap.METHOD_NOT_ALLOWED)
        try:
            msg = decode_cbor(request.payload, Direction.REQUEST, expect=MessageType.HEARTBEAT)
        except CodecError as exc:
            return error(coap.BAD_REQUEST, str(exc))
        self.client._peer_heartbeat(request.remote, bool(msg.members().get("peer-hb-status")))
        return Message(code=coap.CHANGED)

    async def needs_blockwise_assembly(self, request: Message) -> bool:
        return False

    def get_resources_as_linkheader(self) -> Any:  # pragma: no cover - not a discovery endpoint
        return None


class CallHomeClient:
    """Provider side of DOTS Call Home (see the module docstring)."""

    def __init__(self, credentials: Credentials, listen: Sequence[tuple[str, int]], *,
                 transports: Sequence[str] = ("tls", "dtls"), heartbeats: bool = True,
                 domains: dict[str, Sequence[str]] | None = None) -> None:
        self.credentials = credentials
        self.listen = list(listen)
        self.transports = tuple(transports)
        self.heartbeats = heartbeats
        self.cuid = certificate_cuid(credentials.cert)
        self.domains = {k: [ipaddress.ip_network(p, strict=False) for p in v] for k, v in (domains or {}).items()}
        self.context: aiocoap.Context | None = None
        self.peers: dict[int, CallHomePeer] = {}
        self.addresses: dict[str, list[tuple[str, int]]] = {}
        self.reporting: set[tuple[str, int]] = set()  # (peer cuid, mid) of attacks we reported
        self.requests: dict[tuple[str, int], SentRequest] = {}  # (peer cuid, mid) -> what we sent/heard
        # called with (request, previous status) whenever a request's reported status changes
        self.status_observers: list[Callable[[SentRequest, str | None], None]] = []
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        #: handshakes and associations of both listeners (call-home-client/limits, set by management)
        self.admission = Admission(name="call-home listener")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.context = aiocoap.Context(loop=loop, serversite=_Site(self), loggername="coap-callhome-client")
        if "tls" in self.transports:
            server = await tls.add_tls_server(self.context, self.listen, self.credentials, admission=self.admission)
            server.on_connection_made = lambda conn: self._accepted(conn, "tls")
            server.on_connection_lost = lambda conn, exc: self._closed(conn, exc)
            self.addresses["tls"] = server.addresses
        if "dtls" in self.transports:
            self.addresses["dtls"] = []
            for host, port in self.listen:
                if port == 0 and "tls" in self.addresses:
                    port = next((p for h, p in self.addresses["tls"] if h == host), 0)
                t = await add_dtls_server(self.context, (host, port), self.credentials, idle_timeout=3600.0,
                                          admission=self.admission)
                t.on_established = lambda remote: self._accepted(remote, "dtls")
                t.on_closed = lambda remote, reason: self._closed(remote, reason)
                self.addresses["dtls"].append((host, t.port))
        self._ticker = loop.create_task(self._tick_forever(), name="Call Home client heartbeats")
        log.info("Call Home DOTS client (cuid %s) waiting for calls on %s", self.cuid,
                 ", ".join(f"{t} {h}:{p}" for t, a in self.addresses.items() for h, p in a))

    async def stop(self) -> None:
        await cancel_and_wait([self._ticker, *self._tasks])
        if self.context is not None:
            await self.context.shutdown()

    def check_domain(self, peer_cuid_: str, sources: Iterable[str]) -> None:
        """CH-013: refuse to send sources outside the peer's known domain (when one is configured)."""
        domain = self.domains.get(peer_cuid_)
        if domain is None:
            return
        for s in sources:
            net = ipaddress.ip_network(s, strict=False)
            if not any(net.version == d.version and net.subnet_of(d) for d in domain):  # type: ignore[arg-type]
                raise ValueError(f"source-prefix {s} is not within the domain of Call Home DOTS server "
                                 f"{peer_cuid_} (CH-013)")

    # -- associations --------------------------------------------------------------------------
    def _accepted(self, remote: Any, transport: str) -> None:
        cuid = peer_cuid(remote)
        if cuid is None:
            log.warning("call from %s without a certificate: ignored", peer_address(remote))
            return
        peer = CallHomePeer(self, remote, transport, cuid, peer_address(remote))
        self.peers[id(remote)] = peer
        log.info("Call Home DOTS server %s called over %s from %s", cuid, transport, peer.address)
        self._spawn(self._setup(peer))

    def _closed(self, remote: Any, reason: Any) -> None:
        peer = self.peers.pop(id(remote), None)
        if peer is not None and not peer.closed:
            peer.closed = True
            log.info("Call Home DOTS server %s (%s) hung up: %s", peer.cuid, peer.transport, reason)
            self._changed.set()

    async def _setup(self, peer: CallHomePeer) -> None:
        from agent.client.results import session_config_from

        try:
            answer = await peer.get_config()  # §5.2.1: the client retrieves the session configuration
            if answer.code == "2.05":
                peer.config = session_config_from(answer.members)
        except Exception as exc:  # keep the defaults
            log.info("session configuration of %s not retrieved: %s", peer.cuid, exc)
        peer.liveness = Liveness(Role.CALL_HOME_CLIENT, peer.config, time.time(), reliable=peer.reliable,
                                 send_heartbeats=self.heartbeats,
                                 under_attack=any(c == peer.cuid for c, _ in self.reporting))
        peer.ready.set()
        self._changed.set()

    def _peer_of(self, remote: Any) -> CallHomePeer | None:
        return self.peers.get(id(remote))

    def _peer_heartbeat(self, remote: Any, status: bool) -> None:
        peer = self._peer_of(remote)
        if peer is None or peer.liveness is None:
            return
        self._effects(peer, peer.liveness.heartbeat_received(status, time.time()))

    def _activity(self, peer: CallHomePeer) -> None:
        if peer.liveness is not None:
            reporting = any(c == peer.cuid for c, _ in self.reporting)
            self._effects(peer, peer.liveness.set_activity(time.time(), under_attack=reporting))

    def _effects(self, peer: CallHomePeer, effects: Iterable[Any]) -> None:
        for e in effects:
            if isinstance(e, SendHeartbeat):
                self._spawn(self._heartbeat(peer, e.peer_hb_status))
            elif isinstance(e, SessionLost):
                log.warning("Call Home session of %s lost (%s): waiting for it to call again", peer.cuid, e.reason)
                self.peers.pop(id(peer.remote), None)
                peer.closed = True
                self._changed.set()

    async def _heartbeat(self, peer: CallHomePeer, status: bool) -> None:
        assert self.context is not None and peer.liveness is not None
        liveness = peer.liveness
        msg = Message(code=coap.PUT, payload=heartbeat_body(status), content_format=CF,
                      transport_tuning=tuning(liveness.config, False))
        msg.opt.uri_path = (*rfc9132.WELL_KNOWN, rfc9132.PATH_HEARTBEAT)
        msg.remote = peer.remote
        try:
            response = await asyncio.wait_for(self.context.request(msg).response,
                                              max(1.0, float(liveness.config.heartbeat_interval)))
        except Exception as exc:
            log.debug("heartbeat to %s unanswered: %s", peer.cuid, exc)
            return
        if response.code == coap.CHANGED:
            liveness.heartbeat_response(time.time())

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            now = time.time()
            for peer in list(self.peers.values()):
                if peer.liveness is not None and not peer.closed:
                    self._effects(peer, peer.liveness.tick(now))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- requests sent (management state) -----------------------------------------------------
    def _record_sent(self, peer_cuid_: str, mid: int, scope: dict[str, Any], answer: Answer) -> None:
        now = time.time()
        sent = self.requests.get((peer_cuid_, mid))
        if sent is None:
            sent = self.requests[(peer_cuid_, mid)] = SentRequest(peer_cuid_, mid, dict(scope), now, answer.code)
        else:
            sent.scope, sent.sent, sent.code = dict(scope), now, answer.code
        reported = next((s for s in answer.scopes if int(s.get("mid", mid)) == mid), None)
        if reported is not None:
            self._record_status(peer_cuid_, {"mid": mid, **reported})

    def _record_status(self, peer_cuid_: str, scope: dict[str, Any]) -> None:
        """The server reported on one of our requests (a status answer); observers see changes."""
        if "mid" not in scope:
            return
        sent = self.requests.get((peer_cuid_, int(scope["mid"])))
        if sent is None:
            return
        previous = sent.status
        sent.reported = dict(scope)
        sent.last_update = time.time()
        if sent.status is not None and sent.status != previous:
            for observer in list(self.status_observers):
                try:
                    observer(sent, previous)
                except Exception:  # an observer must never break signalling
                    log.exception("status observer failed")

    async def refresh(self, timeout: float = 5.0) -> None:
        """Ask every connected Call Home DOTS server for the status of the requests we sent it."""
        cuids = {c for c, _m in self.requests}
        for peer in self.ready_peers():
            if peer.cuid not in cuids:
                continue
            cuids.discard(peer.cuid)
            try:
                scopes = await asyncio.wait_for(peer.status(), timeout)
            except Exception as exc:  # unreachable now: keep what we last heard
                log.debug("status of the requests sent to %s not refreshed: %s", peer.cuid, exc)
                continue
            listed = {int(s["mid"]) for s in scopes if "mid" in s}
            for (c, mid), sent in list(self.requests.items()):
                if c == peer.cuid and mid not in listed and sent.status is not None:
                    # no longer known to the server: its lifecycle ended
                    self._record_status(c, {**(sent.reported or {}), "mid": mid,
                                            "status": "attack-mitigation-terminated"})

    # -- API -----------------------------------------------------------------------------------
    def ready_peers(self) -> list[CallHomePeer]:
        return [p for p in self.peers.values() if p.ready.is_set() and not p.closed]

    async def wait_for_peer(self, timeout: float = 60.0, cuid: str | None = None) -> CallHomePeer:
        """The most recent ready association (of ``cuid`` if given), waiting for a call."""
        deadline = time.monotonic() + timeout
        while True:
            ready = [p for p in self.ready_peers() if cuid is None or p.cuid == cuid]
            if ready:
                return max(ready, key=lambda p: p.connected_at)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no Call Home DOTS server called" + (f" (cuid {cuid})" if cuid else ""))
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    def control_handlers(self) -> dict[str, Any]:
        async def peers(_req: dict[str, Any]) -> dict[str, Any]:
            return {"cuid": self.cuid, "peers": [p.as_dict() for p in self.ready_peers()]}

        async def mitigate(req: dict[str, Any]) -> dict[str, Any]:
            peer = await self.wait_for_peer(float(req.get("wait", 30)), req.get("peer"))
            started = time.monotonic()
            try:
                mid, answer = await peer.mitigate(
                    req["target_prefixes"], req["source_prefixes"], source_ports=_pairs(req.get("source_ports")),
                    source_icmp_types=_pairs(req.get("icmp_types")), target_ports=_pairs(req.get("target_ports")),
                    protocols=req.get("protocols", []), fqdns=req.get("fqdns", []),
                    lifetime=int(req.get("lifetime", rfc9132.DEFAULT_LIFETIME)), mid=req.get("mid"))
            except CallHomeError as exc:
                return {"code": exc.code, "diagnostic": exc.diagnostic, "body": exc.members}
            out: dict[str, Any] = {"mid": mid, "code": answer.code, "rtt-ms": round(answer.rtt * 1000, 2),
                                   "body": answer.members, "peer": peer.cuid}
            if req.get("wait_status"):
                scope = await peer.wait_status(mid, [req["wait_status"]], float(req.get("wait", 30)))
                out["status"] = scope.get("status")
                out["status-ms"] = round((time.monotonic() - started) * 1000, 2)
            return out

        async def withdraw(req: dict[str, Any]) -> dict[str, Any]:
            peer = await self.wait_for_peer(float(req.get("wait", 30)), req.get("peer"))
            return {"code": await peer.withdraw(int(req["mid"]))}

        async def status(req: dict[str, Any]) -> dict[str, Any]:
            peer = await self.wait_for_peer(float(req.get("wait", 30)), req.get("peer"))
            return {"scopes": await peer.status(req.get("mid"))}

        async def redirect(req: dict[str, Any]) -> dict[str, Any]:
            peer = await self.wait_for_peer(float(req.get("wait", 30)), req.get("peer"))
            return {"code": await peer.redirect(req["alt_ch_client"], req.get("records", []), req.get("ttl"))}

        return {"peers": peers, "mitigate": mitigate, "withdraw": withdraw, "status": status, "redirect": redirect}


def _pairs(items: Any) -> list[Range]:
    out: list[Range] = []
    for i in items or []:
        out.append(int(i) if isinstance(i, int) else (int(i[0]), int(i[1])))
    return out
