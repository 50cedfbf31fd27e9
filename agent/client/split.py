"""Splitting a mitigation request that does not fit the path MTU (RFC 9132 §7.3, SC-170).

Theory of operation
-------------------
Over DTLS a CoAP message must fit one DTLS record in one datagram: the PMTU (1280 bytes
unless known better) minus the IP and UDP headers, the 13-byte DTLS 1.2 record header and
the cipher suite's expansion (:func:`agent.transports.dtls_core.plaintext_limit`).  The
payload must also stay within what aiocoap sends without Block1
(:func:`~agent.transports.dtls_core.payload_size_for`); a DOTS client does not use Block1
for requests.  Over TLS there is no such limit, but :class:`MessageLimit` can impose one.

"If the total request size exceeds the PMTU, then the DOTS client MUST split the DOTS signal
into separate messages; for example, the list of addresses in the 'target-prefix' parameter
could be split into multiple lists and each list conveyed in a new PUT request."
:func:`split_scope` does exactly that: the *target* items ('target-prefix', 'target-fqdn',
'target-uri', 'alias-name') are packed greedily, in order, into as few scopes as fit; every
piece keeps the ports, protocols, lifetime and trigger-mitigation of the original, so the
union of the pieces covers exactly what the original request covered.

The pieces get separate, increasing mids.  The server deletes a lower mid of the same client
that *overlaps* a higher one (§4.4.1, SC-065), so pieces must not overlap each other: before
splitting, duplicate items and prefixes contained in another listed prefix are dropped (they
add nothing to the covered address set).  FQDNs, URIs and aliases that resolve (at the
server) to overlapping addresses cannot be detected here; keep such targets in one request.
A single target item whose scope still does not fit (e.g. thousands of port ranges) cannot be
split without changing the request's meaning: :class:`RequestTooLargeError`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.numbers import rfc9132
from agent.transports.dtls_core import payload_size_for, plaintext_limit

TARGET_KEYS = ("target-prefix", "target-fqdn", "target-uri", "alias-name")
TOKEN_ROOM = 8  # the longest CoAP token a request may carry
COAP_FIXED_HEADER = 4


class RequestTooLargeError(ValueError):
    """A mitigation request does not fit one message (SC-170) and was not sent.

    Raised by ``DotsClient.mitigate()`` when the request would need splitting (use
    ``DotsClient.mitigate_all()``), and by :func:`split_scope` when even one target item
    does not fit.  ``pieces`` is how many PUTs splitting needs (0: impossible).
    """

    def __init__(self, message: str, pieces: int = 0) -> None:
        super().__init__(message)
        self.pieces = pieces


@dataclass(frozen=True)
class MessageLimit:
    """Largest CoAP message (header, token, options, payload) and payload one request may use."""

    message: int
    payload: int

    @classmethod
    def for_dtls(cls, pmtu: int = rfc9132.DEFAULT_PMTU) -> MessageLimit:
        """§7.3: PMTU - IPv6/UDP headers - DTLS 1.2 record header - AEAD expansion."""
        if pmtu < 576:
            raise ValueError("a PMTU below 576 bytes is not usable (RFC 1122 §3.3.3)")
        return cls(plaintext_limit(pmtu), payload_size_for(pmtu))

    @classmethod
    def unlimited(cls) -> MessageLimit:
        return cls(1 << 30, 1 << 30)


def coap_request_size(path: tuple[str, ...], payload: bytes, *, if_match: bool = False) -> int:
    """Encoded size of a PUT with this Uri-Path, Content-Format dots+cbor and *payload*
    (the longest token assumed)."""
    import aiocoap
    from aiocoap import numbers as coap

    msg = aiocoap.Message(code=coap.PUT, payload=payload, content_format=rfc9132.CONTENT_FORMAT_DOTS_CBOR)
    msg.opt.uri_path = path
    if if_match:
        msg.opt.if_match = [b""]
    return COAP_FIXED_HEADER + TOKEN_ROOM + len(msg.opt.encode()) + (1 + len(payload) if payload else 0)


def _prune(items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Drop duplicates and prefixes covered by another listed prefix (no two pieces overlap)."""
    unique = list(dict.fromkeys(items))
    nets = [ipaddress.ip_network(v, strict=False) for k, v in unique if k == "target-prefix"]
    out = []
    for key, value in unique:
        if key == "target-prefix":
            net = ipaddress.ip_network(value, strict=False)
            if any(other != net and other.version == net.version and net.subnet_of(other)  # type: ignore[arg-type]
                   for other in nets):
                continue
        out.append((key, value))
    return out


def _with_targets(scope: dict[str, Any], items: list[tuple[str, Any]]) -> dict[str, Any]:
    piece = {k: v for k, v in scope.items() if k not in TARGET_KEYS}
    for key in TARGET_KEYS:
        values = [v for k, v in items if k == key]
        if values:
            piece[key] = values
    return piece


def split_scope(scope: dict[str, Any], fits: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """*scope* itself if it ``fits``, else the fewest greedy pieces of its target items that do
    (see the module docstring); raises :class:`RequestTooLargeError` if one item alone does not."""
    if fits(scope):
        return [scope]
    items = _prune([(k, v) for k in TARGET_KEYS for v in scope.get(k, [])])
    pieces: list[list[tuple[str, Any]]] = []
    current: list[tuple[str, Any]] = []
    for item in items:
        if fits(_with_targets(scope, [*current, item])):
            current.append(item)
            continue
        if not current:
            raise RequestTooLargeError(f"the request for {item[0]} {item[1]!r} alone does not fit one message "
                                       "(RFC 9132 §7.3); fewer ports/protocols per request are needed")
        pieces.append(current)
        current = [item]
        if not fits(_with_targets(scope, current)):
            raise RequestTooLargeError(f"the request for {item[0]} {item[1]!r} alone does not fit one message "
                                       "(RFC 9132 §7.3); fewer ports/protocols per request are needed")
    if current:
        pieces.append(current)
    return [_with_targets(scope, p) for p in pieces]
