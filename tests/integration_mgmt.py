"""Helpers of the management-plane integration tests: real ``dots`` processes with NETCONF.

``dots server`` runs through :class:`tests.servers.ServerProcess` with the management flags
added; ``dots client agent`` through :class:`AgentProcess`.  Both write their bound addresses
(DOTS and management) to a ready file; NETCONF is reached with ncclient as an operator would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lxml import etree

from tests.servers import DOTS, ServerProcess, wait_ready

NS = "urn:dots-agent:params:xml:ns:yang:dots-agent"
USER, PASSWORD = "operator", "n3tconf-pw"
ROOT = "dots-agent:dots-agent"


def password_file(workdir: Path) -> Path:
    path = workdir / "netconf.pw"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


def mgmt_flags(workdir: Path, restconf: bool = False) -> list[str]:
    flags = ["--netconf-port", "0", "--netconf-user", USER, "--netconf-password-file", str(password_file(workdir))]
    if restconf:
        flags += ["--restconf-port", "0"]
    return flags


def server_config(pki: Path, clients: list[dict[str, Any]] | None = None, allow_unlisted: bool = False
                  ) -> dict[str, Any]:
    """A server configuration (RFC 7951) with the test PKI and the given authorised clients."""
    return {ROOT: {
        "credentials": {"credential": [{"name": "server", "certificate-file": str(pki / "server.crt"),
                                        "private-key-file": str(pki / "server.key"),
                                        "ca-file": str(pki / "ca.crt")}]},
        "server": {"listen": {"endpoint": [{"name": "tls-v4", "address": "127.0.0.1", "transport": "tls"}]},
                   "credential": "server",
                   "clients": {"allow-unlisted": allow_unlisted, "client": clients or []}},
    }}


def netconf_port(addresses: dict[str, Any]) -> int:
    return int(addresses["netconf"][0][1])


def connect(port: int, **kw: Any) -> Any:
    from ncclient import manager

    args = dict(host="127.0.0.1", port=port, username=USER, password=PASSWORD, hostkey_verify=False,
                allow_agent=False, look_for_keys=False, timeout=30)
    args.update(kw)
    return manager.connect(**args)


def get_xml(m: Any, subtree: str) -> etree._Element:
    reply = m.get(filter=("subtree", f'<dots-agent xmlns="{NS}">{subtree}</dots-agent>'))
    return etree.fromstring(reply.data_xml.encode())


def texts(root: etree._Element, path: str) -> list[str]:
    """Texts of the elements at a '/'-separated path of dots-agent local names."""
    xpath = "//" + "/".join(f"a:{p}" for p in path.split("/"))
    return [e.text or "" for e in root.xpath(xpath, namespaces={"a": NS})]


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value is not None and (isinstance(value, etree._Element) or value):
            return value
        if time.monotonic() > end:
            raise TimeoutError("condition not reached")
        time.sleep(interval)


def dots_client(server: ServerProcess, *args: str, state: Path, timeout: float = 60) -> tuple[int, dict[str, Any]]:
    """``dots client --json ...`` against *server* over TLS; (exit code, the JSON it printed)."""
    argv = [*DOTS, "client", "--pki", str(server.pki), "--server", f"127.0.0.1:{server.port_of('tls')}",
            "--transport", "tls", "--state", str(state), "--json", "--timeout", "20", *args]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    line = next((ln for ln in reversed(res.stdout.splitlines()) if ln.startswith("{")), "{}")
    return res.returncode, json.loads(line)


class AgentProcess:
    """``dots client agent`` as a child process with NETCONF on 127.0.0.1."""

    def __init__(self, workdir: Path, pki: Path, server: str | None, extra: list[str] | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.pki = pki
        self.server = server
        self.ready = workdir / "agent-ready.json"
        self.log = workdir / "agent.log"
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.addresses: dict[str, Any] = {}

    def start(self, timeout: float = 30.0) -> AgentProcess:
        self.ready.unlink(missing_ok=True)
        argv = [*DOTS, "-v", "client", "--pki", str(self.pki), "--transport", "tls",
                "--state", str(self.workdir / "client-state.json")]
        if self.server:
            argv += ["--server", self.server]
        argv += ["agent", "--listen", "127.0.0.1", "--ready-file", str(self.ready), *mgmt_flags(self.workdir),
                 *self.extra]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.addresses = wait_ready(self.proc, self.ready, self.log, "agent", timeout)
        return self

    @property
    def netconf_port(self) -> int:
        return netconf_port(self.addresses)

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(10)
        return self.proc.returncode if self.proc else 0


def start_server(workdir: Path, config: dict[str, Any] | None = None, restconf: bool = False) -> ServerProcess:
    """``dots server`` with NETCONF (and RESTCONF) on 127.0.0.1; *config* may use ``{pki}``."""
    workdir.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(workdir, extra=["--transport", "tls", *mgmt_flags(workdir, restconf)], config=config)
    return server.start()


def stop_all(*procs: Any) -> None:
    for p in procs:
        if p is not None:
            try:
                p.stop()
            except Exception:  # noqa: BLE001 - cleanup goes on
                if hasattr(p, "kill"):
                    p.kill()
