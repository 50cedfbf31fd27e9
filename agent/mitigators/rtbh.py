"""Mitigator back-end for remotely triggered black hole routing (RTBH; RFC 5635, RFC 7999).

Theory of operation
-------------------
For every target prefix of an installed action the mitigator announces, through a
:class:`~agent.mitigators.bgp.GoBgpSpeaker`, a unicast route (``ipv4``/``ipv6`` family) for
exactly that prefix with the configured discard next hop and the BLACKHOLE community
(``65535:666`` by default) plus NO_EXPORT (RFC 7999 §3.2: a black-hole route must not leave the
receiving AS).  Routers that honour the community (or route the next hop to a discard interface)
drop **all** traffic to the prefix: RTBH is destination-based and coarse.  Ports, protocols and
source constraints of the request are therefore ignored (logged once per key), and an action
without target prefixes (an RFC 9066 source-only request) cannot be enforced: :meth:`apply`
raises :class:`~agent.mitigators.interface.MitigatorError`, which the server reports as
attack-exceeded-capability.

Identity of a route: (family, prefix); attributes: (next hop, communities).  Several keys may
black-hole the same prefix; the route stays while one of them is installed.  Like the Flowspec
mitigator, the announced set is read back from the speaker's RIB on first use, so
:meth:`reconcile` withdraws locally originated unicast routes no installed action wants.  Do not
let anything else originate unicast routes on a speaker used for RTBH.  No counters (zeros).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Hashable, Mapping
from typing import Any

from agent.mitigators.bgp import GoBgpSpeaker, RouteId, Routes, RouteSyncMitigator, speaker_from_options
from agent.mitigators.interface import MitigationAction, MitigatorError

log = logging.getLogger("dots.mitigator")

BLACKHOLE = "65535:666"
NO_EXPORT = "65535:65281"
DISCARD_V6 = "100::1"  # RFC 6666 discard-only prefix


def _community_value(c: str) -> int:
    named = {"blackhole": BLACKHOLE, "no-export": NO_EXPORT}
    hi, _, lo = named.get(c, c).partition(":")
    if not (hi.isascii() and lo.isascii() and hi.isdigit() and lo.isdigit() and len(hi) <= 5 and len(lo) <= 5
            and int(hi) <= 65535 and int(lo) <= 65535):
        raise ValueError(f"bad community {c!r} (need N:M)")
    return (int(hi) << 16) | int(lo)


def _community_text(v: int) -> str:
    return f"{v >> 16}:{v & 0xFFFF}"


class RtbhMitigator(RouteSyncMitigator):
    """:class:`~agent.mitigators.interface.Mitigator` announcing black-hole routes (module docstring).

    ``next_hop``: IPv4 discard next hop (required for IPv4 targets); ``next_hop6``: IPv6 one
    (default ``100::1``); ``community``: the black-hole community; ``no_export``: add NO_EXPORT.
    """

    name = "rtbh"
    families = ("ipv4", "ipv6")

    def __init__(self, speaker: GoBgpSpeaker, *, next_hop: str | None = None, next_hop6: str = DISCARD_V6,
                 community: str = BLACKHOLE, no_export: bool = True) -> None:
        super().__init__(speaker)
        nh = ipaddress.ip_address(next_hop) if next_hop else None
        if isinstance(nh, ipaddress.IPv6Address):  # the YANG leaf takes either version
            nh, next_hop6 = None, str(nh)
        self.next_hop = str(nh) if nh else None
        self.next_hop6 = str(ipaddress.IPv6Address(next_hop6))
        comms = [_community_value(community)] + ([_community_value(NO_EXPORT)] if no_export else [])
        self.communities = tuple(sorted(set(comms)))
        self._warned: set[str] = set()

    def routes_of(self, action: MitigationAction) -> Routes:
        if not action.target_prefixes:
            raise MitigatorError(f"{action.key}: RTBH needs target prefixes (source-only requests cannot be "
                                 "black-holed)")
        if (action.target_port_ranges or action.target_protocols or action.source_prefixes) and \
                action.key not in self._warned:
            self._warned.add(action.key)
            log.warning("rtbh %s: ports, protocols and sources are ignored; all traffic to the prefixes is "
                        "black-holed", action.key)
        routes: Routes = {}
        for p in action.target_prefixes:
            if p.version == 4:
                if self.next_hop is None:
                    raise MitigatorError(f"{action.key}: no IPv4 RTBH next-hop configured for {p}")
                routes[("ipv4", str(p))] = (self.next_hop, self.communities)
            else:
                routes[("ipv6", str(p))] = (self.next_hop6, self.communities)
        return routes

    def merge(self, a: Hashable, b: Hashable) -> Hashable:
        return a  # same mitigator, same attributes

    def parse(self, family: str, path: dict[str, Any]) -> tuple[RouteId, Hashable] | None:
        prefix = (path.get("nlri") or {}).get("prefix")
        if not prefix:
            return None
        nh, comms = None, ()
        for attr in path.get("attrs", []):
            if attr.get("type") in (3, 14) and attr.get("nexthop"):
                nh = str(ipaddress.ip_address(attr["nexthop"]))
            elif attr.get("type") == 8:
                comms = tuple(sorted(int(c) for c in attr.get("communities") or []))
        return (family, str(ipaddress.ip_network(prefix, strict=False))), (nh, comms)

    def add_args(self, rid: RouteId, attrs: Hashable) -> list[str]:
        nh, comms = attrs  # type: ignore[misc]
        return [str(rid[1]), "nexthop", nh, "community", ",".join(_community_text(c) for c in comms)]

    def del_args(self, rid: RouteId) -> list[str]:
        return [str(rid[1])]


def from_options(options: Mapping[str, Any]) -> RtbhMitigator:
    """An RtbhMitigator from the YANG ``rtbh`` container (``next-hop``, ``community``) plus
    ``next-hop6``, ``no-export`` and ``speaker`` (see :func:`agent.mitigators.bgp.speaker_from_options`)."""
    return RtbhMitigator(speaker_from_options(options.get("speaker")), next_hop=options.get("next-hop"),
                         next_hop6=str(options.get("next-hop6", DISCARD_V6)),
                         community=str(options.get("community", BLACKHOLE)),
                         no_export=bool(options.get("no-export", True)))
