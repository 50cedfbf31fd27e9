"""Random valid messages survive CBOR and JSON round trips unchanged (hypothesis)."""

from __future__ import annotations

import ipaddress
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.codec import Direction, Message, MessageType, decode_cbor, decode_json
from agent.numbers.rfc9132 import AttackStatus, ConflictCause, Status

v4 = st.builds(lambda a, n: str(ipaddress.ip_network((a, n), strict=False)),
               st.integers(0, 2**32 - 1), st.integers(0, 32))
v6 = st.builds(lambda a, n: str(ipaddress.ip_network((a, n), strict=False)),
               st.integers(0, 2**128 - 1), st.integers(0, 128))
ports = st.integers(0, 65535)
# Cause 4 (RFC 9066 §7.2) is not in iana-dots-signal-channel@2021-09-02; see test_call_home_conflict_cause.
CAUSES = [c.yang for c in ConflictCause if c is not ConflictCause.REQUEST_REJECTED_LEGITIMATE_TRAFFIC]
label = st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True)
fqdn = st.builds(lambda parts: ".".join(parts), st.lists(label, min_size=2, max_size=3))


@st.composite
def scopes(draw: st.DrawFn, direction: Direction) -> dict:
    s: dict = {"target-prefix": draw(st.lists(v4 | v6, min_size=1, max_size=4, unique=True))}
    ranges = {}
    for lo in draw(st.lists(ports, max_size=3, unique=True)):
        hi = draw(st.none() | st.integers(lo, 65535))
        ranges[lo] = {"lower-port": lo} | ({"upper-port": hi} if hi is not None else {})
    if ranges:
        s["target-port-range"] = [ranges[k] for k in sorted(ranges)]
    protos = draw(st.lists(st.integers(0, 255), max_size=3, unique=True))
    if protos:
        s["target-protocol"] = protos
    names = draw(st.lists(fqdn, max_size=2, unique=True))
    if names:
        s["target-fqdn"] = names
    s["lifetime"] = draw(st.sampled_from([-1, 1, 3600, 2**32 - 1]))
    if draw(st.booleans()):
        s["trigger-mitigation"] = draw(st.booleans())
    if draw(st.booleans()):
        s["ietf-dots-call-home:source-prefix"] = draw(st.lists(v4 | v6, min_size=1, max_size=2, unique=True))
    if direction is Direction.RESPONSE:
        s["mid"] = draw(st.integers(0, 2**32 - 1))
        s["status"] = draw(st.sampled_from([x.yang for x in Status]))
        s["bytes-dropped"] = str(draw(st.integers(0, 2**64 - 1)))
        s["pps-dropped"] = str(draw(st.integers(0, 2**64 - 1)))
        if draw(st.booleans()):
            s["conflict-information"] = {"conflict-cause": draw(st.sampled_from(CAUSES)),
                                         "retry-timer": draw(st.integers(0, 2**32 - 1))}
    elif draw(st.booleans()):
        s["attack-status"] = draw(st.sampled_from([a.yang for a in AttackStatus]))
    return s


def canonical(members: dict) -> dict:
    """Leaf order inside a scope follows the schema, not the input: compare as sorted items."""
    return {"scope": [dict(sorted(s.items())) for s in members["scope"]]}


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mitigation_round_trip(data: st.DataObject) -> None:
    direction = data.draw(st.sampled_from(list(Direction)))
    n = 1 if direction is Direction.REQUEST else data.draw(st.integers(1, 3))
    members = {"scope": [data.draw(scopes(direction)) for _ in range(n)]}
    msg = decode_json({"ietf-dots-signal-channel:mitigation-scope": members}, direction)
    assert canonical(msg.members()) == canonical(members)
    again = decode_cbor(msg.to_cbor(), direction)
    assert again.members() == msg.members()
    assert decode_json(again.to_json(), direction).to_cbor() == msg.to_cbor()


decimals = st.integers(100, 3000).map(lambda m: str(Decimal(m) / 100))


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_signal_config_round_trip(data: st.DataObject) -> None:
    def side() -> dict:
        out = {}
        for name in ("heartbeat-interval", "missing-hb-allowed", "probing-rate", "max-retransmit"):
            if data.draw(st.booleans()):
                out[name] = {"current-value": data.draw(st.integers(0, 65535))}
        for name in ("ack-timeout", "ack-random-factor"):
            if data.draw(st.booleans()):
                out[name] = {"current-value-decimal": data.draw(decimals)}
        return out

    members = {k: v for k, v in (("mitigating-config", side()), ("idle-config", side())) if v}
    msg = decode_json({"ietf-dots-signal-channel:signal-config": members})
    again = decode_cbor(msg.to_cbor())
    assert again.to_json_obj() == msg.to_json_obj()
    assert numeric(again.members()) == numeric(members)


def numeric(tree: dict) -> dict:
    """Decimal strings compared as numbers ("1" and "1.00" are the same decimal64)."""
    return {k: {n: {kk: Decimal(vv) if isinstance(vv, str) else vv for kk, vv in c.items()}
                for n, c in v.items()} for k, v in tree.items()}


@settings(max_examples=50, deadline=None)
@given(st.booleans())
def test_heartbeat_round_trip(flag: bool) -> None:
    msg = Message.new(MessageType.HEARTBEAT)
    msg.signal._set_peer_hb_status(flag)
    assert decode_cbor(msg.to_cbor()).members() == {"peer-hb-status": flag}
