"""End-to-end DOTS Call Home (RFC 9066) in network namespaces the test creates.

Topology (all addresses inside the test's own namespaces)::

    home 10.98.1.2 (device A), 10.98.1.3 (device B)
      |  veth
    cpe  10.98.1.1 | 10.98.2.1     ip_forward=1; Call Home DOTS server + nftables (+ masquerade)
      |  veth
    provider 10.98.2.2 (Call Home DOTS client), 10.98.2.3 (attack target), 10.98.2.4 (other target)

The CPE process (``dots call-home server``) runs inside the cpe namespace and calls the provider
process (``dots call-home client``) running in the provider namespace over TLS or DTLS.  The
provider signals device A -> target; the CPE installs an nftables rule; the counters prove device A's
datagrams to the target are dropped while its traffic to another target and device B's traffic pass;
withdrawal restores them.  A NAT44 variant has the CPE masquerade, the request carry the external
address/port, and the CPE map it to device A through conntrack.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.pki import init_pki
from tests.netns import Link, Netns, Topology, skip_reason

_SKIP = skip_reason("nft")
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]

ROOT = Path(__file__).resolve().parents[1]
DOTS = [sys.executable, "-m", "agent.cli", "-v"]
DEV_A, DEV_B = "10.98.1.2", "10.98.1.3"
CPE_WAN, PROVIDER = "10.98.2.1", "10.98.2.2"
TARGET, OTHER = "10.98.2.3", "10.98.2.4"
PORT = 47001

_UDP_FROM = """
import socket, sys
src, sport, dst, dport, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((src, sport))
for _ in range(count):
    s.sendto(b"x" * 64, (dst, dport))
