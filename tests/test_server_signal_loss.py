"""Signal loss: requests armed with trigger-mitigation=false start when the client's session is lost."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import cbor2
import pytest
from aiocoap import Message
from aiocoap import numbers as coap

from agent.codec import Direction, decode_cbor
from tests.servers import ServerProcess, raw_client

FAST = {"heartbeat-interval": {"min-value": 1, "max-value": 240, "current-value": 30},
        "missing-hb-allowed": {"min-value": 1, "max-value": 20, "current-value": 15}}
CONFIG = {"dots-agent:dots-agent": {"server": {"session-config": {"mitigating-config": FAST, "idle-config": FAST}}}}


async def request(ctx, uri: str, code=coap.GET, payload: bytes = b"") -> Message:
    msg = Message(code=code, uri=uri, payload=payload)
    if payload:
        msg.opt.content_format = 271
    return await asyncio.wait_for(ctx.request(msg).response, 15)


@pytest.mark.req("SC-068", "SC-069", "SC-110", "SC-117", "SC-123")
@pytest.mark.parametrize("transport", ["tls", "dtls"])
async def test_preconfigured_request_starts_on_signal_loss(tmp_path: Path, transport: str) -> None:
    server = ServerProcess(tmp_path, config=CONFIG).start()
    cuid = server.client_cuid
    ctx = await raw_client(server.pki)
    try:
        fast = {33: {36: 1}, 37: {36: 2}}
        body = cbor2.dumps({30: {32: fast, 44: fast}})
        resp = await request(ctx, server.uri(transport, "config/sid=1"), coap.PUT, body)
        assert resp.code == coap.CREATED, resp.payload
        resp = await request(ctx, server.uri(transport, "config/sid=1"))
        cfg = decode_cbor(resp.payload, Direction.RESPONSE).members()
        assert cfg["idle-config"]["heartbeat-interval"]["current-value"] == 1
        uri = server.uri(transport, f"mitigate/cuid={cuid}/mid=1")
        armed = cbor2.dumps({1: {2: [{6: ["198.51.100.0/24"], 14: 600, 45: False}]}})
        assert (await request(ctx, uri, coap.PUT, armed)).code == coap.CREATED
        scope = decode_cbor((await request(ctx, uri)).payload, Direction.RESPONSE).members()["scope"][0]
        assert scope["status"] == "attack-mitigation-signal-loss"  # armed, not enforced
        await ctx.shutdown()  # the client vanishes: its association is gone, heartbeats go unanswered
        ctx = None
        deadline = time.time() + 20
        status = None
        while time.time() < deadline:
            await asyncio.sleep(1.0)
            if "signal lost: activated" in server.log.read_text():
                break
        ctx = await raw_client(server.pki)
        scope = decode_cbor((await request(ctx, uri)).payload, Direction.RESPONSE).members()["scope"][0]
        status = scope["status"]
        assert status == "attack-mitigation-in-progress", server.log.read_text()[-2000:]
    finally:
        if ctx is not None:
            await ctx.shutdown()
        server.stop()
