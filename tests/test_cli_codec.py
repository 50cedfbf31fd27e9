"""``dots cbor2json`` never drops data silently; ``--request`` stays strict."""

from __future__ import annotations

import json
import subprocess

import cbor2

from tests.servers import DOTS

# an answer's scope with a comprehension-required (100) and a comprehension-optional (40000) key
# that no module of ours defines
ANSWER = cbor2.dumps({1: {2: [{6: ["192.0.2.0/24"], 5: 5, 16: 2, 14: 3600, 100: [1, 2], 40000: b"xy"}]}})


def _run(*args: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*DOTS, "cbor2json", *args], input=data, capture_output=True, timeout=60)


def test_unknown_keys_are_shown_in_place_with_a_warning():
    r = _run(data=ANSWER.hex().encode())
    assert r.returncode == 0, r.stderr
    scope = json.loads(r.stdout)["ietf-dots-signal-channel:mitigation-scope"]["scope"][0]
    assert scope["mid"] == 5 and scope["target-prefix"] == ["192.0.2.0/24"]
    assert scope["unknown-key-100"] == [1, 2]
    assert scope["unknown-key-40000"] == "eHk="  # base64 of the byte string
    warnings = r.stderr.decode().strip().splitlines()
    assert len(warnings) == 2, warnings
    assert "unknown comprehension-required key 100 at /mitigation-scope/scope[0]" in warnings[0]
    assert "unknown comprehension-optional key 40000" in warnings[1]


def test_a_known_message_has_no_warning():
    known = cbor2.dumps({1: {2: [{6: ["192.0.2.0/24"], 5: 5, 16: 2, 14: 3600}]}})
    r = _run("--compact", data=known)
    assert r.returncode == 0 and r.stderr == b""
    assert "unknown-key" not in r.stdout.decode()


def test_request_mode_refuses_unknown_required_keys():
    r = _run("--request", data=cbor2.dumps({1: {2: [{6: ["192.0.2.0/24"], 14: 3600, 100: 1}]}}))
    assert r.returncode == 1
    assert r.stdout == b""
    assert b"unknown comprehension-required key(s): 100" in r.stderr


def test_uint64_strings_are_ascii_digits_only():
    for value in ("²", "２３", "18446744073709551616"):
        doc = {"ietf-dots-signal-channel:mitigation-scope": {"scope": [
            {"target-prefix": ["192.0.2.0/24"], "lifetime": 3600, "mid": 5, "pkts-dropped": value}]}}
        r = subprocess.run([*DOTS, "json2cbor"], input=json.dumps(doc).encode(), capture_output=True, timeout=60)
        assert r.returncode == 1, (value, r.stderr)
        assert r.stderr.decode().strip() == (f"dots json2cbor: /mitigation-scope/scope[0]/pkts-dropped: {value!r} "
                                             "is not an unsigned 64-bit integer")


def test_bgp_numbers_are_ascii_digits_only():
    import pytest

    from agent.mitigators.bgp import _split_api
    from agent.mitigators.rtbh import _community_value

    assert _community_value("65535:666") == (65535 << 16) | 666
    assert _split_api("[::1]:50051") == ("::1", 50051)
    for bad in ("６５５３５:666", "65535:６６６", "65536:1", "1:" + "9" * 5000):
        with pytest.raises(ValueError, match="bad community"):
            _community_value(bad)
    for bad in ("127.0.0.1:５００５１", "127.0.0.1:0", "127.0.0.1:70000", "127.0.0.1:" + "9" * 5000):
        with pytest.raises(ValueError, match="HOST:PORT"):
            _split_api(bad)
