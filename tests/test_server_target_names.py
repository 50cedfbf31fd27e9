"""target-fqdn and target-uri are resolved and checked like target-prefix (RFC 9132 SC-038, SC-039)."""

from __future__ import annotations

import asyncio

import cbor2
import pytest
from aiocoap import Message
from aiocoap import numbers as coap

from agent.codec import Direction, decode_cbor
from tests.servers import ServerProcess, raw_client


async def put(ctx, uri: str, scope: dict) -> Message:
    msg = Message(code=coap.PUT, uri=uri, payload=cbor2.dumps({1: {2: [scope]}}), content_format=271)
    return await asyncio.wait_for(ctx.request(msg).response, 15)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("names")
    from agent.pki import certificate_cuid, init_pki

    init_pki(work / "pki")
    config = {"dots-agent:dots-agent": {"server": {"clients": {"allow-unlisted": False, "client": [
        {"name": "customer", "cuid": certificate_cuid(work / "pki" / "client.crt"),
         "protected-prefix": ["198.51.100.0/24"],
         "protected-fqdn": ["www.example.com", "localhost", "invalid"]}]}}}}
    s = ServerProcess(work, config=config).start()
    yield s
    s.stop()


@pytest.mark.req("SC-038", "SC-036")
async def test_fqdn_resolving_to_loopback_is_refused(server: ServerProcess) -> None:
    ctx = await raw_client(server.pki)
    try:
        resp = await put(ctx, server.uri("tls", f"mitigate/cuid={server.client_cuid}/mid=1"),
                         {11: ["localhost"], 14: 600})
        assert resp.code == coap.BAD_REQUEST
        assert "loopback" in resp.payload.decode()
    finally:
        await ctx.shutdown()


@pytest.mark.req("SC-038")
async def test_unresolvable_name_is_refused(server: ServerProcess) -> None:
    ctx = await raw_client(server.pki)
    try:
        resp = await put(ctx, server.uri("tls", f"mitigate/cuid={server.client_cuid}/mid=2"),
                         {11: ["no-such-host.invalid"], 14: 600})
        assert resp.code == coap.BAD_REQUEST and "resolved" in resp.payload.decode()
    finally:
        await ctx.shutdown()


@pytest.mark.req("SC-039", "SC-037")
async def test_uri_host_inside_and_outside_the_client_domain(server: ServerProcess) -> None:
    ctx = await raw_client(server.pki)
    try:
        uri = server.uri("dtls", f"mitigate/cuid={server.client_cuid}/mid=3")
        resp = await put(ctx, uri, {12: ["https://203.0.113.9/login"], 14: 600})
        assert resp.code == coap.BAD_REQUEST and "outside" in resp.payload.decode()
        resp = await put(ctx, uri, {12: ["https://198.51.100.9:8443/login"], 14: 600})
        assert resp.code == coap.CREATED, resp.payload
        got = await asyncio.wait_for(ctx.request(Message(code=coap.GET, uri=uri)).response, 15)
        scope = decode_cbor(got.payload, Direction.RESPONSE).members()["scope"][0]
        assert scope["target-uri"] == ["https://198.51.100.9:8443/login"]
        await asyncio.sleep(0.2)
        assert "dst 198.51.100.9/32" in server.log.read_text()  # enforced on the URI's address
    finally:
        await ctx.shutdown()


@pytest.mark.req("SC-038", "SC-037")
async def test_name_outside_protected_fqdns_is_refused(server: ServerProcess) -> None:
    ctx = await raw_client(server.pki)
    try:
        resp = await put(ctx, server.uri("tls", f"mitigate/cuid={server.client_cuid}/mid=4"),
                         {11: ["www.example.net"], 14: 600})
        assert resp.code == coap.BAD_REQUEST and "protected" in resp.payload.decode()
    finally:
        await ctx.shutdown()
