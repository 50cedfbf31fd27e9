"""CoAP over TLS/TCP (``coaps+tcp``, RFC 8323) with mutual X.509, on top of aiocoap.

RFC 9132 §7.1 allows only (D)TLS 1.2 or later for the signal channel and asks for mutual
authentication; RFC 8323 §9 fixes the ALPN protocol identifier ``coap``; the cipher policy
follows RFC 7525 (ECDHE key exchange, AEAD ciphers only, no compression or renegotiation).

aiocoap 0.4.17 has a ``coaps+tcp`` server and client, but its public entry points do not
fit a DOTS agent: the server is only reachable through the private ``_ssl_context``
argument of ``Context.create_server_context``, it adds 1 to the port it is given
(``bind[1] + COAPS_PORT - COAP_PORT``), listens on a single address with ``SO_REUSEPORT``,
and the client transport cannot present a client certificate (its credentials map only
carries a CA file).  This module therefore builds the :class:`aiocoap.Context` itself and
appends small subclasses of aiocoap's own TLS transports to ``Context.request_interfaces``
(the same way aiocoap's factories do), so that:

* the server listens on exactly the given ``(host, port)`` pairs, each one its own listening
  socket (``"::"`` is the IPv6 wildcard only, as asyncio sets ``IPV6_V6ONLY``; add
  ``("0.0.0.0", port)`` for IPv4, or use host ``""`` for every address of both families);
* only TCP sockets are opened, so a UDP/DTLS transport can use the same port number
  (DOTS uses 4646 for both) in the same process and the same Context;
* the client presents our certificate and checks the server's chain and name (RFC 6125).

Adding another transport to a Context made here (e.g. the DTLS one) is done the same way:
pass an adder in ``extra_transports`` or call it afterwards; an adder is any coroutine
function taking the Context, for instance one that does
``await ctx._append_tokenmanaged_messagemanaged_transport(lambda mman: ...)`` (aiocoap's
own helper that wraps a message interface in a MessageManager and a TokenManager) or
:func:`append_token_transport` for a token interface.  Requests are routed by asking
every interface in turn (``fill_or_recognize_remote``), so transports do not interfere.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import sys
import time
from asyncio import sslproto
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from typing import Any

import aiocoap
from aiocoap import error as coap_error
from aiocoap import interfaces
from aiocoap.tokenmanager import TokenManager
from aiocoap.transports.tcp import TcpConnection
from aiocoap.transports.tls import TLSClient, TLSServer

from agent.transports.credentials import Credentials
from agent.transports.limits import (
    Admission,
    Association,
    ListenerLimits,
    PendingHandshake,
    address_key,
    spki_identity,
)

DOTS_SIGNAL_PORT = 4646
"""RFC 9132 §10.2: default port of the DOTS signal channel, on both TCP and UDP."""

ALPN_COAP = "coap"
"""RFC 8323 §9: ALPN protocol identifier of CoAP over TLS."""

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!SHA1:!DSS"
"""TLS 1.2 cipher suites (RFC 7525 §4.2 / RFC 9325): ECDHE, AEAD only.  TLS 1.3 suites are
OpenSSL's defaults, which are all AEAD."""

HANDSHAKE_TIMEOUT = 10.0
"""Seconds a server waits for a TLS handshake to complete before dropping the connection."""

TransportAdder = Callable[[aiocoap.Context], Awaitable[Any]]
"""Coroutine function that appends one more transport to a Context."""

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- SSL contexts


def _harden(ctx: ssl.SSLContext, credentials: Credentials) -> None:
    """Settings common to both sides: TLS >= 1.2, AEAD ciphers, our chain, trust anchors, ALPN."""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_verify_locations(cafile=str(credentials.cafile))
    ctx.load_cert_chain(certfile=str(credentials.cert), keyfile=str(credentials.key))
    ctx.set_alpn_protocols([ALPN_COAP])


