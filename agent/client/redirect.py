"""Redirected signaling on the client side (RFC 9132 §4.6): what a 5.03 says and whether to follow it.

Theory of operation
-------------------
A DOTS server that wants a client elsewhere answers 5.03 (Service Unavailable) with a
'redirected-signal' body: 'alt-server' (the alternate server's FQDN, mandatory) and
optionally 'alt-server-record' (its IP addresses, so the client can skip DNS while DNS may
be under attack too).  The Max-Age option is the TTL of the redirection: 2^32-1 is infinite,
0 means "for the request in progress only"; absent, CoAP's default of 60 s applies.

:class:`Redirection` is that answer as data.  :class:`RedirectMemory` keeps, per server
identity (a name or an address), when the client last communicated with it.  SC-138: a
redirection to a server used in the last five minutes must be ignored (the client then turns
to other provisioned servers) and SC-139 recommends alerting the administrator about such
loops: :meth:`RedirectMemory.loop` names the recently used server, and the caller logs an
error and counts the loop.  Both classes are sans-I/O: time enters through ``now``.

The client (``DotsClient``) uses them this way: on a redirection it checks for a loop, builds
a Connector for the alternate server -- its records as addresses, the 'alt-server' name as
the name the certificate must carry, the port of the current server (the body carries none)
-- moves the session there, re-sends the failed request (SC-136) and the still-active
requests, and when the TTL has expired goes back to the provisioned server(s) (SC-134),
immediately unless a mitigation is active (§4.6).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import aiocoap
from aiocoap import numbers as coap

from agent.codec import CodecError, Direction, MessageType, decode_cbor
from agent.numbers import rfc9132

INFINITE_TTL = 2**32 - 1
DEFAULT_MAX_AGE = 60  # RFC 7252 §5.10.5


@dataclass(frozen=True)
class Redirection:
    """A 5.03 redirection: the alternate server and for how long it replaces the provisioned one."""

    alt_server: str
    records: tuple[str, ...]
    ttl: float  # seconds; math.inf for Max-Age 2^32-1
    received_at: float  # time.monotonic()
    from_server: str = ""

    @property
    def expires_at(self) -> float:
        return self.received_at + self.ttl

    def expired(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) >= self.expires_at

    @property
    def identities(self) -> tuple[str, ...]:
        return (self.alt_server.lower(), *self.records)

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        left = None if math.isinf(self.ttl) else max(0.0, round(self.expires_at - now, 1))
        return {"alt-server": self.alt_server, "alt-server-record": list(self.records),
                "ttl": None if math.isinf(self.ttl) else self.ttl, "expires-in": left, "from": self.from_server}

    @classmethod
    def from_response(cls, msg: aiocoap.Message, now: float | None = None, from_server: str = "") -> Redirection | None:
        """The redirection a response carries, or None (not a 5.03, or no 'alt-server')."""
        if msg.code != coap.SERVICE_UNAVAILABLE or msg.opt.content_format != rfc9132.CONTENT_FORMAT_DOTS_CBOR:
            return None
        try:
            decoded = decode_cbor(msg.payload, Direction.RESPONSE, expect=MessageType.REDIRECTED_SIGNAL)
        except CodecError:
            return None
        members = decoded.members()
        alt = members.get("alt-server")
        if not alt:
            return None
        max_age = msg.opt.max_age
        max_age = DEFAULT_MAX_AGE if max_age is None else int(max_age)
        ttl = math.inf if max_age >= INFINITE_TTL else float(max_age)
        return cls(str(alt), tuple(str(a) for a in members.get("alt-server-record", [])), ttl,
                   time.monotonic() if now is None else now, from_server)


class RedirectMemory:
    """When each server (name or address) was last communicated with (SC-138) and loop alerts (SC-139)."""

    def __init__(self, window: float = rfc9132.REDIRECT_LOOP_WINDOW) -> None:
        self.window = window
        self.last_used: dict[str, float] = {}
        self.loops: list[tuple[float, str, str]] = []  # (when, from server, recently used target)

    def used(self, identities: tuple[str, ...] | list[str], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for ident in identities:
            if ident:
                self.last_used[ident.lower()] = now

    def forget(self, identities: tuple[str, ...] | list[str]) -> None:
        """A redirection ended normally (TTL expiry): being sent there again is not a loop."""
        for ident in identities:
            self.last_used.pop(ident.lower(), None)

    def loop(self, redirection: Redirection, now: float | None = None) -> str | None:
        """The identity of the redirection target used within the window, if any (SC-138)."""
        now = time.monotonic() if now is None else now
        for ident in redirection.identities:
            at = self.last_used.get(ident.lower())
            if at is not None and now - at < self.window:
                return ident
        return None

    def alert(self, redirection: Redirection, target: str, now: float | None = None) -> None:
        self.loops.append((time.monotonic() if now is None else now, redirection.from_server, target))
