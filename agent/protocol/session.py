"""Signal channel session configuration and heartbeat liveness of one (D)TLS session.

Theory of operation
-------------------
:class:`SessionConfig` holds the negotiated 'mitigating-config' and 'idle-config' sets
(RFC 9132 §4.5).  :class:`Liveness` follows the set matching the current mitigation
activity and switches automatically when that changes (SC-110, SC-111).

:class:`Liveness` is a sans-I/O state machine with three phases::

      UP --threshold reached, exempt--> DEGRADED --threshold reached, not exempt--> LOST
       ^                                   |
       +------ heartbeat response ---------+        UP --threshold, not exempt--> LOST

Time only enters through ``now`` arguments.  Every ``SendHeartbeat`` effect the machine
emits is recorded as sent at the ``now`` it was emitted (the driver must send it);
``heartbeat_sent`` is for heartbeats the driver sends on its own.

The threshold is reached when ``missing-hb-allowed`` consecutive heartbeats (UDP) or one
heartbeat (TCP: "allow up to heartbeat-interval seconds", §4.7) got no response and the
next heartbeat is due.  What happens then is the ``VERDICT`` table, keyed by
(saturation mode, peer traffic heard during the unanswered span, side that initiates
(D)TLS) -- the role rules of §4.7 and RFC 9066 §5.2.1:

* traffic from the peer during the span of the unanswered heartbeats exempts the session
  for every role (server: SC-150/SC-151; Call Home server: CH-003): DEGRADED, keep using it;
* a DOTS client under attack/mitigating (link saturation) MUST NOT consider the session
  terminated (SC-146), keeps heartbeating on it (SC-147) and opens a parallel session
  (SC-148/SC-149: ``Reconnect(parallel=True)``); a response later cancels that attempt;
* a Call Home client reporting an attack keeps using the channel (CH-002) -- it cannot
  open a session itself since it is the (D)TLS server;
* on the attack-signalling side any peer traffic counts as a heartbeat response (it proves
  the saturated inbound link works again);
* otherwise the session is LOST; the (D)TLS client side (DOTS client SC-143, Call Home
  server CH-004) is told to reconnect, preferably by resumption.

Re-establishment pacing is :class:`ReconnectBackoff`: first attempt immediate, then
60 s doubling to 300 s, times ``(1 + jitter)`` with jitter passed in (SC-144: never more
often than every 60 s).  ``heartbeat-interval`` 0 disables heartbeats and therefore
heartbeat-based loss detection.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal

from agent.numbers.rfc9132 import (
    DEFAULT_ACK_RANDOM_FACTOR,
    DEFAULT_ACK_TIMEOUT,
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_MAX_RETRANSMIT,
    DEFAULT_MISSING_HB_ALLOWED,
    DEFAULT_PROBING_RATE,
    RECONNECT_MIN_INTERVAL,
    RECONNECT_RECOMMENDED_INTERVAL,
)


# --- configuration ------------------------------------------------------------------------
@dataclass(frozen=True)
class TransmissionConfig:
    """One configuration set ('mitigating-config' or 'idle-config'), current values."""

    heartbeat_interval: int = DEFAULT_HEARTBEAT_INTERVAL
    missing_hb_allowed: int = DEFAULT_MISSING_HB_ALLOWED
    probing_rate: int = DEFAULT_PROBING_RATE
    max_retransmit: int = DEFAULT_MAX_RETRANSMIT
    ack_timeout: Decimal = DEFAULT_ACK_TIMEOUT
    ack_random_factor: Decimal = DEFAULT_ACK_RANDOM_FACTOR


@dataclass(frozen=True)
class SessionConfig:
    """Negotiated session configuration; both sets default to the RFC defaults (SC-117)."""

    mitigating: TransmissionConfig = field(default_factory=TransmissionConfig)
    idle: TransmissionConfig = field(default_factory=TransmissionConfig)

    def for_activity(self, mitigating: bool) -> TransmissionConfig:
        """SC-110: the set to follow given the mitigation activity."""
        return self.mitigating if mitigating else self.idle


# --- roles and effects --------------------------------------------------------------------
class Role(enum.Enum):
    CLIENT = "client"  # RFC 9132 DOTS client: (D)TLS client, signals attacks
    SERVER = "server"  # RFC 9132 DOTS server: (D)TLS server
    CALL_HOME_CLIENT = "call-home-client"  # RFC 9066: (D)TLS server, signals attacks
    CALL_HOME_SERVER = "call-home-server"  # RFC 9066: (D)TLS client

    @property
    def initiates_tls(self) -> bool:
        """The side that (re)establishes the (D)TLS session."""
        return self in (Role.CLIENT, Role.CALL_HOME_SERVER)

    @property
    def signals_attacks(self) -> bool:
        """The side that sends mitigation requests (link saturation rules apply to it)."""
        return self in (Role.CLIENT, Role.CALL_HOME_CLIENT)


@dataclass(frozen=True)
class SendHeartbeat:
    peer_hb_status: bool


@dataclass(frozen=True)
class SessionLost:
    reason: str


@dataclass(frozen=True)
class Reconnect:
    """Establish a (D)TLS session after ``after`` seconds; ``parallel`` keeps the current one."""

    after: float
    parallel: bool = False
    resume: bool = True


@dataclass(frozen=True)
class CancelParallelSession:
    """The saturated session works again: the parallel attempt may be stopped (§4.7)."""


@dataclass(frozen=True)
class ConfigSwitched:
    mitigating: bool
    config: TransmissionConfig


Effect = SendHeartbeat | SessionLost | Reconnect | CancelParallelSession | ConfigSwitched


# --- reconnect back-off -------------------------------------------------------------------
@dataclass
class ReconnectBackoff:
    """SC-144 schedule: 0, then ``min_interval * factor**k`` capped at ``max_interval``.

    ``jitter`` (>= 0, e.g. ``random.random() * 0.25``) stretches a delay, never shortens it,
    so no retry is ever closer than ``RECONNECT_MIN_INTERVAL`` (60 s) to the previous one.
    """

    min_interval: float = RECONNECT_MIN_INTERVAL
    max_interval: float = RECONNECT_RECOMMENDED_INTERVAL
    factor: float = 2.0
    failures: int = 0

    def __post_init__(self) -> None:
        if self.min_interval < RECONNECT_MIN_INTERVAL:
            raise ValueError(f"min_interval must be >= {RECONNECT_MIN_INTERVAL} s (SC-144)")
        if self.max_interval < self.min_interval or self.factor < 1:
            raise ValueError("max_interval must be >= min_interval and factor >= 1")

    def delay(self, jitter: float = 0.0) -> float:
        """Delay before the next attempt given the failures so far."""
        if jitter < 0:
            raise ValueError("jitter must be >= 0")
        if self.failures == 0:
            return 0.0
        base = min(self.max_interval, self.min_interval * self.factor ** (self.failures - 1))
        return max(RECONNECT_MIN_INTERVAL, base * (1.0 + jitter))

    def failed(self, jitter: float = 0.0) -> float:
        """Record a failed attempt; return the delay before the next one."""
        self.failures += 1
        return self.delay(jitter)

    def succeeded(self) -> None:
        self.failures = 0


# --- liveness machine ---------------------------------------------------------------------
class Phase(enum.Enum):
    UP = "up"
    DEGRADED = "degraded"  # threshold reached but the session is kept (SC-146, SC-150, CH-002/3)
    LOST = "lost"


class Ev(enum.Enum):
    HEARTBEAT_SENT = "heartbeat_sent"
    HEARTBEAT_RESPONSE = "heartbeat_response"
    HEARTBEAT_RECEIVED = "heartbeat_received"
    ANY_TRAFFIC = "any_traffic"
    TICK = "tick"
    ACTIVITY = "activity"  # mitigation activity / attack detection changed


_LIVE = frozenset(Ev)
# Which events each phase accepts.  LOST is absorbing: late packets and ticks are accepted
# but have no effect (the driver discards the object after SessionLost).
TRANSITIONS: dict[Phase, frozenset[Ev]] = {
    Phase.UP: _LIVE,
    Phase.DEGRADED: _LIVE,
    Phase.LOST: _LIVE,
}


class Action(enum.Enum):
    NONE = "none"
    PARALLEL = "open a parallel session"  # SC-148
    RECONNECT = "reconnect"  # SC-143, CH-004


# Threshold reached: (saturation_mode, heard_peer_in_span, initiates_tls) -> (phase, action).
VERDICT: dict[tuple[bool, bool, bool], tuple[Phase, Action]] = {
    (True, heard, True): (Phase.DEGRADED, Action.PARALLEL) for heard in (True, False)
} | {
    (True, heard, False): (Phase.DEGRADED, Action.NONE) for heard in (True, False)  # CH-002
} | {
    (False, True, tls): (Phase.DEGRADED, Action.NONE) for tls in (True, False)  # SC-150, CH-003
} | {
    (False, False, True): (Phase.LOST, Action.RECONNECT),
    (False, False, False): (Phase.LOST, Action.NONE),
}


class SessionClosedError(RuntimeError):
    """An event that needs a live session arrived after SessionLost."""


class Liveness:
    """Heartbeat bookkeeping for one (D)TLS session (RFC 9132 §4.7, RFC 9066 §5.2.1)."""

    def __init__(
        self,
        role: Role,
        config: SessionConfig,
        now: float,
        *,
        reliable: bool = False,
        mitigating: bool = False,
        under_attack: bool = False,
        send_heartbeats: bool = True,
        immediate_reply_on_peer_false: bool = True,
    ) -> None:
        self.role = role
        self.session_config = config
        self.reliable = reliable
        self.send_heartbeats = send_heartbeats
        self.immediate_reply = immediate_reply_on_peer_false
        self.phase = Phase.UP
        self.started_at = now
        self._mitigating = mitigating
        self._under_attack = under_attack
        self.last_rx = now
        self.last_peer_hb: float | None = None
        self.last_hb_sent: float | None = None
        self._unanswered: deque[float] = deque()  # send times of unanswered heartbeats
        self.parallel_attempt = False
        self.next_hb_at: float | None = now + self.config.heartbeat_interval if self._hb_on else None

    # -- derived -------------------------------------------------------------------
    @property
    def config(self) -> TransmissionConfig:
        return self.session_config.for_activity(self._mitigating)

    @property
    def _hb_on(self) -> bool:
        return self.config.heartbeat_interval > 0

    @property
    def threshold(self) -> int:
        """Unanswered heartbeats that mean loss: missing-hb-allowed over UDP, 1 over TCP."""
        return 1 if self.reliable else max(1, self.config.missing_hb_allowed)

    @property
    def unanswered(self) -> int:
        return len(self._unanswered)

    @property
    def saturation_mode(self) -> bool:
        return self.role.signals_attacks and (self._mitigating or self._under_attack)

    def peer_hb_status(self, now: float) -> bool:
        """'peer-hb-status': a peer heartbeat arrived in the last 2 * heartbeat-interval.

        The session start counts as a heartbeat (grace period for a fresh session).
        """
        interval = self.config.heartbeat_interval
        if interval <= 0:
            return True
        last = self.last_peer_hb if self.last_peer_hb is not None else self.started_at
        return now - last <= 2 * interval

    def next_deadline(self) -> float | None:
        """When ``tick`` next has something to do (None: nothing scheduled)."""
        return None if self.phase is Phase.LOST else self.next_hb_at

    # -- events --------------------------------------------------------------------
    def _check(self, ev: Ev) -> None:
        if ev not in TRANSITIONS[self.phase]:
            raise SessionClosedError(f"{ev.value} not accepted in phase {self.phase.value}")

    def heartbeat_sent(self, now: float) -> list[Effect]:
        """A heartbeat the driver sent on its own initiative."""
        self._check(Ev.HEARTBEAT_SENT)
        if self.phase is not Phase.LOST:
            self._record_sent(now)
        return []

    def heartbeat_response(self, now: float) -> list[Effect]:
        """2.04 to one of our heartbeats: the peer hears us and we hear it."""
        self._check(Ev.HEARTBEAT_RESPONSE)
        if self.phase is Phase.LOST:
            return []
        self.last_rx = max(self.last_rx, now)
        self._unanswered.clear()
        effects: list[Effect] = []
        if self.parallel_attempt:
            self.parallel_attempt = False
            effects.append(CancelParallelSession())
        self.phase = Phase.UP
        return effects

    def heartbeat_received(self, peer_hb_status: bool, now: float) -> list[Effect]:
        """A heartbeat from the peer (we answer 2.04 at the CoAP layer)."""
        self._check(Ev.HEARTBEAT_RECEIVED)
        if self.phase is Phase.LOST:
            return []
        self.last_rx = max(self.last_rx, now)
        self.last_peer_hb = now
        # SC-142 / CH-001 (MAY): the responder side answers a peer that does not hear us
        # with an immediate heartbeat of its own (§4.7 "another strategy").
        if (not peer_hb_status and self.immediate_reply and self._hb_on and self.send_heartbeats
                and not self.role.initiates_tls):
            return [self._emit_heartbeat(now)]
        return []

    def any_traffic(self, now: float) -> list[Effect]:
        """Any authenticated message from the peer (request, response, notification).

        On the attack-signalling side traffic from the peer proves the inbound link works
        again: it counts as a heartbeat response (and stops a parallel attempt, §4.7).
        """
        self._check(Ev.ANY_TRAFFIC)
        if self.phase is Phase.LOST:
            return []
        if self.role.signals_attacks:
            return self.heartbeat_response(now)
        self.last_rx = max(self.last_rx, now)
        return []

    def set_activity(self, now: float, *, mitigating: bool | None = None,
                     under_attack: bool | None = None) -> list[Effect]:
        """Mitigation activity or attack detection changed; switch config set (SC-111)."""
        self._check(Ev.ACTIVITY)
        if self.phase is Phase.LOST:
            return []
        old = self.config
        if under_attack is not None:
            self._under_attack = under_attack
        effects: list[Effect] = []
        if mitigating is not None and mitigating != self._mitigating:
            self._mitigating = mitigating
            effects.append(ConfigSwitched(mitigating, self.config))
        if self.config != old:
            self._reschedule(now)
        return effects

    def set_config(self, config: SessionConfig, now: float) -> list[Effect]:
        """A new negotiated configuration (sid PUT accepted, or DELETE back to defaults)."""
        self._check(Ev.ACTIVITY)
        old = self.config
        self.session_config = config
        if self.phase is not Phase.LOST and self.config != old:
            self._reschedule(now)
            return [ConfigSwitched(self._mitigating, self.config)]
        return []

    def tick(self, now: float) -> list[Effect]:
        """Advance time: send a due heartbeat or decide about a reached threshold."""
        self._check(Ev.TICK)
        if self.phase is Phase.LOST or self.next_hb_at is None or now < self.next_hb_at:
            return []
        effects: list[Effect] = []
        if self.unanswered >= self.threshold:
            effects += self._threshold_reached(now)
            if self.phase is Phase.LOST:
                return effects
        if self.send_heartbeats:
            effects.append(self._emit_heartbeat(now))
        else:
            self.next_hb_at = now + self.config.heartbeat_interval
        return effects

    # -- internals -----------------------------------------------------------------
    def _record_sent(self, now: float) -> None:
        self.last_hb_sent = now
        self._unanswered.append(now)
        while len(self._unanswered) > self.threshold:
            self._unanswered.popleft()
        if self._hb_on:
            self.next_hb_at = now + self.config.heartbeat_interval

    def _emit_heartbeat(self, now: float) -> SendHeartbeat:
        effect = SendHeartbeat(self.peer_hb_status(now))
        self._record_sent(now)
        return effect

    def _reschedule(self, now: float) -> None:
        if not self._hb_on:
            self.next_hb_at = None
            self._unanswered.clear()
            return
        base = self.last_hb_sent if self.last_hb_sent is not None else self.started_at
        self.next_hb_at = max(now, base + self.config.heartbeat_interval)
        while len(self._unanswered) > self.threshold:
            self._unanswered.popleft()

    def _threshold_reached(self, now: float) -> list[Effect]:
        heard_peer = self.last_rx >= self._unanswered[0]
        phase, action = VERDICT[(self.saturation_mode, heard_peer, self.role.initiates_tls)]
        self.phase = phase
        effects: list[Effect] = []
        if phase is Phase.LOST:
            self.next_hb_at = None
            effects.append(SessionLost(f"{self.unanswered} heartbeats unanswered, no peer traffic"))
        if action is Action.PARALLEL and not self.parallel_attempt:
            self.parallel_attempt = True
            effects.append(Reconnect(after=0.0, parallel=True, resume=True))
        elif action is Action.RECONNECT:
            effects.append(Reconnect(after=0.0, parallel=False, resume=True))
        return effects