def server_ssl_context(credentials: Credentials) -> ssl.SSLContext:
    """Server side of coaps+tcp: TLS 1.2+, client certificate required and checked against
    ``credentials.cafile``, ALPN ``coap``.  TLS 1.3 tickets / TLS 1.2 session tickets are
    left on so clients can resume (RFC 9132 §7.1 recommends resumption)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx, credentials)
    return ctx


class ResumingSSLContext(ssl.SSLContext):
    """Client SSLContext that resumes the last TLS session with the same server name.

    asyncio builds its ``SSLObject`` with ``context.wrap_bio(...)`` and offers no way to pass
    a session; this subclass remembers the last ``SSLObject`` per server name and hands its
    session to the next connection.  The session is read lazily so that TLS 1.3 tickets,
    which arrive after the handshake, are included.  ``override_hostname`` replaces the name
    that is checked and sent as SNI (``Credentials.server_hostname``).
    """

    override_hostname: str | None = None

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | bytes | None = None,
                 session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        if self.override_hostname is not None and not server_side:
            server_hostname = self.override_hostname
        key = server_hostname.decode() if isinstance(server_hostname, bytes) else server_hostname
        last: dict[str | None, ssl.SSLObject] = self.__dict__.setdefault("_last_objects", {})
        if session is None and not server_side and key in last:
            try:
                candidate = last[key].session
            except (ValueError, ssl.SSLError):
                candidate = None
            if candidate is not None and (candidate.has_ticket or candidate.id):
                session = candidate
        try:
            obj = super().wrap_bio(incoming, outgoing, server_side=server_side,
                                   server_hostname=server_hostname, session=session)
        except ValueError:
            # e.g. a session the library refuses: fall back to a full handshake
            obj = super().wrap_bio(incoming, outgoing, server_side=server_side,
                                   server_hostname=server_hostname)
        if not server_side:
            last[key] = obj
        return obj


def client_ssl_context(credentials: Credentials) -> ResumingSSLContext:
    """Client side of coaps+tcp: TLS 1.2+, presents ``credentials.cert``, verifies the server's
    certification path against ``credentials.cafile`` and its name (RFC 6125: DNS or IP SAN;
    the URI host unless ``credentials.server_hostname`` is set), ALPN ``coap``, resumes
    sessions per server name."""
    ctx = ResumingSSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname=True, CERT_REQUIRED
    _harden(ctx, credentials)
    ctx.check_hostname = True
    ctx.override_hostname = credentials.server_hostname
    return ctx


# --------------------------------------------------------------------------- transports


class _ServerConnection(TcpConnection):
    """Server-side connection that joins its server's pool only once the TLS handshake is
    done (aiocoap adds it at accept time and never removes it when the handshake fails,
    which leaks one object per failed handshake and poisons shutdown), and only if the
    listener's :class:`~agent.transports.limits.Admission` takes it as an association."""

    _assoc: Association | None = None
    _refused = False
    last_rx = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server: DotsTLSServer = self._ctx
        self.last_rx = time.monotonic()
        peer = transport.get_extra_info("peername") or ("", 0)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        assoc = Association(address=address_key(peer), identity=server.identity(der),
                            close=transport.close, last_activity=lambda: self.last_rx)
        if not server.admission.established(assoc):
            self._refused = True
            transport.abort()
            return
        self._assoc = assoc
        self._ctx._pool.add(self)
        super().connection_made(transport)
        hook = getattr(self._ctx, "on_connection_made", None)
        if hook is not None:
            try:
                hook(self)
            except Exception:  # a hook must not break the connection
                _log.exception("on_connection_made hook failed")

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        if self._assoc is not None:
            self._ctx.admission.released(self._assoc)
        super().connection_lost(exc)


