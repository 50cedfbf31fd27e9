"""The client gets its request through: Happy Eyeballs, loss, redirection and fallback servers, in
network namespaces this test creates (servers run inside one, the client in the test process in the
root namespace, joined by a veth -- see ``tests/resilience_net.py``)."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.client import DotsClient, FallbackClient, FallbackServer
from agent.transports.credentials import Credentials

from .netns import skip_reason
from .resilience_net import ServerNet
from .servers import ServerProcess

SKIP = skip_reason("nft")
pytestmark = pytest.mark.skipif(SKIP is not None, reason=f"namespace tests: {SKIP}")
PORT = 4646


@pytest.fixture
def net() -> Iterator[ServerNet]:
    with ServerNet() as n:
        yield n


def start(net: ServerNet, workdir: Path, host: int, pki: Path, **kw: Any) -> ServerProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "pki").exists():
        shutil.copytree(pki, workdir / "pki")
    server = ServerProcess(workdir, prefix=net.ns.argv(), listen=[net.v4(host), net.v6(host)], port=PORT, **kw)
    return server.start()


@pytest.fixture
def pki(net: ServerNet, tmp_path: Path) -> Path:
    return net.pki(tmp_path / "pki")


def creds(pki: Path) -> Credentials:
    return Credentials.from_pki_dir(pki, "client")


@pytest.mark.req("SC-009", "SC-011", "SC-012")
async def test_udp_dropped_tls_within_one_second(net: ServerNet, pki: Path, tmp_path: Path) -> None:
    server = start(net, tmp_path / "a", 2, pki)
    net.block_udp()
    try:
        c = DotsClient(net.server(2), creds(pki), "auto", request_timeout=20)
        t0 = time.monotonic()
        await c.connect()
        elapsed = time.monotonic() - t0
        try:
            assert c.transport == "tls" and elapsed < 1.0, (elapsed, c.report())
            assert c.report()["path"].startswith("tls/v6")
            r = await c.mitigate(target_prefixes=["192.0.2.0/24"])
            assert r.code == "2.01"
            # SC-009: the outcome is cached -- a new race starts with the winner, which wins at once
            connector = c._connector
            again = await connector.connect(c._site, c._tx_config(), under_attack=True)
            try:
                assert connector.last_race[0][0] == again.candidate and "won" in connector.last_race[0][2]
                assert again.resumed  # SC-012: the TLS session was resumed
            finally:
                await again.close()
        finally:
            await c.close()
    finally:
        server.stop()


@pytest.mark.req("SC-009")
async def test_ipv6_blackholed_ipv4_wins(net: ServerNet, pki: Path, tmp_path: Path) -> None:
    server = start(net, tmp_path / "a", 2, pki)
    net.blackhole_ipv6()
    try:
        t0 = time.monotonic()
        async with DotsClient(net.server(2), creds(pki), "auto", request_timeout=20) as c:
            elapsed = time.monotonic() - t0
            assert c.report()["path"].startswith("dtls/v4") and elapsed < 1.0, (elapsed, c.report())
            r = await c.mitigate(target_prefixes=["192.0.2.0/24"])
            assert r.code == "2.01"
    finally:
        server.stop()


@pytest.mark.req("SC-013", "SC-014", "SC-117")
async def test_thirty_percent_loss_request_and_status_get_through(net: ServerNet, pki: Path, tmp_path: Path) -> None:
    server = start(net, tmp_path / "a", 2, pki)
    net.loss(30)
    try:
        async with DotsClient(net.server(2), creds(pki), "auto", request_timeout=60, connect_timeout=60) as c:
            r = await c.mitigate(target_prefixes=["192.0.2.0/24"], lifetime=600)
            assert r.code in ("2.01", "2.04")  # 2.04: an earlier repetition created it
            status = await c.status(r.mid)
            assert status[0]["mid"] == r.mid and status[0]["status"]
    finally:
        server.stop()


def redirect_config(net: ServerNet, ttl: int = 600) -> dict[str, Any]:
    return {"dots-agent:dots-agent": {"server": {"redirect": {
        "alt-server": "b.dots.test", "alt-server-record": [net.v6(3), net.v4(3)], "ttl": ttl}}}}


@pytest.mark.req("SC-134", "SC-136")
async def test_redirect_moves_session_and_requests_to_b(net: ServerNet, pki: Path, tmp_path: Path) -> None:
    b = start(net, tmp_path / "b", 3, pki)
    a = start(net, tmp_path / "a", 2, pki)
    c = DotsClient(net.server(2), creds(pki), "tls", request_timeout=30, reconnect_min_interval=0.5)
    try:
        await c.connect()
        first = await c.mitigate(target_prefixes=["192.0.2.0/24"])
        assert c.report()["server"].startswith("[fd00:97")
        a.stop()  # A comes back redirecting its clients to B
        a.config_file = tmp_path / "a" / "redirect.json"
        a.config_file.write_text(__import__("json").dumps(redirect_config(net)))
        a.start()
        # the next request is answered 5.03 + redirected-signal: it is re-sent to B (SC-136)
        second = await c.mitigate(target_prefixes=["198.51.100.0/24"])
        assert second.code == "2.01"
        assert c.report()["server"] == "b.dots.test" and c.report()["redirect"]["ttl"] == 600
        # the active request was re-sent to B, and B answers for both
        for _ in range(50):
            mids = {s["mid"] for s in await c.status()}
            if {first.mid, second.mid} <= mids:
                break
            await asyncio.sleep(0.1)
        assert {first.mid, second.mid} <= mids
        assert c.report()["address"] in (net.v6(3), net.v4(3))
    finally:
        await c.close()
        a.stop()
        b.stop()


@pytest.mark.req("SC-136", "SC-138", "SC-139")
async def test_redirect_loop_is_ignored_and_alerted(net: ServerNet, pki: Path, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    back = {"dots-agent:dots-agent": {"server": {"redirect": {
        "alt-server": "a.dots.test", "alt-server-record": [net.v4(2)], "ttl": 600}}}}
    b = start(net, tmp_path / "b", 3, pki, config=back)
    a = start(net, tmp_path / "a", 2, pki, config=redirect_config(net))
    try:
        async with DotsClient(net.server(2), creds(pki), "auto", request_timeout=20) as c:
            # A -> B at connect time; B -> A is a loop (A was used seconds ago): ignored, alerted
            assert c.report()["server"] == "b.dots.test"
            with pytest.raises(Exception) as info:
                await c.mitigate(target_prefixes=["192.0.2.0/24"])
            assert getattr(info.value, "code", None) == "5.03"
            assert info.value.details.get("redirect-loop")  # type: ignore[attr-defined]
            assert c.report()["redirect-loops"] >= 1
        assert "redirect loop" in caplog.text
    finally:
        a.stop()
        b.stop()


NFT_WRAPPER = """#!/bin/sh
# nft that fails once the flag file exists (a mitigator that cannot take the attack)
[ -e "{flag}" ] && {{ echo "nft: simulated mitigator failure" >&2; exit 1; }}
exec {nft} "$@"
"""


async def test_exceeded_capability_escalates_to_next_server(net: ServerNet, pki: Path, tmp_path: Path) -> None:
    nft = shutil.which("nft")
    assert nft is not None
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    flag = tmp_path / "broken"
    (fakebin / "nft").write_text(NFT_WRAPPER.format(flag=flag, nft=nft))
    (fakebin / "nft").chmod(0o755)
    env = {"PATH": f"{fakebin}:{__import__('os').environ['PATH']}"}
    a = start(net, tmp_path / "a", 2, pki, extra=["--mitigator", "nftables"], env=env)
    b = start(net, tmp_path / "b", 3, pki)
    flag.touch()  # A's mitigator fails from now on: A reports attack-exceeded-capability
    fb = FallbackClient([FallbackServer(net.server(2), creds(pki), name="A"),
                         FallbackServer(net.server(3), creds(pki), name="B")],
                        request_timeout=20, retry_interval=1.0)
    try:
        await fb.protect(target_prefixes=["192.0.2.0/24"], lifetime=600)
        index = await fb.wait_mitigated(timeout=30)
        state = fb.state()
        assert index == 1 and state["level"] == 1, state
        assert state["servers"][0]["status"] == "attack-exceeded-capability"
        assert state["servers"][0]["informed"] and state["servers"][1]["informed"]  # A keeps it too
        assert state["servers"][1]["status"] == "attack-mitigation-in-progress"
    finally:
        await fb.close()
        a.stop()
        b.stop()


async def test_unreachable_first_server_falls_back_and_returns(net: ServerNet, pki: Path, tmp_path: Path) -> None:
    b = start(net, tmp_path / "b", 3, pki)
    fb = FallbackClient([FallbackServer(net.server(2), creds(pki), name="A"),
                         FallbackServer(net.server(3), creds(pki), name="B")],
                        request_timeout=10, connect_timeout=1.5, retry_interval=1.0)
    a: ServerProcess | None = None
    try:
        await fb.protect(target_prefixes=["192.0.2.0/24"], lifetime=600)
        assert await fb.wait_mitigated(timeout=20) == 1
        a = start(net, tmp_path / "a", 2, pki)  # the first server comes back: it is informed too
        report = await fb.wait_informed(0, timeout=20)
        assert report.mid is not None and fb.state()["servers"][0]["failed"] is None or report.informed
    finally:
        await fb.close()
        if a is not None:
            a.stop()
        b.stop()
