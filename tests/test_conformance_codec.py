"""RFC 9132 §10.5 (the DOTS CBOR tag 271) and §10.6.1.1 (key values 1-65535) conformance."""

from __future__ import annotations

import cbor2
import pytest

from agent.codec import CodecError, Direction, MessageType, decode_cbor
from agent.codec import cbor as codec_cbor
from agent.codec.messages import encode_members
from agent.numbers import rfc9066, rfc9132

FIG8 = bytes.fromhex(
    "A101A10281A4068274323030313A6462383A363430313A3A312F31323874323030313A6462383A363430313A3A"
    "322F3132380783A1081850A1081901BBA108191F900A81060E190E10")


@pytest.mark.req("SC-171")
def test_dots_tag_271_prefixes_the_object() -> None:
    plain = decode_cbor(FIG8, Direction.REQUEST).members()
    tagged = cbor2.dumps(cbor2.CBORTag(271, cbor2.loads(FIG8)))
    assert tagged[:3] == b"\xd9\x01\x0f"  # tag 271 head
    assert decode_cbor(tagged, Direction.REQUEST).members() == plain
    # the tag prefixes the whole signal channel object, nowhere else
    inner = cbor2.loads(FIG8)
    inner[1] = cbor2.CBORTag(271, inner[1])
    with pytest.raises(CodecError):
        decode_cbor(cbor2.dumps(inner), Direction.REQUEST)
    inner = cbor2.loads(FIG8)
    inner[1][2][0] = cbor2.CBORTag(271, inner[1][2][0])
    with pytest.raises(CodecError):
        decode_cbor(cbor2.dumps(inner), Direction.REQUEST)
    # another tag in front of the object is not the DOTS tag
    with pytest.raises(CodecError):
        decode_cbor(cbor2.dumps(cbor2.CBORTag(272, cbor2.loads(FIG8))), Direction.REQUEST)
    # twice is not "a prefix" either
    with pytest.raises(CodecError):
        decode_cbor(cbor2.dumps(cbor2.CBORTag(271, cbor2.CBORTag(271, cbor2.loads(FIG8)))), Direction.REQUEST)


@pytest.mark.req("SC-172")
def test_key_values_are_integers_in_1_65535() -> None:
    keys = set(rfc9132.KEY_MAJOR) | set(rfc9066.KEY_MAJOR) | set(codec_cbor.NAME_OF)
    assert keys and all(isinstance(k, int) and 1 <= k <= 65535 for k in keys), sorted(keys)
    # every key our encoder writes is in range, at any depth
    body = encode_members(MessageType.MITIGATION, {"scope": [{
        "target-prefix": ["192.0.2.0/24"], "target-port-range": [{"lower-port": 80, "upper-port": 90}],
        "lifetime": 60, "ietf-dots-call-home:source-prefix": ["10.0.0.1/32"]}]})

    def walk(obj: object) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                assert isinstance(k, int) and 1 <= k <= 65535, k
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    walk(cbor2.loads(body))
    # and the decoder refuses keys outside the range, known or not
    for bad in (0, -1, 65536, 70000, 2**32):
        with pytest.raises(CodecError) as info:
            decode_cbor(cbor2.dumps({1: {2: [{6: ["192.0.2.0/24"], 14: 60, bad: 1}]}}), Direction.REQUEST)
        assert "65535" in info.value.reason or "integer" in info.value.reason, (bad, info.value.reason)
    with pytest.raises(CodecError):
        decode_cbor(cbor2.dumps({0: {2: []}}), Direction.REQUEST)
