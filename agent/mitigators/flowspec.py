"""Mitigator back-end that announces BGP Flowspec rules (RFC 8955 IPv4, RFC 8956 IPv6).

Theory of operation
-------------------
Each :class:`~agent.mitigators.interface.MitigationAction` becomes a set of Flowspec rules
(NLRI = AND of components), announced through a :class:`~agent.mitigators.bgp.GoBgpSpeaker`
in the ``ipv4-flowspec`` / ``ipv6-flowspec`` families; the routers that receive them filter.

*Rules of one action.*  A Flowspec NLRI holds at most one destination and one source prefix,
so an action yields one rule per (target prefix x source prefix x transport clause) of each IP
version it can match, with the transport clauses of the seam (see
:mod:`agent.mitigators.interface`, the same as :func:`agent.mitigators.nftables.rule_matches`):

* no port/ICMP constraint: ``protocol`` = the listed protocols (component absent = all);
* ports: ``protocol`` in the listed port-carrying protocols (TCP, UDP, DCCP, SCTP by default)
  with ``destination-port`` / ``source-port`` (each range ``>=lo&<=hi`` or ``==p``, ORed);
* ICMP types (RFC 9066 source ICMP ranges): ``protocol ==1`` (IPv4) or ``==58`` (IPv6) with
  ``icmp-type``;
* listed protocols left over: ``protocol`` = those.

*Action.*  ``discard`` is traffic-rate 0 (RFC 8955 §7.3); rate limiting is traffic-rate in
**bytes per second** (the only traffic-rate gobgp sends).  The rate is the configured
``rate-limit`` option when set; otherwise a ``rate-limit`` action's ``rate_limit_pps`` times
``bytes_per_packet`` (default 1000); otherwise discard.  When two keys announce the same NLRI,
the stricter action wins (discard, then the lower rate), and removing one key leaves the other's.

*Identity and reconciliation.*  A rule's identity is its canonical NLRI (components as parsed
values, not strings), so rules read back from the speaker's RIB (after a restart) compare equal to
freshly computed ones; locally originated Flowspec routes that no installed action wants are
withdrawn by :meth:`reconcile` (and by any later operation).  Re-applying a key with the same
rules sends nothing (idempotent).

*Counters.*  Flowspec has no feedback channel: :meth:`counters` returns zeros (routers expose
rule hit counters through their own telemetry, which this agent does not read).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.mitigators.bgp import GoBgpSpeaker, RouteId, Routes, RouteSyncMitigator, speaker_from_options
from agent.mitigators.interface import ICMP_PROTOCOLS, PORT_PROTOCOLS, MitigationAction, PortRange

FAMILIES = {4: "ipv4-flowspec", 6: "ipv6-flowspec"}
# RFC 8955 component types
T_DST, T_SRC, T_PROTO, T_DPORT, T_SPORT, T_ICMP_TYPE = 1, 2, 3, 5, 6, 7
_MAX = {T_PROTO: 255, T_DPORT: 65535, T_SPORT: 65535, T_ICMP_TYPE: 255}
# numeric operator bits (RFC 8955 §4.2.1.1)
OP_AND, OP_LT, OP_GT, OP_EQ = 0x40, 0x04, 0x02, 0x01


def _merge_ranges(ranges: Iterable[PortRange]) -> tuple[PortRange, ...]:
    out: list[PortRange] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def _f32(rate: float) -> float:
    """What survives the 4-byte IEEE float of the traffic-rate community."""
    return float(struct.unpack("!f", struct.pack("!f", rate))[0])


@dataclass(frozen=True)
class FlowRule:
    """One Flowspec NLRI in canonical form (sorted, merged ranges; exact prefixes)."""

    version: int
    dst: str | None = None
    src: str | None = None
    protocols: tuple[PortRange, ...] = ()
    dports: tuple[PortRange, ...] = ()
    sports: tuple[PortRange, ...] = ()
    icmp_types: tuple[PortRange, ...] = ()

    @classmethod
    def make(cls, version: int, dst: str | None = None, src: str | None = None, protocols: Iterable[int] = (),
             dports: Iterable[PortRange] = (), sports: Iterable[PortRange] = (),
             icmp_types: Iterable[PortRange] = ()) -> FlowRule:
        return cls(version, dst, src, _merge_ranges((p, p) for p in protocols), _merge_ranges(dports),
                   _merge_ranges(sports), _merge_ranges(icmp_types))

    @property
    def family(self) -> str:
        return FAMILIES[self.version]

    def match_args(self) -> list[str]:
        """``gobgp ... add match <these>``."""
        args: list[str] = []
        if self.dst:
            args += ["destination", self.dst]
        if self.src:
            args += ["source", self.src]
        for word, ranges, top in (("protocol", self.protocols, 255), ("destination-port", self.dports, 65535),
                                  ("source-port", self.sports, 65535), ("icmp-type", self.icmp_types, 255)):
            if ranges:
                args.append(word)
                for lo, hi in ranges:
                    if lo == hi:
                        args.append(f"=={lo}")
                    elif lo == 0:
                        args.append(f"<={hi}")
                    elif hi == top:
                        args.append(f">={lo}")
                    else:
                        args.append(f">={lo}&<={hi}")
        return args

    @classmethod
    def from_nlri(cls, version: int, components: list[dict[str, Any]]) -> FlowRule | None:
        """Parse gobgp's JSON NLRI; None when it uses anything this module never announces."""
        kw: dict[str, Any] = {}
        names = {T_PROTO: "protocols", T_DPORT: "dports", T_SPORT: "sports", T_ICMP_TYPE: "icmp_types"}
        for comp in components:
            t = comp.get("type")
            if t in (T_DST, T_SRC):
                if comp.get("offset", 0):
                    return None
                prefix = str(ipaddress.ip_network(comp["value"]["prefix"], strict=False))
                kw["dst" if t == T_DST else "src"] = prefix
            elif t in names:
                ranges = _ranges_of(comp.get("value") or [], _MAX[t])
                if ranges is None:
                    return None
                kw[names[t]] = _merge_ranges(ranges)
            else:
                return None
        return cls(version, **kw)


