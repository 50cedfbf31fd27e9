"""What one peer, authenticated or not, can make a (D)TLS listener spend.

Theory of operation: one :class:`Admission` is shared by every listener of a process role (the
coaps+tcp and the coaps/DTLS listeners of a DOTS server, or of a Call Home client), so the
association limits count DTLS associations and TLS connections together, as the
``listener-limits`` grouping of ``dots-agent`` says.  A listener asks it

* :meth:`Admission.begin_handshake` before it spends anything on a peer (a TLS connection is
  accepted but no SSL state is built; a DTLS ClientHello has passed the stateless cookie
  exchange): it returns a :class:`PendingHandshake` token, or None when the per-address
  pending limit or the association limits (total, per address) are reached.  When the total
  pending limit is reached, the oldest pending handshake of the address group holding the
  most slots is aborted for the newcomer (fair share: only a group holding more than one slot
  more than the newcomer's own), so a flood from a few addresses cannot keep everyone else out
  for a whole handshake timeout.  Over the total association limit, associations idle past
  their liveness (``last_activity`` older than ``stale_after``) are closed first; an
  established association of a live peer is never taken for a newcomer;
* :meth:`Admission.end_handshake` with the token and the outcome (completed, failed,
  timed-out); a token ends once (an aborted handshake's later close is not counted twice);
* :meth:`Admission.established` with the peer's identity (the SHA-256 of its certificate's
  SubjectPublicKeyInfo by default, which the cuid is derived from; the PSK identity for a
  PSK peer): beyond ``max-associations-per-client`` the *same identity's* oldest association
  is closed, never another peer's;
* :meth:`Admission.released` when the association or connection is gone.

The counters are ``listener-statistics``; a limit that bites logs one WARNING per kind and
per :data:`WARN_EVERY` seconds (with the number of events since), never one per packet.
Changing :attr:`Admission.limits` affects new handshakes and associations only.

Memory: what a refused connection costs is a socket accepted and closed.  An admitted TLS
handshake costs asyncio's SSL protocol and its read buffer (:mod:`agent.transports.tls` cuts it
from 256 to 32 KiB).  ``malloc_trim(0)`` after bursts was tried and measured to make no
difference once the caps are in place (``benchmarks/handshake_flood.py``), so it is not used.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, fields
from typing import Any

log = logging.getLogger(__name__)

WARN_EVERY = 10.0
"""Seconds between two WARNING lines about the same limit."""


@dataclass(frozen=True)
class ListenerLimits:
    """The ``limits`` container of ``listener-limits`` (defaults are the YANG defaults)."""

    max_pending_handshakes: int = 256
    max_pending_handshakes_per_address: int = 16
    handshake_timeout: float = 10.0
    max_associations: int = 10000
    max_associations_per_client: int = 8
    max_associations_per_address: int = 64

    @classmethod
    def from_yang(cls, node: dict[str, Any] | None) -> ListenerLimits:
        """From the RFC 7951 ``limits`` container (absent leaves keep their defaults)."""
        node = node or {}
        kw: dict[str, Any] = {}
        for f in fields(cls):
            name = f.name.replace("_", "-")
            if name in node:
                kw[f.name] = float(node[name]) if f.name == "handshake_timeout" else int(node[name])
        return cls(**kw)


@dataclass
class ListenerStats:
    """The ``listener-statistics`` counters."""

    handshakes_pending: int = 0
    handshakes_completed: int = 0
    handshakes_failed: int = 0
    handshakes_timed_out: int = 0
    handshakes_refused: int = 0
    handshakes_evicted: int = 0
    associations: int = 0
    associations_refused: int = 0
    associations_evicted: int = 0

    def to_yang(self) -> dict[str, Any]:
        """RFC 7951 JSON of ``listener-statistics`` (counter64 as strings)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            gauge = f.name in ("handshakes_pending", "associations")
            out[f.name.replace("_", "-")] = value if gauge else str(value)
        return out


class RateLimitedWarning:
    """At most one WARNING per ``kind`` every ``every`` seconds, with the count since the last."""

    def __init__(self, logger: logging.Logger, every: float = WARN_EVERY) -> None:
        self.logger = logger
        self.every = every
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, kind: str, fmt: str, *args: Any) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.every:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        more = self._suppressed.pop(kind, 0)
        suffix = f" ({more} more since the last warning)" if more else ""
        self.logger.warning(fmt + suffix, *args)


