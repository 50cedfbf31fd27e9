"""Client side of the CoAP-over-DTLS transport: one connected UDP socket per server association."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any

from aiocoap import error, interfaces
from aiocoap.message import Message
from aiocoap.numbers import COAPS_PORT
from aiocoap.util import hostportjoin, hostportsplit
from OpenSSL import SSL

from .credentials import Credentials
from .dtls_core import (
    ConnInfo,
    DTLSChannel,
    FatalDTLSError,
    IdleTimeout,
    TransportShutdown,
    block_size_exp_for,
    expect_peer_name,
    make_context,
    payload_size_for,
    session_reused,
)

log = logging.getLogger(__name__)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


class DTLSClientRemote(interfaces.EndpointAddress):
    """A DTLS association to a server, created on demand for ``coaps://host:port``.

    Messages sent before the handshake completes are queued.  ``peer_cert_der`` is the
    server's leaf certificate once established; ``session_reused`` tells whether the handshake
    resumed an earlier session.
    """

    scheme = "coaps"
    is_multicast = False
    is_multicast_locally = False
    maximum_block_size_exp = 6
    maximum_payload_size = 1124

    def __init__(self, transport: DTLSClientTransport, host: str, port: int) -> None:
        self._transport = transport
        self.host = host
        self.port = port
        self.verify_name = transport.credentials.server_hostname or host
        self.key = (host, port, self.verify_name)
        self.info = ConnInfo(addr=(host, port))
        self.peer_cert_der: bytes | None = None
        #: aiocoap may lower this per remote; it starts at what fits the path MTU
        self.maximum_block_size_exp = block_size_exp_for(transport.mtu)
        self.maximum_payload_size = payload_size_for(transport.mtu)
        self.session_reused = False
        self.channel: DTLSChannel | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._queue: list[bytes] | None = []
        self._closed = False
        self._deadline: asyncio.TimerHandle | None = None
        self.ready: asyncio.Future[None] = transport.loop.create_future()
        self._task = asyncio.create_task(self._start(), name=f"DTLS connect to {self.hostinfo}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.hostinfo}>"

    @property
    def psk_identity(self) -> bytes | None:
        return self.info.psk_identity

    @property
    def hostinfo(self) -> str:
        return hostportjoin(self.host, None if self.port == COAPS_PORT else self.port)

    @property
    def hostinfo_local(self) -> str:
        if self._udp is None:
            raise error.AnonymousHost("DTLS socket not bound yet")
        host, port = self._udp.get_extra_info("sockname")[:2]
        return hostportjoin(host, port)

    @property
    def uri_base(self) -> str:
        return "coaps://" + self.hostinfo

    @property
    def uri_base_local(self) -> str:
        raise error.AnonymousHost("a DTLS client's local side has no URI")

    @property
    def blockwise_key(self) -> Any:
        return self

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ lifecycle

    async def _start(self) -> None:
        t = self._transport
        try:
            self._udp, _ = await t.loop.create_datagram_endpoint(
                lambda: _ClientProtocol(self), remote_addr=(self.host, self.port))
            if self._closed:  # closed while connecting
                self._udp.close()
                return
            conn = SSL.Connection(t.ssl_context, None)
            conn.set_app_data(self.info)
            conn.set_connect_state()
            if not _is_ip(self.verify_name):
                conn.set_tlsext_host_name(self.verify_name.encode("idna"))  # SNI only for names
            expect_peer_name(conn, self.verify_name)
            cached = t.sessions.get(self.key)
            if cached is not None:
                conn.set_session(cached)
            udp = self._udp
            self.channel = DTLSChannel(conn, udp.sendto, mtu=t.mtu, loop=t.loop,
                                       on_plaintext=self._on_plaintext,
                                       on_established=self._on_established, on_closed=self._on_closed)
            self._deadline = t.loop.call_later(t.handshake_timeout, self._handshake_deadline)
            self.channel.start()
        except Exception as e:
            self._on_closed(e if isinstance(e, OSError) else FatalDTLSError(str(e)))

    def _handshake_deadline(self) -> None:
        if self.channel is not None and not self.channel.established:
            self.channel.close(FatalDTLSError("DTLS handshake timed out"), notify=False)

    def _datagram(self, data: bytes) -> None:
        if self.channel is not None:
            self.channel.feed(data)

    def _socket_error(self, exc: Exception) -> None:
        # ICMP port unreachable etc.: the server is not there
        if self.channel is not None and not self.channel.established:
            self.channel.close(exc, notify=False)

    def _on_established(self) -> None:
        assert self.channel is not None
        conn = self.channel.conn
        self.peer_cert_der = self.channel.peer_cert_der()
        self.session_reused = session_reused(conn)
        session = conn.get_session()
        if session is not None:
            self._transport.sessions[self.key] = session
        log.debug("DTLS association to %s established in %.1f ms (resumed=%s)", self.hostinfo,
                  1000 * (self.channel.handshake_seconds or 0), self.session_reused)
        queue, self._queue = self._queue or [], None
        if not self.ready.done():
            self.ready.set_result(None)
        for datagram in queue:
            self.send(datagram)

    def _on_plaintext(self, data: bytes) -> None:
        self._transport._received_plaintext(self, data)

    def _on_closed(self, reason: Exception) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue = None
        if self._deadline is not None:
            self._deadline.cancel()
        if not self.ready.done():
            self.ready.set_exception(reason)
            self.ready.exception()  # mark retrieved: the CoAP layer gets the error too
        if self._udp is not None:
            self._udp.close()
        if self.channel is None or not self.channel.established:
            # a failed handshake must not poison the next attempt's resumption
            self._transport.sessions.pop(self.key, None)
        self._transport._remote_closed(self, reason)

    def send(self, datagram: bytes) -> None:
        if self._closed:
            raise FatalDTLSError("DTLS association is closed")
        if self._queue is not None:
            self._queue.append(datagram)
            return
        assert self.channel is not None
        self.channel.write(datagram)

    def close(self, reason: Exception, *, notify: bool = True) -> None:
        """End the association (with close_notify if ``notify`` and established)."""
        if self.channel is not None:
            self.channel.close(reason, notify=notify)
        else:
            self._task.cancel()
            self._on_closed(reason)


class _ClientProtocol(asyncio.DatagramProtocol):
    def __init__(self, remote: DTLSClientRemote) -> None:
        self.remote = remote

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            self.remote._datagram(data)
        except Exception:
            log.exception("Unhandled error processing a datagram from %s", addr)

    def error_received(self, exc: Exception) -> None:
        self.remote._socket_error(exc)


class DTLSClientTransport(interfaces.MessageInterface):
    """aiocoap MessageInterface that sends ``coaps://`` requests over DTLS with certificates.

    Requests arriving from the server over an association are served by the Context's
    ``serversite`` like any other (RFC 9066 Call Home: the DTLS client is the CoAP server).
    ``on_closed(remote, reason)``, when set, is called when an association ends.
    """

    on_closed: Callable[[DTLSClientRemote, Exception], None] | None = None

    def __init__(self, mman: interfaces.MessageManager, credentials: Credentials, *, mtu: int,
                 idle_timeout: float, handshake_timeout: float, dead_peer_timeout: float | None,
                 loop: asyncio.AbstractEventLoop) -> None:
        self._mman: interfaces.MessageManager | None = mman
        self.credentials = credentials
        self.loop = loop
        self.mtu = mtu
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.dead_peer_timeout = dead_peer_timeout
        self.ssl_context, self._keepalive = make_context(credentials, server=False)
        self.pool: dict[tuple[str, int, str], DTLSClientRemote] = {}
        self.sessions: dict[tuple[str, int, str], SSL.Session] = {}
        self._sweeper: asyncio.Task[None] | None = asyncio.create_task(
            self._sweep(), name="DTLS client idle sweep")

    def _received_plaintext(self, remote: DTLSClientRemote, data: bytes) -> None:
        if self._mman is None:
            return
        try:
            message = Message.decode(data, remote=remote)
        except error.UnparsableMessage:
            log.warning("Ignoring unparsable message from %s", remote)
            return
        self._mman.dispatch_message(message)

    def _remote_closed(self, remote: DTLSClientRemote, reason: Exception) -> None:
        if self.pool.get(remote.key) is remote:
            del self.pool[remote.key]
        log.debug("DTLS association to %s closed: %r", remote.hostinfo, reason)
        if self.on_closed is not None:
            try:
                self.on_closed(remote, reason)
            except Exception:
                log.exception("on_closed hook failed")
        if self._mman is not None:
            self._mman.dispatch_error(reason, remote)

    def send(self, message: Message) -> None:
        remote = message.remote
        if self._mman is None or not isinstance(remote, DTLSClientRemote) or remote.closed:
            log.info("Not sending %r: DTLS association is gone", message)
            return
        try:
            remote.send(message.encode())
        except Exception as e:
            log.info("Sending to %s failed: %s", remote, e)

    async def recognize_remote(self, remote: Any) -> bool:
        return isinstance(remote, DTLSClientRemote) and self.pool.get(remote.key) is remote

    async def determine_remote(self, message: Message) -> DTLSClientRemote | None:
        if message.requested_scheme != "coaps":
            return None
        if self._mman is None:
            raise error.LibraryShutdown()
        if message.unresolved_remote is not None:
            host, port = hostportsplit(message.unresolved_remote)
        elif message.opt.uri_host:
            host, port = message.opt.uri_host, message.opt.uri_port
        else:
            raise ValueError("No location found to send message to (neither in .opt.uri_host nor in .remote)")
        port = port or COAPS_PORT
        return self.connect(host, port)

    def connect(self, host: str, port: int) -> DTLSClientRemote:
        """The live association to ``host``/``port``, started now if there is none."""
        key = (host, port, self.credentials.server_hostname or host)
        remote = self.pool.get(key)
        if remote is None or remote.closed:
            remote = DTLSClientRemote(self, host, port)
            self.pool[key] = remote
        return remote

    async def _sweep(self) -> None:
        period = max(0.5, min(self.idle_timeout, self.dead_peer_timeout or self.idle_timeout) / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for remote in list(self.pool.values()):
                try:
                    self._check(remote, now)
                except Exception:  # keep sweeping the others
                    log.exception("DTLS client sweep failed for %s", remote)

    def _check(self, remote: DTLSClientRemote, now: float) -> None:
        ch = remote.channel
        if ch is None or not ch.established:
            return
        if now - ch.last_activity > self.idle_timeout:
            remote.close(IdleTimeout("idle DTLS association closed"))
        elif (self.dead_peer_timeout is not None and ch.last_tx > ch.last_rx
              and now - ch.last_rx > self.dead_peer_timeout):
            # the server may have lost the association (restart): start afresh next time
            remote.close(FatalDTLSError(f"no datagram from the server for {now - ch.last_rx:.0f} s"),
                         notify=False)

    async def shutdown(self) -> None:
        """close_notify to every server, close the sockets.  Idempotent."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._mman = None
        for remote in list(self.pool.values()):
            remote.close(TransportShutdown("DTLS client shutting down"))
        self.pool.clear()
