"""Client request pacing: NON repetition, CON back-off, RTT estimate, probing rate.

Theory of operation
-------------------
Everything here answers one question: *when may the next datagram for this request go
out, or should we give up?*  Answers are :class:`SendAt` or :class:`GiveUp`.

* :class:`RttEstimator` -- RFC 6298 SRTT/RTTVAR/RTO, fed only with unambiguous samples
  (Karn: a retransmitted request gives no sample).
* :class:`NonPacer` -- shared by all NON requests towards one peer.  Without an RTT
  estimate it spaces NON requests at least 3 s apart (SC-014); with one, at least one
  SRTT (one datagram per RTT, SC-013).
* :class:`NonRequest` -- one NON request (mitigation PUT/DELETE, heartbeat): "resent at
  regular intervals until a response is received" (§4.4).  The interval is the pacer's
  spacing (RTO when an estimate exists, >= SRTT); it gives up at an optional deadline
  (e.g. the mitigation lifetime) or after ``max_sends``.
* :class:`ConRequest` -- RFC 7252 §4.2 exponential back-off with the *negotiated*
  ack-timeout / ack-random-factor / max-retransmit (SC-117); the random draw is passed in.
* :class:`ProbingLimiter` -- RFC 7252 §4.7 PROBING_RATE towards a silent peer; mitigation
  requests bypass it (SC-015).
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.numbers.rfc9132 import NON_INTERVAL_WITHOUT_RTT

from .session import TransmissionConfig


@dataclass(frozen=True)
class SendAt:
    at: float


@dataclass(frozen=True)
class GiveUp:
    reason: str


Next = SendAt | GiveUp


# --- RTT ----------------------------------------------------------------------------------
class RttEstimator:
    """RFC 6298 §2 (alpha 1/8, beta 1/4, K 4); RTO floored at ``min_rto``."""

    ALPHA = 0.125
    BETA = 0.25
    K = 4

    def __init__(self, *, initial_rto: float = 1.0, min_rto: float = 1.0, max_rto: float = 60.0,
                 granularity: float = 0.001) -> None:
        self.srtt: float | None = None
        self.rttvar: float | None = None
        self.rto = initial_rto
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.granularity = granularity

    @property
    def has_estimate(self) -> bool:
        return self.srtt is not None

    def sample(self, rtt: float) -> None:
        if rtt < 0:
            raise ValueError("negative RTT sample")
        if self.srtt is None or self.rttvar is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = (1 - self.BETA) * self.rttvar + self.BETA * abs(self.srtt - rtt)
            self.srtt = (1 - self.ALPHA) * self.srtt + self.ALPHA * rtt
        rto = self.srtt + max(self.granularity, self.K * self.rttvar)
        self.rto = min(self.max_rto, max(self.min_rto, rto))

    def backoff(self) -> None:
        """RFC 6298 §5.5: a timeout doubles the RTO."""
        self.rto = min(self.max_rto, self.rto * 2)


# --- NON ----------------------------------------------------------------------------------
class NonPacer:
    """Spacing of NON requests towards one peer (SC-013, SC-014)."""

    def __init__(self, rtt: RttEstimator | None = None, *,
                 no_rtt_interval: float = NON_INTERVAL_WITHOUT_RTT) -> None:
        if no_rtt_interval < NON_INTERVAL_WITHOUT_RTT:
            raise ValueError("SC-014: not more than one NON request every 3 s without an RTT estimate")
        self.rtt = rtt or RttEstimator()
        self.no_rtt_interval = no_rtt_interval
        self.last_sent: float | None = None

    @property
    def spacing(self) -> float:
        """Minimum gap between two NON datagrams."""
        if self.rtt.has_estimate and self.rtt.srtt is not None:
            return self.rtt.srtt
        return self.no_rtt_interval

    @property
    def repeat_interval(self) -> float:
        """Regular interval for repeating one unanswered request (>= spacing)."""
        if self.rtt.has_estimate:
            return max(self.rtt.rto, self.spacing)
        return self.no_rtt_interval

    def earliest(self, now: float) -> float:
        return now if self.last_sent is None else max(now, self.last_sent + self.spacing)

    def sent(self, now: float) -> None:
        self.last_sent = now if self.last_sent is None else max(self.last_sent, now)


class NonRequest:
    """One NON request repeated until a response (§4.4)."""

    def __init__(self, pacer: NonPacer, now: float, *, deadline: float | None = None,
                 max_sends: int | None = None) -> None:
        self.pacer = pacer
        self.created = now
        self.deadline = deadline
        self.max_sends = max_sends
        self.sends: list[float] = []
        self.done = False

    def next_send(self, now: float) -> Next:
        if self.done:
            return GiveUp("answered")
        if self.max_sends is not None and len(self.sends) >= self.max_sends:
            return GiveUp(f"no response after {len(self.sends)} transmissions")
        at = self.pacer.earliest(now)
        if self.sends:
            at = max(at, self.sends[-1] + self.pacer.repeat_interval)
        if self.deadline is not None and at >= self.deadline:
            return GiveUp("deadline reached")
        return SendAt(at)

    def sent(self, now: float) -> None:
        self.sends.append(now)
        self.pacer.sent(now)

    def response(self, now: float) -> None:
        """Feed the RTT estimator only from a request sent once (Karn's algorithm)."""
        if len(self.sends) == 1:
            self.pacer.rtt.sample(now - self.sends[0])
        self.done = True


# --- CON ----------------------------------------------------------------------------------
def max_transmit_span(cfg: TransmissionConfig) -> float:
    """RFC 7252 §4.8.2 MAX_TRANSMIT_SPAN with the negotiated values."""
    return float(cfg.ack_timeout) * (2 ** cfg.max_retransmit - 1) * float(cfg.ack_random_factor)


def max_transmit_wait(cfg: TransmissionConfig) -> float:
    """RFC 7252 §4.8.2 MAX_TRANSMIT_WAIT with the negotiated values."""
    return float(cfg.ack_timeout) * (2 ** (cfg.max_retransmit + 1) - 1) * float(cfg.ack_random_factor)


class ConRequest:
    """RFC 7252 §4.2 retransmission of one CON message.

    ``random_fraction`` in [0, 1) picks the initial timeout in
    [ACK_TIMEOUT, ACK_TIMEOUT * ACK_RANDOM_FACTOR]; it doubles on each retransmission and
    the request gives up after MAX_RETRANSMIT retransmissions once the last timeout ran out.
    """

    def __init__(self, cfg: TransmissionConfig, now: float, random_fraction: float) -> None:
        if not 0.0 <= random_fraction < 1.0:
            raise ValueError("random_fraction must be in [0, 1)")
        self.cfg = cfg
        factor = float(cfg.ack_random_factor)
        self.initial_timeout = float(cfg.ack_timeout) * (1 + random_fraction * (factor - 1))
        self.first_sent = now
        self.retransmissions = 0
        self.timeout = self.initial_timeout
        self.next_at = now + self.timeout
        self.acked = False

    def next_send(self, now: float) -> Next:
        """When to retransmit (or give up) -- call once ``now >= next_at``."""
        if self.acked:
            return GiveUp("acknowledged")
        if self.retransmissions >= self.cfg.max_retransmit:
            if now >= self.next_at:
                return GiveUp(f"no ACK after {self.retransmissions} retransmissions")
            return SendAt(self.next_at)  # still waiting for the last one
        return SendAt(self.next_at)

    def retransmitted(self, now: float) -> None:
        self.retransmissions += 1
        self.timeout *= 2
        self.next_at = now + self.timeout

    def ack(self) -> None:
        self.acked = True


# --- probing rate -------------------------------------------------------------------------
class ProbingLimiter:
    """RFC 7252 §4.7: at most ``probing_rate`` bytes/s on average to a peer that does not
    respond.  Mitigation requests are never delayed by it (SC-015)."""

    def __init__(self, probing_rate: float) -> None:
        if probing_rate <= 0:
            raise ValueError("probing_rate must be > 0")
        self.rate = float(probing_rate)
        self.silent_since: float | None = None
        self.bytes = 0

    def earliest(self, now: float, size: int, *, mitigation: bool = False) -> float:
        if mitigation or self.silent_since is None:
            return now
        return max(now, self.silent_since + (self.bytes + size) / self.rate)

    def sent(self, now: float, size: int) -> None:
        if self.silent_since is None:
            self.silent_since = now
        self.bytes += size

    def response(self, now: float) -> None:
        self.silent_since = None
        self.bytes = 0
