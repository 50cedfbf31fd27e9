"""RFC 9132 §4.5 conformance: 'config' without 'cuid', Max-Age refresh by the client."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from aiocoap import numbers as coap

from agent.pki import certificate_cuid
from agent.server.app import DotsServer
from tests.servers import raw_client
from tests.test_conformance_mitigate import dots_client, pki, record, send, server, uri  # noqa: F401


@pytest.mark.req("SC-118")
@pytest.mark.parametrize("transport", ["tls", "dtls"])
async def test_config_requests_carry_no_cuid(server: DotsServer, pki: Path, transport: str) -> None:  # noqa: F811
    seen = record(server)
    async with dots_client(server, pki, transport) as c:
        await c.set_config(heartbeat_interval=45)
        await c.get_config()
        await c.reset_config()
    config = [m for m in seen if m.opt.uri_path[2] == "config"]
    assert {m.code for m in config} == {coap.GET, coap.PUT, coap.DELETE}
    for m in config:
        assert all(s.startswith("sid=") for s in m.opt.uri_path[3:]), m.opt.uri_path
    # and the server refuses a 'cuid' on the session configuration resource
    ctx = await raw_client(pki)
    cuid = certificate_cuid(pki / "client.crt")
    try:
        for code, path in ((coap.GET, f"config/cuid={cuid}"), (coap.GET, f"config/cuid={cuid}/sid=1"),
                           (coap.DELETE, f"config/cuid={cuid}"), (coap.PUT, f"config/cuid={cuid}/sid=1")):
            r = await send(ctx, uri(server, transport, path), code, b"\xa1\x18\x1e\xa0" if code == coap.PUT else b"")
            assert r.code == coap.BAD_REQUEST and b"cuid" in r.payload, (code, path, r.code, r.payload)
    finally:
        await ctx.shutdown()


@pytest.mark.req("SC-129", "SC-130")
async def test_client_refreshes_config_before_max_age_except_while_mitigating(
        server: DotsServer, pki: Path) -> None:  # noqa: F811
    server.settings = dataclasses.replace(server.settings, config_max_age=2)
    seen = record(server)
    async with dots_client(server, pki, "dtls", heartbeats=False) as c:
        result = await c.set_config(heartbeat_interval=45)
        sid = result.sid
        assert result.max_age == 2
        mark = len(seen)
        await asyncio.sleep(2.6)
        refresh = [m for m in seen[mark:] if m.code == coap.GET and m.opt.uri_path[2] == "config"]
        assert refresh, "no configuration refresh before Max-Age expired (SC-129)"
        assert list(refresh[0].opt.uri_path[3:]) == [f"sid={sid}"]
        # while a mitigation is active: no refresh (SC-130) ...
        generation = c.generation
        r = await c.mitigate(target_prefixes=["192.0.2.0/24"])
        await c.get_config(sid)  # a fresh Max-Age
        mark = len(seen)
        await asyncio.sleep(4.5)
        assert not [m for m in seen[mark:] if m.opt.uri_path[2] == "config"]
        # ... and the server keeps the session although Max-Age has expired (SC-130)
        assert c.generation == generation and c.connected
        assert len(server.sessions.sessions) == 1
        assert (await c.status(r.mid))[0]["status"] == "attack-mitigation-in-progress"
        assert c.generation == generation
