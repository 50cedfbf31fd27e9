"""Server-side lifecycle of ONE mitigation request (RFC 9132 §4.4), as a transition table.

Theory of operation
-------------------
States are the 'status' values of Table 3 (1..8) plus ``NEW`` (not accepted yet) and
``GONE`` (deleted; the mid no longer exists at the server).  ``TRANSITIONS`` maps
``(state, event)`` to a target state or to a guard (a :class:`Guard` name resolved from the
request's own data: trigger-mitigation type, "attack-stopped" repeat counter...).  A pair
absent from the table raises :class:`IllegalTransition` -- nothing ever changes silently.

Effects are derived from the difference between before and after, so the table stays
declarative:

* entering an *installed* state (1-5) from a non-installed one -> ``InstallMitigation``;
  leaving it -> ``RemoveMitigation`` (``replaced_by`` set when a higher mid took over);
* a status change -> ``NotifyObservers`` (Observe notifications, §4.4.2.1);
* any accepted change -> ``Persist``; a changed next deadline -> ``ScheduleTimer``.

Lifetimes (§4.4.1.1): the granted lifetime starts at accept/refresh; ``-1`` is indefinite;
``remaining_lifetime(now)`` is what status messages carry (SC-044), never negative.
Withdrawal (§4.4.4): DELETE on an installed request -> 5 (active-but-terminating) until
``now + period`` (120 s by default, SC-106); re-requesting during that period doubles the
next period up to 300 s (SC-107); elapsing -> 6 (SC-108), then ``purge`` -> GONE.
Preconfigured requests (trigger-mitigation=false) are armed in 8; ``signal_lost`` activates
them (-> 1, §4.4.1.1); "attack stopped" (3) or "withdrawn" (7) is sent four times and the
request then falls back to 8 (Table 3).  Signal channel recovery never stops a mitigation
(SC-109): ``signal_restored`` is a self-loop everywhere.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import NamedTuple

from agent.numbers.rfc9132 import (
    ACTIVE_BUT_TERMINATING,
    ACTIVE_BUT_TERMINATING_MAX,
    ATTACK_STOPPED_REPEAT,
    INDEFINITE_LIFETIME,
    AttackStatus,
    ConflictStatus,
    Status,
)

CONFLICT_LIFETIME_MARGIN = 45  # §4.4.1.3: deactivated request lives retry-timer + 45 s


class Lifecycle(enum.Enum):
    NEW = "new"
    GONE = "gone"


State = Status | Lifecycle

NEW = Lifecycle.NEW
GONE = Lifecycle.GONE
S1 = Status.ATTACK_MITIGATION_IN_PROGRESS
S2 = Status.ATTACK_SUCCESSFULLY_MITIGATED
S3 = Status.ATTACK_STOPPED
S4 = Status.ATTACK_EXCEEDED_CAPABILITY
S5 = Status.DOTS_CLIENT_WITHDRAWN_MITIGATION
S6 = Status.ATTACK_MITIGATION_TERMINATED
S7 = Status.ATTACK_MITIGATION_WITHDRAWN
S8 = Status.ATTACK_MITIGATION_SIGNAL_LOSS

INSTALLED: frozenset[State] = frozenset({S1, S2, S3, S4, S5})  # mitigator holds resources
ACTIVE: frozenset[State] = frozenset({S1, S2, S3, S4})  # "active mitigation request"
LIVE: frozenset[State] = frozenset({S1, S2, S3, S4, S5, S6, S7, S8})


class Event(enum.Enum):
    ACCEPT = "accept"
    ACCEPT_INACTIVE = "accept_inactive"
    REPORT_IN_PROGRESS = "report_in_progress"
    REPORT_SUCCESS = "report_success"
    REPORT_CAPACITY_EXCEEDED = "report_capacity_exceeded"
    ATTACK_STOPPED = "attack_stopped"
    EFFICACY_UPDATE = "efficacy_update"
    LIFETIME_RENEWED = "lifetime_renewed"
    CLIENT_WITHDRAW = "client_withdraw"
    TERMINATING_ELAPSED = "terminating_elapsed"
    LIFETIME_EXPIRED = "lifetime_expired"
    PURGE = "purge"
    SERVER_WITHDRAW = "server_withdraw"
    REACTIVATE = "reactivate"
    SIGNAL_LOST = "signal_lost"
    SIGNAL_RESTORED = "signal_restored"
    STATUS_SENT = "status_sent"
    REPLACED = "replaced"


class Guard(enum.Enum):
    """Targets that depend on the request's data."""

    BY_TRIGGER = "1 if trigger-mitigation else 8"
    REPEAT_THEN_ARM = "stay until sent 4 times, then 8 (trigger-mitigation=false only)"
    WITHDRAW = "5 if installed else GONE"
    RENEW = "same state; 5 -> 1 (re-request doubles the next terminating period)"


