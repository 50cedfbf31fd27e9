"""Server decisions on mitigation and configuration PUTs (agent.protocol.server_rules)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.numbers.rfc9132 import MID_ROLLOVER, AttackStatus, ConflictCause, ConflictStatus, Status
from agent.protocol.server_rules import (
    Accept,
    ConfigAccept,
    ConfigValues,
    ConflictPolicy,
    ExistingRequest,
    Ignore,
    PutRequest,
    Reject,
    ServerPolicy,
    decide_config_put,
    decide_mitigation_put,
    next_mid,
    next_sid,
    parse_prefixes,
    signal_loss_plan,
)
from agent.protocol.session import SessionConfig, TransmissionConfig
from agent.protocol.targets import Targets

T = Targets.of
WEB = T(["2001:db8:6401::1/128"], ports=[80, 443], protocols=[6])
A = "dz6pHjaADkaFTbjr0JGBpw"
B = "f30d281ce6b64fc5a0b91e"


def put(mid=123, targets=WEB, lifetime=3600, cuid=A, **kw):
    return PutRequest(
        cuid=cuid, mid=mid, targets=targets, lifetime=lifetime, client_id=kw.pop("client_id", cuid), **kw
    )


def have(
    mid, targets=WEB, cuid=A, status=Status.ATTACK_MITIGATION_IN_PROGRESS, trigger=True, lifetime=3000, **kw
):
    return ExistingRequest(
        cuid=cuid,
        mid=mid,
        targets=targets,
        trigger_mitigation=trigger,
        status=status,
        lifetime=lifetime,
        client_id=kw.pop("client_id", cuid),
        **kw,
    )


@pytest.mark.req("SC-063")
def test_new_request_created():
    d = decide_mitigation_put(put(), [])
    assert d == Accept("2.01", 3600)
    assert d.created


@pytest.mark.req("SC-062")
def test_lifetime_zero_rejected():
    d = decide_mitigation_put(put(lifetime=0), [])
    assert isinstance(d, Reject) and d.code == "4.00" and d.diagnostic


@pytest.mark.req("SC-041", "SC-061")
def test_missing_lifetime_on_new_request_rejected():
    assert decide_mitigation_put(put(lifetime=None), []).code == "4.00"


@pytest.mark.req("SC-046", "SC-036", "SC-061", "SC-005")
def test_invalid_scope_rejected_with_diagnostic():
    d = decide_mitigation_put(put(targets=T(ports=[80])), [])
    assert d.code == "4.00" and "target" in d.diagnostic
    d = decide_mitigation_put(put(targets=T(["127.0.0.1/32"])), [])
    assert d.code == "4.00" and "loopback" in d.diagnostic


@pytest.mark.req("SC-037")
def test_target_outside_client_domain_rejected():
    dom = parse_prefixes(["2001:db8:6401::/48"])
    assert isinstance(decide_mitigation_put(put(), [], allowed_prefixes=dom), Accept)
    d = decide_mitigation_put(put(targets=T(["2001:db8:9999::1/128"])), [], allowed_prefixes=dom)
    assert d.code == "4.00"


@pytest.mark.req("SC-073", "SC-075")
def test_lifetime_refresh_must_repeat_parameters():
    existing = [have(123)]
    assert decide_mitigation_put(put(lifetime=7200), existing) == Accept("2.04", 7200)
    d = decide_mitigation_put(put(targets=T(["2001:db8:6401::1/128"], ports=[80])), existing)
    assert d.code == "4.00"
    d = decide_mitigation_put(put(trigger_mitigation=False), existing)
    assert d.code == "4.00"


@pytest.mark.req("SC-098", "SC-099", "SC-097")
def test_efficacy_update():
    existing = [have(123, granted_lifetime=3600)]
    d = decide_mitigation_put(
        put(lifetime=None, attack_status=AttackStatus.UNDER_ATTACK, if_match=True), existing
    )
    assert d == Accept("2.04", 3600, attack_status=AttackStatus.UNDER_ATTACK)
    d = decide_mitigation_put(
        put(
            targets=T(["2001:db8:6401::2/128"]),
            lifetime=None,
            attack_status=AttackStatus.UNDER_ATTACK,
            if_match=True,
        ),
        existing,
    )
    assert d.code == "4.00"


def test_if_match_on_unknown_mid_silently_ignored():
    d = decide_mitigation_put(put(mid=5, attack_status=AttackStatus.UNDER_ATTACK, if_match=True), [])
    assert isinstance(d, Ignore)


@pytest.mark.req("SC-065", "SC-066", "SC-067")
def test_lower_mid_overlapping_higher_is_409_with_scope_mid():
    d = decide_mitigation_put(put(mid=100), [have(123)])
    assert isinstance(d, Reject) and d.code == "4.09"
    assert d.conflict.conflict_cause is ConflictCause.OVERLAPPING_TARGETS
    assert d.conflict.conflict_scope.mid == 123


@pytest.mark.req("SC-065", "SC-031")
def test_higher_mid_replaces_lower_overlapping():
    existing = [
        have(100),
        have(101, targets=T(["2001:db8:6401::1/128"], ports=[22])),
        have(99, cuid=A, status=Status.ATTACK_MITIGATION_TERMINATED),
    ]
    d = decide_mitigation_put(put(mid=123), existing)
    assert d == Accept("2.01", 3600, replaces=(100,))


@pytest.mark.req("SC-068")
def test_immediate_request_deactivates_active_preconfigured_one():
    pre = have(50, trigger=False, targets=T(["2001:db8:6401::/48"]))
    d = decide_mitigation_put(put(mid=60), [pre])
    assert d == Accept("2.01", 3600, deactivates=(50,))
    armed = have(
        50, trigger=False, status=Status.ATTACK_MITIGATION_SIGNAL_LOSS, targets=T(["2001:db8:6401::/48"])
    )
    assert decide_mitigation_put(put(mid=60), [armed]) == Accept("2.01", 3600)
    d = decide_mitigation_put(
        put(mid=60), [pre], policy=ServerPolicy(deactivate_preconfigured_on_overlap=False)
    )
    assert d == Accept("2.01", 3600)


@pytest.mark.req("SC-026", "SC-071")
def test_cuid_collision():
    d = decide_mitigation_put(put(client_id="other-cert"), [have(1, client_id="owner-cert")])
    assert d.code == "4.09"
    assert d.conflict.conflict_cause is ConflictCause.CUID_COLLISION
    assert d.conflict.conflict_status is None and d.conflict.conflict_scope is None
    assert d.conflict.retry_timer is None


@pytest.mark.req("SC-070", "SC-072")
def test_other_client_conflict_rejected_by_default():
    other = have(7, cuid=B, lifetime=900)
    d = decide_mitigation_put(put(), [other])
    assert d.code == "4.09"
    c = d.conflict
    assert c.conflict_cause is ConflictCause.OVERLAPPING_TARGETS
    assert c.conflict_status is ConflictStatus.REQUEST_INACTIVE_OTHER_ACTIVE
    assert c.retry_timer == 900 and c.conflict_scope.targets is not None


@pytest.mark.req("SC-070", "SC-072")
def test_other_client_conflict_accept_inactive_policy():
    other = have(7, cuid=B, lifetime=900)
    d = decide_mitigation_put(
        put(), [other], policy=ServerPolicy(conflict_policy=ConflictPolicy.ACCEPT_INACTIVE)
    )
    assert isinstance(d, Accept) and d.created and d.inactive
    assert d.lifetime == 945 and d.conflict.retry_timer == 900
    assert d.conflicts_with == ((B, 7),)
    d = decide_mitigation_put(
        put(), [other], policy=ServerPolicy(conflict_policy=ConflictPolicy.ACCEPT_ACTIVE)
    )
    assert d.conflict.conflict_status is ConflictStatus.REQUEST_ACTIVE and not d.inactive


def test_other_client_inactive_or_disjoint_request_is_no_conflict():
    assert decide_mitigation_put(
        put(), [have(7, cuid=B, status=Status.ATTACK_MITIGATION_SIGNAL_LOSS)]
    ).created
    assert decide_mitigation_put(put(), [have(7, cuid=B, targets=T(["192.0.2.1/32"]))]).created


@pytest.mark.req("SC-042", "SC-043", "SC-044")
def test_lifetime_policy():
    pol = ServerPolicy(allow_indefinite=False, granted_instead_of_indefinite=1800, max_lifetime=7200)
    assert decide_mitigation_put(put(lifetime=-1), [], policy=pol).lifetime == 1800
    assert decide_mitigation_put(put(lifetime=86400), [], policy=pol).lifetime == 7200
    assert decide_mitigation_put(put(lifetime=-1), []).lifetime == -1


@pytest.mark.req("CH-017", "CH-018")
def test_call_home_refuses_preconfigured():
    ch = ServerPolicy(call_home=True)
    t = T(["2001:db8:c000::/128"], source_prefixes=["2001:db8:123::1/128"])
    assert decide_mitigation_put(put(targets=t, trigger_mitigation=False), [], policy=ch).code == "4.00"
    assert decide_mitigation_put(put(targets=t), [], policy=ch).created


@pytest.mark.req("CH-019")
def test_call_home_source_prefix_within_domain():
    ch = ServerPolicy(call_home=True)
    t = T(["2001:db8:c000::/128"], source_prefixes=["2001:db8:123::1/128"])
    dom = parse_prefixes(["2001:db8:123::/48"])
    assert decide_mitigation_put(put(targets=t), [], policy=ch, call_home_source_prefixes=dom).created
    dom2 = parse_prefixes(["2001:db8:999::/48"])
    assert decide_mitigation_put(put(targets=t), [], policy=ch, call_home_source_prefixes=dom2).code == "4.00"


@pytest.mark.req("SC-069")
def test_signal_loss_plan():
    pre = have(
        1, trigger=False, status=Status.ATTACK_MITIGATION_SIGNAL_LOSS, targets=T(["2001:db8:6401::/48"])
    )
    overlapping = have(5)
    disjoint = have(6, targets=T(["192.0.2.1/32"]))
    plan = signal_loss_plan([pre, overlapping, disjoint])
    assert plan.activate == (1,) and plan.withdraw == (5,)
    assert signal_loss_plan([pre, overlapping], withdraw_overlapping=False).withdraw == ()


@pytest.mark.req("SC-032", "SC-031")
def test_next_mid_rollover():
    assert next_mid(None, False) == 0
    assert next_mid(5, True) == 6
    assert next_mid(MID_ROLLOVER, False) == 0
    assert next_mid(MID_ROLLOVER, True) == MID_ROLLOVER + 1
    with pytest.raises(OverflowError):
        next_mid(2**32 - 1, True)


@pytest.mark.req("SC-031")
@given(st.integers(0, MID_ROLLOVER - 1), st.booleans())
def test_mid_increases_below_rollover(cur, active):
    assert next_mid(cur, active) > cur


# --- session configuration ----------------------------------------------------------------
@pytest.mark.req("SC-119", "SC-123")
def test_config_new_sid_created_with_defaults_elsewhere():
    d = decide_config_put(123, ConfigValues(heartbeat_interval=60), None)
    assert isinstance(d, ConfigAccept) and d.code == "2.01" and d.created
    assert d.config.mitigating.heartbeat_interval == 60
    assert d.config.mitigating.missing_hb_allowed == 15 and d.config.idle == TransmissionConfig()


@pytest.mark.req("SC-117")
def test_config_non_negotiated_values_are_defaults():
    d = decide_config_put(1, None, ConfigValues(heartbeat_interval=0))
    assert d.config.idle.heartbeat_interval == 0 and d.config.idle.ack_timeout == Decimal("2.00")


@pytest.mark.req("SC-124")
def test_config_same_sid_changed():
    cur = SessionConfig(mitigating=TransmissionConfig(heartbeat_interval=60))
    d = decide_config_put(123, None, ConfigValues(max_retransmit=4), current_sid=123, current=cur)
    assert (
        d.code == "2.04"
        and d.config.mitigating.heartbeat_interval == 60
        and d.config.idle.max_retransmit == 4
    )


@pytest.mark.req("SC-121", "SC-119")
def test_config_higher_sid_deletes_lower_and_lower_sid_is_ignored():
    d = decide_config_put(124, ConfigValues(heartbeat_interval=60), None, current_sid=123)
    assert d.code == "2.01" and d.deletes == (123,)
    assert isinstance(
        decide_config_put(122, ConfigValues(heartbeat_interval=60), None, current_sid=123), Ignore
    )
    assert next_sid(None) == 0 and next_sid(123) == 124


@pytest.mark.req("SC-120", "SC-122")
def test_config_needs_sid_and_an_attribute():
    assert decide_config_put(None, ConfigValues(heartbeat_interval=60), None).code == "4.00"
    assert decide_config_put(1, ConfigValues(), ConfigValues()).code == "4.00"
    assert decide_config_put(1, None, None).code == "4.00"


@pytest.mark.req("SC-125")
@pytest.mark.parametrize(
    "values",
    [
        ConfigValues(heartbeat_interval=5),
        ConfigValues(heartbeat_interval=241),
        ConfigValues(missing_hb_allowed=2),
        ConfigValues(probing_rate=100),
        ConfigValues(max_retransmit=16),
        ConfigValues(ack_timeout=Decimal("0.50")),
        ConfigValues(ack_random_factor=Decimal("4.5")),
    ],
)
def test_config_out_of_range_is_422(values):
    d = decide_config_put(1, values, None)
    assert isinstance(d, Reject) and d.code == "4.22" and d.diagnostic


def test_config_over_tcp_only_heartbeat_interval():
    assert decide_config_put(1, ConfigValues(heartbeat_interval=60), None, reliable=True).code == "2.01"
    assert decide_config_put(1, ConfigValues(missing_hb_allowed=5), None, reliable=True).code == "4.00"


@pytest.mark.req("SC-107")
def test_same_mid_after_delete():
    terminating = [have(123, status=Status.DOTS_CLIENT_WITHDRAWN_MITIGATION)]
    late_update = put(lifetime=None, attack_status=AttackStatus.UNDER_ATTACK, if_match=True)
    assert isinstance(decide_mitigation_put(late_update, terminating), Ignore)
    d = decide_mitigation_put(put(), terminating)
    assert d == Accept("2.01", 3600, resumes_terminating=True)
