"""New mitigator parameters apply to a running server: the requests move to the new instance."""

from __future__ import annotations

import asyncio
from pathlib import Path

import cbor2
import pytest
from aiocoap import Message
from aiocoap import numbers as coap

from agent.pki import certificate_cuid, init_pki
from agent.server.app import DotsServer, ServerOptions
from agent.transports.credentials import Credentials
from tests.netns import Topology, skip_reason
from tests.servers import raw_client

SKIP = skip_reason("nft")


def config(table: str) -> dict:
    return {"dots-agent:dots-agent": {"server": {"mitigator": {"type": "nftables", "nftables": {"table-name": table}}}}}


@pytest.mark.netns
@pytest.mark.skipif(SKIP is not None, reason=SKIP or "")
async def test_table_change_moves_active_requests(tmp_path: Path) -> None:
    init_pki(tmp_path / "pki")
    with Topology(["target"]) as topo:
        ns = topo["target"]
        server = DotsServer(ServerOptions(credentials=Credentials.from_pki_dir(tmp_path / "pki", "server"),
                                          listen=["127.0.0.1"], port=0, db=tmp_path / "s.db", netns=ns.name,
                                          config=config("dots_a"), transports=("tls",)))
        await server.start()
        ctx = await raw_client(tmp_path / "pki")
        try:
            port = server.addresses["tls"][0][1]
            cuid = certificate_cuid(tmp_path / "pki" / "client.crt")
            msg = Message(code=coap.PUT, uri=f"coaps+tcp://127.0.0.1:{port}/.well-known/dots/mitigate/cuid={cuid}/mid=1",
                          payload=cbor2.dumps({1: {2: [{6: ["198.51.100.0/24"], 14: 600}]}}), content_format=271)
            assert (await asyncio.wait_for(ctx.request(msg).response, 10)).code == coap.CREATED
            assert "198.51.100.0/24" in ns.run("nft", "list", "table", "inet", "dots_a").stdout
            server.apply_config(config("dots_b"))
            for _ in range(50):
                await asyncio.sleep(0.1)
                b = ns.run("nft", "list", "table", "inet", "dots_b", check=False).stdout
                if "198.51.100.0/24" in b:
                    break
            assert "198.51.100.0/24" in b
            assert "198.51.100.0/24" not in ns.run("nft", "list", "table", "inet", "dots_a", check=False).stdout
        finally:
            await ctx.shutdown()
            await server.stop()