"""


def send(ns: Netns, src: str, sport: int, dst: str, dport: int, count: int = 40) -> None:
    ns.python(_UDP_FROM, src, str(sport), dst, str(dport), str(count))


def received(provider: Netns, flows: list[tuple[str, int, str, int]], count: int = 40,
             home: Netns | None = None) -> list[int]:
    """Send each (src, sport, dst, dport) flow from home and return what the provider received."""
    out = []
    assert home is not None
    for src, sport, dst, dport in flows:
        with provider.udp_receiver([dport]) as rx:
            send(home, src, sport, dst, dport, count)
            time.sleep(0.3)
            out.append(rx.stop()[dport][0])
    return out


class Proc:
    """A ``dots`` command running inside a namespace, with a log file."""

    def __init__(self, ns: Netns, argv: list[str], log: Path) -> None:
        self.log = log
        self.fh = open(log, "ab")  # noqa: SIM115 - closed in stop()
        env_path = str(ROOT)
        self.p = subprocess.Popen(["ip", "netns", "exec", ns.name, "env", f"PYTHONPATH={env_path}", *DOTS, *argv],
                                  stdout=self.fh, stderr=subprocess.STDOUT, cwd=ROOT)

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.fh.close()


def control(sock: Path, request: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    r = subprocess.run([*DOTS, "call-home", "client", "--control", str(sock), request.pop("op"),
                        *request.pop("argv", [])], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    try:
        answer: dict[str, Any] = json.loads(r.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"control failed: {r.stdout} {r.stderr}") from None
    return answer


def wait_for(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def nft_chains(cpe: Netns) -> int:
    r = cpe.run("nft", "-j", "list", "table", "inet", "dots_callhome", check=False)
    if r.returncode != 0:
        return 0
    return sum(1 for o in json.loads(r.stdout)["nftables"] if "chain" in o and o["chain"]["name"].startswith("k_"))


@pytest.fixture
def topo() -> Iterator[Topology]:
    with Topology(["home", "cpe", "provider"], [
        Link("home", "cpe", [f"{DEV_A}/24", f"{DEV_B}/24"], ["10.98.1.1/24"]),
        Link("cpe", "provider", [f"{CPE_WAN}/24"], [f"{PROVIDER}/24", f"{TARGET}/24", f"{OTHER}/24"]),
    ], prefix="dch") as t:
        t["cpe"].run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        t["home"].run("ip", "route", "add", "default", "via", "10.98.1.1")
        yield t


def start(tmp: Path, topo: Topology, transport: str, *, nat: bool = False, extra: list[str] = ()
          ) -> tuple[Proc, Proc, Path, Path]:
    pki = tmp / "pki"
    init_pki(pki, server_sans=(PROVIDER, "localhost"))
    psock, csock = tmp / "provider.sock", tmp / "cpe.sock"
    provider = Proc(topo["provider"], ["call-home", "client", "--pki", str(pki), "--listen", PROVIDER,
                                       "--port", str(PORT), "--transport", transport, "--control", str(psock)],
                    tmp / "provider.log")
    wait_for(psock.exists, 20, "the provider's control socket")
    argv = ["call-home", "server", "--pki", str(pki), "--client", f"{PROVIDER}:{PORT}", "--transport", transport,
            "--internal-prefix", "10.98.1.0/24", "--mitigator", "nftables", "--db", str(tmp / "cpe.db"),
            "--terminating-period", "1", "--counter-interval", "0.3", "--reconnect-min", "0.5",
            "--control", str(csock), *extra]
    if nat:
        argv.append("--nat-conntrack")
    cpe = Proc(topo["cpe"], argv, tmp / "cpe.log")
    wait_for(csock.exists, 20, "the CPE's control socket")
    return provider, cpe, psock, csock


def logs(tmp: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in tmp.glob("*.log"))


@pytest.mark.req("CH-013", "CH-014", "CH-016", "CH-019")
@pytest.mark.parametrize("transport", ["tls", "dtls"])
def test_call_home_blocks_device_to_target(tmp_path: Path, topo: Topology, transport: str) -> None:
    home, cpe_ns, prov_ns = topo["home"], topo["cpe"], topo["provider"]
    provider, cpe, psock, csock = start(tmp_path, topo, transport)
    try:
        prov_ns.run("ip", "route", "add", "10.98.1.0/24", "via", CPE_WAN)
        flows = [(DEV_A, 41000, TARGET, 9000), (DEV_A, 41001, OTHER, 9000), (DEV_B, 41002, TARGET, 9000)]
        assert received(prov_ns, flows, home=home) == [40, 40, 40]

        # outside the CPE's internal prefixes: 4.00 and nothing installed
        bad = control(psock, {"op": "mitigate", "argv": ["--source-prefix", "10.98.9.9/32", "--target-prefix",
                                                          f"{TARGET}/32"]})
        assert bad["ok"] and bad["code"] == "4.00", bad
        assert nft_chains(cpe_ns) == 0

        answer = control(psock, {"op": "mitigate", "argv": [
            "--source-prefix", f"{DEV_A}/32", "--target-prefix", f"{TARGET}/32",
            "--wait-status", "attack-successfully-mitigated"]})
        assert answer["ok"] and answer["code"] == "2.01", (answer, logs(tmp_path))
        assert answer["status"] == "attack-successfully-mitigated"
        print(f"\n{transport}: PUT -> 2.01 (rule installed) in {answer['rtt-ms']} ms")
        mid = answer["mid"]
        assert nft_chains(cpe_ns) == 1

        assert received(prov_ns, flows, home=home) == [0, 40, 40]
        # counters in the status the provider reads
        def dropped() -> int:
            st = control(psock, {"op": "status", "argv": ["--mid", str(mid)]})
            return int(st["scopes"][0]["pkts-dropped"]) if st.get("scopes") else 0
        wait_for(lambda: dropped() >= 40, 10, "pkts-dropped in the status")

        assert control(psock, {"op": "withdraw", "argv": ["--mid", str(mid)]})["code"] == "2.02"
        wait_for(lambda: nft_chains(cpe_ns) == 0, 10, "the rule removal")
        assert received(prov_ns, flows, home=home) == [40, 40, 40]
        assert provider.alive() and cpe.alive()
    finally:
        cpe.stop()
        provider.stop()


@pytest.mark.req("CH-016", "CH-019", "CH-025")
def test_call_home_nat44_maps_external_source_to_device(tmp_path: Path, topo: Topology) -> None:
    home, cpe_ns, prov_ns = topo["home"], topo["cpe"], topo["provider"]
    cpe_ns.run("nft", "-f", "-", input=(
        "table ip dch_nat {\n chain post {\n type nat hook postrouting priority 100; policy accept;\n"
        f'  ip saddr 10.98.1.0/24 oifname "{cpe_ns.ifnames[1]}" masquerade\n }}\n}}\n'))
    provider, cpe, psock, csock = start(tmp_path, topo, "dtls", nat=True)
    try:
        flows = [(DEV_A, 42000, TARGET, 9000), (DEV_B, 42001, TARGET, 9000)]
        assert received(prov_ns, flows, home=home) == [40, 40]  # masqueraded: no route back needed
        # the provider sees CPE_WAN and the external port; read it as the provider would see it
        table = cpe_ns.run("conntrack", "-L", "-p", "udp", "--orig-src", DEV_A, check=False).stdout
        ext_port = next(int(t.split("=")[1]) for t in table.split() if t.startswith("dport=")
                        and t != "dport=9000")
        answer = control(psock, {"op": "mitigate", "argv": [
            "--source-prefix", f"{CPE_WAN}/32", "--source-port", str(ext_port), "--target-prefix", f"{TARGET}/32",
            "--wait-status", "attack-successfully-mitigated"]})
        assert answer["ok"] and answer["code"] == "2.01", (answer, logs(tmp_path))
        print(f"\nNAT44 dtls: PUT -> 2.01 (mapped + installed) in {answer['rtt-ms']} ms")
        r = subprocess.run([*DOTS, "call-home", "list", "--control", str(csock)], capture_output=True, text=True,
                           cwd=ROOT, timeout=30)
        state = json.loads(r.stdout)
        assert state["mitigations"][0]["enforced-sources"] == [f"{DEV_A}/32"], state
        # device A blocked (whatever its port), device B (same external address) passes
        assert received(prov_ns, [(DEV_A, 42000, TARGET, 9000), (DEV_A, 42005, TARGET, 9000),
                                  (DEV_B, 42001, TARGET, 9000)], home=home) == [0, 0, 40]
        assert control(psock, {"op": "withdraw", "argv": ["--mid", str(answer["mid"])]})["code"] == "2.02"
        wait_for(lambda: nft_chains(cpe_ns) == 0, 10, "the rule removal")
        assert received(prov_ns, [(DEV_A, 42000, TARGET, 9000)], home=home) == [40]
    finally:
        cpe.stop()
        provider.stop()
