"""Limits of the management listeners: NETCONF over real SSH (ncclient), RESTCONF over real TLS.

Issue 10, deliverable 5: idle TCP connections must not lock the administrator out.  The idle
sockets come from another loopback address (127.0.0.2) than the administrator (127.0.0.1), as
an attacker's would from another host.
"""

from __future__ import annotations

import copy
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from tests.test_mgmt_harness import NS, Harness, server_example

IDLE = 100
LOGIN_BOUND = 10.0  # seconds; a login on loopback takes well under one


def _config(**netconf: Any) -> dict:
    tree = copy.deepcopy(server_example())
    tree["dots-agent:dots-agent"]["management"]["netconf"].update(netconf)
    return tree


@pytest.fixture
def harness(tmp_path: Path):
    h = Harness(tmp_path, initial=_config(**{"handshake-timeout": 3}))
    yield h
    h.close()


def _idle_sockets(port: int, count: int, source: str) -> list[socket.socket]:
    out = []
    for _ in range(count):
        s = socket.socket()
        s.bind((source, 0))
        s.settimeout(20)
        s.connect(("127.0.0.1", port))
        out.append(s)
    return out


def _login(harness: Harness, result: dict[str, Any]) -> None:
    try:
        started = time.monotonic()
        with harness.connect(timeout=30) as m:
            result["caps"] = list(m.server_capabilities)
            result["reply"] = m.get(filter=("subtree", f'<dots-agent xmlns="{NS}"><management/></dots-agent>')).xml
        result["seconds"] = time.monotonic() - started
    except Exception as exc:  # reported by the test
        result["error"] = exc


def _until(predicate: Any, timeout: float = 5.0) -> bool:
    """Bounded wait for a condition the server reaches just after the client saw EOF."""
    end = time.monotonic() + timeout
    while not predicate() and time.monotonic() < end:
        time.sleep(0.02)
    return bool(predicate())


def _eof(s: socket.socket) -> bytes:
    """Read until the server closes; returns what it sent (its SSH banner, or nothing)."""
    got = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            return got
        got += chunk


def test_idle_connections_do_not_delay_login(harness: Harness):
    idle = _idle_sockets(harness.port, IDLE, "127.0.0.2")
    try:
        result: dict[str, Any] = {}
        worker = threading.Thread(target=_login, args=(harness, result), daemon=True)
        worker.start()
        worker.join(LOGIN_BOUND)
        assert not worker.is_alive(), f"login still pending after {LOGIN_BOUND} s with {IDLE} idle sockets"
        assert "error" not in result, result.get("error")
        print(f"login with {IDLE} idle sockets open: {result['seconds']:.3f} s")
        assert any(c.startswith(NS) for c in result["caps"])
        # counters: the idle sockets beyond the per-address cap were refused at once
        stats = etree.fromstring(result["reply"].encode()).find(f".//{{{NS}}}statistics")
        assert stats is not None
        assert int(stats.findtext(f"{{{NS}}}sessions-refused")) >= IDLE - 8
        assert int(stats.findtext(f"{{{NS}}}netconf-sessions")) >= 1
    finally:
        for s in idle:
            s.close()


def test_idle_connections_are_closed_after_handshake_timeout(harness: Harness):
    idle = _idle_sockets(harness.port, 3, "127.0.0.3")
    try:
        started = time.monotonic()
        banners = [_eof(s) for s in idle]
        elapsed = time.monotonic() - started
        assert all(b.startswith(b"SSH-2.0-") for b in banners)
        assert 2.0 <= elapsed < 9.0, elapsed
    finally:
        for s in idle:
            s.close()
    with harness.connect() as m:
        reply = m.get(filter=("subtree", f'<dots-agent xmlns="{NS}"><management/></dots-agent>')).xml
    stats = etree.fromstring(reply.encode()).find(f".//{{{NS}}}statistics")
    assert int(stats.findtext(f"{{{NS}}}handshakes-timed-out")) >= 3


def test_over_per_address_cap_is_closed_at_once(tmp_path: Path):
    h = Harness(tmp_path, initial=_config(**{"max-sessions-per-address": 2, "handshake-timeout": 30}))
    try:
        idle = _idle_sockets(h.port, 4, "127.0.0.4")
        try:
            started = time.monotonic()
            assert _eof(idle[2]) == b"" and _eof(idle[3]) == b""  # closed before any SSH banner
            assert time.monotonic() - started < 5
            # the administrator, from another address, still gets in
            with h.connect() as m:
                assert m.connected
        finally:
            for s in idle:
                s.close()
    finally:
        h.close()


# ----------------------------------------------------------------------------- RESTCONF


@pytest.fixture
def rc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import mgmt.limits
    from agent.pki import init_pki
    from mgmt.restconf_server import RestconfSettings

    monkeypatch.setattr(mgmt.limits, "READ_TIMEOUT", 3.0)
    pki = init_pki(tmp_path / "pki")
    tree = _config()
    tree["dots-agent:dots-agent"]["management"]["restconf"].update(
        {"handshake-timeout": 2, "max-sessions-per-address": 2})
    h = Harness(tmp_path, initial=tree)
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_cert))
    sctx.load_cert_chain(pki.server_cert, pki.server_key)
    sctx.verify_mode = ssl.CERT_REQUIRED
    server = h.run(lambda: h.mgmt.start_restconf(RestconfSettings(ssl_context=sctx, port=0)))
    cctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    cctx.load_cert_chain(pki.client_cert, pki.client_key)
    yield h, server.port, cctx
    h.close()


def _restconf_get(port: int, ctx: ssl.SSLContext) -> int:
    import urllib.request

    req = urllib.request.Request(f"https://localhost:{port}/restconf/yang-library-version",
                                 headers={"Accept": "application/yang-data+json"})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        return resp.status


def test_restconf_idle_connections_capped_and_timed_out(rc):
    from mgmt.limits import stats_for

    h, port, cctx = rc
    idle = _idle_sockets(port, 3, "127.0.0.5")
    try:
        started = time.monotonic()
        assert _eof(idle[2]) == b""  # over max-sessions-per-address: closed at once
        assert time.monotonic() - started < 1.5
        assert _restconf_get(port, cctx) == 200  # another address is served meanwhile
        assert [_eof(s) for s in idle[:2]] == [b"", b""]  # no TLS handshake within 2 s: closed
        assert 1.5 <= time.monotonic() - started < 8
    finally:
        for s in idle:
            s.close()
    stats = stats_for(h.mgmt)
    assert _until(lambda: stats.handshakes_timed_out >= 2 and stats.restconf.count == 0)
    assert stats.sessions_refused >= 1


def test_restconf_silent_client_after_handshake_is_dropped(rc):
    h, port, cctx = rc
    raw = socket.create_connection(("127.0.0.1", port))
    with cctx.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.settimeout(30)
        tls.sendall(b"GET /restconf/yang-library-version HTTP/1.1\r\nHost: x\r\n")  # never finished
        started = time.monotonic()
        assert tls.recv(4096) == b""
        assert 2.0 <= time.monotonic() - started < 15  # READ_TIMEOUT (3 s here) plus slack
