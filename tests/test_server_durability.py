"""Durable state: every acknowledged request survives kill -9, and its rules are enforced again.

The nftables part runs the real ``dots server`` with the nftables mitigator acting inside a
network namespace the test creates; packets from a peer namespace prove what is dropped.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import cbor2
import pytest
from aiocoap import Message
from aiocoap import numbers as coap

from agent.codec import Direction, decode_cbor
from tests.netns import Link, Topology, skip_reason
from tests.servers import ServerProcess, raw_client

CF = 271


async def request(ctx, uri: str, code=coap.GET, payload: bytes = b"") -> Message:
    msg = Message(code=code, uri=uri, payload=payload)
    if payload:
        msg.opt.content_format = CF
    return await asyncio.wait_for(ctx.request(msg).response, 15)


def scope_body(prefix: str, lifetime: int = 3600, port: int | None = None, proto: int | None = None) -> bytes:
    scope: dict = {6: [prefix], 14: lifetime}
    if port is not None:
        scope[7] = [{8: port}]
    if proto is not None:
        scope[10] = [proto]
    return cbor2.dumps({1: {2: [scope]}})


def statuses(payload: bytes) -> dict[int, dict]:
    return {s["mid"]: s for s in decode_cbor(payload, Direction.RESPONSE).members()["scope"]}


@pytest.mark.req("SC-044", "SC-103", "SC-108", "SC-109")
async def test_kill_9_keeps_every_acknowledged_request(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path).start()
    cuid = server.client_cuid
    ctx = await raw_client(server.pki)
    try:
        acked = []
        for i in range(25):
            uri = server.uri("tls" if i % 2 else "dtls", f"mitigate/cuid={cuid}/mid={i + 1}")
            resp = await request(ctx, uri, coap.PUT, scope_body(f"198.51.100.{i}/32", lifetime=600 + i))
            assert resp.code == coap.CREATED
            acked.append(i + 1)
        resp = await request(ctx, server.uri("tls", f"mitigate/cuid={cuid}/mid=1"), coap.DELETE)
        assert resp.code == coap.DELETED
        server.kill()  # SIGKILL: no shutdown path runs
        await ctx.shutdown()
        time.sleep(1.0)
        server.start()
        ctx = await raw_client(server.pki)
        got = statuses((await request(ctx, server.uri("tls", f"mitigate/cuid={cuid}"))).payload)
        assert sorted(got) == acked
        assert got[1]["status"] == "dots-client-withdrawn-mitigation"  # still active-but-terminating
        for mid in acked[1:]:
            assert got[mid]["status"] == "attack-mitigation-in-progress"
            assert got[mid]["target-prefix"] == [f"198.51.100.{mid - 1}/32"]
            assert 0 < got[mid]["lifetime"] <= 600 + mid - 1  # remaining, not reset (SC-044)
    finally:
        await ctx.shutdown()
        server.stop()


NETNS_SKIP = skip_reason("nft")


@pytest.mark.netns
@pytest.mark.skipif(NETNS_SKIP is not None, reason=NETNS_SKIP or "")
@pytest.mark.req("SC-037", "SC-103", "SC-108")
async def test_nftables_drops_real_packets_and_survives_restart(tmp_path: Path) -> None:
    config = {"dots-agent:dots-agent": {"server": {"active-but-terminating": {"initial-period": 2}}}}
    with Topology(["attacker", "target"], [Link("attacker", "target", ["10.99.0.1/24"], ["10.99.0.2/24"])]) as topo:
        att, tgt = topo["attacker"], topo["target"]

        def traffic() -> dict[int, tuple[int, int]]:
            with tgt.udp_receiver([5000, 5001]) as rx:
                att.udp_send("10.99.0.2", 5000, 40)
                att.udp_send("10.99.0.2", 5001, 40)
                time.sleep(0.3)
                return rx.stop()

        assert traffic() == {5000: (40, 40 * 64), 5001: (40, 40 * 64)}
        server = ServerProcess(tmp_path, config=config,
                               extra=["--mitigator", "nftables", "--netns", tgt.name, "--counter-interval", "0.5"])
        server.start()
        cuid = server.client_cuid
        ctx = await raw_client(server.pki)
        uri = server.uri("tls", f"mitigate/cuid={cuid}/mid=1")
        try:
            resp = await request(ctx, uri, coap.PUT, scope_body("10.99.0.2/32", port=5000, proto=17))
            assert resp.code == coap.CREATED, resp.payload
            got = traffic()
            assert got[5000][0] == 0 and got[5001][0] == 40
            await asyncio.sleep(1.5)
            st = statuses((await request(ctx, uri)).payload)[1]
            assert st["pkts-dropped"] == "40" and int(st["bytes-dropped"]) >= 40 * 64
            assert st["status"] == "attack-mitigation-in-progress"

            server.kill()
            await ctx.shutdown()
            server.start()
            ctx = await raw_client(server.pki)
            assert statuses((await request(ctx, uri)).payload)[1]["status"] == "attack-mitigation-in-progress"
            got = traffic()
            assert got[5000][0] == 0 and got[5001][0] == 40

            assert (await request(ctx, uri, coap.DELETE)).code == coap.DELETED
            assert traffic()[5000][0] == 0  # active-but-terminating: still mitigating (SC-103)
            await asyncio.sleep(3.0)
            assert (await request(ctx, uri)).code == coap.NOT_FOUND  # terminated and gone (SC-108)
            assert traffic() == {5000: (40, 40 * 64), 5001: (40, 40 * 64)}
            tables = tgt.run("nft", "list", "table", "inet", "dots_agent").stdout
            assert "10.99.0.2" not in tables
        finally:
            await ctx.shutdown()
            server.stop()