def _require_sslproto_hooks() -> None:
    """The private asyncio hooks :class:`_AdmittedSSLProtocol` overrides must exist: without
    them handshakes would never be counted as ended and the pending cap would fill up."""
    missing = [name for name in ("_check_handshake_timeout", "_on_handshake_complete")
               if not callable(getattr(sslproto.SSLProtocol, name, None))]
    if not hasattr(sslproto, "SSLProtocolState"):
        missing.append("SSLProtocolState")
    if missing:
        raise ImportError("agent.transports.tls needs the asyncio.sslproto of CPython 3.11-3.13 "
                          f"(missing: {', '.join(missing)}); this is Python {sys.version.split()[0]}")


_require_sslproto_hooks()


class _AdmittedSSLProtocol(sslproto.SSLProtocol):
    """asyncio's server-side SSL protocol, reporting the end of its handshake to the admission.

    ``max_size`` (asyncio's read buffer, allocated per connection when the protocol is built)
    is 256 KiB in asyncio; one TLS record is at most 16 KiB plus overhead, so 32 KiB reads
    lose nothing and make every connection, pending or established, 224 KiB cheaper.
    Relies on the private hooks ``_check_handshake_timeout`` / ``_on_handshake_complete`` of
    asyncio's ``sslproto`` (Python 3.11+).
    """

    max_size = 32 * 1024

    def __init__(self, loop: asyncio.AbstractEventLoop, app: asyncio.BaseProtocol, ctx: ssl.SSLContext,
                 admission: Admission, token: PendingHandshake, timeout: float) -> None:
        super().__init__(loop, app, ctx, None, server_side=True, ssl_handshake_timeout=timeout)
        self._admission = admission
        self._token = token

    def _end(self, outcome: str) -> None:
        self._admission.end_handshake(self._token, outcome)  # once; not again after an eviction

    def _check_handshake_timeout(self) -> None:
        if self._state == sslproto.SSLProtocolState.DO_HANDSHAKE:
            self._end("timed-out")
        super()._check_handshake_timeout()

    def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
        self._end("completed" if handshake_exc is None else "failed")
        super()._on_handshake_complete(handshake_exc)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._end("failed")  # the peer went away during the handshake
        super().connection_lost(exc)


class _Gate(asyncio.Protocol):
    """What a TCP connection speaks until the admission has let its TLS handshake start.

    The peer address is known only here (asyncio calls a server's protocol factory without
    it), so TLS is layered on in ``connection_made``, as ``loop.start_tls`` does: a refused
    connection is aborted before any SSL state or buffer exists.
    """

    def __init__(self, server: DotsTLSServer, app_factory: Callable[[], asyncio.Protocol],
                 ssl_context: ssl.SSLContext, loop: asyncio.AbstractEventLoop) -> None:
        self.server, self.app_factory, self.ssl_context, self.loop = server, app_factory, ssl_context, loop

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername") or ("", 0)
        admission = self.server.admission
        token = admission.begin_handshake(peer, abort=transport.abort)
        if token is None:
            transport.abort()
            return
        proto = _AdmittedSSLProtocol(self.loop, self.app_factory(), self.ssl_context, admission, token,
                                     admission.limits.handshake_timeout)
        transport.set_protocol(proto)
        proto.connection_made(transport)

    def data_received(self, data: bytes) -> None:  # pragma: no cover - replaced before any data
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        pass


