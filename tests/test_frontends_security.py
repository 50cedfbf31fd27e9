"""The HTTP front-ends (alert endpoint, portal) against a hostile local user, over real loopback.

Findings of issue 10: the alert endpoint ran without a token; the portal served plain HTTP
silently, had no login rate limit, hashed on the event loop and answered unknown users faster;
malformed requests (bad Content-Length, deep JSON, huge lifetimes) crashed a connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.alerts import AlertBridge, AlertServer
from agent.client import DotsClient
from agent.portal import Portal, hash_password, load_users
from tests.frontend_helpers import TOKEN, PortalSession, dots_client, exchange, portal_tls, post_json, request
from tests.servers import DOTS, ServerProcess

PASSWORD = "correct horse battery staple"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    sp = ServerProcess(tmp_path_factory.mktemp("frontends-server")).start()
    try:
        yield sp
    finally:
        sp.stop()


@pytest.fixture(scope="module")
def alice_hash() -> str:
    return hash_password(PASSWORD)


@pytest.fixture
async def client(server: ServerProcess, tmp_path: Path) -> AsyncIterator[DotsClient]:
    c = dots_client(server, tmp_path / "client-state.json")
    async with c:
        yield c
        for scope in await c.status():
            await c.withdraw(int(scope["mid"]))


@pytest.fixture
async def alerts(client: DotsClient, tmp_path: Path) -> AsyncIterator[AlertServer]:
    async with AlertServer(AlertBridge(client, tmp_path / "alerts.json"), token=TOKEN) as ep:
        yield ep


def make_portal(client: DotsClient, server: ServerProcess, tmp_path: Path, alice_hash: str,
                **kw: Any) -> Portal:
    users = load_users({"users": [{"name": "alice", "password": alice_hash, "prefixes": ["198.51.100.0/24"]}]})
    return Portal(client, users, tmp_path / "portal", ssl_context=portal_tls(server), **kw)


@pytest.fixture
async def portal(client: DotsClient, server: ServerProcess, tmp_path: Path, alice_hash: str
                 ) -> AsyncIterator[Portal]:
    async with make_portal(client, server, tmp_path, alice_hash) as p:
        yield p


def login(user: str, password: str) -> bytes:
    return request("POST", "/login", f"username={user}&password={password}".encode(), FORM)


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "DOTS_ALERT_TOKEN"}
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def client_pki_without_server_cert(server: ServerProcess, where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    for name in ("ca.crt", "client.crt", "client.key"):
        shutil.copy(server.pki / name, where / name)
    return where


# -- finding 1: the alert endpoint needs a token ---------------------------------------------
async def test_alert_endpoint_refuses_to_start_without_token(client: DotsClient, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="token"):
        AlertServer(AlertBridge(client, tmp_path / "a.json"))
    with pytest.raises(ValueError, match="token"):
        AlertServer(AlertBridge(client, tmp_path / "a.json"), token="")


async def test_alert_endpoint_wrong_token_gets_401_with_reason(alerts: AlertServer) -> None:
    body = {"id": "x", "target-prefix": ["198.51.100.7"]}
    for token in (None, "wrong", TOKEN + "x"):
        status, answer = await post_json(alerts.port, "/alert", body, token=token)
        assert status == 401 and "token" in answer["error"]
    assert alerts.bridge.mids == {}


def test_cli_alerts_without_token_exits_2(server: ServerProcess, tmp_path: Path) -> None:
    argv = [*DOTS, "client", "--pki", str(server.pki), "--server", f"127.0.0.1:{server.port_of('tls')}",
            "--transport", "tls", "--state", str(tmp_path / "c.json"), "alerts", "--port", "0", "--plain-http"]
    done = subprocess.run(argv, capture_output=True, timeout=20, env=env(), check=False)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "--token-file" in lines[0] and "DOTS_ALERT_TOKEN" in lines[0]
    (tmp_path / "empty").write_text("\n")
    done = subprocess.run([*argv, "--token-file", str(tmp_path / "empty")], capture_output=True, timeout=20,
                          env=env(), check=False)
    assert done.returncode == 2 and len(done.stderr.decode().strip().splitlines()) == 1, done.stderr
    assert "empty" in done.stderr.decode()


def _start_until(argv: list[str], marker: str, environ: dict[str, str]) -> tuple[subprocess.Popen[bytes], list[str]]:
    """Start *argv* and read its stderr until a line contains *marker* (or it exits)."""
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=environ)
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline().decode()
        if not line:
            break
        lines.append(line.rstrip())
        if marker in line:
            return proc, lines
    proc.kill()
    proc.wait()
    raise AssertionError("\n".join(lines))


async def test_cli_alerts_token_from_environment(server: ServerProcess, tmp_path: Path) -> None:
    argv = [*DOTS, "client", "--pki", str(server.pki), "--server", f"127.0.0.1:{server.port_of('tls')}",
            "--transport", "tls", "--state", str(tmp_path / "c.json"), "alerts", "--port", "0", "--plain-http"]
    proc, lines = await asyncio.to_thread(_start_until, argv, "alert endpoint on", {**env(), "DOTS_ALERT_TOKEN": TOKEN})
    try:
        assert any("WARNING" in ln and "plain HTTP" in ln for ln in lines), lines
        port = int(lines[-1].rsplit(":", 1)[1].split()[0])
        body = {"id": "x", "status": "resolved"}
        assert (await post_json(port, "/alert", body, token=None))[0] == 401
        status, answer = await post_json(port, "/alert", body)
        assert status == 200 and answer["results"][0]["action"] == "ignored"
    finally:
        proc.terminate()
        proc.wait(20)


# -- finding 3: portal transport, login throttling, hashing off the loop, equal cost -----------
def test_cli_portal_refuses_plain_http_without_certificate(server: ServerProcess, tmp_path: Path) -> None:
    pki = client_pki_without_server_cert(server, tmp_path / "pki")
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"users": []}))
    argv = [*DOTS, "client", "--pki", str(pki), "--server", f"127.0.0.1:{server.port_of('tls')}", "--transport",
            "tls", "--state", str(tmp_path / "c.json"), "portal", "--users", str(users), "--port", "0"]
    done = subprocess.run(argv, capture_output=True, timeout=20, env=env(), check=False)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and str(pki / "server.crt") in lines[0] and "--plain-http" in lines[0], lines


async def test_cli_portal_plain_http_warns(server: ServerProcess, tmp_path: Path) -> None:
    pki = client_pki_without_server_cert(server, tmp_path / "pki")
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"users": []}))
    argv = [*DOTS, "client", "--pki", str(pki), "--server", f"127.0.0.1:{server.port_of('tls')}", "--transport",
            "tls", "--state", str(tmp_path / "c.json"), "portal", "--users", str(users), "--port", "0",
            "--plain-http"]
    proc, lines = await asyncio.to_thread(_start_until, argv, "portal on", env())
    try:
        assert any("WARNING" in ln and "plain HTTP" in ln for ln in lines), lines
    finally:
        proc.terminate()
        proc.wait(20)


def test_portal_class_refuses_plain_http_unless_asked(client: DotsClient, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="plain"):
        Portal(client, {}, tmp_path / "p")
    Portal(client, {}, tmp_path / "p", plain_http=True)


async def test_login_failures_lock_out_user_and_address(portal: Portal) -> None:
    for _ in range(5):
        assert (await exchange(portal.port, login("alice", "nope"), tls=True))[0] == 401
    status, h, body = await exchange(portal.port, login("alice", PASSWORD.replace(" ", "+")), tls=True)
    assert status == 429 and int(h["retry-after"]) >= 1 and b"Too many" in body
    # the address: many user names, one source
    statuses = [(await exchange(portal.port, login(f"u{i}", "x"), tls=True))[0] for i in range(25)]
    assert statuses.count(429) >= 1 and set(statuses) <= {401, 429}


async def test_unknown_user_costs_one_hash_like_a_known_one(portal: Portal, monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    calls: list[int] = []
    real = hashlib.scrypt

    def counting(*a: Any, **kw: Any) -> bytes:
        calls.append(kw.get("n", 0))
        return real(*a, **kw)

    monkeypatch.setattr(hashlib, "scrypt", counting)
    assert (await exchange(portal.port, login("alice", "wrong"), tls=True))[0] == 401
    known = list(calls)
    calls.clear()
    assert (await exchange(portal.port, login("mallory", "wrong"), tls=True))[0] == 401
    assert len(known) == 1 and calls == known  # the same work, the same scrypt parameters


async def test_login_burst_keeps_portal_and_dots_session_responsive(portal: Portal, capsys: Any) -> None:
    """200 logins at once, half for a real user (GET /login took 8.4 s): the page and DOTS session still answer."""
    async def timed(coro: Any) -> tuple[float, Any]:
        t0 = time.monotonic()
        result = await coro
        return time.monotonic() - t0, result

    started = threading.Event()

    def burst() -> list[int]:
        """The 200 logins from another thread (its own loop): the test's loop is the portal's."""
        async def go() -> list[int]:
            tasks = [asyncio.create_task(exchange(portal.port, login("alice" if i % 2 else f"user{i % 7}",
                                                                     f"guess{i}"), tls=True, timeout=120))
                     for i in range(200)]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)  # the portal is in the burst
            started.set()
            return [(await t)[0] for t in tasks]
        return asyncio.run(go())

    logins = asyncio.create_task(asyncio.to_thread(burst))
    assert await asyncio.to_thread(started.wait, 30)
    (page, (status, _, _)), (dots, _) = await asyncio.gather(
        timed(exchange(portal.port, request("GET", "/login"), tls=True, timeout=120)),
        timed(portal.client.status()))
    answers = await logins
    with capsys.disabled():
        print(f"\nlogin burst: GET /login {page * 1000:.0f} ms, DOTS GET {dots * 1000:.0f} ms, "
              f"answers {sorted(set(answers))}")
    assert status == 200
    assert page < 2.0 and dots < 2.0, (page, dots)
    assert set(answers) <= {401, 429, 503}


async def test_hashing_runs_off_the_loop_and_saturation_gives_503(client: DotsClient, server: ServerProcess,
                                                                 tmp_path: Path, alice_hash: str) -> None:
    from agent.portal.hashing import HashPool
    from agent.portal.throttle import LoginLimits

    gate = threading.Event()
    entered = threading.Semaphore(0)

    def slow_verify(password: str, stored: str) -> bool:
        entered.release()
        gate.wait(30)
        return False

    pool = HashPool(workers=1, max_pending=1, verify=slow_verify)
    limits = LoginLimits(user_failures=100, address_failures=100)
    async with make_portal(client, server, tmp_path, alice_hash, hash_pool=pool, login_limits=limits) as p:
        try:
            first = [asyncio.create_task(exchange(p.port, login("alice", "x"), tls=True))]
            assert await asyncio.to_thread(entered.acquire, True, 20)  # the hash is running, blocked
            status, h, _ = await exchange(p.port, login("alice", "third"), tls=True)
            assert status == 503 and h.get("retry-after")
            assert (await exchange(p.port, request("GET", "/login"), tls=True))[0] == 200
            assert not any(t.done() for t in first)  # the page answered while the hashes were pending
        finally:
            gate.set()
        assert [(await t)[0] for t in first] == [401]


# -- finding 4: malformed requests get a 4xx, the process keeps serving ------------------------
async def check_still_serving_alerts(ep: AlertServer) -> None:
    status, answer = await post_json(ep.port, "/alert", {"id": "nothing", "status": "resolved"})
    assert status == 200, answer


@pytest.mark.parametrize(("raw", "want"), [
    (b"POST /alert HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
    (b"POST /alert HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 400),
    (b"POST /alert HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", 413),
    (b"POST /alert HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400),
    (b"POST /alert HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
    (b"POST /alert HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
    (b"POST /alert HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n", 431),
    (b"NONSENSE\r\n\r\n", 400),
    (b"POST /alert HTTP/1.1\r\nbroken header line\r\n\r\n", 400),
])
async def test_alert_endpoint_malformed_framing(alerts: AlertServer, raw: bytes, want: int) -> None:
    status, _, body = await exchange(alerts.port, raw)
    assert status == want, body
    assert len(json.loads(body)["error"].splitlines()) == 1
    await check_still_serving_alerts(alerts)


@pytest.mark.parametrize(("body", "want", "words"), [
    (b"[" * 30000 + b"]" * 30000, 400, "nested"),
    (b"[" * 100000 + b"]" * 100000, 413, "large"),
    (json.dumps({"id": "x", "target-prefix": ["198.51.100.7"], "lifetime": 10**19}).encode(), 400, "lifetime"),
    (json.dumps({"id": "x", "target-prefix": ["198.51.100.7"], "lifetime": 0}).encode(), 400, "lifetime"),
    (json.dumps({"id": "x", "target-prefix": ["198.51.100.7"], "lifetime": 1.5}).encode(), 400, "lifetime"),
    (json.dumps({"id": "x", "target-prefix": ["198.51.100.7"], "target-port": 1e999}).encode(), 400, "port"),
    (b'{"version": "4", "alerts": [1, "x"]}', 400, "object"),
    (b'{"version": "4", "alerts": [{"labels": ["x"]}]}', 400, "labels"),
    (b"\xff\xfe", 400, "JSON"),
])
async def test_alert_endpoint_malformed_bodies(alerts: AlertServer, body: bytes, want: int, words: str) -> None:
    path = "/alertmanager" if b"version" in body else "/alert"
    status, answer = await post_json(alerts.port, path, body)
    assert status == want, answer
    assert words.lower() in answer["error"].lower() and len(answer["error"].splitlines()) == 1
    assert alerts.bridge.mids == {}
    await check_still_serving_alerts(alerts)


async def test_alert_endpoint_limits_and_counters(client: DotsClient, tmp_path: Path) -> None:
    from agent.http_front import HttpLimits

    limits = HttpLimits(max_body=1024, max_header=512, read_timeout=1.0, max_connections=2)
    async with AlertServer(AlertBridge(client, tmp_path / "a.json"), token=TOKEN, limits=limits) as ep:
        assert (await post_json(ep.port, "/alert", b"[" + b" " * 2000 + b"]"))[0] == 413
        # slowloris: half a request line, then silence -> closed (408) after the read timeout
        reader, writer = await asyncio.open_connection("127.0.0.1", ep.port)
        writer.write(b"POST /alert HTTP/1.1\r\nHost")
        answer = await asyncio.wait_for(reader.read(), 10)
        assert answer.startswith(b"HTTP/1.1 408")
        writer.close()
        # connection cap: two idle connections held open, the third is refused at once
        held = [await asyncio.open_connection("127.0.0.1", ep.port) for _ in range(2)]
        status, _, _ = await exchange(ep.port, b"POST /alert HTTP/1.1\r\n\r\n")
        assert status == 503
        for _, w in held:
            w.close()
        assert ep.refusals.counts[413] == 1 and ep.refusals.counts[408] == 1 and ep.refusals.counts[503] >= 1


async def test_portal_malformed_requests(portal: Portal) -> None:
    s = await PortalSession.login(portal.port, "alice", PASSWORD, portal.sessions)
    assert (await exchange(portal.port, b"POST /login HTTP/1.1\r\nContent-Length: abc\r\n\r\n", tls=True))[0] == 400
    assert (await exchange(portal.port, b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", tls=True))[0] == 431
    hdr = {"Cookie": s.cookie, "X-CSRF-Token": s.csrf}
    for body, want in ((b"[" * 30000 + b"]" * 30000, 400), (b"[" * 100000, 413), (b"[1]", 400),
                       (json.dumps({"target-prefix": ["198.51.100.7"], "lifetime": 10**19}).encode(), 400),
                       (json.dumps({"target-prefix": ["198.51.100.7"], "lifetime": "abc"}).encode(), 400)):
        status, _, data = await exchange(portal.port, request("POST", "/api/mitigations", body, hdr), tls=True)
        assert status == want, data
        assert len(json.loads(data)["error"].splitlines()) == 1
    assert (await s.call("GET", "/api/mitigations")) == (200, {"mitigations": []})
    assert portal.refusals.counts[400] >= 1
