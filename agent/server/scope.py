"""One mitigation scope, between its representations: RFC 7951 members, typed entry, Targets, rules.

The codec gives the server RFC 7951 members (validated, from typed objects); the protocol core
wants ``Targets``; the mitigator wants a ``MitigationAction``; the store keeps the request's
scope as opaque CBOR.  This module is the only place that knows how those correspond.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from agent.codec import cbor
from agent.mitigators.interface import MitigationAction
from agent.numbers import rfc9066
from agent.protocol.targets import Targets

CH = f"{rfc9066.MODULE}:"

# Members a client sends that define the request (repeated unchanged in a refresh, SC-073).
REQUEST_MEMBERS = ("target-prefix", "target-port-range", "target-protocol", "target-fqdn", "target-uri",
                   "alias-name", "trigger-mitigation", f"{CH}source-prefix", f"{CH}source-port-range",
                   f"{CH}source-icmp-type-range")


def request_part(members: dict[str, Any]) -> dict[str, Any]:
    """The defining members of a scope (no lifetime, no attack-status, no server fields)."""
    return {k: members[k] for k in REQUEST_MEMBERS if k in members}


def _ranges(entries: list[dict[str, Any]] | None, lo: str, hi: str) -> list[tuple[int, int]]:
    out = []
    for e in entries or []:
        low = int(e[lo])
        out.append((low, int(e.get(hi, low))))
    return out


def targets_of(members: dict[str, Any], resolved: list[str] | None = None) -> Targets:
    """Targets of a scope; *resolved* adds addresses resolved from target-fqdn/uri (SC-038/039)."""
    prefixes = list(members.get("target-prefix", [])) + list(resolved or [])
    return Targets.of(
        prefixes=prefixes,
        ports=_ranges(members.get("target-port-range"), "lower-port", "upper-port"),
        protocols=members.get("target-protocol", []),
        fqdns=members.get("target-fqdn", []),
        uris=members.get("target-uri", []),
        aliases=members.get("alias-name", []),
        source_prefixes=members.get(f"{CH}source-prefix", []),
        source_ports=_ranges(members.get(f"{CH}source-port-range"), "lower-port", "upper-port"),
        source_icmp_types=_ranges(members.get(f"{CH}source-icmp-type-range"), "lower-type", "upper-type"),
    )


def action_of(key: str, targets: Targets, *, rate_limit_pps: int | None = None) -> MitigationAction:
    """What the mitigator must enforce for these targets."""
    return MitigationAction(
        key=key,
        target_prefixes=tuple(sorted(targets.prefixes, key=_net_key)),
        target_port_ranges=tuple(targets.port_ranges),
        target_protocols=tuple(sorted(targets.protocols)),
        source_prefixes=tuple(sorted(targets.source_prefixes, key=_net_key)),
        source_port_ranges=tuple(targets.source_port_ranges),
        source_icmp_type_ranges=tuple(targets.source_icmp_type_ranges),
        action="rate-limit" if rate_limit_pps else "drop",
        rate_limit_pps=rate_limit_pps,
    )


def _net_key(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, str]:
    return (net.version, str(net))


def to_cbor(members: dict[str, Any]) -> bytes:
    """Opaque CBOR for the store (Table 5 keys)."""
    return cbor.dumps(cbor.json_to_map(members))


def from_cbor(data: bytes) -> dict[str, Any]:
    return cbor.map_to_json(cbor.loads(data))
