"""Conflict cause 4 'request-rejected-legitimate-traffic' (RFC 9066, Section 7.2).

A Call Home DOTS server rejects a mitigation request whose attack traffic it classifies as
legitimate with 4.09 and conflict-cause 4.  The value is missing from the 2021-09-02 revision of
iana-dots-signal-channel kept in yang/; yang/dots-agent-iana-updates adds it by a deviation that
both the typed objects (pyangbind) and libyang validation apply.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest

import yang
from agent.codec import CodecError, Direction, decode_cbor, decode_json, new_root, validate
from agent.numbers.rfc9132 import ConflictCause, Key
from bindings.build import GENERATED_DIR

CAUSE = "request-rejected-legitimate-traffic"
BODY = {"ietf-dots-signal-channel:mitigation-scope": {
    "scope": [{"conflict-information": {"conflict-cause": CAUSE}}]}}


def test_numbers_agree_with_rfc9066() -> None:
    assert ConflictCause.REQUEST_REJECTED_LEGITIMATE_TRAFFIC == 4
    assert ConflictCause.REQUEST_REJECTED_LEGITIMATE_TRAFFIC.yang == CAUSE


def test_json_decodes_encodes_to_cbor_and_back() -> None:
    msg = decode_json(json.dumps(BODY), Direction.RESPONSE)
    data = msg.to_cbor()
    assert cbor2.loads(data) == {Key.MITIGATION_SCOPE: {Key.SCOPE: [
        {Key.CONFLICT_INFORMATION: {Key.CONFLICT_CAUSE: 4}}]}}
    assert cbor2.loads(data)[1][2][0][17] == {19: 4}
    back = decode_cbor(data, Direction.RESPONSE)
    assert back.to_json_obj() == BODY
    assert back.signal.scope[next(iter(back.signal.scope))].conflict_information.conflict_cause == CAUSE


def test_typed_object_accepts_value_4() -> None:
    scope = new_root().dots_signal.scope
    conflict = scope[scope.add()].conflict_information
    conflict._set_conflict_cause(CAUSE)  # config false: pyangbind's setter is the private one
    assert conflict.conflict_cause == CAUSE
    with pytest.raises(ValueError):
        conflict._set_conflict_cause("request-rejected-other")


def test_libyang_accepts_value_4() -> None:
    tree = {"ietf-dots-signal-channel:dots-signal": {
        "scope": [{"conflict-information": {"conflict-cause": CAUSE}}]}}
    validate.validate_tree(tree)  # raises CodecError if the deviation is not implemented
    tree["ietf-dots-signal-channel:dots-signal"]["scope"][0]["conflict-information"][
        "conflict-cause"] = "request-rejected-other"
    with pytest.raises(CodecError):
        validate.validate_tree(tree)


def test_value_5_is_still_rejected() -> None:
    with pytest.raises(CodecError) as info:
        decode_cbor(cbor2.dumps({1: {2: [{17: {19: 5}}]}}), Direction.RESPONSE)
    assert "conflict-cause" in info.value.field


# The module itself.  pyang resolves the deviation inside the verbatim RFC 8791 structure;
# libyang only supports deviations of data nodes, so yanglint checks it against the derived
# copies in bindings/generated/yang, which are also what the codec's libyang context loads.
# (yanglint searches the input file's directory first, i.e. yang/ with the verbatim module, so
# the derived ietf-dots-signal-channel is given first on the command line.)
UPDATES = yang.MODULE_DIR / "dots-agent-iana-updates@2026-11-21.yang"


def _tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed")
    return found


def _search(*first: Path) -> list[str]:
    return [a for d in (*first, *yang.search_path()) for a in ("-p", str(d))]


def test_pyang_strict_accepts_module() -> None:
    result = subprocess.run([_tool("pyang"), "--strict", *_search(), str(UPDATES)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_yanglint_accepts_module_on_derived_copies() -> None:
    derived = GENERATED_DIR / "yang" / "ietf-dots-signal-channel@2021-09-02.yang"
    result = subprocess.run([_tool("yanglint"), *_search(GENERATED_DIR / "yang"), str(derived),
                             str(UPDATES)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
