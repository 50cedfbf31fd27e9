"""Test helpers: a DOTS server in a subprocess, raw CoAP clients, libcoap's coap-client.

The subprocess server is the real ``dots server`` command (what operators run), so tests that
kill it (``kill -9``) or drive it with independent clients exercise the shipped program.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiocoap

from agent.pki import certificate_cuid, init_pki
from agent.transports.credentials import Credentials
from agent.transports.dtls import add_dtls_client
from agent.transports.tls import add_tls_client

DOTS = [sys.executable, "-m", "agent.cli"]
COAP_CLIENT = shutil.which("coap-client-openssl")


def wait_ready(proc: subprocess.Popen[bytes], ready: Path, log: Path, what: str, timeout: float) -> dict[str, Any]:
    """Wait until *proc* wrote its bound addresses (JSON) to *ready*; raise if it exits or stalls."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready.exists() and ready.stat().st_size:
            return json.loads(ready.read_text())
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text()[-3000:]}")
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready: {log.read_text()[-3000:]}")


class ServerProcess:
    """``dots server`` as a child process on free ports of 127.0.0.1 and ::1 (or the ``listen``
    addresses, e.g. those of a test namespace when ``prefix`` is ``["ip", "netns", "exec", NS]``)."""

    def __init__(self, workdir: Path, *, extra: Sequence[str] = (), config: dict[str, Any] | None = None,
                 port: int = 0, db: Path | None = None, env: dict[str, str] | None = None,
                 prefix: Sequence[str] = (), listen: Sequence[str] = ("127.0.0.1", "::1")) -> None:
        self.workdir = workdir
        self.listen = list(listen)
        self.pki = workdir / "pki"
        init_pki(self.pki)
        self.db = db or workdir / "server.db"
        self.ready = workdir / "ready.json"
        self.log = workdir / "server.log"
        self.config_file = None
        if config is not None:
            self.config_file = workdir / "config.json"
            self.config_file.write_text(json.dumps(config))
        self.extra = list(extra)
        self.port = port
        self.env = env
        self.prefix = list(prefix)
        self.proc: subprocess.Popen[bytes] | None = None
        self.addresses: dict[str, list[list[Any]]] = {}

    def start(self, timeout: float = 20.0) -> ServerProcess:
        self.ready.unlink(missing_ok=True)
        listen = [arg for host in self.listen for arg in ("--listen", host)]
        argv = [*self.prefix, *DOTS, "-v", "server", "--pki", str(self.pki), *listen,
                "--port", str(self.port), "--db", str(self.db), "--ready-file", str(self.ready), *self.extra]
        if self.config_file:
            argv += ["--config", str(self.config_file)]
        env = {**os.environ, **(self.env or {})}
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.addresses = wait_ready(self.proc, self.ready, self.log, "server", timeout)
        if self.port == 0:  # keep the same ports across restarts
            self.port = self.addresses["tls"][0][1]
        return self

    def port_of(self, transport: str, host: str = "127.0.0.1") -> int:
        return next(p for h, p in self.addresses[transport] if h == host)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(20)
        return self.proc.returncode if self.proc else 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def client_cuid(self) -> str:
        return certificate_cuid(self.pki / "client.crt")

    def uri(self, transport: str, path: str, host: str = "127.0.0.1") -> str:
        scheme = "coaps+tcp" if transport == "tls" else "coaps"
        h = f"[{host}]" if ":" in host else host
        return f"{scheme}://{h}:{self.port_of(transport, host)}/.well-known/dots/{path}"


async def raw_client(pki: Path, stem: str = "client") -> aiocoap.Context:
    """An aiocoap context with our TLS and DTLS client transports and the given client cert."""
    creds = Credentials(cert=pki / f"{stem}.crt", key=pki / f"{stem}.key", cafile=pki / "ca.crt")
    ctx = aiocoap.Context()
    await add_tls_client(ctx, creds)
    await add_dtls_client(ctx, creds)
    return ctx


def coap_client(pki: Path, *args: str, timeout: float = 20, stem: str = "client") -> subprocess.CompletedProcess[bytes]:
    """libcoap's coap-client-openssl with our dev PKI."""
    assert COAP_CLIENT
    argv = [COAP_CLIENT, "-c", str(pki / f"{stem}.crt"), "-j", str(pki / f"{stem}.key"), "-C", str(pki / "ca.crt"),
            *args]
    return subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
