"""Mitigation back-ends behind the :class:`Mitigator` seam.

``interface`` defines :class:`MitigationAction`, :class:`Counters` and the protocol; ``log`` is
the embedded default (logs only); ``nftables`` drops traffic with Linux nftables; ``flowspec``
and ``rtbh`` announce BGP Flowspec rules / black-hole routes through a gobgpd speaker
(``bgp``).  :func:`make_mitigator` builds any of them from configuration options.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.mitigators.interface import Counters, MitigationAction, Mitigator, MitigatorError
from agent.mitigators.log import LogMitigator
from agent.mitigators.nftables import NftablesMitigator

MITIGATOR_NAMES = ("log", "nftables", "flowspec", "rtbh")


def make_mitigator(name: str, options: Mapping[str, Any] | None = None) -> Mitigator:
    """A mitigator of type ``name`` (``log``, ``nftables``, ``flowspec``, ``rtbh``; a YANG identity
    such as ``dots-agent:flowspec`` is accepted) configured by ``options``.

    ``options`` is the matching container of the ``mitigator-parameters`` YANG grouping
    (RFC 7951 JSON, e.g. ``{"next-hop": "192.0.2.254"}`` for rtbh, ``{"rate-limit": "12500"}``
    for flowspec, ``{"table-name": "dots", "family": "inet"}`` for nftables) plus, for nftables,
    ``netns``; for flowspec/rtbh, ``speaker`` (``{"api": "127.0.0.1:50051", "config": {...}}``,
    see :func:`agent.mitigators.bgp.speaker_from_options`).  BGP mitigators sharing a speaker
    ``api`` share one :class:`~agent.mitigators.bgp.GoBgpSpeaker`.
    """
    kind = name.rpartition(":")[2]
    opts = dict(options or {})
    if kind == "log":
        return LogMitigator()
    if kind == "nftables":
        return NftablesMitigator(table=str(opts.get("table-name", "dots_agent")).replace("-", "_"),
                                 family=str(opts.get("family", "inet")), netns=opts.get("netns"))
    if kind == "flowspec":
        from agent.mitigators.flowspec import from_options as flowspec

        return flowspec(opts)
    if kind == "rtbh":
        from agent.mitigators.rtbh import from_options as rtbh

        return rtbh(opts)
    raise ValueError(f"unknown mitigator {name!r} (known: {', '.join(MITIGATOR_NAMES)})")


__all__ = ["MITIGATOR_NAMES", "Counters", "LogMitigator", "MitigationAction", "Mitigator", "MitigatorError",
           "NftablesMitigator", "make_mitigator"]
