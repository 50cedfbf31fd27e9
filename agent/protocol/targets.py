"""Mitigation scopes: what a request covers, when two requests overlap, what is valid.

Theory of operation
-------------------
A :class:`Targets` value is the decoded scope of ONE mitigation request (RFC 9132
§4.4.1.1), plus the attack-source attributes of RFC 9066 §5.3.1.  It is immutable and
normalised (port ranges sorted and merged), so two scopes that mean the same thing compare
equal -- server rules rely on that to check "all parameters repeated unchanged" (SC-073).

Overlap (§4.4.1.3) is evaluated per dimension and ANDed:

* identity: a common IP address (prefix overlap), FQDN, URI or alias;
* ports: the port ranges intersect -- an absent list means "all ports";
* protocols: the protocol sets intersect -- an absent list means "all protocols";
* Call Home sources (source-prefix / source-port-range / source-icmp-type-range): each is
  a wildcard when absent on either side, else must intersect.

``conflict_scope(a, b)`` returns the intersection, used for 'conflict-scope' (§4.4.1.3).
Validation returns a list of human readable errors (empty = valid) that a server puts in
the 4.00 diagnostic payload.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, replace

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Range = tuple[int, int]

PORT_MAX = 65535
PROTOCOL_MAX = 255
ICMP_TYPE_MAX = 255

# Invalid target/source prefixes (SC-036, CH-012): broadcast, loopback, multicast.
_FORBIDDEN: tuple[tuple[str, IPNetwork], ...] = (
    ("loopback", ipaddress.ip_network("127.0.0.0/8")),
    ("multicast", ipaddress.ip_network("224.0.0.0/4")),
    ("broadcast", ipaddress.ip_network("255.255.255.255/32")),
    ("loopback", ipaddress.ip_network("::1/128")),
    ("multicast", ipaddress.ip_network("ff00::/8")),
)


def _merge_ranges(ranges: Iterable[Range]) -> tuple[Range, ...]:
    """Sort and coalesce ranges (only well-formed ones; malformed ones are kept apart)."""
    good = sorted((lo, hi) for lo, hi in ranges if lo <= hi)
    bad = tuple(sorted((lo, hi) for lo, hi in ranges if lo > hi))
    out: list[Range] = []
    for lo, hi in good:
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out) + bad


def _norm_names(names: Iterable[str]) -> frozenset[str]:
    return frozenset(names)


@functools.lru_cache(maxsize=65536)
def parse_network(text: str) -> IPNetwork:
    """``ip_network(text, strict=False)``, cached: the same prefixes arrive again and again."""
    return ipaddress.ip_network(text, strict=False)


def _fqdn_key(name: str) -> str:
    return name.lower().rstrip(".")


@dataclass(frozen=True)
class Targets:
    """Scope of one mitigation request (RFC 9132 §4.4.1.1; RFC 9066 §5.3.1).

    Empty ``port_ranges`` means all ports, empty ``protocols`` all protocols.  A range
    ``(lo, hi)`` with ``lo == hi`` is a single port ('lower-port' only on the wire).
    """

    prefixes: frozenset[IPNetwork] = frozenset()
    port_ranges: tuple[Range, ...] = ()
    protocols: frozenset[int] = frozenset()
    fqdns: frozenset[str] = frozenset()
    uris: frozenset[str] = frozenset()
    aliases: frozenset[str] = frozenset()
    source_prefixes: frozenset[IPNetwork] = frozenset()
    source_port_ranges: tuple[Range, ...] = ()
    source_icmp_type_ranges: tuple[Range, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefixes", frozenset(self.prefixes))
        object.__setattr__(self, "protocols", frozenset(self.protocols))
        object.__setattr__(self, "fqdns", _norm_names(self.fqdns))
        object.__setattr__(self, "uris", _norm_names(self.uris))
        object.__setattr__(self, "aliases", _norm_names(self.aliases))
        object.__setattr__(self, "source_prefixes", frozenset(self.source_prefixes))
        object.__setattr__(self, "port_ranges", _merge_ranges(self.port_ranges))
        object.__setattr__(self, "source_port_ranges", _merge_ranges(self.source_port_ranges))
        object.__setattr__(self, "source_icmp_type_ranges", _merge_ranges(self.source_icmp_type_ranges))

    @classmethod
    def of(
        cls,
        prefixes: Iterable[str] = (),
        ports: Iterable[int | Range] = (),
        protocols: Iterable[int] = (),
        fqdns: Iterable[str] = (),
        uris: Iterable[str] = (),
        aliases: Iterable[str] = (),
        source_prefixes: Iterable[str] = (),
        source_ports: Iterable[int | Range] = (),
        source_icmp_types: Iterable[int | Range] = (),
    ) -> Targets:
        """Convenience constructor from text prefixes and ints/ranges (host bits are masked)."""

        def rng(items: Iterable[int | Range]) -> tuple[Range, ...]:
            return tuple((i, i) if isinstance(i, int) else (i[0], i[1]) for i in items)

        return cls(
            prefixes=frozenset(parse_network(p) for p in prefixes),
            port_ranges=rng(ports),
            protocols=frozenset(protocols),
            fqdns=frozenset(fqdns),
            uris=frozenset(uris),
            aliases=frozenset(aliases),
            source_prefixes=frozenset(parse_network(p) for p in source_prefixes),
            source_port_ranges=rng(source_ports),
            source_icmp_type_ranges=rng(source_icmp_types),
        )

    @property
    def has_target(self) -> bool:
        """SC-046: at least one of target-prefix, target-fqdn, target-uri, alias-name."""
        return bool(self.prefixes or self.fqdns or self.uris or self.aliases)

    def with_aliases_resolved(self, resolved: Targets) -> Targets:
        """§4.4.1.3: the values bound to an alias are appended to the explicit ones."""
        return replace(
            self,
            prefixes=self.prefixes | resolved.prefixes,
            port_ranges=self.port_ranges + resolved.port_ranges,
            protocols=self.protocols | resolved.protocols,
            fqdns=self.fqdns | resolved.fqdns,
            uris=self.uris | resolved.uris,
        )


# --- overlap ------------------------------------------------------------------------------
def _nets_overlap(a: Iterable[IPNetwork], b: Iterable[IPNetwork]) -> bool:
    bl = list(b)
    return any(x.version == y.version and x.overlaps(y) for x in a for y in bl)  # type: ignore[arg-type]


def _ranges_intersect(a: tuple[Range, ...], b: tuple[Range, ...]) -> tuple[Range, ...]:
    out = []
    for alo, ahi in a:
        for blo, bhi in b:
            lo, hi = max(alo, blo), min(ahi, bhi)
            if lo <= hi:
                out.append((lo, hi))
    return _merge_ranges(out)


def _wild_ranges_overlap(a: tuple[Range, ...], b: tuple[Range, ...]) -> bool:
    return not a or not b or bool(_ranges_intersect(a, b))


def _identity_overlap(a: Targets, b: Targets) -> bool:
    if _nets_overlap(a.prefixes, b.prefixes):
        return True
    if {_fqdn_key(x) for x in a.fqdns} & {_fqdn_key(x) for x in b.fqdns}:
        return True
    return bool(a.uris & b.uris or a.aliases & b.aliases)


def overlaps(a: Targets, b: Targets) -> bool:
    """RFC 9132 §4.4.1.3 overlap: common address/FQDN/URI/alias AND ports AND protocols.

    Absent ports/protocols (and absent Call Home source attributes) are wildcards.
    Aliases must be resolved beforehand (:meth:`Targets.with_aliases_resolved`) if the
    caller wants alias contents compared as addresses; alias *names* compare directly.
    """
    if not _identity_overlap(a, b):
        return False
    if not _wild_ranges_overlap(a.port_ranges, b.port_ranges):
        return False
    if a.protocols and b.protocols and not (a.protocols & b.protocols):
        return False
    if a.source_prefixes and b.source_prefixes and not _nets_overlap(a.source_prefixes, b.source_prefixes):
        return False
    if not _wild_ranges_overlap(a.source_port_ranges, b.source_port_ranges):
        return False
    return _wild_ranges_overlap(a.source_icmp_type_ranges, b.source_icmp_type_ranges)


def _net_intersection(a: Iterable[IPNetwork], b: Iterable[IPNetwork]) -> frozenset[IPNetwork]:
    out: set[IPNetwork] = set()
    bl = list(b)
    for x in a:
        for y in bl:
            if x.version != y.version or not x.overlaps(y):  # type: ignore[arg-type]
                continue
            out.add(x if x.prefixlen >= y.prefixlen else y)  # the more specific one
    return frozenset(out)


def conflict_scope(a: Targets, b: Targets) -> Targets:
    """The common part of two scopes, for 'conflict-scope' (§4.4.1.3).  Wildcards yield the other side."""

    def wild(x: tuple[Range, ...], y: tuple[Range, ...]) -> tuple[Range, ...]:
        if not x:
            return y
        if not y:
            return x
        return _ranges_intersect(x, y)

    def wild_set(x: frozenset[int], y: frozenset[int]) -> frozenset[int]:
        return y if not x else x if not y else x & y

    bf = {_fqdn_key(f) for f in b.fqdns}
    return Targets(
        prefixes=_net_intersection(a.prefixes, b.prefixes),
        port_ranges=wild(a.port_ranges, b.port_ranges),
        protocols=wild_set(a.protocols, b.protocols),
        fqdns=frozenset(f for f in a.fqdns if _fqdn_key(f) in bf),
        uris=a.uris & b.uris,
        aliases=a.aliases & b.aliases,
        source_prefixes=(
            _net_intersection(a.source_prefixes, b.source_prefixes)
            if a.source_prefixes and b.source_prefixes
            else a.source_prefixes or b.source_prefixes
        ),
        source_port_ranges=wild(a.source_port_ranges, b.source_port_ranges),
        source_icmp_type_ranges=wild(a.source_icmp_type_ranges, b.source_icmp_type_ranges),
    )


# --- validation ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=65536)
def forbidden_reason(net: IPNetwork) -> str | None:
    """Why a prefix is not an acceptable target/source (SC-036, CH-012), or None.

    A prefix is refused if it overlaps a loopback, multicast or limited-broadcast range;
    IPv4-mapped IPv6 prefixes are checked as their IPv4 equivalent.
    """
    if isinstance(net, ipaddress.IPv6Network):
        mapped = net.network_address.ipv4_mapped
        if mapped is not None and net.prefixlen >= 96:
            return forbidden_reason(ipaddress.ip_network(f"{mapped}/{net.prefixlen - 96}", strict=False))
    for reason, bad in _FORBIDDEN:
        if net.version == bad.version and net.overlaps(bad):  # type: ignore[arg-type]
            return reason
    return None


def _check_ranges(name: str, ranges: tuple[Range, ...], maximum: int) -> list[str]:
    errs = []
    for lo, hi in ranges:
        if lo > hi:
            errs.append(f"{name}: lower bound {lo} greater than upper bound {hi}")
        if lo < 0 or hi > maximum:
            errs.append(f"{name}: {lo}-{hi} outside 0-{maximum}")
    return errs


def validate_request_targets(t: Targets, *, call_home: bool = False) -> list[str]:
    """Errors of a mitigation request scope; an empty list means valid.

    Checks SC-046 (a target present), SC-036/CH-012 (no broadcast/loopback/multicast),
    SC-047 (no empty values), port/protocol/ICMP-type ranges, and with ``call_home``
    CH-014 (target-prefix mandatory) and the mandatory 'source-prefix' (RFC 9066 §5.3.1).
    """
    errs: list[str] = []
    if not t.has_target:
        errs.append("at least one of target-prefix, target-fqdn, target-uri or alias-name is required")
    for net in sorted(t.prefixes, key=str):
        reason = forbidden_reason(net)
        if reason:
            errs.append(f"target-prefix {net} is a {reason} prefix")
    for net in sorted(t.source_prefixes, key=str):
        reason = forbidden_reason(net)
        if reason:
            errs.append(f"source-prefix {net} is a {reason} prefix")
    errs += _check_ranges("target-port-range", t.port_ranges, PORT_MAX)
    errs += _check_ranges("source-port-range", t.source_port_ranges, PORT_MAX)
    errs += _check_ranges("source-icmp-type-range", t.source_icmp_type_ranges, ICMP_TYPE_MAX)
    errs += [f"target-protocol {p} outside 0-{PROTOCOL_MAX}" for p in sorted(t.protocols)
             if not 0 <= p <= PROTOCOL_MAX]
    for name, values in (("target-fqdn", t.fqdns), ("target-uri", t.uris), ("alias-name", t.aliases)):
        if any(not v for v in values):
            errs.append(f"{name} contains an empty value")
    if call_home:
        if not t.prefixes:
            errs.append("target-prefix is mandatory in a Call Home mitigation request")
        if not t.source_prefixes:
            errs.append("source-prefix is mandatory in a Call Home mitigation request")
    return errs


def _nets_within(nets: Iterable[IPNetwork], allowed: Iterable[IPNetwork]) -> bool:
    al = list(allowed)
    return all(any(n.version == a.version and n.subnet_of(a) for a in al) for n in nets)  # type: ignore[arg-type]


def within(t: Targets, allowed_prefixes: Iterable[IPNetwork]) -> bool:
    """SC-037: every target prefix lies inside one of the client domain's prefixes."""
    return _nets_within(t.prefixes, allowed_prefixes)


def sources_within(t: Targets, allowed_prefixes: Iterable[IPNetwork]) -> bool:
    """CH-013/CH-019: every source-prefix lies inside the Call Home server domain."""
    return _nets_within(t.source_prefixes, allowed_prefixes)
