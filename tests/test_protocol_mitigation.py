"""Server-side lifecycle of one mitigation request (agent.protocol.mitigation)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.numbers.rfc9132 import ATTACK_STOPPED_REPEAT, AttackStatus, ConflictStatus, Status
from agent.protocol.mitigation import (
    GONE,
    NEW,
    TRANSITIONS,
    Event,
    IllegalTransition,
    InstallMitigation,
    Mitigation,
    NotifyObservers,
    NotYetDue,
    Persist,
    RemoveMitigation,
    ReportEfficacy,
    ScheduleTimer,
)

S = Status


def accepted(trigger: bool = True, lifetime: int = 3600, now: float = 0.0) -> Mitigation:
    m = Mitigation(7, trigger_mitigation=trigger)
    m.accept(now, lifetime)
    return m


@pytest.mark.req("SC-063")
def test_accept_immediate_installs_and_schedules_expiry():
    m = Mitigation(7)
    state, effects = m.accept(100.0, 3600)
    assert state is S.ATTACK_MITIGATION_IN_PROGRESS
    assert InstallMitigation(7) in effects
    assert NotifyObservers(7, S.ATTACK_MITIGATION_IN_PROGRESS) in effects
    assert Persist(7) in effects
    assert ScheduleTimer(7, 3700.0) in effects


@pytest.mark.req("SC-044")
def test_remaining_lifetime_counts_down_and_never_negative():
    m = accepted(lifetime=60, now=10.0)
    assert m.remaining_lifetime(10.0) == 60
    assert m.remaining_lifetime(40.5) == 30
    assert m.remaining_lifetime(1000.0) == 0
    assert accepted(lifetime=-1).remaining_lifetime(1e9) == -1


@pytest.mark.req("SC-062")
def test_lifetime_zero_is_refused_by_the_machine_too():
    with pytest.raises(ValueError):
        Mitigation(1).accept(0.0, 0)


def test_mitigator_reports_and_attack_stopped():
    m = accepted()
    assert m.mitigator_reports(1.0, S.ATTACK_SUCCESSFULLY_MITIGATED).state is S.ATTACK_SUCCESSFULLY_MITIGATED
    assert m.mitigator_reports(2.0, S.ATTACK_EXCEEDED_CAPABILITY).state is S.ATTACK_EXCEEDED_CAPABILITY
    state, effects = m.attack_stopped(3.0)
    assert state is S.ATTACK_STOPPED and not any(isinstance(e, RemoveMitigation) for e in effects)
    # immediate request: 3 is sent until withdrawn or expired
    for _ in range(10):
        assert m.status_sent(4.0).state is S.ATTACK_STOPPED
    with pytest.raises(ValueError):
        m.mitigator_reports(5.0, S.ATTACK_STOPPED)


@pytest.mark.req("SC-073", "SC-097")
def test_renewal_and_efficacy_update_reset_remaining_lifetime():
    m = accepted(lifetime=100)
    _, effects = m.lifetime_renewed(90.0, 200)
    assert m.remaining_lifetime(90.0) == 200 and ScheduleTimer(7, 290.0) in effects
    _, effects = m.efficacy_update(100.0, AttackStatus.UNDER_ATTACK)
    assert ReportEfficacy(7, AttackStatus.UNDER_ATTACK) in effects
    assert m.remaining_lifetime(100.0) == 200  # granted lifetime re-applied


@pytest.mark.req("SC-103", "SC-104", "SC-106", "SC-108")
def test_withdraw_is_active_but_terminating_then_terminated():
    m = accepted()
    state, effects = m.client_withdraw(10.0)
    assert state is S.DOTS_CLIENT_WITHDRAWN_MITIGATION
    assert not any(isinstance(e, RemoveMitigation) for e in effects)
    assert ScheduleTimer(7, 130.0) in effects
    assert m.client_withdraw(11.0).effects == []  # retransmitted DELETE
    with pytest.raises(NotYetDue):
        m.terminating_elapsed(100.0)
    state, effects = m.on_timer(130.0)
    assert state is S.ATTACK_MITIGATION_TERMINATED
    assert RemoveMitigation(7) in effects and NotifyObservers(7, S.ATTACK_MITIGATION_TERMINATED) in effects
    state, effects = m.purge(131.0)
    assert state is GONE and Persist(7, deleted=True) in effects


@pytest.mark.req("SC-107")
def test_rerequest_during_termination_doubles_period_up_to_300():
    m = accepted()
    periods = []
    now = 0.0
    for _ in range(4):
        m.client_withdraw(now)
        periods.append(m.terminating_until - now)
        now += 10
        m.lifetime_renewed(now)  # re-requested while terminating
        assert m.state is S.ATTACK_MITIGATION_IN_PROGRESS
    assert periods == [120, 240, 300, 300]


@pytest.mark.req("SC-107", "SC-065")
def test_replacement_inherits_doubled_period():
    m = accepted()
    m.client_withdraw(0.0)
    assert m.next_terminating_period == 240
    new = Mitigation(8, terminating_period=m.next_terminating_period)
    _, effects = m.replaced(1.0, 8)
    assert RemoveMitigation(7, replaced_by=8) in effects and m.state is GONE
    new.accept(1.0, 3600)
    new.client_withdraw(2.0)
    assert new.terminating_until == 242.0


def test_withdraw_of_uninstalled_request_goes_away_directly():
    m = accepted(trigger=False)
    assert m.state is S.ATTACK_MITIGATION_SIGNAL_LOSS
    state, effects = m.client_withdraw(1.0)
    assert state is GONE and effects == [Persist(7, deleted=True), ScheduleTimer(7, None)]


def test_lifetime_expiry_terminates():
    m = accepted(lifetime=60)
    with pytest.raises(NotYetDue):
        m.lifetime_expired(59.0)
    state, effects = m.lifetime_expired(60.0)
    assert state is S.ATTACK_MITIGATION_TERMINATED and RemoveMitigation(7) in effects
    with pytest.raises(NotYetDue):
        accepted(lifetime=-1).lifetime_expired(1e12)


@pytest.mark.req("SC-068", "SC-069")
def test_preconfigured_armed_then_activated_on_signal_loss():
    m = accepted(trigger=False)
    assert m.state is S.ATTACK_MITIGATION_SIGNAL_LOSS and not m.installed
    state, effects = m.signal_lost(5.0)
    assert state is S.ATTACK_MITIGATION_IN_PROGRESS and InstallMitigation(7) in effects


@pytest.mark.req("SC-068")
def test_preconfigured_attack_stopped_sent_four_times_then_rearmed():
    m = accepted(trigger=False)
    m.signal_lost(1.0)
    m.attack_stopped(2.0)
    for _ in range(ATTACK_STOPPED_REPEAT - 1):
        assert m.status_sent(3.0).state is S.ATTACK_STOPPED
    state, effects = m.status_sent(3.0)
    assert state is S.ATTACK_MITIGATION_SIGNAL_LOSS
    assert RemoveMitigation(7) in effects and NotifyObservers(7, S.ATTACK_MITIGATION_SIGNAL_LOSS) in effects


@pytest.mark.req("SC-068")
def test_preconfigured_withdrawn_by_server_sent_four_times_then_8():
    m = accepted(trigger=False)
    m.signal_lost(1.0)
    m.server_withdraw(2.0)
    states = [m.status_sent(3.0).state for _ in range(ATTACK_STOPPED_REPEAT)]
    assert states[-1] is S.ATTACK_MITIGATION_SIGNAL_LOSS
    assert all(s is S.ATTACK_MITIGATION_WITHDRAWN for s in states[:-1])


@pytest.mark.req("SC-109")
def test_signal_recovery_does_not_stop_mitigation():
    m = accepted(trigger=False)
    m.signal_lost(1.0)
    state, effects = m.signal_restored(2.0)
    assert state is S.ATTACK_MITIGATION_IN_PROGRESS and effects == []


@pytest.mark.req("SC-072")
def test_conflict_deactivation_lifetime_is_retry_timer_plus_45():
    m = Mitigation(3)
    state, effects = m.accept_inactive(0.0, retry_timer=600)
    assert state is S.ATTACK_MITIGATION_WITHDRAWN
    assert m.remaining_lifetime(0.0) == 645
    assert (
        NotifyObservers(3, S.ATTACK_MITIGATION_WITHDRAWN, ConflictStatus.REQUEST_INACTIVE_OTHER_ACTIVE)
        in effects
    )
    state, effects = m.reactivate(600.0)
    assert state is S.ATTACK_MITIGATION_IN_PROGRESS and InstallMitigation(3) in effects
    assert m.conflict_status is None
    a = accepted()
    _, effects = a.server_withdraw(
        5.0, conflict_status=ConflictStatus.REQUEST_INACTIVE_OTHER_ACTIVE, retry_timer=100
    )
    assert a.remaining_lifetime(5.0) == 145 and RemoveMitigation(7) in effects


def test_illegal_events_raise_and_change_nothing():
    m = Mitigation(1)
    with pytest.raises(IllegalTransition):
        m.client_withdraw(0.0)
    assert m.state is NEW
    m.accept(0.0, 10)
    with pytest.raises(IllegalTransition):
        m.accept(0.0, 10)
    with pytest.raises(IllegalTransition):
        m.reactivate(0.0)
    m.client_withdraw(1.0)
    with pytest.raises(IllegalTransition):
        m.efficacy_update(2.0, AttackStatus.UNDER_ATTACK)
    assert m.attack_status is None and m.state is S.DOTS_CLIENT_WITHDRAWN_MITIGATION
    with pytest.raises(IllegalTransition):
        m.lifetime_expired(1e9)


# --- properties ---------------------------------------------------------------------------
EVENTS = [
    ("accept", lambda m, t: m.accept(t, 100)),
    ("accept_inactive", lambda m, t: m.accept_inactive(t, 50)),
    ("ok", lambda m, t: m.mitigator_reports(t, S.ATTACK_SUCCESSFULLY_MITIGATED)),
    ("cap", lambda m, t: m.mitigator_reports(t, S.ATTACK_EXCEEDED_CAPABILITY)),
    ("stopped", lambda m, t: m.attack_stopped(t)),
    ("eff", lambda m, t: m.efficacy_update(t, AttackStatus.UNDER_ATTACK)),
    ("renew", lambda m, t: m.lifetime_renewed(t, 100)),
    ("delete", lambda m, t: m.client_withdraw(t)),
    ("timer", lambda m, t: m.on_timer(t)),
    ("purge", lambda m, t: m.purge(t)),
    ("srv_withdraw", lambda m, t: m.server_withdraw(t)),
    ("reactivate", lambda m, t: m.reactivate(t)),
    ("lost", lambda m, t: m.signal_lost(t)),
    ("restored", lambda m, t: m.signal_restored(t)),
    ("sent", lambda m, t: m.status_sent(t)),
    ("replaced", lambda m, t: m.replaced(t, 99)),
]


@pytest.mark.req("SC-044", "SC-108")
@settings(max_examples=300)
@given(
    st.booleans(), st.lists(st.tuples(st.sampled_from(range(len(EVENTS))), st.floats(0, 200)), max_size=40)
)
def test_random_event_sequences_keep_invariants(trigger, steps):
    m = Mitigation(1, trigger_mitigation=trigger)
    now = 0.0
    installed = False
    for idx, dt in steps:
        now += dt
        before = m.state
        try:
            state, effects = EVENTS[idx][1](m, now)
        except (IllegalTransition, NotYetDue):
            assert m.state is before  # never a silent change
            continue
        assert state is m.state
        assert state is GONE or isinstance(state, Status) or (state is NEW and before is NEW)
        assert state is before or any(k[0] is before for k in TRANSITIONS)
        assert m.remaining_lifetime(now) >= -1
        if m.expires_at is not None:
            assert m.remaining_lifetime(now) >= 0
        for e in effects:
            if isinstance(e, InstallMitigation):
                assert not installed
                installed = True
            if isinstance(e, RemoveMitigation):
                assert installed
                installed = False
        assert installed == m.installed
        if m.state is S.DOTS_CLIENT_WITHDRAWN_MITIGATION:
            assert m.terminating_until is not None and m.terminating_until - now <= 300
        if not trigger and m.installed:
            assert m.activated_by_signal_loss  # preconfigured scopes only mitigate after signal loss


def test_every_table_row_targets_a_valid_state():
    for (src, ev), _dst in TRANSITIONS.items():
        assert isinstance(ev, Event)
        assert src is not GONE
