"""Bad input gets a CodecError that names the field and the reason; never another exception."""

from __future__ import annotations

import json

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.codec import CodecError, Direction, decode_cbor, decode_json

FIG8 = bytes.fromhex(
    "A101A10281A4068274323030313A6462383A363430313A3A312F31323874323030313A6462383A363430313A3A"
    "322F3132380783A1081850A1081901BBA108191F900A81060E190E10")


def request(scope: dict) -> bytes:
    return cbor2.dumps({1: {2: [scope]}})


def err(data: bytes, direction: Direction = Direction.REQUEST) -> CodecError:
    with pytest.raises(CodecError) as info:
        decode_cbor(data, direction)
    return info.value


def test_truncated_cbor() -> None:
    for cut in range(0, len(FIG8) - 1, 5):
        e = err(FIG8[:cut])
        assert e.reason


def test_trailing_bytes() -> None:
    assert "trailing" in err(FIG8 + b"\x00").reason


@pytest.mark.req("SC-153")
def test_unknown_comprehension_required_key_is_named() -> None:
    e = err(request({6: ["192.0.2.0/24"], 14: 3600, 100: 1}))
    assert e.unknown_keys == (100,)
    assert "100" in str(e)
    e = err(cbor2.dumps({1: {2: []}, 300: 1}))
    assert e.unknown_keys == (300,)


def test_unknown_comprehension_optional_key_is_ignored() -> None:
    msg = decode_cbor(request({6: ["192.0.2.0/24"], 14: 3600, 128: "telemetry", 49999: 1}))
    assert msg.members() == {"scope": [{"target-prefix": ["192.0.2.0/24"], "lifetime": 3600}]}


@pytest.mark.parametrize(("scope", "field"), [
    ({6: "192.0.2.0/24"}, "target-prefix"),            # array expected
    ({6: [1]}, "target-prefix"),                       # text strings expected
    ({14: "3600"}, "lifetime"),                        # integer expected
    ({14: True}, "lifetime"),                          # booleans are not integers
    ({45: 1}, "trigger-mitigation"),                   # boolean expected
    ({10: [-6]}, "target-protocol"),                   # unsigned expected
    ({7: [{8: "80"}]}, "lower-port"),
    ({7: {8: 80}}, "target-port-range"),               # array of maps expected
])
def test_wrong_major_type(scope: dict, field: str) -> None:
    e = err(request(scope))
    assert field in e.field
    assert "expected" in e.reason


@pytest.mark.parametrize(("scope", "field"), [
    ({6: ["192.0.2.0/33"]}, "target-prefix"),
    ({7: [{8: 70000}]}, "lower-port"),
    ({10: [256]}, "target-protocol"),
    ({14: -2}, "lifetime"),
    ({14: 2**32}, "lifetime"),
    ({11: ["-bad-.example..com"]}, "target-fqdn"),
])
def test_out_of_range(scope: dict, field: str) -> None:
    e = err(request({6: ["192.0.2.0/24"], **scope} if 6 not in scope else scope))
    assert field in e.field


def test_must_violation_upper_port_below_lower() -> None:
    e = err(request({6: ["192.0.2.0/24"], 7: [{8: 443, 9: 80}]}))
    assert "upper-port" in str(e) or "greater" in str(e)


def test_choice_violation_status_and_attack_status() -> None:
    e = err(request({6: ["192.0.2.0/24"], 16: 1, 29: 1}), Direction.RESPONSE)
    assert "case" in e.reason


def test_fraction_digits() -> None:
    body = cbor2.dumps({30: {32: {39: {43: cbor2.CBORTag(4, [-3, 2001])}}}})
    assert "fraction" in err(body).reason


@pytest.mark.req("SC-035", "SC-048")
@pytest.mark.parametrize("key", [3, 4, 31])
def test_uri_parameters_never_in_body(key: int) -> None:
    e = err(request({6: ["192.0.2.0/24"], key: "x" if key != 31 else 1}))
    assert "Uri-Path" in e.reason


