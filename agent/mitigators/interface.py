"""The mitigator seam: what the DOTS server asks a mitigation back-end to do.

Theory of operation
-------------------
The server turns each *active* mitigation request (RFC 9132 scope, plus the RFC 9066 Call Home
source attributes) into one :class:`MitigationAction`, identified by a ``key`` that is unique
and stable for the request (``f"{cuid}/{mid}"`` by convention).  A :class:`Mitigator` keeps an
installed set of actions indexed by key:

* :meth:`Mitigator.apply` installs or replaces the action with that key (idempotent);
* :meth:`Mitigator.remove` uninstalls it (no-op when absent): termination, expiry, withdrawal;
* :meth:`Mitigator.counters` reads cumulative drop counters, which survive re-applying the key;
* :meth:`Mitigator.reconcile` makes the installed set exactly the given actions (after a restart
  the server replays the store's active mitigations; anything else installed under our name goes);
* :meth:`Mitigator.close` releases resources; back-ends with external state keep it by default,
  so traffic stays mitigated while the server restarts.

Match semantics of one action (a packet is dropped when it matches):

* destination in ``target_prefixes`` (if any) **and** source in ``source_prefixes`` (if any);
  at least one of the two must be non-empty;
* **and** one of the transport clauses: with no port or ICMP constraints, the protocol is in
  ``target_protocols`` (empty = all).  Port ranges (destination ``target_port_ranges``, source
  ``source_port_ranges``) constrain the port-carrying protocols (TCP, UDP, DCCP, SCTP) among the
  listed ones; ``source_icmp_type_ranges`` constrains ICMP/ICMPv6; listed protocols to which no
  given constraint applies are matched whole.

``action`` is ``"drop"`` or ``"rate-limit"`` (drop what exceeds ``rate_limit_pps`` packets/s).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
PortRange = tuple[int, int]

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_DCCP = 33
PROTO_ICMPV6 = 58
PROTO_SCTP = 132
PORT_PROTOCOLS: tuple[int, ...] = (PROTO_TCP, PROTO_UDP, PROTO_DCCP, PROTO_SCTP)
ICMP_PROTOCOLS: tuple[int, ...] = (PROTO_ICMP, PROTO_ICMPV6)

ActionKind = Literal["drop", "rate-limit"]


class MitigatorError(Exception):
    """A back-end could not carry out a request (the installed state is unchanged)."""


def _check_ranges(name: str, ranges: tuple[PortRange, ...], hi_max: int) -> None:
    for r in ranges:
        if len(r) != 2 or not (0 <= r[0] <= r[1] <= hi_max):
            raise ValueError(f"{name}: bad range {r!r} (need 0 <= lo <= hi <= {hi_max})")


@dataclass(frozen=True)
class MitigationAction:
    """One mitigation to install, identified by ``key``.  Validated on construction."""

    key: str
    target_prefixes: tuple[IPNetwork, ...] = ()
    target_port_ranges: tuple[PortRange, ...] = ()
    target_protocols: tuple[int, ...] = ()  # empty = all
    source_prefixes: tuple[IPNetwork, ...] = ()  # RFC 9066: traffic FROM these
    source_port_ranges: tuple[PortRange, ...] = ()
    source_icmp_type_ranges: tuple[PortRange, ...] = ()
    action: ActionKind = "drop"
    rate_limit_pps: int | None = None

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("key must not be empty")
        if not self.target_prefixes and not self.source_prefixes:
            raise ValueError(f"{self.key}: needs target_prefixes or source_prefixes")
        for p in (*self.target_prefixes, *self.source_prefixes):
            if not isinstance(p, ipaddress.IPv4Network | ipaddress.IPv6Network):
                raise TypeError(f"{self.key}: prefix {p!r} is not an ipaddress network")
        _check_ranges("target_port_ranges", self.target_port_ranges, 65535)
        _check_ranges("source_port_ranges", self.source_port_ranges, 65535)
        _check_ranges("source_icmp_type_ranges", self.source_icmp_type_ranges, 255)
        for proto in self.target_protocols:
            if not 0 <= proto <= 255:
                raise ValueError(f"{self.key}: protocol {proto} out of range")
        if self.action == "rate-limit":
            if not self.rate_limit_pps or self.rate_limit_pps <= 0:
                raise ValueError(f"{self.key}: rate-limit needs a positive rate_limit_pps")
        elif self.action != "drop":
            raise ValueError(f"{self.key}: unknown action {self.action!r}")


@dataclass(frozen=True)
class Counters:
    """Cumulative counters of what a mitigation dropped since it was first applied."""

    bytes_dropped: int = 0
    pkts_dropped: int = 0


@runtime_checkable
class Mitigator(Protocol):
    """A mitigation back-end (see the module docstring for the contract)."""

    name: str

    async def apply(self, action: MitigationAction) -> None:
        """Install ``action``, replacing whatever is installed under ``action.key`` (atomically)."""

    async def remove(self, key: str) -> None:
        """Uninstall the action with ``key``; no-op when it is not installed."""

    async def counters(self, key: str) -> Counters:
        """Cumulative counters of ``key``; zeros when it is unknown."""

    async def reconcile(self, actions: list[MitigationAction]) -> None:
        """Make the installed set exactly ``actions`` (by key), in one step where possible."""

    async def close(self) -> None:
        """Release resources (external state is kept unless the back-end was told otherwise)."""
