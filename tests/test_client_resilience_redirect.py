"""Redirection TTL, Happy Eyeballs ordering and path probing, against in-process servers on loopback
(127.0.0.1 and 127.0.0.2 share one port, as two DOTS servers on port 4646 would)."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from aiocoap import numbers as coap

from agent.client import Candidate, Connector, DotsClient, Redirection, RedirectMemory
from agent.codec import MessageType
from agent.codec.messages import encode_members
from agent.numbers import rfc9132
from agent.pki import init_pki
from agent.server.app import DotsServer, ServerOptions
from agent.transports.credentials import Credentials


def redirect_tree(ttl: int) -> dict[str, Any]:
    return {"dots-agent:dots-agent": {"server": {"redirect": {
        "alt-server": "b.dots.test", "alt-server-record": ["127.0.0.2"], "ttl": ttl}}}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    init_pki(d, server_sans=("localhost", "127.0.0.1", "127.0.0.2", "b.dots.test"))
    return d


async def start(pki: Path, tmp_path: Path, host: str, port: int, name: str,
                config: dict[str, Any] | None = None) -> DotsServer:
    server = DotsServer(ServerOptions(credentials=Credentials.from_pki_dir(pki, "server"), listen=[host],
                                      port=port, db=tmp_path / f"{name}.db", config=config))
    await server.start()
    return server


@pytest.mark.req("SC-134", "SC-136")
async def test_redirect_ttl_expiry_returns_to_provisioned_server(pki: Path, tmp_path: Path) -> None:
    port = free_port()
    b = await start(pki, tmp_path, "127.0.0.2", port, "b")
    a = await start(pki, tmp_path, "127.0.0.1", port, "a", redirect_tree(ttl=2))
    c = DotsClient(("127.0.0.1", port), Credentials.from_pki_dir(pki, "client"), "dtls", request_timeout=10)
    try:
        await c.connect()
        assert c.report()["server"] == "b.dots.test" and c.report()["address"] == "127.0.0.2"
        r = await c.mitigate(target_prefixes=["192.0.2.0/24"])
        a.apply_config(None)  # A stops redirecting
        await asyncio.sleep(2.5)
        assert c.report()["server"] == "b.dots.test"  # the TTL expired during an attack: stay (§4.6)
        await c.withdraw(r.mid)
        await wait_for(lambda: c.redirection is None and c.connected)  # SC-134: back to A
        assert c.report()["address"] == "127.0.0.1"
        assert (await c.mitigate(target_prefixes=["192.0.2.0/24"])).code == "2.01"
    finally:
        await c.close()
        await a.stop()
        await b.stop()


async def test_redirect_in_response_to_a_request(pki: Path, tmp_path: Path) -> None:
    port = free_port()
    b = await start(pki, tmp_path, "127.0.0.2", port, "b")
    a = await start(pki, tmp_path, "127.0.0.1", port, "a")
    c = DotsClient(("127.0.0.1", port), Credentials.from_pki_dir(pki, "client"), "dtls", request_timeout=10)
    try:
        await c.connect()
        first = await c.mitigate(target_prefixes=["192.0.2.0/24"])
        a.apply_config(redirect_tree(ttl=2**32 - 1))
        second = await c.mitigate(target_prefixes=["198.51.100.0/24"])  # 5.03 from A, 2.01 from B
        assert second.code == "2.01" and c.report()["redirect"]["ttl"] is None  # infinite
        await wait_for(lambda: b.service.get(c.cuid, first.mid) is not None)  # active requests follow
    finally:
        await c.close()
        await a.stop()
        await b.stop()


def test_redirection_parsing_and_loop_memory() -> None:
    body = encode_members(MessageType.REDIRECTED_SIGNAL, {"alt-server": "alt.example",
                                                          "alt-server-record": ["2001:db8:6401::1"]})
    msg = aiocoap.Message(code=coap.SERVICE_UNAVAILABLE, payload=body,
                          content_format=rfc9132.CONTENT_FORMAT_DOTS_CBOR)
    msg.opt.max_age = 0
    red = Redirection.from_response(msg, now=100.0)
    assert red is not None and red.records == ("2001:db8:6401::1",) and red.ttl == 0 and red.expired(100.0)
    msg.opt.max_age = 2**32 - 1
    assert Redirection.from_response(msg, now=0.0).expires_at == float("inf")  # type: ignore[union-attr]
    assert Redirection.from_response(aiocoap.Message(code=coap.SERVICE_UNAVAILABLE, payload=b"busy")) is None
    mem = RedirectMemory()
    mem.used(["2001:db8:6401::1"], now=0.0)
    assert mem.loop(red, now=299.0) == "2001:db8:6401::1"  # SC-138: within 5 minutes
    assert mem.loop(red, now=301.0) is None


@pytest.mark.req("SC-009")
def test_happy_eyeballs_order_and_cache(pki: Path) -> None:
    conn = Connector("192.0.2.1", 4646, Credentials.from_pki_dir(pki, "client"), "auto",
                     endpoints=[("192.0.2.1", 4646), ("2001:db8::1", 4646)])
    cands = [Candidate(t, a, 4646) for t in ("dtls", "tls") for a in ("2001:db8::1", "192.0.2.1")]
    assert [c.rank for c in cands] == [0, 1, 2, 3]  # §4.3: UDP/v6, UDP/v4, TCP/v6, TCP/v4
    assert conn.order(cands, now=0.0) == cands
    conn._record(cands[0], False, 1.0)
    conn._record(cands[1], False, 1.0)
    conn.preferred, conn.preferred_at = cands[3], time.monotonic()
    assert conn.order(cands) == [cands[3], cands[2], cands[0], cands[1]]  # winner first, failures last
    assert conn.order(cands, now=time.monotonic() + 601) == cands  # the cache is flushed after 10 min


@pytest.mark.req("SC-010")
async def test_idle_probe_migrates_to_dtls(pki: Path, tmp_path: Path) -> None:
    port = free_port()
    a = await start(pki, tmp_path, "127.0.0.1", port, "a")
    creds = Credentials.from_pki_dir(pki, "client")
    # the first race sees DTLS fail (no answer in time), so TLS wins; a later idle probe finds DTLS
    c = DotsClient(("127.0.0.1", port), creds, "auto", request_timeout=10, probe_interval=1.0)
    try:
        real = c._connector._attempt

        async def no_dtls(cand: Candidate, *args: Any) -> Any:
            if cand.transport == "dtls" and c.generation == 0:
                raise __import__("agent.client", fromlist=["x"]).DotsConnectionError("blocked")
            return await real(cand, *args)

        c._connector._attempt = no_dtls  # type: ignore[method-assign]
        await c.connect()
        assert c.transport == "tls" and c.report()["next-probe-in"] is not None
        await wait_for(lambda: c.transport == "dtls", timeout=10)
        assert c.report()["next-probe-in"] is None  # the best path: no more probing
        assert (await c.mitigate(target_prefixes=["192.0.2.0/24"])).code == "2.01"
    finally:
        await c.close()
        await a.stop()


@pytest.mark.req("SC-012", "SC-143")
@pytest.mark.parametrize("transport", ["dtls", "tls"])
async def test_reconnection_resumes_the_session(pki: Path, tmp_path: Path, transport: str) -> None:
    port = free_port()
    a = await start(pki, tmp_path, "127.0.0.1", port, "a")
    c = DotsClient(("127.0.0.1", port), Credentials.from_pki_dir(pki, "client"), transport, request_timeout=10)
    try:
        await c.connect()
        await c.mitigate(target_prefixes=["192.0.2.0/24"])  # TLS 1.3: the ticket arrives after the handshake
        again = await c._connector.connect(c._site, c._tx_config())
        try:
            assert again.resumed is True
        finally:
            await again.close()
    finally:
        await c.close()
        await a.stop()