@pytest.mark.req("SC-035")
def test_mid_not_in_request_body_but_fine_in_response() -> None:
    body = request({6: ["192.0.2.0/24"], 5: 12})
    assert "mid" in err(body).field
    assert decode_cbor(body, Direction.RESPONSE).members()["scope"][0]["mid"] == 12


@pytest.mark.req("SC-045", "SC-061")
def test_one_scope_per_request() -> None:
    body = cbor2.dumps({1: {2: [{6: ["192.0.2.0/24"]}, {6: ["198.51.100.0/24"]}]}})
    assert "one scope" in err(body).reason
    assert len(decode_cbor(body, Direction.RESPONSE).members()["scope"]) == 2


def test_status_enum_out_of_range() -> None:
    e = err(request({6: ["192.0.2.0/24"], 16: 99}), Direction.RESPONSE)
    assert "status" in e.field


def test_not_a_map_and_two_messages() -> None:
    assert "map" in err(cbor2.dumps([1, 2])).reason
    assert "exactly one" in err(cbor2.dumps({1: {}, 49: {51: True}})).reason
    assert "exactly one" in err(cbor2.dumps({})).reason


@pytest.mark.req("SC-172")
def test_non_integer_and_out_of_range_keys() -> None:
    assert "integer" in err(cbor2.dumps({1: {"scope": []}})).reason
    assert "1-65535" in err(cbor2.dumps({1: {70000: 1}})).reason


def test_json_errors() -> None:
    with pytest.raises(CodecError):
        decode_json("{not json")
    with pytest.raises(CodecError) as info:
        decode_json(json.dumps({"ietf-dots-signal-channel:mitigation-scope": {"scope": [{"bogus": 1}]}}))
    assert "bogus" in str(info.value)
    with pytest.raises(CodecError):
        decode_json(json.dumps({"ietf-dots-signal-channel:heartbeat": {"peer-hb-status": 1.5}}))


def test_expect_other_type() -> None:
    from agent.codec import MessageType

    with pytest.raises(CodecError):
        decode_cbor(bytes.fromhex("A11831A11833F5"), expect=MessageType.MITIGATION)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(data: bytes) -> None:
    try:
        decode_cbor(data)
    except CodecError:
        pass


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.text(max_size=8)
    | st.binary(max_size=4) | st.floats(allow_nan=True),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.integers(0, 70000) | st.text(max_size=3), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from([1, 30, 46, 49, 2, 300]), cbor_values, min_size=1, max_size=2))
def test_random_structures_never_crash(obj: dict) -> None:
    try:
        decode_cbor(cbor2.dumps(obj))
        decode_cbor(cbor2.dumps(obj), Direction.RESPONSE)
    except CodecError:
        pass


def test_go_dots_style_response_is_accepted() -> None:
    """Be ready for what peers send (shared/notes/peers.md): go-dots answers a GET with empty
    arrays and keys of extensions we do not implement (53: RFC 9133 acl-list, 204/205/207:
    RFC 9244 telemetry).  Unknown comprehension-required keys are an error only in requests."""
    body = cbor2.dumps({1: {2: [{5: 1, 6: ["192.0.2.0/24"], 11: [], 12: [], 13: [], 14: 3600, 16: 1,
                                 53: [], 204: [], 205: [], 207: [], 32768: [], 32769: [], 32770: []}]}})
    scope = decode_cbor(body, Direction.RESPONSE).members()["scope"][0]
    assert scope["status"] == "attack-mitigation-in-progress" and scope["target-prefix"] == ["192.0.2.0/24"]
    with pytest.raises(CodecError) as info:
        decode_cbor(cbor2.dumps({1: {2: [{6: ["192.0.2.0/24"], 14: 60, 53: []}]}}))
    assert info.value.unknown_keys == (53,)
