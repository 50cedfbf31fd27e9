"""NAT44 address sharing at the Call Home DOTS server (RFC 9066 §5.3.2, Figures 12 and 13).

Theory of operation
-------------------
When the CPE that hosts the Call Home DOTS server also translates addresses, the Call Home
DOTS client only sees the CPE's *external* address and port: a mitigation request then carries
``source-prefix`` = external address (plus ``source-port-range`` = external port(s)), which is
not inside the CPE's internal prefixes.  The CPE looks the attack information up in its NAT
mapping table and blocks the internal device instead.

:class:`NatMapper` answers "which internal sources hide behind this external source?" from two
tables, in order:

1. configured **static mappings** (the ``nat44/static-mapping`` list of the YANG module):
   external address (and port, protocol) -> internal address (and port);
2. the kernel's **connection tracking** table (``conntrack -L``, or ``/proc/net/nf_conntrack``
   when the tool is absent), optionally inside a network namespace.  A tracked flow whose
   *reply* direction goes to the external address/port was source-NATed from the *original*
   direction's source: that is the internal device.  Flows are further filtered by the
   request's target prefixes (the original destination must be a target) and, when the request
   has ports, by the reply destination port, so devices sharing the address are told apart.

The lookup is a pure function of the parsed table (:func:`map_sources`); only reading the
table does I/O.  The result is a list of internal ``(address, port)`` pairs; the caller turns
it into the source prefixes it enforces.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agent.protocol.targets import IPNetwork

log = logging.getLogger("dots.callhome")

Range = tuple[int, int]


@dataclass(frozen=True)
class StaticMapping:
    """One static NAT44 mapping (ports on both sides or neither; protocol None = any)."""

    internal_address: ipaddress.IPv4Address
    external_address: ipaddress.IPv4Address
    internal_port: int | None = None
    external_port: int | None = None
    protocol: int | None = None
    name: str = ""

    @classmethod
    def parse(cls, text: str) -> StaticMapping:
        """``EXT[:PORT]=INT[:PORT][/PROTO]``, e.g. ``192.0.2.1:8080=10.0.0.5:80/6``."""
        body, _, proto = text.partition("/")
        ext, sep, internal = body.partition("=")
        if not sep:
            raise ValueError(f"static mapping {text!r}: expected EXT[:PORT]=INT[:PORT][/PROTO]")
        ea, _, ep = ext.partition(":")
        ia, _, ip = internal.partition(":")
        if bool(ep) != bool(ip):
            raise ValueError(f"static mapping {text!r}: ports on both sides or neither")
        return cls(ipaddress.IPv4Address(ia), ipaddress.IPv4Address(ea), int(ip) if ip else None,
                   int(ep) if ep else None, int(proto) if proto else None, name=text)

    @classmethod
    def from_yang(cls, node: dict[str, object]) -> StaticMapping:
        """One entry of ``call-home-server/nat44/static-mapping`` (RFC 7951 JSON)."""
        def opt_int(key: str) -> int | None:
            v = node.get(key)
            return int(v) if v is not None else None  # type: ignore[call-overload]

        return cls(ipaddress.IPv4Address(str(node["internal-address"])),
                   ipaddress.IPv4Address(str(node["external-address"])),
                   opt_int("internal-port"), opt_int("external-port"), opt_int("protocol"),
                   name=str(node.get("name", "")))


@dataclass(frozen=True)
class Flow:
    """One tracked connection: original and reply tuples (ports None for port-less protocols)."""

    protocol: int
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    sport: int | None
    dport: int | None
    reply_src: ipaddress.IPv4Address | ipaddress.IPv6Address
    reply_dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    reply_sport: int | None
    reply_dport: int | None

    @property
    def source_translated(self) -> bool:
        return self.reply_dst != self.src or (self.sport is not None and self.reply_dport != self.sport)


_PROTOS = {"tcp": 6, "udp": 17, "icmp": 1, "dccp": 33, "sctp": 132, "udplite": 136, "icmpv6": 58}


def parse_conntrack(text: str) -> list[Flow]:
    """Flows of ``conntrack -L`` or ``/proc/net/nf_conntrack`` output (unparseable lines skipped)."""
    flows: list[Flow] = []
    for line in text.splitlines():
        tokens = line.split()
        proto = next((_PROTOS[t] for t in tokens if t in _PROTOS), None)
        if proto is None:
            continue
        seen: dict[str, list[str]] = {}
        for t in tokens:
            key, sep, value = t.partition("=")
            if sep and key in ("src", "dst", "sport", "dport"):
                seen.setdefault(key, []).append(value)
        try:
            src, rsrc = seen["src"][:2]
            dst, rdst = seen["dst"][:2]
        except (KeyError, ValueError):
            continue
        sports, dports = seen.get("sport", []), seen.get("dport", [])

        def port(values: list[str], i: int) -> int | None:
            return int(values[i]) if len(values) > i else None

        try:
            flows.append(Flow(proto, ipaddress.ip_address(src), ipaddress.ip_address(dst), port(sports, 0),
                              port(dports, 0), ipaddress.ip_address(rsrc), ipaddress.ip_address(rdst),
                              port(sports, 1), port(dports, 1)))
        except ValueError:
            continue
    return flows


def _in_ranges(port: int | None, ranges: Sequence[Range]) -> bool:
    return not ranges or (port is not None and any(lo <= port <= hi for lo, hi in ranges))


def map_sources(source: IPNetwork, port_ranges: Sequence[Range], targets: Iterable[IPNetwork],
                statics: Iterable[StaticMapping], flows: Iterable[Flow]
                ) -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int | None]]:
    """Internal ``(address, port)`` pairs behind the external ``source`` (see module docstring).

    Static mappings whose external address is in ``source`` (and external port in
    ``port_ranges`` when both are given) come first; then translated flows whose reply goes to
    an address in ``source`` and a port in ``port_ranges`` and whose original destination is in
    one of ``targets`` (any destination when ``targets`` is empty).  Deduplicated, in order.
    Ports are those of static mappings; a dynamically translated device comes back with port
    None (its source ports change per flow: the device as a whole is blocked to the target).
    """
    tlist = list(targets)
    out: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int | None]] = []
    for m in statics:
        if m.external_address.version != source.version or m.external_address not in source:
            continue
        if port_ranges and m.external_port is not None and not _in_ranges(m.external_port, port_ranges):
            continue
        out.append((m.internal_address, m.internal_port))
    for f in flows:
        if f.reply_dst.version != source.version or f.reply_dst not in source or not f.source_translated:
            continue
        if not _in_ranges(f.reply_dport, port_ranges):
            continue
        if tlist and not any(f.dst.version == t.version and f.dst in t for t in tlist):
            continue
        out.append((f.src, None))  # dynamic NAT: the device's ports change per flow, block the device
    return list(dict.fromkeys(out))


class NatMapper:
    """Static mappings plus the live conntrack table of the CPE (optionally in ``netns``)."""

    def __init__(self, statics: Iterable[StaticMapping] = (), *, conntrack: bool = True,
                 netns: str | None = None, external: Iterable[IPNetwork] = ()) -> None:
        self.statics = list(statics)
        self.conntrack = conntrack
        self.netns = netns
        #: addresses known to be the CPE's external (translated) ones; informational for logs
        self.external = list(external)

    @property
    def enabled(self) -> bool:
        return bool(self.statics) or self.conntrack

    async def flows(self) -> list[Flow]:
        """The current conntrack table ([] when conntrack lookups are off or unavailable)."""
        if not self.conntrack:
            return []
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        if shutil.which("conntrack"):
            argv = [*prefix, "conntrack", "-L"]
        else:
            argv = [*prefix, "cat", "/proc/net/nf_conntrack"]
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
        except OSError as exc:
            log.warning("cannot read the conntrack table: %s", exc)
            return []
        if proc.returncode != 0:
            log.warning("reading the conntrack table failed: %s", err.decode(errors="replace").strip())
            return []
        return parse_conntrack(out.decode(errors="replace"))

    async def lookup(self, source: IPNetwork, port_ranges: Sequence[Range], targets: Iterable[IPNetwork]
                     ) -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int | None]]:
        return map_sources(source, port_ranges, targets, self.statics, await self.flows())