class DotsTLSServer(TLSServer):
    """aiocoap ``coaps+tcp`` server transport listening on several exact addresses.

    ``on_connection_made(connection)`` / ``on_connection_lost(connection, exc)``, when set, are
    called once a client's TLS handshake has completed and when its connection is gone (the
    latter possibly twice for one connection).  The connection is the ``remote`` to put on
    requests sent to that client: CoAP over TLS is symmetric, so the server side may send
    requests too (e.g. RFC 9066 Call Home, where the TLS server is the requesting party).
    """

    on_connection_made: Callable[[TcpConnection], None] | None = None
    on_connection_lost: Callable[[TcpConnection, Exception | None], None] | None = None

    def __init__(self, admission: Admission | None = None,
                 identity: Callable[[bytes | None], Hashable | None] = spki_identity) -> None:
        super().__init__()
        self.servers: list[asyncio.base_events.Server] = []
        #: pending handshakes and connections are counted (and capped) here; may be shared
        self.admission = admission or Admission(name="coaps+tcp")
        #: who a connection belongs to for max-associations-per-client (peer certificate -> key)
        self.identity = identity

    def _dispatch_error(self, connection: TcpConnection, exc: Exception | None) -> None:
        hook = self.on_connection_lost
        if hook is not None:
            try:
                hook(connection, exc)
            except Exception:
                _log.exception("on_connection_lost hook failed")
        super()._dispatch_error(connection, exc)

    @classmethod
    async def create_on(cls, binds: Iterable[tuple[str, int]], tman: interfaces.TokenManager,
                        log: logging.Logger, loop: asyncio.AbstractEventLoop,
                        ssl_context: ssl.SSLContext,
                        handshake_timeout: float | None = None, *,
                        admission: Admission | None = None) -> DotsTLSServer:
        """Listen on every ``(host, port)`` of *binds* (port 0: pick a free one).

        Handshakes and connections are admitted by *admission* (a new one with the default
        limits, or ``handshake_timeout``, when None); the handshake timeout is read from its
        limits for every new connection."""
        if admission is None:
            admission = Admission(ListenerLimits(handshake_timeout=handshake_timeout or HANDSHAKE_TIMEOUT),
                                  name="coaps+tcp")
        self = cls(admission)
        self._tokenmanager = tman
        self.log = log

        def new_connection() -> TcpConnection:
            return _ServerConnection(self, log, loop, is_server=True)

        def gate() -> _Gate:
            return _Gate(self, new_connection, ssl_context, loop)

        try:
            for host, port in binds:
                try:
                    server = await loop.create_server(gate, host or None, port, reuse_address=True)
                except socket.gaierror as e:
                    raise coap_error.ResolutionError(f"cannot bind to {host!r}: {e}") from e
                self.servers.append(server)
        except BaseException:
            for server in self.servers:
                server.close()
            raise
        self.server = self.servers[0] if self.servers else None
        return self

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Local ``(host, port)`` of every listening socket."""
        out: list[tuple[str, int]] = []
        for server in self.servers:
            for sock in server.sockets:
                name = sock.getsockname()
                out.append((name[0], name[1]))
        return out

    async def shutdown(self) -> None:
        self.log.debug("Shutting down server %r", self)
        self._tokenmanager = None
        for server in self.servers:
            server.close()
        tasks = [asyncio.create_task(c.release()) for c in list(self._pool)]
        tasks += [asyncio.create_task(s.wait_closed()) for s in self.servers]
        if tasks:
            await asyncio.wait(tasks)


class DotsTLSClient(TLSClient):
    """aiocoap ``coaps+tcp`` client transport that uses one fixed SSLContext (ours).

    :meth:`connect` opens a connection without sending a request; requests the server sends
    over it are served by the Context's ``serversite`` (CoAP over TLS is symmetric; RFC 9066
    Call Home makes the TLS client the CoAP server).  ``on_connection_lost(connection, exc)``,
    when set, is called when a connection is gone (possibly twice for one connection).
    """

    ssl_context: ssl.SSLContext
    on_connection_lost: Callable[[TcpConnection, Exception | None], None] | None = None

    async def connect(self, host: str, port: int) -> TcpConnection:
        """The pooled connection to ``host``:``port``, opened (TCP + TLS handshake) if needed."""
        msg = aiocoap.Message(code=aiocoap.GET)
        msg.unresolved_remote = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return await self._spawn_protocol(msg)

    def _dispatch_error(self, connection: TcpConnection, exc: Exception | None) -> None:
        hook = self.on_connection_lost
        if hook is not None:
            try:
                hook(connection, exc)
            except Exception:
                _log.exception("on_connection_lost hook failed")
        super()._dispatch_error(connection, exc)

    def _ssl_context_factory(self, hostinfo: str | None) -> ssl.SSLContext:
        return self.ssl_context

    async def _spawn_protocol(self, message: aiocoap.Message) -> TcpConnection:
        # aiocoap keeps a connection pooled until connection_lost runs, so a request made
        # right after the connection was closed locally would be sent into it and fail;
        # drop such connections first so that a fresh (resumed) one is opened.
        for key, conn in list(self._pool.items()):
            transport = conn._transport
            if transport is not None and transport.is_closing():
                del self._pool[key]
        return await super()._spawn_protocol(message)


async def append_token_transport(context: aiocoap.Context,
                                 constructor: Callable[[interfaces.TokenManager], Awaitable[Any]]) -> Any:
    """Append a token interface made by ``await constructor(token_manager)`` to *context* and
    return it (what aiocoap's private ``_append_tokenmanaged_transport`` does)."""
    tman = TokenManager(context)
    transport = await constructor(tman)
    tman.token_interface = transport
    context.request_interfaces.append(tman)
    return transport


async def add_tls_server(context: aiocoap.Context, binds: Sequence[tuple[str, int]],
                         credentials: Credentials, *,
                         handshake_timeout: float | None = None,
                         admission: Admission | None = None) -> DotsTLSServer:
    """Serve coaps+tcp with mutual X.509 on *binds* from *context*, within *admission*'s limits."""
    ssl_context = server_ssl_context(credentials)
    return await append_token_transport(
        context, lambda tman: DotsTLSServer.create_on(binds, tman, context.log, context.loop, ssl_context,
                                                      handshake_timeout, admission=admission))


async def add_tls_client(context: aiocoap.Context, credentials: Credentials) -> DotsTLSClient:
    """Let *context* send requests to ``coaps+tcp://`` URIs with our client certificate."""
    ssl_context = client_ssl_context(credentials)

    async def make(tman: interfaces.TokenManager) -> DotsTLSClient:
        transport = await DotsTLSClient.create_client_transport(tman, context.log, context.loop)
        transport.ssl_context = ssl_context
        return transport

    return await append_token_transport(context, make)


def tls_server(context: aiocoap.Context) -> DotsTLSServer | None:
    """The coaps+tcp server transport of *context*, if any (e.g. to read bound ports)."""
    for ri in context.request_interfaces:
        ti = getattr(ri, "token_interface", None)
        if isinstance(ti, DotsTLSServer):
            return ti
    return None


async def create_server_context(site: Any, binds: list[tuple[str, int]], credentials: Credentials, *,
                                extra_transports: Sequence[TransportAdder] = (),
                                client: bool = False,
                                loggername: str = "coap-server",
                                admission: Admission | None = None) -> aiocoap.Context:
    """aiocoap Context serving *site* over coaps+tcp on *binds* with mutual X.509.

    Only TCP sockets are opened (no udp6), so *extra_transports* (or later calls) can add a
    UDP/DTLS transport on the same port numbers.  With *client* the Context can also send
    coaps+tcp requests with the same credentials.
    """
    context = aiocoap.Context(loop=asyncio.get_running_loop(), serversite=site, loggername=loggername)
    try:
        await add_tls_server(context, binds, credentials, admission=admission)
        if client:
            await add_tls_client(context, credentials)
        for adder in extra_transports:
            await adder(context)
    except BaseException:
        await context.shutdown()
        raise
    return context


async def create_client_context(credentials: Credentials, *, loggername: str = "coap") -> aiocoap.Context:
    """aiocoap Context that sends requests to ``coaps+tcp://host:port/...`` presenting our
    certificate and checking the server's chain and name."""
    context = aiocoap.Context(loop=asyncio.get_running_loop(), loggername=loggername)
    await add_tls_client(context, credentials)
    return context
