"""CoAP over DTLS 1.2 with X.509 certificates (and optionally PSK) for aiocoap, on pyOpenSSL.

Theory of operation
===================

aiocoap's own DTLS support (tinydtls) knows pre-shared keys only.  This module adds an asyncio
DTLS transport built on OpenSSL through pyOpenSSL, using *memory BIOs*: OpenSSL never touches a
socket.  Each association is a :class:`~agent.transports.dtls_core.DTLSChannel` that is fed the
datagrams received for it and whose output is drained from the BIO, cut at DTLS record
boundaries (a memory BIO is a byte stream and would glue a handshake flight's datagrams
together) and re-packed into datagrams no larger than the path MTU allows.  Handshake
retransmissions are driven by ``loop.call_later`` from ``DTLSv1_get_timeout`` /
``DTLSv1_handle_timeout``.  ``OP_NO_QUERY_MTU`` and ``set_ciphertext_mtu(mtu - 48)`` (IPv6 + UDP
headers) keep every datagram within a 1280-byte path MTU by default.  Only DTLS 1.2 or later is
negotiated.

Server: one UDP socket (``("::", port)`` is dual-stack).  A datagram from an unknown address is
accepted only if it is an epoch-0 ClientHello; it is fed to a *throw-away* SSL object running
``DTLSv1_listen``.  Without a valid cookie the HelloVerifyRequest is sent and the object
forgotten, so unverified peers cost no state.  The cookie is HMAC-SHA256 over the peer address
and a time slot, keyed with a per-process random secret; because OpenSSL's cookie callbacks are
not told the peer address, the address is stored in the SSL object's app data just before the
synchronous ``DTLSv1_listen`` call and read back by the callbacks.  With a valid cookie the SSL
object becomes that address's association.  Each association lives until close_notify, a fatal
alert, an idle timeout, eviction (only by the same client's newer association, or when idle
past its liveness: :mod:`agent.transports.limits`) or shutdown.
Garbage never reaches an association unless it comes from that association's address, and even
then OpenSSL discards records that fail authentication.  An epoch-0 ClientHello from an address
with an established association must pass the cookie exchange before it replaces it.

Client: one connected UDP socket per ``(host, port, expected name)``.  The server certificate is
verified against ``Credentials.cafile`` and its SAN against ``Credentials.server_hostname`` or
the URI host (DNS name or IP address, checked by OpenSSL during the handshake); SNI is sent for
names.  Sessions are cached per server and offered on the next association (resumption).

aiocoap integration: both sides are ``aiocoap.interfaces.MessageInterface`` implementations
put under aiocoap's own MessageManager (CON/ACK, retransmission, deduplication) and
TokenManager, exactly as the UDP transports are.  This uses the private
``Context._append_tokenmanaged_messagemanaged_transport`` helper (and, for the client,
moves the new interface to the front of ``Context.request_interfaces`` so it is asked before
any other ``coaps`` transport).  The ``remote`` of every message is an
:class:`~aiocoap.interfaces.EndpointAddress` (one object per association, compared by
identity) that carries ``peer_cert_der`` (DER of the peer's leaf certificate) and
``psk_identity``.

Each remote also starts with ``maximum_block_size_exp`` / ``maximum_payload_size`` small enough
for one CoAP message (block) to fit one DTLS record in one datagram (OpenSSL does not split
application records to the MTU).  Association failures reach aiocoap as
:class:`DTLSError` subclasses, which are ``aiocoap.error.NetworkError``s.

PSK: if ``Credentials.psk`` is set, a server also offers PSK suites and looks the client's
identity up in that mapping; a client offers the first identity/key of the mapping first.  A
PSK handshake needs no certificate from the client.

Private APIs used: aiocoap's ``Context._append_tokenmanaged_messagemanaged_transport`` and
``Context.request_interfaces``; pyOpenSSL's ``OpenSSL._util.lib/ffi`` with ``Context._context`` /
``Connection._ssl`` (for the PSK callbacks, ``X509_VERIFY_PARAM_set1_host/_ip`` and
``SSL_session_reused``, which pyOpenSSL does not wrap) and ``Connection._reverse_mapping``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any

import aiocoap

from .credentials import Credentials
from .dtls_client import DTLSClientRemote, DTLSClientTransport
from .dtls_core import (
    CloseNotifyReceived,
    DTLSError,
    FatalDTLSError,
    IdleTimeout,
    TransportShutdown,
)
from .dtls_server import DTLSServerRemote, DTLSServerTransport
from .limits import Admission

__all__ = [
    "CloseNotifyReceived",
    "DTLSClientRemote",
    "DTLSClientTransport",
    "DTLSError",
    "DTLSServerRemote",
    "DTLSServerTransport",
    "FatalDTLSError",
    "IdleTimeout",
    "TransportShutdown",
    "add_dtls_client",
    "add_dtls_server",
]


def _find_tman(context: aiocoap.Context, transport: Any) -> Any:
    """The token manager driving ``transport`` in ``context`` (None if gone)."""
    for ri in context.request_interfaces:
        mman = getattr(ri, "token_interface", None)
        if getattr(mman, "message_interface", None) is transport:
            return ri
    return None


async def add_dtls_server(context: aiocoap.Context, bind: tuple[str, int], credentials: Credentials, *,
                          require_client_cert: bool = True, mtu: int = 1280, idle_timeout: float = 600.0,
                          handshake_timeout: float | None = None,
                          dead_peer_timeout: float | None = None, admission: Admission | None = None,
                          identity: Callable[[DTLSServerRemote], Hashable | None] | None = None
                          ) -> DTLSServerTransport:
    """Serve ``coaps://`` (CoAP over DTLS) for ``context.serversite`` on ``bind``.

    ``bind`` is ``(address, port)``; port 0 picks a free port (see the result's ``.port``),
    ``"::"`` accepts IPv4 and IPv6.  ``mtu`` is the path MTU the datagrams must fit.
    Associations are closed (close_notify) after ``idle_timeout`` seconds without traffic,
    dropped if their handshake takes longer than ``handshake_timeout`` (default: the
    admission's ``handshake-timeout``), or, when ``dead_peer_timeout`` is set, if data was sent
    but nothing received for that long.  Handshakes and associations are admitted by
    *admission* (:mod:`agent.transports.limits`; shared with other listeners to count them
    together, a private one with the YANG defaults when None), per client *identity* (default:
    the SHA-256 of the certificate's SPKI, or the PSK identity).  The returned
    transport has ``async shutdown()`` and ``.port``; ``context.shutdown()`` also shuts it down.
    """
    loop = asyncio.get_running_loop()
    holder: list[DTLSServerTransport] = []

    async def construct(mman: Any) -> DTLSServerTransport:
        t = DTLSServerTransport(mman, credentials, require_client_cert=require_client_cert, mtu=mtu,
                                idle_timeout=idle_timeout, handshake_timeout=handshake_timeout,
                                dead_peer_timeout=dead_peer_timeout, loop=loop,
                                admission=admission, identity=identity)
        await t._bind(bind)
        holder.append(t)
        return t

    await context._append_tokenmanaged_messagemanaged_transport(construct)
    transport = holder[0]
    _wrap_shutdown(context, transport)
    return transport


async def add_dtls_client(context: aiocoap.Context, credentials: Credentials, *, mtu: int = 1280,
                          idle_timeout: float = 600.0, handshake_timeout: float = 30.0,
                          dead_peer_timeout: float | None = 93.0) -> DTLSClientTransport:
    """Make ``context.request()`` send ``coaps://`` requests over this DTLS transport.

    The client presents ``credentials.cert`` (if set) and verifies the server against
    ``credentials.cafile`` and the URI host (or ``credentials.server_hostname``).  A handshake
    not completed within ``handshake_timeout`` seconds fails the requests waiting for it (DTLS
    silently drops records that fail authentication, e.g. under a wrong PSK, so some failures
    only show as silence).  An association on which data was sent but nothing received for
    ``dead_peer_timeout`` seconds (default: CoAP's MAX_TRANSMIT_WAIT) is dropped, so that the
    next request handshakes again (e.g. after a server restart lost the association); None
    disables that.  Idle associations are closed with close_notify after ``idle_timeout``.
    """
    loop = asyncio.get_running_loop()
    holder: list[DTLSClientTransport] = []

    async def construct(mman: Any) -> DTLSClientTransport:
        t = DTLSClientTransport(mman, credentials, mtu=mtu, idle_timeout=idle_timeout,
                                handshake_timeout=handshake_timeout, dead_peer_timeout=dead_peer_timeout,
                                loop=loop)
        holder.append(t)
        return t

    await context._append_tokenmanaged_messagemanaged_transport(construct)
    # be asked first for coaps:// (before e.g. aiocoap's PSK-only tinydtls client)
    context.request_interfaces.insert(0, context.request_interfaces.pop())
    transport = holder[0]
    _wrap_shutdown(context, transport)
    return transport


def _wrap_shutdown(context: aiocoap.Context, transport: DTLSServerTransport | DTLSClientTransport) -> None:
    """Let a direct ``transport.shutdown()`` take its token and message managers down too.

    A direct call detaches the token manager from the context and shuts it down, which (through
    the message manager) comes back here.  When ``Context.shutdown()`` is the caller, the token
    manager is already shutting down (its ``outgoing_requests`` is None): only the transport
    itself is closed then.
    """
    inner = transport.shutdown

    async def shutdown() -> None:
        tman = _find_tman(context, transport)
        if tman is not None:
            context.request_interfaces.remove(tman)
            if getattr(tman, "outgoing_requests", None) is not None:
                await tman.shutdown()  # comes back here with tman detached
                return
        await inner()

    transport.shutdown = shutdown  # type: ignore[method-assign]
