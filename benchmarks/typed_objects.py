"""Typed objects: ours (rewritten bindings + codec tree walker) against plain pyangbind.

The message is a mitigation request with 1 scope, 2 target prefixes, 1 port range,
1 protocol and a lifetime.  For each side:

- build: create the root and set every field through the generated API;
- load:  RFC 7951 JSON text -> typed objects (ours: ``agent.codec.tree.load``;
         plain: ``pybindJSON.loads_ietf``);
- dump:  typed objects -> RFC 7951 JSON text (ours: ``agent.codec.tree.dump``;
         plain: ``pybindJSON.dumps(mode="ietf")``).

Also printed, for information: the full CBOR decode (shape checks + libyang + typed load) and
encode of the same message, and pyangbind's own JSON functions run on our bindings.
The last line is machine-readable.  Usage: ``python benchmarks/typed_objects.py [--quick]``.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyangbind.lib import pybindJSON

from agent.codec import decode_cbor, tree
from agent.codec.messages import MODULE, ROOT_NAME, Message, MessageType
from bindings import build
from bindings.generated import dots_signal as fast

TEXT = json.dumps({ROOT_NAME: {"scope": [{
    "target-prefix": ["2001:db8:6401::1/128", "192.0.2.0/24"],
    "target-port-range": [{"lower-port": 443, "upper-port": 444}],
    "target-protocol": [6],
    "lifetime": 3600,
}]}})


def build_request(module: Any) -> Any:
    root = module.ietf_dots_signal_channel()
    scope = root.dots_signal.scope[root.dots_signal.scope.add()]
    scope.target_prefix.append("2001:db8:6401::1/128")
    scope.target_prefix.append("192.0.2.0/24")
    scope.target_port_range.add(443)._set_upper_port(444)
    scope.target_protocol.append(6)
    scope._set_lifetime(3600)
    return root


def load_ours(text: str) -> Any:
    root = fast.ietf_dots_signal_channel()
    tree.load(root.dots_signal, json.loads(text)[ROOT_NAME], "", MODULE)
    return root


def dump_ours(root: Any) -> str:
    return json.dumps({ROOT_NAME: tree.dump(root.dots_signal, MODULE)})


def per_call_us(fn: Callable[[], Any], seconds: float, min_calls: int = 5) -> float:
    """Median over 5 rounds of the mean time per call, each round ~seconds/5 long."""
    fn()
    rounds = []
    for _ in range(5):
        n, start = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / 5 and n >= min_calls:
                break
        rounds.append(elapsed / n * 1e6)
    return statistics.median(rounds)


def import_plain() -> Any:
    src = build.generate(plain=True)["dots_signal.py"]
    tmp = Path(tempfile.mkdtemp(prefix="plain-bindings-"))
    (tmp / "plain_dots_signal.py").write_text(src)
    spec = importlib.util.spec_from_file_location("plain_dots_signal", tmp / "plain_dots_signal.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["plain_dots_signal"] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    quick = "--quick" in sys.argv
    budget = 0.5 if quick else 2.0
    plain = import_plain()

    # Same content either way (checked, so the comparison is between equal work).
    assert json.loads(dump_ours(load_ours(TEXT))) == json.loads(TEXT)
    assert json.loads(pybindJSON.dumps(build_request(plain), mode="ietf")) == json.loads(
        pybindJSON.dumps(build_request(fast), mode="ietf"))

    ours_root = build_request(fast)
    plain_root = build_request(plain)
    r = {
        "build_us": per_call_us(lambda: build_request(fast), budget),
        "load_us": per_call_us(lambda: load_ours(TEXT), budget),
        "dump_us": per_call_us(lambda: dump_ours(ours_root), budget),
        "plain_build_us": per_call_us(lambda: build_request(plain), budget),
        "plain_load_us": per_call_us(lambda: pybindJSON.loads_ietf(TEXT, plain, "ietf_dots_signal_channel"),
                                     budget),
        "plain_dump_us": per_call_us(lambda: pybindJSON.dumps(plain_root, mode="ietf"), budget),
    }
    msg = Message(MessageType.MITIGATION, ours_root)
    wire = msg.to_cbor()
    extra = {
        "ours_pybindjson_load_us": per_call_us(
            lambda: pybindJSON.loads_ietf(TEXT, fast, "ietf_dots_signal_channel"), budget),
        "ours_pybindjson_dump_us": per_call_us(lambda: pybindJSON.dumps(ours_root, mode="ietf"), budget),
        "cbor_encode_us": per_call_us(msg.to_cbor, budget),
        "cbor_decode_validated_us": per_call_us(lambda: decode_cbor(wire), budget),
    }
    print(f"message: {len(wire)} bytes of CBOR, {len(TEXT)} bytes of JSON")
    print(f"{'':22}{'ours':>10}{'plain':>12}{'speed-up':>10}")
    for op in ("build", "load", "dump"):
        ours, pl = r[f"{op}_us"], r[f"plain_{op}_us"]
        print(f"{op + ' (us)':22}{ours:10.1f}{pl:12.1f}{pl / ours:9.0f}x")
    for k, v in extra.items():
        print(f"{k:34}{v:10.1f}")
    print(" ".join(f"{k}={v:.1f}" for k, v in r.items()))


if __name__ == "__main__":
    main()
