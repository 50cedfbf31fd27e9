"""Server side of the CoAP-over-DTLS transport: one UDP socket, one DTLS association per peer."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from aiocoap import error, interfaces
from aiocoap.message import Message
from aiocoap.numbers import COAPS_PORT
from aiocoap.util import hostportjoin
from OpenSSL import SSL

from .credentials import Credentials
from .dtls_core import (
    IP_UDP_OVERHEAD,
    RECORD_HEADER,
    ConnInfo,
    CookieJar,
    DTLSChannel,
    FatalDTLSError,
    IdleTimeout,
    TransportShutdown,
    block_size_exp_for,
    is_client_hello,
    make_context,
    pack_datagrams,
    payload_size_for,
    split_records,
)
from .limits import Admission, Association, ListenerLimits, PendingHandshake, address_key, spki_identity

log = logging.getLogger(__name__)


def _unmapped_host(addr: Any) -> str:
    host = addr[0]
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return host


class DTLSServerRemote(interfaces.EndpointAddress):
    """A DTLS association accepted by the server: the ``remote`` of requests arriving over it.

    Equality is identity: a new handshake from the same address is a new remote (a new epoch,
    RFC 7252 §9.1.2).  ``peer_cert_der`` and ``psk_identity`` say who authenticated.
    """

    scheme = "coaps"
    is_multicast = False
    is_multicast_locally = False
    maximum_block_size_exp = 6
    maximum_payload_size = 1124

    def __init__(self, transport: DTLSServerTransport, addr: Any, conn: SSL.Connection) -> None:
        self._transport = transport
        self.sockaddr = addr
        self.info: ConnInfo = conn.get_app_data()
        self.peer_cert_der: bytes | None = None
        #: this association as the admission counts it, once established and admitted
        self.assoc: Association | None = None
        #: its handshake while pending (ended once: completed, failed, timed out or evicted)
        self.pending: PendingHandshake | None = None
        #: aiocoap may lower this per remote; it starts at what fits the path MTU
        self.maximum_block_size_exp = block_size_exp_for(transport.mtu)
        self.maximum_payload_size = payload_size_for(transport.mtu)
        self.channel = DTLSChannel(conn, lambda d: transport._sendto(d, addr), mtu=transport.mtu,
                                   loop=transport.loop, on_plaintext=self._on_plaintext,
                                   on_established=self._on_established, on_closed=self._on_closed)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.hostinfo} cert={self.peer_cert_der is not None}>"

    @property
    def psk_identity(self) -> bytes | None:
        return self.info.psk_identity

    @property
    def hostinfo(self) -> str:
        port = self.sockaddr[1]
        return hostportjoin(_unmapped_host(self.sockaddr), None if port == COAPS_PORT else port)

    @property
    def hostinfo_local(self) -> str:
        host, port = self._transport.local_address[:2]
        return hostportjoin(host, None if port == COAPS_PORT else port)

    @property
    def uri_base(self) -> str:
        return "coaps://" + self.hostinfo

    @property
    def uri_base_local(self) -> str:
        return "coaps://" + self.hostinfo_local

    @property
    def blockwise_key(self) -> Any:
        return self

    @property
    def authenticated_claims(self) -> tuple[Any, ...]:
        return ()

    def send(self, datagram: bytes) -> None:
        self.channel.write(datagram)

    # channel callbacks

    def _on_established(self) -> None:
        self.peer_cert_der = self.channel.peer_cert_der()
        if not self._transport._admit(self):
            return
        log.debug("DTLS association with %s established in %.1f ms (cert=%s, psk=%r)", self.hostinfo,
                  1000 * (self.channel.handshake_seconds or 0), self.peer_cert_der is not None,
                  self.psk_identity)
        hook = self._transport.on_established
        if hook is not None:
            try:
                hook(self)
            except Exception:  # a hook must not break the association
                log.exception("on_established hook failed")

    def _on_plaintext(self, data: bytes) -> None:
        self._transport._received_plaintext(self, data)

    def _on_closed(self, reason: Exception) -> None:
        self._transport._peer_closed(self, reason)


def _default_identity(peer: DTLSServerRemote) -> Hashable | None:
    """SHA-256 of the peer certificate's SPKI (what the cuid hashes), else its PSK identity."""
    if peer.peer_cert_der is not None:
        return spki_identity(peer.peer_cert_der)
    return (b"psk:" + peer.psk_identity) if peer.psk_identity is not None else None


