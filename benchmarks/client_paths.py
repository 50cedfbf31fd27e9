"""Time from ``dots client mitigate`` (cold start, handshake included) to the server's 2.01, per path.

Theory of operation: for each scenario a fresh server namespace is joined to the root namespace
by a veth (``tests/resilience_net.py``: 10.97.N.0/24 and fd00:97:N::/64, nothing else is touched),
a ``dots server`` runs inside it on port 4646, nftables in the namespace impairs the path (UDP
dropped, IPv6 blackholed, 30 % random loss each way), and the real CLI runs as a new process in
the root namespace -- interpreter start, imports, Happy Eyeballs, (D)TLS handshake, the
connect-time ``GET /config`` and the PUT until its 2.01 -- ``--runs`` times with a fresh state
file.  The CLI's wall-clock time is printed (median, min, max) together with the interpreter +
CLI start baseline (``dots client --help``, warm), so the network part is roughly the difference
(the client's own imports are not in the baseline).

Needs root (network namespaces, nftables).  Run: ``python benchmarks/client_paths.py [--runs 5]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.resilience_net import ServerNet  # noqa: E402
from tests.servers import DOTS, ServerProcess  # noqa: E402

SCENARIOS = [  # name, transport, which addresses, impairment
    ("v6/DTLS", "dtls", "v6", None),
    ("v4/DTLS", "dtls", "v4", None),
    ("v6/TLS", "tls", "v6", None),
    ("v4/TLS", "tls", "v4", None),
    ("auto, UDP blocked", "auto", "both", "udp"),
    ("auto, IPv6 blackholed", "auto", "both", "v6"),
    ("auto, 30 % loss", "auto", "both", "loss"),
]


def cli(args: list[str], timeout: float = 120.0) -> tuple[float, int, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    r = subprocess.run([*DOTS, *args], capture_output=True, text=True, timeout=timeout, env=env)
    return time.perf_counter() - t0, r.returncode, (r.stdout + r.stderr).strip()


def run(runs: int) -> None:
    cli(["client", "--help"])  # warm the page cache
    baseline = statistics.median(cli(["client", "--help"])[0] for _ in range(5))
    print(f"interpreter + CLI start baseline (dots client --help, warm): {1000 * baseline:.0f} ms")
    print(f"{'scenario':24} {'median':>8} {'min':>8} {'max':>8}  {'-baseline':>9}  ok/runs")
    for name, transport, family, impair in SCENARIOS:
        with tempfile.TemporaryDirectory() as tmp, ServerNet() as net:
            work = Path(tmp)
            net.pki(work / "pki")
            server = ServerProcess(work, prefix=net.ns.argv(), listen=[net.v4(2), net.v6(2)], port=4646).start()
            try:
                {"udp": net.block_udp, "v6": net.blackhole_ipv6, "loss": lambda: net.loss(30),
                 None: lambda: None}[impair]()
                target = {"v6": f"[{net.v6(2)}]:4646", "v4": f"{net.v4(2)}:4646", "both": net.server(2)}[family]
                times: list[float] = []
                for i in range(runs):
                    seconds, rc, out = cli(["client", "--pki", str(work / "pki"), "--server", target,
                                            "--transport", transport, "--state", str(work / f"state{i}.json"),
                                            "--timeout", "60", "--quiet", "mitigate",
                                            "--target-prefix", f"192.0.2.{i}/32", "--lifetime", "300"])
                    if rc == 0:
                        times.append(seconds)
                    else:
                        print(f"  {name}: run {i} failed (rc {rc}): {out[-300:]}")
                if times:
                    med = statistics.median(times)
                    print(f"{name:24} {1000 * med:7.0f}ms {1000 * min(times):7.0f}ms {1000 * max(times):7.0f}ms "
                          f" {1000 * (med - baseline):8.0f}ms  {len(times)}/{runs}")
                else:
                    print(f"{name:24} all runs failed")
            finally:
                server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces and nftables)")
    run(args.runs)


if __name__ == "__main__":
    main()
