"""``dots call-home client ... mitigate`` exits non-zero with the CPE's diagnostic on a refusal."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.pki import init_pki
from tests.servers import DOTS, wait_ready


@pytest.fixture
def provider_and_cpe(tmp_path: Path) -> Iterator[Path]:
    pki = tmp_path / "pki"
    init_pki(pki)
    sock, ready = tmp_path / "provider.sock", tmp_path / "provider.json"
    logs = [open(tmp_path / n, "ab") for n in ("provider.log", "cpe.log")]  # noqa: SIM115
    provider = subprocess.Popen([*DOTS, "-v", "call-home", "client", "--pki", str(pki), "--listen", "127.0.0.1",
                                 "--port", "0", "--transport", "tls", "--control", str(sock), "--ready-file",
                                 str(ready)], stdout=logs[0], stderr=subprocess.STDOUT)
    procs = [provider]
    try:
        port = wait_ready(provider, ready, tmp_path / "provider.log", "provider", 30)["tls"][0][1]
        procs.append(subprocess.Popen([*DOTS, "-v", "call-home", "server", "--pki", str(pki), "--client",
                                       f"127.0.0.1:{port}", "--client-name", "localhost", "--transport", "tls",
                                       "--internal-prefix", "10.98.1.0/24", "--db", str(tmp_path / "cpe.db"),
                                       "--reconnect-min", "0.5"], stdout=logs[1], stderr=subprocess.STDOUT))
        yield sock
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(20)
        for f in logs:
            f.close()


def _mitigate(sock: Path, source: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DOTS, "call-home", "client", "--control", str(sock), "--wait", "30", "mitigate",
                           "--source-prefix", source, "--target-prefix", "203.0.113.0/24"],
                          capture_output=True, text=True, timeout=90)


def test_refusal_exits_1_with_the_diagnostic(provider_and_cpe: Path):
    r = _mitigate(provider_and_cpe, "192.0.2.66/32")  # not one of the CPE's internal prefixes
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert json.loads(r.stdout)["code"] == "4.00"
    line, = r.stderr.strip().splitlines()
    assert line.startswith("dots call-home: refused with 4.00: ") and "outside" in line
    ok = _mitigate(provider_and_cpe, "10.98.1.7/32")
    assert ok.returncode == 0, (ok.stdout, ok.stderr)
    assert json.loads(ok.stdout)["code"] == "2.01" and ok.stderr == ""


def test_missing_control_socket_is_one_line(tmp_path: Path):
    r = _mitigate(tmp_path / "nothing.sock", "10.98.1.7/32")
    assert r.returncode == 2
    assert r.stderr.strip() == f"dots call-home: cannot use the control socket {tmp_path / 'nothing.sock'}: " \
                               "No such file or directory"
