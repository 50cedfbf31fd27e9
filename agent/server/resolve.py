"""Addresses of the names in a mitigation request (RFC 9132 §4.4.1.1, SC-038/SC-039).

A request may name its targets with 'target-fqdn' or 'target-uri'.  The server resolves them
and applies to the resulting addresses the same checks as to 'target-prefix' (no loopback,
multicast or broadcast; inside the client's domain), then enforces on those addresses.  A URI's
host is either an IP literal (used as is) or a name (resolved).  Resolution is bounded in time;
names that do not resolve are reported, and a request whose names all fail (and that has no
prefix) is refused by the caller.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

Resolver = Callable[[str], Awaitable[list[str]]]
TIMEOUT = 2.0


async def system_resolver(name: str) -> list[str]:
    """The host's resolver (getaddrinfo: /etc/hosts, DNS), addresses as text."""
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(loop.getaddrinfo(name, None, type=socket.SOCK_STREAM), TIMEOUT)
    return sorted({str(info[4][0]).split("%")[0] for info in infos})


@dataclass
class Resolution:
    prefixes: list[str] = field(default_factory=list)  # host prefixes (/32, /128)
    failed: list[str] = field(default_factory=list)  # names that did not resolve


def _host_prefix(address: str) -> str:
    ip = ipaddress.ip_address(address)
    return f"{ip}/{ip.max_prefixlen}"


async def resolve_targets(fqdns: Iterable[str], uris: Iterable[str], resolver: Resolver = system_resolver
                          ) -> Resolution:
    out = Resolution()
    names: list[str] = list(fqdns)
    for uri in uris:
        host = urlsplit(uri).hostname
        if not host:
            out.failed.append(uri)
            continue
        try:
            out.prefixes.append(_host_prefix(host))
        except ValueError:
            names.append(host)
    unique = list(dict.fromkeys(names))

    async def one(name: str) -> list[str]:
        try:
            return await asyncio.wait_for(resolver(name), TIMEOUT)
        except (OSError, TimeoutError, UnicodeError, ValueError):
            return []

    # concurrently, under one deadline for the whole request
    results = await asyncio.gather(*(one(n) for n in unique))
    for name, addresses in zip(unique, results, strict=True):
        if not addresses:
            out.failed.append(name)
        out.prefixes.extend(_host_prefix(a) for a in addresses)
    out.prefixes = list(dict.fromkeys(out.prefixes))
    return out
