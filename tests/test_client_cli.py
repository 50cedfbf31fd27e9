"""``dots client`` end to end: a ``dots server`` subprocess, the CLI as a subprocess, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.pki import init_pki

DOTS = str(Path(sys.executable).with_name("dots"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    tmp = tmp_path_factory.mktemp("cli")
    init_pki(tmp / "pki")
    ready = tmp / "ready.json"
    proc = subprocess.Popen([DOTS, "server", "--pki", str(tmp / "pki"), "--port", "0", "--listen", "127.0.0.1",
                             "--db", str(tmp / "s.db"), "--ready-file", str(ready)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if ready.exists() and ready.read_text():
                break
            time.sleep(0.05)
        port = json.loads(ready.read_text())["tls"][0][1]
        yield tmp, port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def dots(server: tuple[Path, int], *args: str, transport: str = "auto") -> subprocess.CompletedProcess[str]:
    tmp, port = server
    cmd = [DOTS, "client", "--pki", str(tmp / "pki"), "--server", f"127.0.0.1:{port}", "--transport", transport,
           "--state", str(tmp / "state.json"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.mark.req("SC-002", "SC-031")
def test_cli_lifecycle_and_exit_codes(server: tuple[Path, int]) -> None:
    made = dots(server, "--json", "mitigate", "--target-prefix", "192.0.2.0/24", "--port", "80",
                "--port", "1000-2000", "--protocol", "6", "--lifetime", "600")
    assert made.returncode == 0, made.stderr
    result = json.loads(made.stdout)
    mid = result["mid"]
    assert result["code"] == "2.01" and result["lifetime"] == 600

    human = dots(server, "status", "--mid", str(mid), transport="tls")
    assert human.returncode == 0 and f"mid {mid}: attack-mitigation-in-progress" in human.stdout

    eff = dots(server, "--json", "efficacy", "--mid", str(mid), "--attack-status", "under-attack")
    assert eff.returncode == 0 and json.loads(eff.stdout)["code"] == "2.04"

    gone = dots(server, "withdraw", "--mid", str(mid), transport="dtls")
    assert gone.returncode == 0 and "2.02" in gone.stdout
    status = json.loads(dots(server, "--json", "status", "--mid", str(mid)).stdout)
    assert status["scope"][0]["status"] == "dots-client-withdrawn-mitigation"

    again = dots(server, "--json", "--quiet", "mitigate", "--target-prefix", "198.51.100.0/24")
    assert json.loads(again.stdout)["mid"] == mid + 1  # the state file keeps mids monotonic

    missing = dots(server, "--json", "status", "--mid", "999")
    assert missing.returncode == 1 and json.loads(missing.stdout)["error"]["code"] == "4.04"
    bad_cfg = dots(server, "config", "--heartbeat-interval", "1")
    assert bad_cfg.returncode == 1 and "4.22" in bad_cfg.stderr
    assert dots(server, "mitigate", "--port", "x").returncode == 2
    assert dots(server, "mitigate", "--port", "80").returncode == 2  # no target
    tmp, _port = server
    unreachable = subprocess.run([DOTS, "client", "--pki", str(tmp / "pki"), "--server", "127.0.0.1:9",
                                  "--timeout", "2", "--state", str(tmp / "other.json"), "status"],
                                 capture_output=True, text=True, timeout=60)
    assert unreachable.returncode == 3 and "cannot reach" in unreachable.stderr


def test_cli_config(server: tuple[Path, int]) -> None:
    shown = dots(server, "config")
    assert shown.returncode == 0 and "heartbeat-interval=30 [15..240]" in shown.stdout
    put = json.loads(dots(server, "--json", "config", "--heartbeat-interval", "45", "--set", "idle").stdout)
    assert put["code"] == "2.01"
    assert put["ietf-dots-signal-channel:signal-config"]["idle-config"]["heartbeat-interval"]["current-value"] == 45
    reset = dots(server, "config", "--reset")
    assert reset.returncode == 0 and "2.02" in reset.stdout


def test_cli_watch_until_interrupted(server: tuple[Path, int]) -> None:
    made = json.loads(dots(server, "--json", "mitigate", "--target-prefix", "203.0.113.0/24").stdout)
    tmp, port = server
    proc = subprocess.Popen([DOTS, "client", "--pki", str(tmp / "pki"), "--server", f"127.0.0.1:{port}", "--json",
                             "--state", str(tmp / "state.json"), "watch", "--mid", str(made["mid"])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())
    assert first["scope"][0]["status"] == "attack-mitigation-in-progress"
    assert dots(server, "withdraw", "--mid", str(made["mid"])).returncode == 0
    second = json.loads(proc.stdout.readline())
    assert second["scope"][0]["status"] == "dots-client-withdrawn-mitigation"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 0