def _ranges_of(items: list[dict[str, Any]], top: int) -> list[PortRange] | None:
    """Numeric operator list (ORs of AND-groups) -> ranges; None for operators we never emit."""
    groups: list[list[tuple[int, int]]] = []
    for it in items:
        op, value = int(it["op"]), int(it["value"])
        if op & OP_AND and groups:
            groups[-1].append((op, value))
        else:
            groups.append([(op, value)])
    out: list[PortRange] = []
    for g in groups:
        lo, hi = 0, top
        for op, v in g:
            cmp = op & 0x07
            if cmp == OP_EQ:
                lo, hi = max(lo, v), min(hi, v)
            elif cmp == OP_GT | OP_EQ:
                lo = max(lo, v)
            elif cmp == OP_LT | OP_EQ:
                hi = min(hi, v)
            elif cmp == OP_GT:
                lo = max(lo, v + 1)
            elif cmp == OP_LT:
                hi = min(hi, v - 1)
            else:
                return None
        if lo > hi:
            return None
        out.append((lo, hi))
    return out


def flow_rules(action: MitigationAction) -> list[FlowRule]:
    """The Flowspec rules that implement ``action`` (see the module docstring)."""
    protos = set(action.target_protocols)
    has_ports = bool(action.target_port_ranges or action.source_port_ranges)
    has_icmp = bool(action.source_icmp_type_ranges)
    rules: list[FlowRule] = []
    for version in (4, 6):
        dsts = [p for p in action.target_prefixes if p.version == version]
        srcs = [p for p in action.source_prefixes if p.version == version]
        if (action.target_prefixes and not dsts) or (action.source_prefixes and not srcs):
            continue
        clauses: list[dict[str, Any]] = []
        if not has_ports and not has_icmp:
            clauses.append({"protocols": sorted(protos)})
        else:
            covered: set[int] = set()
            if has_ports:
                pp = [p for p in PORT_PROTOCOLS if not protos or p in protos]
                if pp:
                    clauses.append({"protocols": pp, "dports": action.target_port_ranges,
                                    "sports": action.source_port_ranges})
                covered.update(PORT_PROTOCOLS)
            if has_icmp:
                icmp = 1 if version == 4 else 58
                if not protos or protos & set(ICMP_PROTOCOLS):
                    clauses.append({"protocols": [icmp], "icmp_types": action.source_icmp_type_ranges})
                covered.update(ICMP_PROTOCOLS)
            rest = protos - covered
            if rest:
                clauses.append({"protocols": sorted(rest)})
        dst_list: list[str | None] = [str(p) for p in ipaddress.collapse_addresses(dsts)] or [None]  # type: ignore[type-var]
        src_list: list[str | None] = [str(p) for p in ipaddress.collapse_addresses(srcs)] or [None]  # type: ignore[type-var]
        for d in dst_list:
            for s in src_list:
                for c in clauses:
                    rules.append(FlowRule.make(version, d, s, **c))
    return rules