class _ServerProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: DTLSServerTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            self.owner._datagram_received(data, addr)
        except Exception:  # one peer's trouble must never stop the socket
            log.exception("Unhandled error processing a datagram from %s", addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("DTLS server socket error: %s", exc)


class DTLSServerTransport(interfaces.MessageInterface):
    """aiocoap MessageInterface serving ``coaps://`` on one UDP socket.

    It never initiates associations (``determine_remote`` returns None): requests to
    ``coaps://`` go to a client transport.  Requests *can* be sent to an accepted peer by
    putting its :class:`DTLSServerRemote` in ``message.remote`` (RFC 9066 Call Home, where the
    DTLS server is the requesting party).  ``on_established(remote)`` and
    ``on_closed(remote, reason)``, when set, are called when a peer's handshake completes and
    when its association ends.
    """

    on_established: Callable[[DTLSServerRemote], None] | None = None
    on_closed: Callable[[DTLSServerRemote, Exception], None] | None = None

    def __init__(self, mman: interfaces.MessageManager, credentials: Credentials, *,
                 require_client_cert: bool, mtu: int, idle_timeout: float, handshake_timeout: float | None,
                 dead_peer_timeout: float | None, loop: asyncio.AbstractEventLoop,
                 admission: Admission | None = None,
                 identity: Callable[[DTLSServerRemote], Hashable | None] | None = None) -> None:
        self._mman: interfaces.MessageManager | None = mman
        self.loop = loop
        self.mtu = mtu
        self.idle_timeout = idle_timeout
        #: pending handshakes and associations are counted (and capped) here; may be shared
        self.admission = admission or Admission(
            ListenerLimits(handshake_timeout=handshake_timeout) if handshake_timeout else None, name="coaps")
        self._handshake_timeout = handshake_timeout
        #: who an association belongs to for max-associations-per-client
        self.identity = identity or _default_identity
        self.dead_peer_timeout = dead_peer_timeout
        self.cookies = CookieJar()
        self.ssl_context, self._keepalive = make_context(
            credentials, server=True, require_client_cert=require_client_cert, cookies=self.cookies)
        self.peers: OrderedDict[Any, DTLSServerRemote] = OrderedDict()
        self._udp: asyncio.DatagramTransport | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.local_address: tuple[Any, ...] = ("", 0)
        self.stats = {"dropped": 0, "hello_verify": 0, "accepted": 0}

    async def _bind(self, bind: tuple[str, int]) -> None:
        host, port = bind
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                # "::" means both families; an explicit IPv6 address needs no mapping anyway
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, COAPS_PORT if port is None else port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._udp, _ = await self.loop.create_datagram_endpoint(lambda: _ServerProtocol(self), sock=sock)
        self.local_address = sock.getsockname()
        self._sweeper = asyncio.create_task(self._sweep(), name="DTLS server idle sweep")

    @property
    def port(self) -> int:
        return int(self.local_address[1])

    @property
    def handshake_timeout(self) -> float:
        """Seconds a handshake may take (the admission's limit, read at every sweep)."""
        limit = self.admission.limits.handshake_timeout
        return min(limit, self._handshake_timeout) if self._handshake_timeout else limit

    # ---------------------------------------------------------------- datagrams

    def _sendto(self, datagram: bytes, addr: Any) -> None:
        if self._udp is not None and not self._udp.is_closing():
            self._udp.sendto(datagram, addr)

    def _datagram_received(self, data: bytes, addr: Any) -> None:
        peer = self.peers.get(addr)
        if peer is not None:
            # An epoch-0 ClientHello on an established association is a client that lost its
            # state (RFC 6347 §4.2.8): it must pass the cookie exchange before it replaces the
            # old association; anything else belongs to the existing association.
            if not (peer.channel.established and is_client_hello(data)):
                self.peers.move_to_end(addr)
                peer.channel.feed(data)
                return
        if not is_client_hello(data):
            self.stats["dropped"] += 1
            return
        self._listen(data, addr)

    def _listen(self, data: bytes, addr: Any) -> None:
        """Stateless cookie exchange; a fresh SSL object per ClientHello, kept only on success."""
        conn = SSL.Connection(self.ssl_context, None)
        conn.set_app_data(ConnInfo(addr=addr))
        conn.set_ciphertext_mtu(self.mtu - IP_UDP_OVERHEAD)
        try:
            conn.bio_write(data)
            conn.DTLSv1_listen()
        except SSL.WantReadError:
            # no valid cookie: answer with HelloVerifyRequest and forget this SSL object
            self._send_pending(conn, addr)
            self.stats["hello_verify"] += 1
            return
        except SSL.Error as e:
            log.debug("Dropping ClientHello from %s: %s", addr, e)
            self.stats["dropped"] += 1
            return
        old = self.peers.pop(addr, None)
        if old is not None:
            old.channel.close(FatalDTLSError("peer started a new DTLS association"), notify=False)
        token = self.admission.begin_handshake(addr)
        if token is None:
            self.stats["dropped"] += 1
            return
        peer = DTLSServerRemote(self, addr, conn)
        peer.pending = token
        token.abort = lambda: peer.channel.close(IdleTimeout("evicted: pending-handshake slots full"))
        self.peers[addr] = peer
        self.stats["accepted"] += 1
        peer.channel.start()

    def _send_pending(self, conn: SSL.Connection, addr: Any) -> None:
        chunks = []
        while True:
            try:
                chunks.append(conn.bio_read(65536))
            except SSL.WantReadError:
                break
        for dgram in pack_datagrams(split_records(b"".join(chunks)), self.mtu - IP_UDP_OVERHEAD):
            if len(dgram) >= RECORD_HEADER:
                self._sendto(dgram, addr)

    # ---------------------------------------------------------------- to and from aiocoap

    def _received_plaintext(self, peer: DTLSServerRemote, data: bytes) -> None:
        if self._mman is None:
            return
        try:
            message = Message.decode(data, remote=peer)
        except error.UnparsableMessage:
            log.warning("Ignoring unparsable message from %s", peer)
            return
        self._mman.dispatch_message(message)

    def _admit(self, peer: DTLSServerRemote) -> bool:
        """Handshake done: count it; register the association unless a limit refuses it."""
        self.admission.end_handshake(peer.pending, "completed")
        ch = peer.channel
        assoc = Association(address=address_key(peer.sockaddr), identity=self.identity(peer),
                            close=lambda: ch.close(IdleTimeout("evicted: max-associations-per-client")),
                            last_activity=lambda: ch.last_activity)
        if not self.admission.established(assoc):
            ch.close(IdleTimeout("refused: max-associations"))
            return False
        peer.assoc = assoc
        return True

    def _peer_closed(self, peer: DTLSServerRemote, reason: Exception) -> None:
        if self.peers.get(peer.sockaddr) is peer:
            del self.peers[peer.sockaddr]
        if peer.assoc is not None:
            self.admission.released(peer.assoc)
        elif not peer.channel.established:
            timed_out = isinstance(reason, IdleTimeout) or "timed out" in str(reason)
            self.admission.end_handshake(peer.pending, "timed-out" if timed_out else "failed")
        log.debug("DTLS association with %s closed: %r", peer.hostinfo, reason)
        if self.on_closed is not None and peer.assoc is not None:
            try:
                self.on_closed(peer, reason)
            except Exception:
                log.exception("on_closed hook failed")
        if self._mman is not None and peer.assoc is not None:
            self._mman.dispatch_error(reason, peer)

    def send(self, message: Message) -> None:
        remote = message.remote
        if self._mman is None or not isinstance(remote, DTLSServerRemote) or remote.channel.closed:
            log.info("Not sending %r: DTLS association is gone", message)
            return
        try:
            remote.send(message.encode())
        except Exception as e:  # the channel already reported the failure
            log.info("Sending to %s failed: %s", remote, e)

    async def recognize_remote(self, remote: Any) -> bool:
        return isinstance(remote, DTLSServerRemote) and remote._transport is self

    async def determine_remote(self, message: Message) -> None:
        return None

    # ---------------------------------------------------------------- housekeeping

    async def _sweep(self) -> None:
        period = max(0.5, min(self.idle_timeout, self.handshake_timeout,
                              self.dead_peer_timeout or self.idle_timeout) / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for peer in list(self.peers.values()):
                ch = peer.channel
                try:
                    if not ch.established and now - ch.started > self.handshake_timeout:
                        ch.close(IdleTimeout("handshake did not complete"), notify=False)
                    elif ch.established and now - ch.last_activity > self.idle_timeout:
                        ch.close(IdleTimeout("idle DTLS association closed"))
                    elif (ch.established and self.dead_peer_timeout is not None
                          and ch.last_tx > ch.last_rx and now - ch.last_rx > self.dead_peer_timeout):
                        ch.close(IdleTimeout(f"no datagram from the peer for {now - ch.last_rx:.0f} s"),
                                 notify=False)
                except Exception:  # keep sweeping the others
                    log.exception("DTLS server sweep failed for %s", peer)

    async def shutdown(self) -> None:
        """Send close_notify to every peer, close the socket.  Idempotent."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._mman = None  # the message manager may be shutting down already: report nothing
        for peer in list(self.peers.values()):
            peer.channel.close(TransportShutdown("DTLS server shutting down"))
        self.peers.clear()
        if self._udp is not None:
            self._udp.close()
            self._udp = None

