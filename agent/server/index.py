"""Which requests may overlap a new one: a multi-level index of target prefixes.

Decisions compare a new request with other clients' requests that share an address
(RFC 9132 §4.4.1.3).  Scanning every request costs O(n) per PUT.  Here each prefix is filed at
the finest level not longer than itself (IPv4 levels /0 /8 /16 /24, IPv6 /0 /16 /32 /48 /64)
under its block at that level.  A query prefix q overlaps a filed prefix p only if, at p's level
L, q and p fall in the same block (when q is at least as long as L), or p lies inside q (when q
is shorter than L; those levels are scanned, which only wide queries need).  Requests without
prefixes (FQDN/URI only) are always candidates.  A lookup returns a superset of the overlapping
requests; the exact test stays in ``agent.protocol.targets.overlaps``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable, Iterable

LEVELS = {4: (0, 8, 16, 24), 6: (0, 16, 32, 48, 64)}
Net = ipaddress.IPv4Network | ipaddress.IPv6Network
Slot = tuple[int, int, int]  # (version, level, block)


def _level(net: Net) -> int:
    return max(level for level in LEVELS[net.version] if level <= net.prefixlen)


def _block(net: Net, level: int) -> int:
    return int(net.network_address) >> (net.max_prefixlen - level)


class PrefixIndex:
    def __init__(self) -> None:
        self._slots: dict[Slot, set[Hashable]] = {}
        self._keys: dict[Hashable, list[Slot]] = {}
        self._other: set[Hashable] = set()

    def __len__(self) -> int:
        return len(self._keys) + len(self._other)

    def add(self, key: Hashable, prefixes: Iterable[Net]) -> None:
        nets = tuple(prefixes)
        if not nets:
            self._other.add(key)
            return
        slots = []
        for n in nets:
            level = _level(n)
            slot = (n.version, level, _block(n, level))
            self._slots.setdefault(slot, set()).add(key)
            slots.append(slot)
        self._keys[key] = slots

    def remove(self, key: Hashable) -> None:
        self._other.discard(key)
        for slot in self._keys.pop(key, []):
            bucket = self._slots.get(slot)
            if bucket is not None:
                bucket.discard(key)
                if not bucket:
                    del self._slots[slot]

    def candidates(self, prefixes: Iterable[Net]) -> set[Hashable]:
        """Keys whose prefixes may overlap *prefixes* (plus every key without prefixes)."""
        out = set(self._other)
        nets = list(prefixes)
        if not nets:  # FQDN/URI-only request: anything may overlap
            out.update(self._keys)
            return out
        for q in nets:
            for level in LEVELS[q.version]:
                if level <= q.prefixlen:
                    out.update(self._slots.get((q.version, level, _block(q, level)), ()))
                else:  # filed prefixes longer than q: those inside q's range
                    lo = _block(q, q.prefixlen) << (level - q.prefixlen)
                    hi = lo + (1 << (level - q.prefixlen)) - 1
                    for (v, lv, b), keys in self._slots.items():
                        if v == q.version and lv == level and lo <= b <= hi:
                            out.update(keys)
        return out