def spki_identity(cert_der: bytes | None) -> Hashable | None:
    """SHA-256 of the SubjectPublicKeyInfo of a DER certificate (what RFC 9132's cuid hashes)."""
    if not cert_der:
        return None
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    cert = x509.load_der_x509_certificate(cert_der)
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


IPV6_GROUP = 64
"""IPv6 sources are counted per /64: one host (or one customer LAN) holds a whole /64, so
per-address limits counted per exact IPv6 address would not limit anyone."""


def address_key(addr: Any) -> str:
    """What a per-address limit counts by: the IPv4 address (IPv4-mapped IPv6 included), or
    the IPv6 /64 the address is in (loopback ``::1`` stays itself)."""
    host = addr[0] if isinstance(addr, tuple | list) else str(addr)
    try:
        ip = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return str(host)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        if not ip.is_loopback:
            return str(ipaddress.IPv6Network((ip, IPV6_GROUP), strict=False))
    return str(ip)


@dataclass(eq=False)
class PendingHandshake:
    """A handshake in progress, as the admission sees it (returned by ``begin_handshake``).

    ``abort`` (set by the listener once its connection object exists) tears the handshake
    down when its slot is taken for a newcomer."""

    address: str
    abort: Callable[[], None] | None = None
    since: float = field(default_factory=time.monotonic)
    ended: bool = False


@dataclass(eq=False)
class Association:
    """An established DTLS association or TLS connection, as the admission sees it."""

    address: str
    identity: Hashable | None
    close: Callable[[], None]
    last_activity: Callable[[], float]
    since: float = field(default_factory=time.monotonic)
    released: bool = False


