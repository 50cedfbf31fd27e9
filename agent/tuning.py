"""CoAP transmission parameters from a negotiated DOTS session configuration (RFC 9132 §4.5.2).

SC-117: the agents use the negotiated values (ack-timeout, ack-random-factor, max-retransmit)
for message transmission; aiocoap takes them per message as a ``TransportTuning``.
"""

from __future__ import annotations

from functools import lru_cache

from aiocoap.numbers.constants import TransportTuning

from agent.protocol.session import TransmissionConfig


@lru_cache(maxsize=256)
def tuning(cfg: TransmissionConfig, confirmable: bool | None = None) -> TransportTuning:
    """A TransportTuning carrying *cfg*; ``confirmable`` picks CON (True) or NON (False)."""

    class Negotiated(TransportTuning):
        ACK_TIMEOUT = float(cfg.ack_timeout)
        ACK_RANDOM_FACTOR = float(cfg.ack_random_factor)
        MAX_RETRANSMIT = int(cfg.max_retransmit)
        reliability = confirmable

    return Negotiated()
