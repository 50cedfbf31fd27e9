"""Client request pacing (agent.protocol.client_pacing)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.protocol.client_pacing import (
    ConRequest,
    GiveUp,
    NonPacer,
    NonRequest,
    ProbingLimiter,
    RttEstimator,
    SendAt,
    max_transmit_span,
    max_transmit_wait,
)
from agent.protocol.session import TransmissionConfig


@pytest.mark.req("SC-014")
def test_non_without_rtt_estimate_at_most_one_every_3s():
    pacer = NonPacer()
    a = NonRequest(pacer, 0.0)
    assert a.next_send(0.0) == SendAt(0.0)
    a.sent(0.0)
    b = NonRequest(pacer, 0.5)
    assert b.next_send(0.5) == SendAt(3.0)  # another NON request waits too
    assert a.next_send(1.0) == SendAt(3.0)  # repetition at regular intervals
    with pytest.raises(ValueError):
        NonPacer(no_rtt_interval=1.0)


@pytest.mark.req("SC-013")
def test_non_with_rtt_estimate_at_most_one_per_rtt():
    rtt = RttEstimator(min_rto=0.2)
    for _ in range(20):
        rtt.sample(0.5)
    pacer = NonPacer(rtt)
    req = NonRequest(pacer, 0.0)
    req.sent(0.0)
    other = NonRequest(pacer, 0.1)
    assert other.next_send(0.1).at >= 0.5
    assert req.next_send(0.1).at >= 0.5


@pytest.mark.req("SC-013", "SC-014")
@given(st.lists(st.floats(0.0, 10.0), min_size=1, max_size=30), st.booleans())
def test_non_spacing_property(gaps, with_rtt):
    rtt = RttEstimator()
    if with_rtt:
        rtt.sample(0.8)
    pacer = NonPacer(rtt)
    now, sends = 0.0, []
    for g in gaps:
        now += g
        at = NonRequest(pacer, now).next_send(now).at
        pacer.sent(at)
        sends.append(at)
        now = at
    spacing = 0.8 if with_rtt else 3.0
    assert all(b - a >= spacing - 1e-9 for a, b in zip(sends, sends[1:], strict=False))


def test_non_request_gives_up_at_deadline_or_count():
    pacer = NonPacer()
    r = NonRequest(pacer, 0.0, deadline=7.0)
    r.sent(0.0)
    r.sent(3.0)
    assert r.next_send(3.0) == SendAt(6.0)
    r.sent(6.0)
    assert isinstance(r.next_send(6.0), GiveUp)
    r2 = NonRequest(NonPacer(), 0.0, max_sends=1)
    r2.sent(0.0)
    assert isinstance(r2.next_send(0.0), GiveUp)


def test_karn_only_unambiguous_samples():
    pacer = NonPacer()
    r = NonRequest(pacer, 0.0)
    r.sent(0.0)
    r.sent(3.0)
    r.response(3.2)
    assert not pacer.rtt.has_estimate
    r = NonRequest(pacer, 10.0)
    r.sent(10.0)
    r.response(10.4)
    assert pacer.rtt.srtt == pytest.approx(0.4)
    assert isinstance(r.next_send(11.0), GiveUp)


def test_rtt_estimator_rfc6298():
    e = RttEstimator()
    e.sample(2.0)
    assert (e.srtt, e.rttvar, e.rto) == (2.0, 1.0, 6.0)
    e.sample(1.0)
    assert e.rttvar == pytest.approx(0.75 * 1.0 + 0.25 * 1.0)
    assert e.srtt == pytest.approx(0.875 * 2.0 + 0.125 * 1.0)
    e.backoff()
    assert e.rto == pytest.approx(2 * (e.srtt + 4 * e.rttvar))


@pytest.mark.req("SC-117", "SC-113")
def test_con_backoff_uses_negotiated_values():
    cfg = TransmissionConfig(max_retransmit=3, ack_timeout=Decimal("2.00"), ack_random_factor=Decimal("1.50"))
    c = ConRequest(cfg, 0.0, random_fraction=0.5)
    assert c.initial_timeout == pytest.approx(2.5)
    sends = [0.0]
    while isinstance(nxt := c.next_send(c.next_at), SendAt):
        sends.append(nxt.at)
        c.retransmitted(nxt.at)
    assert sends == pytest.approx([0.0, 2.5, 7.5, 17.5])
    assert isinstance(c.next_send(c.next_at), GiveUp)
    assert c.next_at == pytest.approx(37.5)
    assert max_transmit_span(cfg) == pytest.approx(21.0)
    assert max_transmit_wait(cfg) == pytest.approx(45.0)
    cfg2 = TransmissionConfig(
        max_retransmit=2, ack_timeout=Decimal("1.00"), ack_random_factor=Decimal("1.10")
    )
    c2 = ConRequest(cfg2, 0.0, random_fraction=0.0)
    assert c2.next_send(0.0) == SendAt(1.0)


@pytest.mark.req("SC-117")
@given(
    st.integers(2, 15),
    st.decimals(Decimal("1.00"), Decimal("30.00"), places=2),
    st.decimals(Decimal("1.10"), Decimal("4.00"), places=2),
    st.floats(0, 0.999),
)
def test_con_total_wait_bounded_by_max_transmit_wait(mr, at, arf, r):
    cfg = TransmissionConfig(max_retransmit=mr, ack_timeout=at, ack_random_factor=arf)
    c = ConRequest(cfg, 0.0, r)
    n = 0
    while isinstance(nxt := c.next_send(c.next_at), SendAt):
        c.retransmitted(nxt.at)
        n += 1
    assert n == mr
    assert c.next_at <= max_transmit_wait(cfg) + 1e-6


@pytest.mark.req("SC-015")
def test_probing_rate_does_not_delay_mitigation_requests():
    p = ProbingLimiter(5)
    assert p.earliest(0.0, 100) == 0.0
    p.sent(0.0, 100)
    assert p.earliest(1.0, 100) == pytest.approx(40.0)
    assert p.earliest(1.0, 100, mitigation=True) == 1.0
    p.response(2.0)
    assert p.earliest(2.0, 100) == 2.0
