"""The generated bindings: no drift from yang/, and the fast rewrite behaves like pyangbind."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
from pyangbind.lib import pybindJSON

from bindings import build
from bindings.generated import dots_signal as fast


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Unmodified pyangbind output for the same modules, imported from a temp dir."""
    src = build.generate(plain=True)["dots_signal.py"]
    path = tmp_path_factory.mktemp("plain") / "plain_dots_signal.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("plain_dots_signal", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["plain_dots_signal"] = module
    spec.loader.exec_module(module)
    return module


def test_no_drift() -> None:
    """Regenerating from yang/ reproduces the committed bindings/generated/ exactly."""
    diffs = build.drift(build.generate())
    assert not diffs, "bindings/generated is stale; run python -m bindings.build\n" + "\n".join(diffs)


def test_standard_modules_are_verbatim() -> None:
    """yang/ keeps the RFC modules as published (compared with the reference copies)."""
    shared = Path(__file__).resolve().parents[2] / "shared" / "spec" / "yang"
    if not shared.is_dir():
        pytest.skip("reference copies not present")
    for name in ("ietf-dots-signal-channel@2021-09-02", "iana-dots-signal-channel@2021-09-02",
                 "ietf-dots-data-channel@2020-05-28", "ietf-dots-call-home@2021-12-09"):
        ours = (build.yang.MODULE_DIR / f"{name}.yang").read_bytes()
        assert ours == (shared / f"{name}.yang").read_bytes(), name


def test_structure_transform() -> None:
    text = "  sx:structure dots-signal {\n  sx:augment-structure \"/a\" {"
    out = build.structure_to_container(text)
    assert "container dots-signal {\n    config false;" in out
    assert 'augment "/a"' in out and "sx:" not in out


def outcome(fn: Any) -> str:
    try:
        result = fn()
    except Exception as exc:  # compare the failure kind, not the class names in messages
        return type(exc).__name__
    return repr(result) if not hasattr(result, "_pyangbind_elements") else "obj"


OPERATIONS = [
    ("prefix ok", lambda s: s.target_prefix.append("192.0.2.0/24")),
    ("prefix /33", lambda s: s.target_prefix.append("192.0.2.0/33")),
    ("prefix v6", lambda s: s.target_prefix.append("2001:db8::/32")),
    ("prefix junk", lambda s: s.target_prefix.append("nonsense")),
    ("port ok", lambda s: s.target_port_range.add(80)),
    ("port too big", lambda s: s.target_port_range.add(70000)),
    ("port negative", lambda s: s.target_port_range.add(-1)),
    ("port dup", lambda s: (s.target_port_range.add(81), s.target_port_range.add(81))),
    ("upper port", lambda s: s.target_port_range.add(90)._set_upper_port(100)),
    ("protocol", lambda s: s.target_protocol.append(6)),
    ("protocol 256", lambda s: s.target_protocol.append(256)),
    ("protocol str", lambda s: s.target_protocol.append("x")),
    ("lifetime", lambda s: s._set_lifetime(3600)),
    ("lifetime -1", lambda s: s._set_lifetime(-1)),
    ("lifetime -2", lambda s: s._set_lifetime(-2)),
    ("lifetime 2^32", lambda s: s._set_lifetime(2**32)),
    ("status", lambda s: s._set_status("attack-stopped")),
    ("status bad", lambda s: s._set_status("attack-won")),
    ("status mapped", lambda s: (s._set_status("attack-stopped"), s.status.getValue(mapped=True))),
    ("attack-status", lambda s: s._set_attack_status("under-attack")),
    ("trigger", lambda s: s._set_trigger_mitigation(False)),
    ("fqdn", lambda s: s.target_fqdn.append("www.example.com")),
    ("fqdn bad", lambda s: s.target_fqdn.append("bad..name-")),
    ("mid", lambda s: s._set_mid(2**32 - 1)),
    ("mid big", lambda s: s._set_mid(2**32)),
    ("bytes", lambda s: s._set_bytes_dropped(2**64 - 1)),
    ("bytes big", lambda s: s._set_bytes_dropped(2**64)),
    ("icmp", lambda s: s.source_icmp_type_range.add(3)),
    ("icmp bad", lambda s: s.source_icmp_type_range.add(300)),
    ("src prefix", lambda s: s.source_prefix.append("198.51.100.7/32")),
    ("conflict", lambda s: s.conflict_information._set_conflict_cause("overlapping-targets")),
    ("conflict bad", lambda s: s.conflict_information._set_conflict_cause("nope")),
    ("retry", lambda s: s.conflict_information._set_retry_timer(30)),
]


@pytest.mark.parametrize(("label", "op"), OPERATIONS, ids=[o[0] for o in OPERATIONS])
def test_same_checks_as_pyangbind(plain: Any, label: str, op: Any) -> None:
    results = []
    for module in (plain, fast):
        root = module.ietf_dots_signal_channel()
        scope = root.dots_signal.scope[root.dots_signal.scope.add()]
        results.append((outcome(lambda scope=scope: op(scope)), pybindJSON.dumps(root, mode="ietf")))
    assert results[0] == results[1], label


def test_config_choice_and_decimal(plain: Any) -> None:
    outs = []
    for module in (plain, fast):
        root = module.ietf_dots_signal_channel()
        cfg = root.dots_signal.mitigating_config
        cfg.ack_timeout._set_current_value_decimal("2.5")
        cfg.heartbeat_interval._set_current_value(30)
        bad = outcome(lambda cfg=cfg: cfg.heartbeat_interval._set_current_value(70000))
        before = pybindJSON.dumps(root, mode="ietf")
        root.dots_signal._set_peer_hb_status(True)  # other case of the choice: config is unset
        outs.append((bad, before, pybindJSON.dumps(root, mode="ietf")))
    assert outs[0] == outs[1]
    assert '"peer-hb-status": true' in outs[1][2] and "ack-timeout" not in outs[1][2]


def test_pybindjson_load_compat(plain: Any) -> None:
    """pyangbind's own JSON loader and dumper work on the fast bindings."""
    text = (Path(__file__).parent / "data" / "rfc" / "fig14-get-response.json").read_text()
    import json

    body = json.loads(text)["ietf-dots-signal-channel:mitigation-scope"]
    doc = json.dumps({"ietf-dots-signal-channel:dots-signal": body})
    a = pybindJSON.loads_ietf(doc, plain, "ietf_dots_signal_channel")
    b = pybindJSON.loads_ietf(doc, fast, "ietf_dots_signal_channel")
    assert pybindJSON.dumps(a, mode="ietf") == pybindJSON.dumps(b, mode="ietf")
