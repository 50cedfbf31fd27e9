"""The embedded default mitigator: records what it would do, drops nothing.

Theory of operation: the installed set is a dict in memory (lost on restart; the server
reconciles from the store), every change is logged on the ``dots.mitigator`` logger, and the
counters stay at zero.  Useful for lab set-ups, for tests of the server, and as the reference
behaviour of the :class:`~agent.mitigators.interface.Mitigator` seam.
"""

from __future__ import annotations

import logging

from agent.mitigators.interface import Counters, MitigationAction

log = logging.getLogger("dots.mitigator")


class LogMitigator:
    """:class:`~agent.mitigators.interface.Mitigator` that only logs."""

    name = "log"

    def __init__(self) -> None:
        self._installed: dict[str, MitigationAction] = {}
        self.closed = False

    @property
    def installed(self) -> dict[str, MitigationAction]:
        """A copy of the installed set, by key."""
        return dict(self._installed)

    async def apply(self, action: MitigationAction) -> None:
        verb = "replace" if action.key in self._installed else "apply"
        self._installed[action.key] = action
        log.info("%s %s: %s", verb, action.key, describe(action))

    async def remove(self, key: str) -> None:
        if self._installed.pop(key, None) is not None:
            log.info("remove %s", key)

    async def counters(self, key: str) -> Counters:
        return Counters()

    async def reconcile(self, actions: list[MitigationAction]) -> None:
        wanted = {a.key: a for a in actions}
        for key in sorted(set(self._installed) - set(wanted)):
            log.info("reconcile: remove stale %s", key)
        for key, a in wanted.items():
            if self._installed.get(key) != a:
                log.info("reconcile: apply %s: %s", key, describe(a))
        self._installed = wanted

    async def close(self) -> None:
        self.closed = True
        log.info("close (%d mitigations installed)", len(self._installed))


def _ranges(ranges: tuple[tuple[int, int], ...]) -> str:
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


def describe(a: MitigationAction) -> str:
    """One short line: what would be enforced (``drop dst 198.51.100.0/24 port 443 proto 6``)."""
    parts = [a.action if a.action == "drop" else f"rate-limit {a.rate_limit_pps} pps"]
    if a.source_prefixes:
        parts.append("src " + ",".join(map(str, a.source_prefixes)))
    if a.source_port_ranges:
        parts.append("sport " + _ranges(a.source_port_ranges))
    if a.source_icmp_type_ranges:
        parts.append("icmp-type " + _ranges(a.source_icmp_type_ranges))
    if a.target_prefixes:
        parts.append("dst " + ",".join(map(str, a.target_prefixes)))
    if a.target_port_ranges:
        parts.append("port " + _ranges(a.target_port_ranges))
    if a.target_protocols:
        parts.append("proto " + ",".join(map(str, a.target_protocols)))
    return " ".join(parts)