Target = State | Guard

_REPORTS = {S1, S2, S3, S4}
_ANY_LIVE = tuple(LIVE)

# (state, event) -> target.  Read row by row: "in <state>, on <event>, go to <target>".
TRANSITIONS: dict[tuple[State, Event], Target] = {
    (NEW, Event.ACCEPT): Guard.BY_TRIGGER,
    (NEW, Event.ACCEPT_INACTIVE): S7,  # conflict policy: kept but inactive (conflict-status 1)
    # mitigator reports (status 1/2/4) and attack end (3)
    **{(s, Event.REPORT_IN_PROGRESS): S1 for s in _REPORTS},
    **{(s, Event.REPORT_SUCCESS): S2 for s in _REPORTS},
    **{(s, Event.REPORT_CAPACITY_EXCEEDED): S4 for s in _REPORTS},
    **{(s, Event.ATTACK_STOPPED): S3 for s in (S1, S2, S3, S4)},
    # client refreshes (§4.4.1.3, §4.4.3)
    **{(s, Event.EFFICACY_UPDATE): Guard.RENEW for s in (S1, S2, S3, S4, S7, S8)},
    **{(s, Event.LIFETIME_RENEWED): Guard.RENEW for s in (S1, S2, S3, S4, S5, S7, S8)},
    # withdrawal and termination (§4.4.4)
    **{(s, Event.CLIENT_WITHDRAW): Guard.WITHDRAW for s in (S1, S2, S3, S4, S7, S8)},
    (S5, Event.CLIENT_WITHDRAW): S5,  # retransmitted DELETE: idempotent
    (S5, Event.TERMINATING_ELAPSED): S6,
    **{(s, Event.LIFETIME_EXPIRED): S6 for s in (S1, S2, S3, S4, S7, S8)},
    (S6, Event.PURGE): GONE,
    # server-initiated
    **{(s, Event.SERVER_WITHDRAW): S7 for s in (S1, S2, S3, S4)},
    (S7, Event.REACTIVATE): Guard.BY_TRIGGER,
    # preconfigured (trigger-mitigation=false) requests
    (S8, Event.SIGNAL_LOST): S1,
    **{(s, Event.SIGNAL_LOST): s for s in (S1, S2, S3, S4, S5, S6, S7)},
    **{(s, Event.SIGNAL_RESTORED): s for s in _ANY_LIVE},  # SC-109
    **{(s, Event.STATUS_SENT): s for s in (S1, S2, S4, S5, S6, S8)},
    (S3, Event.STATUS_SENT): Guard.REPEAT_THEN_ARM,
    (S7, Event.STATUS_SENT): Guard.REPEAT_THEN_ARM,
    # a higher overlapping mid of the same client (SC-065)
    **{(s, Event.REPLACED): GONE for s in _ANY_LIVE},
}


# --- effects ------------------------------------------------------------------------------
@dataclass(frozen=True)
class InstallMitigation:
    mid: int


@dataclass(frozen=True)
class RemoveMitigation:
    mid: int
    replaced_by: int | None = None  # make-before-break hint