class Admission:
    """Pending-handshake and association accounting of one or more listeners (module docstring)."""

    def __init__(self, limits: ListenerLimits | None = None, *, stale_after: float | None = None,
                 name: str = "listener") -> None:
        self.limits = limits or ListenerLimits()
        self.stale_after = stale_after
        self.name = name
        self.stats = ListenerStats()
        self._pending: dict[str, OrderedDict[int, PendingHandshake]] = {}
        self._by_address: dict[str, int] = {}
        self._by_identity: dict[Hashable, OrderedDict[int, Association]] = {}
        self._all: OrderedDict[int, Association] = OrderedDict()
        self.warn = RateLimitedWarning(log)

    # -- handshakes

    def begin_handshake(self, addr: Any, abort: Callable[[], None] | None = None) -> PendingHandshake | None:
        """May a handshake from *addr* start?  A token (counted as pending), or None: refused."""
        lim, key = self.limits, address_key(addr)
        mine = len(self._pending.get(key, ()))
        if mine >= lim.max_pending_handshakes_per_address:
            self._refuse_handshake("pending-address", "%s: %d handshakes pending from %s "
                                   "(max-pending-handshakes-per-address): refusing more",
                                   self.name, lim.max_pending_handshakes_per_address, key)
            return None
        if self._by_address.get(key, 0) + mine >= lim.max_associations_per_address:
            self.stats.associations_refused += 1
            self.warn("address", "%s: %d associations from %s (max-associations-per-address): refusing more",
                      self.name, lim.max_associations_per_address, key)
            return None
        if len(self._all) >= lim.max_associations and not self._evict_stale():
            self.stats.associations_refused += 1
            self.warn("total", "%s: %d associations (max-associations): refusing %s",
                      self.name, lim.max_associations, key)
            return None
        if self.stats.handshakes_pending >= lim.max_pending_handshakes and not self._evict_pending(mine):
            self._refuse_handshake("pending", "%s: %d TLS/DTLS handshakes pending (max-pending-handshakes):"
                                   " refusing %s", self.name, lim.max_pending_handshakes, key)
            return None
        token = PendingHandshake(key, abort)
        self._pending.setdefault(key, OrderedDict())[id(token)] = token
        self.stats.handshakes_pending += 1
        return token

    def _evict_pending(self, mine: int) -> bool:
        """Make room by aborting the oldest pending handshake of the biggest address group, if
        that group holds more than one slot more than the newcomer's (``mine``)."""
        if not self._pending:
            return False
        key, group = max(self._pending.items(), key=lambda kv: len(kv[1]))
        if len(group) <= mine + 1:
            return False
        victim = next((h for h in group.values() if h.abort is not None), None)
        if victim is None:
            return False
        self._drop(victim)
        self.stats.handshakes_evicted += 1
        self.warn("pending-evict", "%s: max-pending-handshakes reached: aborted the oldest of the %d pending "
                  "handshakes from %s for a newcomer", self.name, len(group) + 1, key)
        abort = victim.abort
        try:
            abort()
        except Exception:
            log.exception("aborting an evicted handshake failed")
        return True

    def _refuse_handshake(self, kind: str, fmt: str, *args: Any) -> None:
        self.stats.handshakes_refused += 1
        self.warn(kind, fmt, *args)

    def _drop(self, token: PendingHandshake) -> bool:
        """Forget a pending handshake; False if it had already ended."""
        if token.ended:
            return False
        token.ended = True
        group = self._pending.get(token.address)
        if group is not None:
            group.pop(id(token), None)
            if not group:
                del self._pending[token.address]
        self.stats.handshakes_pending = max(0, self.stats.handshakes_pending - 1)
        return True

    def end_handshake(self, token: PendingHandshake | None, outcome: str) -> None:
        """A handshake that :meth:`begin_handshake` admitted ended: completed, failed or timed-out.
        Idempotent; an evicted handshake's own end is not counted again."""
        if token is None or not self._drop(token):
            return
        if outcome == "completed":
            self.stats.handshakes_completed += 1
        elif outcome == "timed-out":
            self.stats.handshakes_timed_out += 1
            self.warn("timeout", "%s: handshake from %s not complete after %g s: closed",
                      self.name, token.address, self.limits.handshake_timeout)
        else:
            self.stats.handshakes_failed += 1

    # -- associations

    def established(self, assoc: Association) -> bool:
        """Register an association whose handshake completed.  False: refused (caller closes it)."""
        lim = self.limits
        if len(self._all) >= lim.max_associations and not self._evict_stale():
            self.stats.associations_refused += 1
            self.warn("total", "%s: %d associations (max-associations): refusing %s",
                      self.name, lim.max_associations, assoc.address)
            return False
        self._all[id(assoc)] = assoc
        self._by_address[assoc.address] = self._by_address.get(assoc.address, 0) + 1
        self.stats.associations = len(self._all)
        if assoc.identity is not None:
            own = self._by_identity.setdefault(assoc.identity, OrderedDict())
            own[id(assoc)] = assoc
            while len(own) > lim.max_associations_per_client:
                _, oldest = next(iter(own.items()))
                self.stats.associations_evicted += 1
                self.warn("client", "%s: peer has more than %d associations (max-associations-per-client):"
                          " closing its oldest, from %s", self.name, lim.max_associations_per_client,
                          oldest.address)
                self.released(oldest)
                try:
                    oldest.close()
                except Exception:
                    log.exception("closing an evicted association failed")
        return True

    def released(self, assoc: Association) -> None:
        """The association is gone (idempotent)."""
        if assoc.released:
            return
        assoc.released = True
        if self._all.pop(id(assoc), None) is None:
            return
        left = self._by_address.get(assoc.address, 0) - 1
        if left > 0:
            self._by_address[assoc.address] = left
        else:
            self._by_address.pop(assoc.address, None)
        if assoc.identity is not None:
            own = self._by_identity.get(assoc.identity)
            if own is not None:
                own.pop(id(assoc), None)
                if not own:
                    del self._by_identity[assoc.identity]
        self.stats.associations = len(self._all)

    def _evict_stale(self) -> bool:
        """Close associations idle past their liveness; True if any room was made."""
        if self.stale_after is None:
            return False
        limit = time.monotonic() - self.stale_after
        stale = [a for a in self._all.values() if a.last_activity() < limit]
        for a in stale:
            self.stats.associations_evicted += 1
            self.released(a)
            try:
                a.close()
            except Exception:
                log.exception("closing a stale association failed")
        if stale:
            self.warn("stale", "%s: max-associations reached: closed %d association(s) idle for more than %g s",
                      self.name, len(stale), self.stale_after)
        return len(self._all) < self.limits.max_associations
