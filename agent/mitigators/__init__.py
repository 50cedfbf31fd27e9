"""Mitigation back-ends behind the :class:`Mitigator` seam.

``interface`` defines :class:`MitigationAction`, :class:`Counters` and the protocol; ``log`` is
the embedded default (logs only); ``nftables`` drops traffic with Linux nftables.
"""

from agent.mitigators.interface import Counters, MitigationAction, Mitigator, MitigatorError
from agent.mitigators.log import LogMitigator
from agent.mitigators.nftables import NftablesMitigator

__all__ = ["Counters", "LogMitigator", "MitigationAction", "Mitigator", "MitigatorError", "NftablesMitigator"]
