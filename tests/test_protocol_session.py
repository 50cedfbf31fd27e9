"""Heartbeat liveness, config switching and reconnect back-off (agent.protocol.session)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.numbers.rfc9132 import RECONNECT_MIN_INTERVAL
from agent.protocol.session import (
    VERDICT,
    CancelParallelSession,
    ConfigSwitched,
    Liveness,
    Phase,
    Reconnect,
    ReconnectBackoff,
    Role,
    SendHeartbeat,
    SessionConfig,
    SessionLost,
    TransmissionConfig,
)

CFG = SessionConfig(
    mitigating=TransmissionConfig(heartbeat_interval=30, missing_hb_allowed=3),
    idle=TransmissionConfig(heartbeat_interval=60, missing_hb_allowed=3),
)


def run_silent(lv: Liveness, until: float, step: float = 1.0, traffic_every: float | None = None) -> list:
    """Tick with no heartbeat responses; optionally with peer traffic."""
    effects = []
    t = lv.started_at
    while t <= until:
        if traffic_every is not None and t % traffic_every == 0 and t > lv.started_at:
            lv.any_traffic(t)
        effects += lv.tick(t)
        t += step
    return effects


def test_heartbeats_every_interval_with_peer_status():
    lv = Liveness(Role.CLIENT, CFG, 0.0)
    assert lv.tick(10.0) == []
    assert lv.tick(60.0) == [SendHeartbeat(True)]
    lv.heartbeat_response(60.2)
    assert lv.next_deadline() == 120.0


@pytest.mark.req("SC-143")
def test_client_loses_session_after_missing_hb_allowed_and_reconnects():
    lv = Liveness(Role.CLIENT, CFG, 0.0)
    effects = run_silent(lv, 300.0)
    sent = [e for e in effects if isinstance(e, SendHeartbeat)]
    assert len(sent) == 3  # missing-hb-allowed heartbeats, then the verdict
    assert any(isinstance(e, SessionLost) for e in effects)
    assert Reconnect(after=0.0, parallel=False, resume=True) in effects
    assert lv.phase is Phase.LOST and lv.tick(1000.0) == []


def test_response_resets_the_count():
    lv = Liveness(Role.CLIENT, CFG, 0.0)
    for t in (60.0, 120.0):
        lv.tick(t)
    lv.heartbeat_response(121.0)
    assert lv.unanswered == 0
    run_silent(lv, 300.0)
    assert lv.phase is Phase.UP


@pytest.mark.req("SC-150", "SC-151")
def test_server_keeps_session_while_client_traffic_arrives():
    lv = Liveness(Role.SERVER, CFG, 0.0)
    effects = run_silent(lv, 1000.0, traffic_every=20.0)
    assert not any(isinstance(e, SessionLost) for e in effects)
    assert lv.phase is Phase.DEGRADED
    assert sum(isinstance(e, SendHeartbeat) for e in effects) > 3  # keeps using the session
    # once traffic stops for the whole threshold span, the session is lost (no reconnect for a server)
    effects = []
    t = 1001.0
    while lv.phase is not Phase.LOST and t < 2000:
        effects += lv.tick(t)
        t += 1
    assert any(isinstance(e, SessionLost) for e in effects)
    assert not any(isinstance(e, Reconnect) for e in effects)


@pytest.mark.req("SC-146", "SC-147", "SC-148", "SC-149", "SC-145")
def test_client_under_attack_never_terminates_and_opens_parallel_session():
    lv = Liveness(Role.CLIENT, CFG, 0.0, mitigating=True)
    effects = run_silent(lv, 2000.0)
    assert not any(isinstance(e, SessionLost) for e in effects)
    assert effects.count(Reconnect(after=0.0, parallel=True, resume=True)) == 1
    assert sum(isinstance(e, SendHeartbeat) for e in effects) > 50
    assert lv.phase is Phase.DEGRADED
    assert lv.heartbeat_response(2001.0) == [CancelParallelSession()]
    assert lv.phase is Phase.UP


@pytest.mark.req("SC-110", "SC-111")
def test_config_set_follows_mitigation_activity():
    lv = Liveness(Role.CLIENT, CFG, 0.0)
    assert lv.config is CFG.idle and lv.next_deadline() == 60.0
    effects = lv.set_activity(10.0, mitigating=True)
    assert effects == [ConfigSwitched(True, CFG.mitigating)]
    assert lv.config is CFG.mitigating and lv.next_deadline() == 30.0
    assert lv.set_activity(11.0, mitigating=True) == []
    lv.set_activity(12.0, mitigating=False)
    assert lv.config is CFG.idle


def test_heartbeat_interval_zero_disables_liveness():
    cfg = SessionConfig(idle=TransmissionConfig(heartbeat_interval=0))
    lv = Liveness(Role.CLIENT, cfg, 0.0)
    assert lv.next_deadline() is None
    assert run_silent(lv, 5000.0, step=10.0) == []
    lv.set_activity(5000.0, mitigating=True)
    assert lv.next_deadline() == 5000.0


def test_tcp_allows_one_interval_per_heartbeat():
    lv = Liveness(Role.CLIENT, CFG, 0.0, reliable=True)
    assert lv.threshold == 1
    effects = run_silent(lv, 200.0)
    assert sum(isinstance(e, SendHeartbeat) for e in effects) == 1
    assert any(isinstance(e, SessionLost) for e in effects)


@pytest.mark.req("SC-142")
def test_peer_hb_status_and_immediate_reply():
    lv = Liveness(Role.SERVER, CFG, 0.0)
    assert lv.peer_hb_status(100.0) is True  # grace: session start within 2 * interval
    assert lv.peer_hb_status(121.0) is False
    lv.heartbeat_received(True, 125.0)
    assert lv.peer_hb_status(130.0) is True
    assert lv.heartbeat_received(False, 140.0) == [SendHeartbeat(True)]
    client = Liveness(Role.CLIENT, CFG, 0.0)
    assert client.heartbeat_received(False, 5.0) == []  # only the responder side does this


@pytest.mark.req("CH-001")
def test_call_home_client_may_reply_immediately():
    lv = Liveness(Role.CALL_HOME_CLIENT, CFG, 0.0)
    assert lv.heartbeat_received(False, 1.0) == [SendHeartbeat(True)]


@pytest.mark.req("CH-002")
def test_call_home_client_reporting_attack_keeps_channel():
    lv = Liveness(Role.CALL_HOME_CLIENT, CFG, 0.0, under_attack=True)
    effects = run_silent(lv, 2000.0)
    assert not any(isinstance(e, (SessionLost, Reconnect)) for e in effects)
    assert lv.phase is Phase.DEGRADED


@pytest.mark.req("CH-003")
def test_call_home_server_keeps_channel_with_traffic():
    lv = Liveness(Role.CALL_HOME_SERVER, CFG, 0.0)
    effects = run_silent(lv, 1000.0, traffic_every=20.0)
    assert not any(isinstance(e, SessionLost) for e in effects)


@pytest.mark.req("CH-004")
def test_call_home_server_reconnects_itself():
    lv = Liveness(Role.CALL_HOME_SERVER, CFG, 0.0)
    effects = run_silent(lv, 1000.0)
    assert any(isinstance(e, SessionLost) for e in effects)
    assert Reconnect(after=0.0, parallel=False, resume=True) in effects
    ch_client = Liveness(Role.CALL_HOME_CLIENT, CFG, 0.0)
    effects = run_silent(ch_client, 1000.0)
    assert any(isinstance(e, SessionLost) for e in effects)
    assert not any(isinstance(e, Reconnect) for e in effects)  # a (D)TLS server cannot call out


@pytest.mark.req("SC-144")
def test_backoff_schedule():
    b = ReconnectBackoff()
    assert b.delay() == 0.0
    assert [b.failed() for _ in range(6)] == [60.0, 120.0, 240.0, 300.0, 300.0, 300.0]
    b.succeeded()
    assert b.delay() == 0.0
    assert ReconnectBackoff(failures=1).delay(jitter=0.1) == pytest.approx(66.0)
    with pytest.raises(ValueError):
        ReconnectBackoff(min_interval=30)
    with pytest.raises(ValueError):
        b.delay(-0.5)


@pytest.mark.req("SC-144")
@given(st.integers(1, 50), st.floats(0, 1), st.floats(60, 600), st.floats(1, 4))
def test_backoff_never_below_60s(failures, jitter, lo, factor):
    b = ReconnectBackoff(min_interval=lo, max_interval=max(lo, 300.0), factor=factor, failures=failures)
    assert b.delay(jitter) >= RECONNECT_MIN_INTERVAL


@pytest.mark.req("SC-146", "SC-150")
@given(
    st.lists(st.tuples(st.sampled_from(["tick", "resp", "rx", "hb", "act"]), st.floats(0, 50)), max_size=80),
    st.sampled_from(list(Role)),
)
def test_random_liveness_sequences(steps, role):
    lv = Liveness(role, CFG, 0.0)
    now = 0.0
    for kind, dt in steps:
        now += dt
        if kind == "tick":
            effects = lv.tick(now)
        elif kind == "resp":
            effects = lv.heartbeat_response(now)
        elif kind == "rx":
            effects = lv.any_traffic(now)
        elif kind == "hb":
            effects = lv.heartbeat_received(False, now)
        else:
            effects = lv.set_activity(now, mitigating=not lv._mitigating)
        if any(isinstance(e, SessionLost) for e in effects):
            # never lost when peer traffic arrived within the unanswered span, nor in saturation mode
            assert not lv.saturation_mode
            assert lv.last_rx < lv._unanswered[0]  # no peer traffic during the unanswered span
        assert lv.unanswered <= lv.threshold
        if lv.phase is not Phase.LOST and lv.next_deadline() is not None:
            assert lv.next_deadline() >= lv.last_hb_sent if lv.last_hb_sent is not None else True


def test_driver_sent_heartbeat_counts_and_reschedules():
    lv = Liveness(Role.CLIENT, CFG, 0.0)
    lv.heartbeat_sent(10.0)
    assert lv.unanswered == 1 and lv.next_deadline() == 70.0


@pytest.mark.req("SC-149")
def test_server_traffic_on_saturated_client_stops_parallel_attempt():
    lv = Liveness(Role.CLIENT, CFG, 0.0, under_attack=True)
    effects = run_silent(lv, 300.0)
    assert Reconnect(after=0.0, parallel=True, resume=True) in effects
    assert lv.any_traffic(301.0) == [CancelParallelSession()]
    assert lv.phase is Phase.UP and lv.unanswered == 0


def test_verdict_table_is_complete():
    assert len(VERDICT) == 8
    for (saturated, heard, _tls), (phase, _action) in VERDICT.items():
        assert (phase is Phase.LOST) == (not saturated and not heard)
