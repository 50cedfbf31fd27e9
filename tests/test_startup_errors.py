"""Issue 11: an operator's start-up mistake is one line on stderr naming what to fix, exit 2,
no traceback and no file left behind (the real ``dots`` command, as a subprocess)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.pki import init_pki
from tests.servers import DOTS

LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (INFO|DEBUG) ")
EXAMPLE = Path(__file__).parent / "data" / "dots-agent-server-example.json"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki") / "pki"
    init_pki(d)
    return d


def dots(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([*DOTS, *args], capture_output=True, text=True, timeout=timeout, env=env)


def server(pki: Path, work: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return dots("server", "--pki", str(pki), "--listen", "127.0.0.1", "--port", "0",
                "--db", str(work / "server.db"), "--ready-file", str(work / "ready.json"), *extra, timeout=30)


def one_line(r: subprocess.CompletedProcess[str], prefix: str = "dots server: ") -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    # INFO log records (the default level) may precede it; the operator's line is one line
    lines = [ln for ln in r.stderr.splitlines() if not LOG_RECORD.match(ln)]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(prefix), r.stderr
    return lines[0]


def nothing_left(work: Path, *keep: str) -> None:
    assert sorted(p.name for p in work.iterdir()) == sorted(keep)


def copy_pki(pki: Path, work: Path) -> Path:
    d = work / "pki"
    shutil.copytree(pki, d)
    return d


# ---------------------------------------------------------------- rows 1-3: credentials
def test_missing_pki_dir(tmp_path: Path) -> None:
    line = one_line(server(tmp_path / "nope", tmp_path))
    assert f"{tmp_path / 'nope'}" in line and "dots pki init" in line
    nothing_left(tmp_path)


@pytest.mark.parametrize("name", ["ca.crt", "server.crt", "server.key"])
def test_missing_pki_file(pki: Path, tmp_path: Path, name: str) -> None:
    d = copy_pki(pki, tmp_path)
    (d / name).unlink()
    line = one_line(server(d, tmp_path))
    assert str(d / name) in line and "dots pki init" in line
    nothing_left(tmp_path, "pki")


def test_key_not_matching_certificate(pki: Path, tmp_path: Path) -> None:
    d = copy_pki(pki, tmp_path)
    shutil.copy(d / "client.key", d / "server.key")
    line = one_line(server(d, tmp_path))
    assert str(d / "server.key") in line and str(d / "server.crt") in line and "does not match" in line
    nothing_left(tmp_path, "pki")


@pytest.mark.parametrize("name", ["ca.crt", "server.crt", "server.key"])
def test_garbage_pem(pki: Path, tmp_path: Path, name: str) -> None:
    d = copy_pki(pki, tmp_path)
    (d / name).write_bytes(os.urandom(300))
    line = one_line(server(d, tmp_path))
    assert str(d / name) in line
    nothing_left(tmp_path, "pki")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_certificate(pki: Path, tmp_path: Path) -> None:
    d = copy_pki(pki, tmp_path)
    (d / "server.crt").chmod(0)
    line = one_line(server(d, tmp_path))
    assert str(d / "server.crt") in line


# ---------------------------------------------------------------- row 4: port in use
@pytest.fixture
def busy_tcp() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


@pytest.fixture
def busy_udp() -> Iterator[int]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def test_signal_port_in_use_tls(pki: Path, tmp_path: Path, busy_tcp: int) -> None:
    r = dots("server", "--pki", str(pki), "--listen", "127.0.0.1", "--port", str(busy_tcp),
             "--db", str(tmp_path / "s.db"))
    line = one_line(r)
    assert f"127.0.0.1:{busy_tcp}" in line and "DOTS signal channel (TLS)" in line
    nothing_left(tmp_path)


def test_signal_port_in_use_dtls(pki: Path, tmp_path: Path, busy_udp: int) -> None:
    r = dots("server", "--pki", str(pki), "--listen", "127.0.0.1", "--port", str(busy_udp),
             "--transport", "dtls", "--db", str(tmp_path / "s.db"))
    line = one_line(r)
    assert f"127.0.0.1:{busy_udp}" in line and "DOTS signal channel (DTLS)" in line
    nothing_left(tmp_path)


def test_netconf_port_in_use(pki: Path, tmp_path: Path, busy_tcp: int) -> None:
    line = one_line(server(pki, tmp_path, "--netconf-port", str(busy_tcp)))
    assert f"127.0.0.1:{busy_tcp}" in line and "NETCONF" in line
    nothing_left(tmp_path)


def test_restconf_port_in_use(pki: Path, tmp_path: Path, busy_tcp: int) -> None:
    line = one_line(server(pki, tmp_path, "--restconf-port", str(busy_tcp)))
    assert f"127.0.0.1:{busy_tcp}" in line and "RESTCONF" in line
    nothing_left(tmp_path)


# ---------------------------------------------------------------- row 5: database
def test_db_directory_missing(pki: Path, tmp_path: Path) -> None:
    r = dots("server", "--pki", str(pki), "--port", "0", "--db", str(tmp_path / "no" / "s.db"))
    line = one_line(r)
    assert str(tmp_path / "no") in line
    nothing_left(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_db_directory_not_writable(pki: Path, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        line = one_line(dots("server", "--pki", str(pki), "--port", "0", "--db", str(ro / "s.db")))
    finally:
        ro.chmod(0o755)
    assert str(ro) in line and "not writable" in line


def test_corrupt_db_left_untouched(pki: Path, tmp_path: Path) -> None:
    db = tmp_path / "server.db"
    junk = os.urandom(4096)
    db.write_bytes(junk)
    line = one_line(server(pki, tmp_path, "--netconf-port", "0"))
    assert str(db) in line
    assert db.read_bytes() == junk
    nothing_left(tmp_path, "server.db")  # no mgmt dir, no -wal/-shm


# ---------------------------------------------------------------- row 6: --config
def _config(tmp_path: Path, tree: object) -> Path:
    f = tmp_path / "config.json"
    f.write_text(tree if isinstance(tree, str) else json.dumps(tree))
    return f


def _clients(client: dict[str, object]) -> dict[str, object]:
    return {"dots-agent:dots-agent": {"server": {"clients": {"client": [
        {"name": "a", "cuid": "abcdefghijklmnopqrstuv", **client}]}}}}


@pytest.mark.parametrize(("tree", "path", "reason"), [
    (_clients({"protected-prefixes": ["192.0.2.0/24"]}), "protected-prefixes", "not found"),
    (_clients({"colour": "blue"}), "colour", "not found"),
    ({"dots-agent:dots-agent": {"server": {"session-config": {"idle-config": {"heartbeat-interval": {
        "current-value": 4294967296}}}}}},
     "/dots-agent:dots-agent/server/session-config/idle-config/heartbeat-interval/current-value", "4294967296"),
    ({"dots-agent:dots-agent": {"server": {"clients": {"client": [
        {"name": "a", "cuid": "abcdefghijklmnopqrstuv", "protected-prefix": ["192.0.2.0/33"]}]}}}},
     "/dots-agent:dots-agent/server/clients/client", "192.0.2.0/33"),
])
def test_invalid_config_refused_before_start(pki: Path, tmp_path: Path, tree: object, path: str,
                                             reason: str) -> None:
    f = _config(tmp_path, tree)
    line = one_line(server(pki, tmp_path, "--config", str(f)))
    assert line.startswith(f"dots server: invalid configuration {f}: /"), line
    assert path in line and reason in line, line
    nothing_left(tmp_path, "config.json")


def test_config_not_json(pki: Path, tmp_path: Path) -> None:
    f = _config(tmp_path, '{"dots-agent:dots-agent": {\n  "server": }\n}')
    line = one_line(server(pki, tmp_path, "--config", str(f)))
    assert f"invalid configuration {f}: line 2 column" in line
    nothing_left(tmp_path, "config.json")


def test_config_missing(pki: Path, tmp_path: Path) -> None:
    line = one_line(server(pki, tmp_path, "--config", str(tmp_path / "nope.json")))
    assert str(tmp_path / "nope.json") in line


def test_example_and_partial_configs_still_start(pki: Path, tmp_path: Path) -> None:
    """The shipped example, and a partial file the flags complete (credential from --pki), run."""
    partial = {"dots-agent:dots-agent": {"server": {"redirect": {"alt-server": "b.dots.test", "ttl": 600}}}}
    for name, config in (("example", EXAMPLE), ("partial", _config(tmp_path, partial))):
        work = tmp_path / name
        work.mkdir()
        for extra in ((), ("--netconf-port", "0")):
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
            ready = work / "ready.json"
            ready.unlink(missing_ok=True)
            proc = subprocess.Popen([*DOTS, "server", "--pki", str(pki), "--listen", "127.0.0.1", "--port", "0",
                                     "--db", str(work / "s.db"), "--ready-file", str(ready), "--config",
                                     str(config), *extra], stderr=subprocess.PIPE, text=True, env=env)
            try:
                from tests.servers import wait_ready

                log = work / "log"
                log.write_text("")
                try:
                    wait_ready(proc, ready, log, "server", 30)
                except RuntimeError:
                    pytest.fail(f"{name} {extra}: {proc.stderr.read() if proc.stderr else ''}")
            finally:
                proc.terminate()
                proc.wait(20)


# ---------------------------------------------------------------- row 7: portal users file
def portal(pki: Path, work: Path, users: Path) -> subprocess.CompletedProcess[str]:
    return dots("client", "--pki", str(pki), "--server", "127.0.0.1:1", "--state", str(work / "st" / "s.json"),
                "--timeout", "3", "portal", "--users", str(users))


def test_portal_users_file_missing(pki: Path, tmp_path: Path) -> None:
    line = one_line(portal(pki, tmp_path, tmp_path / "nope.json"), "dots client portal: ")
    assert str(tmp_path / "nope.json") in line
    nothing_left(tmp_path)


def test_portal_plaintext_password_refused(pki: Path, tmp_path: Path) -> None:
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"users": [{"name": "alice", "password": "hunter2", "prefixes": ["192.0.2.0/24"]}]}))
    line = one_line(portal(pki, tmp_path, users), "dots client portal: ")
    assert str(users) in line and "alice" in line and "scrypt" in line and "hunter2" not in line
    nothing_left(tmp_path, "users.json")


# ---------------------------------------------------------------- row 6: dots client agent --config
def test_client_agent_invalid_config(pki: Path, tmp_path: Path) -> None:
    f = _config(tmp_path, {"dots-agent:dots-agent": {"client": {"colour": "blue"}}})
    r = dots("client", "--pki", str(pki), "--state", str(tmp_path / "s.json"), "agent", "--listen", "127.0.0.1",
             "--netconf-port", "0", "--config", str(f), "--mgmt-dir", str(tmp_path / "mgmt"))
    line = one_line(r, "dots client agent: ")
    assert line.startswith(f"dots client agent: invalid configuration {f}: /dots-agent:dots-agent"), line
    assert "colour" in line
    nothing_left(tmp_path, "config.json")


def test_client_agent_config_not_json(pki: Path, tmp_path: Path) -> None:
    f = _config(tmp_path, "{\n  nope\n}")
    r = dots("client", "--pki", str(pki), "--state", str(tmp_path / "s.json"), "agent", "--listen", "127.0.0.1",
             "--netconf-port", "0", "--config", str(f), "--mgmt-dir", str(tmp_path / "mgmt"))
    assert f"invalid configuration {f}: line 2 column" in one_line(r, "dots client agent: ")
    nothing_left(tmp_path, "config.json")


# ---------------------------------------------------------------- row 4: front-end ports in use
@pytest.fixture(scope="module")
def dots_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from tests.servers import ServerProcess

    srv = ServerProcess(tmp_path_factory.mktemp("front"), listen=("127.0.0.1",)).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.parametrize("action", ["alerts", "portal"])
def test_frontend_port_in_use(dots_server, tmp_path: Path, busy_tcp: int, action: str) -> None:
    from agent.portal.passwords import hash_password

    users = tmp_path / "users.json"
    users.write_text(json.dumps({"users": [{"name": "a", "password": hash_password("x"), "prefixes": []}]}))
    token = tmp_path / "token"
    token.write_text("t" * 32 + "\n")
    extra = ["--users", str(users)] if action == "portal" else ["--token-file", str(token)]
    r = dots("client", "--pki", str(dots_server.pki), "--server", f"127.0.0.1:{dots_server.port_of('tls')}",
             "--state", str(tmp_path / "st" / "s.json"), action, "--listen", "127.0.0.1",
             "--port", str(busy_tcp), *extra)
    line = one_line(r, f"dots client {action}: ")
    assert f"127.0.0.1:{busy_tcp}" in line and "cannot listen" in line


async def test_a_failure_after_start_never_deletes_the_new_database(tmp_path: Path, monkeypatch) -> None:
    """What a failed start created is removed -- but not once the server served: a crash at shutdown
    must leave the (new) database with its acknowledged requests in place."""
    import asyncio
    import signal
    import sqlite3

    import aiocoap
    import cbor2
    from aiocoap import numbers as coap

    from agent import cli, cli_server
    from agent.pki import certificate_cuid
    from agent.server.app import DotsServer
    from tests.servers import raw_client

    pki_dir = tmp_path / "pki"
    init_pki(pki_dir)
    db, ready = tmp_path / "new.db", tmp_path / "ready.json"
    args = cli.build_parser().parse_args(["server", "--pki", str(pki_dir), "--listen", "127.0.0.1", "--port", "0",
                                          "--db", str(db), "--ready-file", str(ready)])
    task = asyncio.ensure_future(cli_server.serve(args))
    while not (ready.exists() and ready.stat().st_size):
        assert not task.done(), task.exception()
        await asyncio.sleep(0.05)
    port = json.loads(ready.read_text())["tls"][0][1]
    ctx = await raw_client(pki_dir)
    try:
        cuid = certificate_cuid(pki_dir / "client.crt")
        req = aiocoap.Message(code=coap.PUT, uri=f"coaps+tcp://127.0.0.1:{port}/.well-known/dots/mitigate/"
                              f"cuid={cuid}/mid=1", payload=cbor2.dumps({1: {2: [{6: ["203.0.113.0/24"], 14: 600}]}}),
                              content_format=271)
        assert (await asyncio.wait_for(ctx.request(req).response, 15)).code == coap.CREATED
    finally:
        await ctx.shutdown()
    original = DotsServer.stop

    async def crashing_stop(self: DotsServer) -> None:
        await original(self)
        raise RuntimeError("injected failure at shutdown")

    monkeypatch.setattr(DotsServer, "stop", crashing_stop)
    signal.raise_signal(signal.SIGTERM)  # the server's own handler: a normal stop
    with pytest.raises(RuntimeError, match="injected"):
        await asyncio.wait_for(task, 30)
    assert db.exists()
    with sqlite3.connect(db) as con:
        assert con.execute("select count(*) from mitigation").fetchone()[0] == 1
