"""Who is at the other end of a CoAP request: certificate, cuid, PSK identity, address.

Works on the ``remote`` of an aiocoap message (``request.remote``) for:

* aiocoap's TCP/TLS connections (``aiocoap.transports.tcp.TcpConnection``, also the ones
  made by :mod:`agent.transports.tls`): the certificate is read from the asyncio
  transport's ``ssl_object``;
* remotes of our DTLS transport, which carry ``peer_cert_der`` / ``psk_identity``;
* anything exposing an asyncio transport as ``_transport`` or ``transport``.

The cuid is RFC 9132 §4.4.1.1's, derived from the leaf certificate's SubjectPublicKeyInfo.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

from agent.pki import cuid_from_certificate


def _asyncio_transport(remote: Any) -> Any:
    for name in ("_transport", "transport"):
        transport = getattr(remote, name, None)
        if transport is not None and hasattr(transport, "get_extra_info"):
            return transport
    return None


def _ssl_object(remote: Any) -> Any:
    transport = _asyncio_transport(remote)
    if transport is None:
        return None
    return transport.get_extra_info("ssl_object")


def peer_certificate(remote: Any) -> bytes | None:
    """DER of the peer's leaf certificate, or None (no remote, no TLS, PSK, not yet connected)."""
    if remote is None:
        return None
    der = getattr(remote, "peer_cert_der", None)
    if der is not None:
        return bytes(der)
    ssl_object = _ssl_object(remote)
    if ssl_object is None:
        return None
    try:
        der = ssl_object.getpeercert(binary_form=True)
    except ValueError:  # handshake not done
        return None
    return der or None


@functools.lru_cache(maxsize=4096)
def _cuid_of_der(der: bytes) -> str:
    return cuid_from_certificate(der)


def peer_cuid(remote: Any) -> str | None:
    """RFC 9132 cuid of the peer's certificate, or None when there is no certificate.

    Parsing the certificate costs tens of microseconds, so results are cached by certificate.
    """
    der = peer_certificate(remote)
    return _cuid_of_der(der) if der is not None else None


def peer_psk_identity(remote: Any) -> bytes | None:
    """PSK identity the peer used (DTLS-PSK), or None."""
    if remote is None:
        return None
    identity = getattr(remote, "psk_identity", None)
    return bytes(identity) if identity is not None else None


def _normalise(address: Any) -> tuple[str, int] | None:
    if not isinstance(address, tuple) or len(address) < 2:
        return None
    host, port = address[0], address[1]
    if not isinstance(host, str) or not isinstance(port, int):
        return None
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host, port
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped), port
    return host, port


def peer_address(remote: Any) -> tuple[str, int] | None:
    """``(ip, port)`` of the peer as seen on the socket (IPv4-mapped IPv6 shown as IPv4)."""
    if remote is None:
        return None
    for name in ("peer_address", "address", "sockaddr"):
        value = getattr(remote, name, None)
        if value is not None and not callable(value):
            found = _normalise(tuple(value) if isinstance(value, list) else value)
            if found is not None:
                return found
    transport = _asyncio_transport(remote)
    if transport is not None:
        return _normalise(transport.get_extra_info("peername"))
    return None