@dataclass(frozen=True)
class NotifyObservers:
    mid: int
    status: Status
    conflict_status: ConflictStatus | None = None


@dataclass(frozen=True)
class Persist:
    mid: int
    deleted: bool = False


@dataclass(frozen=True)
class ScheduleTimer:
    mid: int
    deadline: float | None  # None: cancel


@dataclass(frozen=True)
class ReportEfficacy:
    mid: int
    attack_status: AttackStatus


Effect = InstallMitigation | RemoveMitigation | NotifyObservers | Persist | ScheduleTimer | ReportEfficacy


class Transition(NamedTuple):
    state: State
    effects: list[Effect]


class IllegalTransition(Exception):
    """The event is not allowed in the current state (no change was made)."""

    def __init__(self, state: State, event: Event) -> None:
        name = state.name if isinstance(state, Status) else state.value
        super().__init__(f"event {event.value!r} not allowed in state {name}")
        self.state = state
        self.event = event


# --- the machine --------------------------------------------------------------------------
class Mitigation:
    """One mitigation request (one cuid + mid) at the server."""

    def __init__(
        self,
        mid: int,
        *,
        trigger_mitigation: bool = True,
        terminating_period: float = ACTIVE_BUT_TERMINATING,
        terminating_max: float = ACTIVE_BUT_TERMINATING_MAX,
    ) -> None:
        self.mid = mid
        self.trigger_mitigation = trigger_mitigation
        self.state: State = NEW
        self.terminating_period = min(float(terminating_period), float(terminating_max))
        self.terminating_max = float(terminating_max)
        self.granted_lifetime: int = 0
        self.expires_at: float | None = None  # None with a granted lifetime of -1: indefinite
        self.terminating_until: float | None = None
        self.conflict_status: ConflictStatus | None = None
        self.attack_status: AttackStatus | None = None
        self.repeat_count = 0
        self.activated_by_signal_loss = False

    # -- queries -------------------------------------------------------------------
    @property
    def status(self) -> Status | None:
        return self.state if isinstance(self.state, Status) else None

    @property
    def installed(self) -> bool:
        return self.state in INSTALLED

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def remaining_lifetime(self, now: float) -> int:
        """SC-044: seconds left, -1 if indefinite, 0 once expired (never below 0)."""
        if self.state in (NEW, GONE):
            return 0
        if self.expires_at is None:
            return INDEFINITE_LIFETIME
        return max(0, math.ceil(self.expires_at - now))

    def next_deadline(self) -> float | None:
        if self.state is S5:
            return self.terminating_until
        if self.state in LIVE and self.state is not S6:
            return self.expires_at
        return None

    def allowed(self, event: Event) -> bool:
        return (self.state, event) in TRANSITIONS

    # -- event API -----------------------------------------------------------------
    def accept(self, now: float, lifetime: int) -> Transition:
        """2.01 Created with the granted ``lifetime``: 1 (immediate) or 8 (preconfigured)."""
        return self._fire(Event.ACCEPT, now, lifetime=lifetime)

    def accept_inactive(self, now: float, retry_timer: int) -> Transition:
        """Conflict policy "keep but deactivate": status 7, conflict-status 1, lifetime
        retry-timer + 45 s (§4.4.1.3)."""
        return self._fire(Event.ACCEPT_INACTIVE, now, lifetime=retry_timer + CONFLICT_LIFETIME_MARGIN,
                          conflict_status=ConflictStatus.REQUEST_INACTIVE_OTHER_ACTIVE)

    def mitigator_reports(self, now: float, status: Status) -> Transition:
        """The mitigator says in-progress (1), success (2) or capacity exceeded (4)."""
        ev = {S1: Event.REPORT_IN_PROGRESS, S2: Event.REPORT_SUCCESS, S4: Event.REPORT_CAPACITY_EXCEEDED}.get(
            Status(status))
        if ev is None:
            raise ValueError(f"a mitigator reports status 1, 2 or 4, not {status}")
        return self._fire(ev, now)

    def attack_stopped(self, now: float) -> Transition:
        return self._fire(Event.ATTACK_STOPPED, now)

    def efficacy_update(self, now: float, attack_status: AttackStatus,
                        lifetime: int | None = None) -> Transition:
        """§4.4.3: a refresh carrying 'attack-status'; ``lifetime`` None keeps the granted one."""
        return self._fire(Event.EFFICACY_UPDATE, now, lifetime=lifetime,
                          attack_status=AttackStatus(attack_status))

    def lifetime_renewed(self, now: float, lifetime: int | None = None) -> Transition:
        return self._fire(Event.LIFETIME_RENEWED, now, lifetime=lifetime)

    def client_withdraw(self, now: float) -> Transition:
        """DELETE (§4.4.4)."""
        return self._fire(Event.CLIENT_WITHDRAW, now)

    def terminating_elapsed(self, now: float) -> Transition:
        if not self.allowed(Event.TERMINATING_ELAPSED):
            raise IllegalTransition(self.state, Event.TERMINATING_ELAPSED)
        if self.state is S5 and self.terminating_until is not None and now < self.terminating_until:
            raise NotYetDue(self.terminating_until, now)
        return self._fire(Event.TERMINATING_ELAPSED, now)

    def lifetime_expired(self, now: float) -> Transition:
        if not self.allowed(Event.LIFETIME_EXPIRED):
            raise IllegalTransition(self.state, Event.LIFETIME_EXPIRED)
        if self.expires_at is None or now < self.expires_at:
            raise NotYetDue(self.expires_at, now)
        return self._fire(Event.LIFETIME_EXPIRED, now)

    def purge(self, now: float) -> Transition:
        """Drop a terminated (6) request once its final status has been reported."""
        return self._fire(Event.PURGE, now)

    def server_withdraw(self, now: float, *, conflict_status: ConflictStatus | None = None,
                        retry_timer: int | None = None) -> Transition:
        """Status 7.  With ``retry_timer`` (conflict deactivation) the lifetime becomes
        retry-timer + 45 s (§4.4.1.3)."""
        lifetime = None if retry_timer is None else retry_timer + CONFLICT_LIFETIME_MARGIN
        return self._fire(Event.SERVER_WITHDRAW, now, lifetime=lifetime, conflict_status=conflict_status)

    def reactivate(self, now: float) -> Transition:
        """The conflict that kept this request inactive is resolved."""
        return self._fire(Event.REACTIVATE, now)

    def signal_lost(self, now: float) -> Transition:
        """Signal channel session lost: an armed preconfigured request (8) is activated."""
        return self._fire(Event.SIGNAL_LOST, now)

    def signal_restored(self, now: float) -> Transition:
        """SC-109: recovery is not a trigger to stop anything."""
        return self._fire(Event.SIGNAL_RESTORED, now)

    def status_sent(self, now: float) -> Transition:
        """A status message for this request went out (counts the 4 repeats of 3/7)."""
        return self._fire(Event.STATUS_SENT, now)

    def replaced(self, now: float, by_mid: int) -> Transition:
        """SC-065: an overlapping higher mid of the same client deletes this one."""
        return self._fire(Event.REPLACED, now, replaced_by=by_mid)

    def on_timer(self, now: float) -> Transition:
        """Dispatch whichever deadline has passed (no-op transition if none)."""
        if self.state is S5 and self.terminating_until is not None and now >= self.terminating_until:
            return self.terminating_elapsed(now)
        if self.state in LIVE and self.state not in (S5, S6) and self.expires_at is not None \
                and now >= self.expires_at:
            return self.lifetime_expired(now)
        return Transition(self.state, [])

    @property
    def next_terminating_period(self) -> float:
        """Period a replacement of this request should inherit (SC-107 doubling)."""
        if self.state is S5:
            return min(self.terminating_period * 2, self.terminating_max)
        return self.terminating_period

    # -- engine --------------------------------------------------------------------
    def _resolve(self, target: Target) -> State:
        if not isinstance(target, Guard):
            return target
        if target is Guard.BY_TRIGGER:
            return S1 if self.trigger_mitigation else S8
        if target is Guard.WITHDRAW:
            return S5 if self.state in INSTALLED else GONE
        if target is Guard.RENEW:
            return S1 if self.state is S5 else self.state
        # REPEAT_THEN_ARM: immediate requests keep reporting 3/7 until withdrawn or expired
        if self.trigger_mitigation:
            return self.state
        return S8 if self.repeat_count + 1 >= ATTACK_STOPPED_REPEAT else self.state

    def _fire(self, event: Event, now: float, *, lifetime: int | None = None,
              replaced_by: int | None = None, conflict_status: ConflictStatus | None = None,
              attack_status: AttackStatus | None = None) -> Transition:
        key = (self.state, event)
        if key not in TRANSITIONS:
            raise IllegalTransition(self.state, event)
        if lifetime is not None and (lifetime == 0 or lifetime < INDEFINITE_LIFETIME):
            raise ValueError(f"invalid lifetime {lifetime} (SC-062)")
        if event is Event.ACCEPT and lifetime is None:
            raise ValueError("accept needs the granted lifetime")
        old_state, old_deadline = self.state, self.next_deadline()
        new = self._resolve(TRANSITIONS[key])

        # side data of the transition (only after the event was found legal)
        if lifetime is not None:
            self.granted_lifetime = lifetime
            self.expires_at = None if lifetime == INDEFINITE_LIFETIME else now + lifetime
        elif event in (Event.EFFICACY_UPDATE, Event.LIFETIME_RENEWED):
            g = self.granted_lifetime
            self.expires_at = None if g == INDEFINITE_LIFETIME else now + g
        if event is Event.CLIENT_WITHDRAW and new is S5 and old_state is not S5:
            self.terminating_until = now + self.terminating_period
        if old_state is S5 and new is S1:  # re-requested while terminating (SC-107)
            self.terminating_period = min(self.terminating_period * 2, self.terminating_max)
            self.terminating_until = None
        if event is Event.SIGNAL_LOST and old_state is S8:
            self.activated_by_signal_loss = True
        if new is S8:
            self.activated_by_signal_loss = False
        if event is Event.STATUS_SENT and old_state in (S3, S7):
            self.repeat_count = 0 if new is S8 else self.repeat_count + 1
        elif new is not old_state:
            self.repeat_count = 0
        if attack_status is not None:
            self.attack_status = attack_status
        if event in (Event.ACCEPT_INACTIVE, Event.SERVER_WITHDRAW):
            self.conflict_status = conflict_status
        elif new is not S7:
            self.conflict_status = None
        self.state = new

        effects: list[Effect] = []
        if event is Event.EFFICACY_UPDATE and attack_status is not None:
            effects.append(ReportEfficacy(self.mid, attack_status))
        if new in INSTALLED and old_state not in INSTALLED:
            effects.append(InstallMitigation(self.mid))
        if old_state in INSTALLED and new not in INSTALLED:
            effects.append(RemoveMitigation(self.mid, replaced_by))
        if new is not old_state and isinstance(new, Status):
            effects.append(NotifyObservers(self.mid, new, self.conflict_status))
        changed_data = lifetime is not None or event in (Event.EFFICACY_UPDATE, Event.LIFETIME_RENEWED)
        if new is not old_state or changed_data:
            effects.append(Persist(self.mid, deleted=new is GONE))
        deadline = self.next_deadline()
        if deadline != old_deadline:
            effects.append(ScheduleTimer(self.mid, deadline))
        return Transition(new, effects)


class NotYetDue(Exception):
    """A timer event fired before its deadline (nothing was changed)."""

    def __init__(self, deadline: float | None, now: float) -> None:
        super().__init__(f"deadline {deadline} not reached at {now}")
        self.deadline = deadline
        self.now = now