class FlowspecMitigator(RouteSyncMitigator):
    """:class:`~agent.mitigators.interface.Mitigator` announcing Flowspec rules (module docstring).

    ``rate_limit``: traffic-rate in bytes/s for every rule (None: discard, unless the action is a
    rate-limit one); ``bytes_per_packet`` converts an action's packets/s into bytes/s.
    """

    name = "flowspec"
    families = tuple(FAMILIES.values())

    def __init__(self, speaker: GoBgpSpeaker, *, rate_limit: float | None = None,
                 bytes_per_packet: int = 1000) -> None:
        super().__init__(speaker)
        if rate_limit is not None and rate_limit <= 0:
            raise ValueError("rate_limit must be positive (bytes per second)")
        self.rate_limit = rate_limit
        self.bytes_per_packet = bytes_per_packet

    def rate_of(self, action: MitigationAction) -> float:
        """traffic-rate (bytes/s) for ``action``; 0.0 = discard."""
        if self.rate_limit is not None:
            return _f32(self.rate_limit)
        if action.action == "rate-limit" and action.rate_limit_pps:
            return _f32(float(action.rate_limit_pps * self.bytes_per_packet))
        return 0.0

    def routes_of(self, action: MitigationAction) -> Routes:
        rate = self.rate_of(action)
        return {(r.family, r): rate for r in flow_rules(action)}

    def merge(self, a: Hashable, b: Hashable) -> Hashable:
        ra, rb = float(a), float(b)  # type: ignore[arg-type]
        return 0.0 if 0.0 in (ra, rb) else min(ra, rb)

    def parse(self, family: str, path: dict[str, Any]) -> tuple[RouteId, Hashable] | None:
        version = 4 if family.startswith("ipv4") else 6
        rule = FlowRule.from_nlri(version, (path.get("nlri") or {}).get("value") or [])
        if rule is None:
            return None
        rate = 0.0
        for attr in path.get("attrs", []):
            if attr.get("type") == 16:  # extended communities
                for ec in attr.get("value") or []:
                    if ec.get("type") == 0x80 and ec.get("subtype") == 0x06:
                        rate = _f32(float(ec.get("rate", 0)))
        return (family, rule), rate

    def add_args(self, rid: RouteId, attrs: Hashable) -> list[str]:
        rule: FlowRule = rid[1]  # type: ignore[assignment]
        rate = float(attrs)  # type: ignore[arg-type]
        then = ["discard"] if rate == 0.0 else ["rate-limit", f"{rate:.0f}"]
        return ["match", *rule.match_args(), "then", *then]

    def del_args(self, rid: RouteId) -> list[str]:
        rule: FlowRule = rid[1]  # type: ignore[assignment]
        return ["match", *rule.match_args()]


def from_options(options: Mapping[str, Any]) -> FlowspecMitigator:
    """A FlowspecMitigator from the YANG ``flowspec`` container plus a ``speaker`` option.

    ``{"rate-limit": "12500"}`` or ``{"discard": [null]}`` (the YANG choice), optional
    ``"bytes-per-packet"``, and ``"speaker"`` (see :func:`agent.mitigators.bgp.speaker_from_options`).
    """
    rate = options.get("rate-limit")
    return FlowspecMitigator(speaker_from_options(options.get("speaker")),
                             rate_limit=float(rate) if rate is not None and "discard" not in options else None,
                             bytes_per_packet=int(options.get("bytes-per-packet", 1000)))
