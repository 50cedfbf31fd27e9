"""RFC 9132 / RFC 9066 example messages through the codec (byte-exact where the RFC gives bytes)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import cbor2
import pytest

from agent.codec import Direction, Message, MessageType, decode_cbor, decode_json
from agent.numbers.rfc9132 import Key

DATA = Path(__file__).parent / "data" / "rfc"

# (file, section of the RFC it comes from, direction of the message)
EXAMPLES = [
    ("fig07-mitigation-request.json", "RFC 9132 §4.4.1.1 Figure 7", Direction.REQUEST),
    ("fig10-response-body.json", "RFC 9132 §4.4.1.3 Figure 10", Direction.RESPONSE),
    ("fig11-cuid-collision.json", "RFC 9132 §4.4.1.3 Figure 11", Direction.RESPONSE),
    ("fig14-get-response.json", "RFC 9132 §4.4.2 Figure 14", Direction.RESPONSE),
    ("fig16-efficacy-update.json", "RFC 9132 §4.4.3 Figure 16", Direction.REQUEST),
    ("fig20-config-acceptable.json", "RFC 9132 §4.5.2 Figure 20", Direction.RESPONSE),
    ("fig23-config-put.json", "RFC 9132 §4.5.2 Figure 23", Direction.REQUEST),
    ("fig26-redirected-signal.json", "RFC 9132 §4.6 Figure 26", Direction.RESPONSE),
    ("fig27-heartbeat.json", "RFC 9132 §4.7 Figure 27", Direction.REQUEST),
    # The RFC's Figure 9 lacks its closing brace; the file has it.
    ("rfc9066-fig09-redirect.json", "RFC 9066 §5.2.2 Figure 9", Direction.REQUEST),
    ("rfc9066-fig10-mitigation.json", "RFC 9066 §5.3.1 Figure 10", Direction.REQUEST),
]


@pytest.mark.req("SC-152")
@pytest.mark.parametrize(("name", "section", "direction"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_example_round_trips(name: str, section: str, direction: Direction) -> None:
    original = json.loads((DATA / name).read_text())
    msg = decode_json(original, direction)
    wire = msg.to_cbor()
    again = decode_cbor(wire, direction)
    assert again.to_json_obj() == original, section
    assert again.to_cbor() == wire


@pytest.mark.req("SC-152")
def test_figure_8_bytes_exact() -> None:
    """RFC 9132 §4.4.1.1 Figure 8: the CBOR of Figure 7, byte for byte."""
    expected = bytes.fromhex((DATA / "fig08-mitigation-request.cbor.hex").read_text().strip())
    msg = decode_json((DATA / "fig07-mitigation-request.json").read_text())
    assert msg.to_cbor() == expected
    assert decode_cbor(expected).to_cbor() == expected


def test_heartbeat_bytes() -> None:
    """RFC 9132 §4.7: {49: {51: true}}."""
    msg = Message.new(MessageType.HEARTBEAT)
    msg.signal._set_peer_hb_status(True)
    assert msg.to_cbor() == bytes.fromhex("A11831A11833F5")


def test_decimal_is_tag_4() -> None:
    """RFC 9132 §6: decimal64 as tag 4 [-2, mantissa]; 1.50 is C4 82 21 18 96."""
    msg = decode_json(DATA.joinpath("fig23-config-put.json").read_text())
    raw = cbor2.loads(msg.to_cbor())
    factor = raw[Key.SIGNAL_CONFIG][Key.MITIGATING_CONFIG][Key.ACK_RANDOM_FACTOR][Key.CURRENT_VALUE_DECIMAL]
    assert factor == Decimal("1.50")
    assert bytes.fromhex("C482211896") in msg.to_cbor()


def test_keys_34_35_follow_table_5() -> None:
    """Table 5: 34 = max-value, 35 = min-value, 41 = max-value-decimal, 42 = min-value-decimal.

    The IANA registry text lists them the other way round; we follow Table 5 like go-dots.
    """
    msg = decode_json(DATA.joinpath("fig20-config-acceptable.json").read_text(), Direction.RESPONSE)
    raw = cbor2.loads(msg.to_cbor())
    hb = raw[Key.SIGNAL_CONFIG][Key.MITIGATING_CONFIG][Key.HEARTBEAT_INTERVAL]
    assert hb == {34: 240, 35: 15, 36: 30}
    ack = raw[Key.SIGNAL_CONFIG][Key.MITIGATING_CONFIG][Key.ACK_TIMEOUT]
    assert ack == {41: Decimal("30.00"), 42: Decimal("1.00"), 43: Decimal("2.00")}


def test_enums_and_counters_are_integers_on_the_wire() -> None:
    msg = decode_json(DATA.joinpath("fig14-get-response.json").read_text(), Direction.RESPONSE)
    scope = cbor2.loads(msg.to_cbor())[1][2][0]
    assert scope[Key.STATUS] == 2
    assert scope[Key.BYTES_DROPPED] == 134334555
    assert scope[Key.MITIGATION_START] == 1507818434


def test_lifetime_minus_one_is_negative_integer() -> None:
    msg = Message.new(MessageType.MITIGATION)
    scope = msg.signal.scope[msg.signal.scope.add()]
    scope.target_prefix.append("192.0.2.0/24")
    scope._set_lifetime(-1)
    wire = msg.to_cbor()
    assert cbor2.loads(wire)[1][2][0][Key.LIFETIME] == -1
    assert [int(s.lifetime) for s in decode_cbor(wire).signal.scope.values()] == [-1]


def test_call_home_keys() -> None:
    """RFC 9066: source-prefix 32768, alt-ch-client 32773 (inferred), ttl 32775 (inferred)."""
    mit = decode_json(DATA.joinpath("rfc9066-fig10-mitigation.json").read_text())
    assert cbor2.loads(mit.to_cbor())[1][2][0][32768] == ["2001:db8:123::1/128"]
    red = decode_json(DATA.joinpath("rfc9066-fig09-redirect.json").read_text())
    assert set(cbor2.loads(red.to_cbor())[46]) == {32773, 32774, 32775}


def test_typed_objects_build_the_message() -> None:
    """The same bytes as Figure 8, built field by field through the typed objects."""
    msg = Message.new(MessageType.MITIGATION)
    scope = msg.signal.scope[msg.signal.scope.add()]
    for p in ("2001:db8:6401::1/128", "2001:db8:6401::2/128"):
        scope.target_prefix.append(p)
    for port in (80, 443, 8080):
        scope.target_port_range.add(port)
    scope.target_protocol.append(6)
    scope._set_lifetime(3600)
    expected = bytes.fromhex((DATA / "fig08-mitigation-request.cbor.hex").read_text().strip())
    assert msg.to_cbor() == expected
