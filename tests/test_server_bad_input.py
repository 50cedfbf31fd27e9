"""Bad input gets the right code with a diagnostic; the server keeps serving and loses nothing."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import cbor2
import pytest
from aiocoap import Message
from aiocoap import numbers as coap

from agent.codec import Direction, decode_cbor
from agent.pki import certificate_cuid, issue_client
from tests.servers import ServerProcess, raw_client

FIG8 = bytes.fromhex((Path(__file__).parent / "data" / "rfc" / "fig08-mitigation-request.cbor.hex").read_text().strip())
CF = 271


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    s = ServerProcess(tmp_path_factory.mktemp("bad")).start()
    yield s
    s.stop()


async def send(ctx, uri: str, code=coap.PUT, payload: bytes = b"", cf: int | None = CF, **opt) -> Message:
    msg = Message(code=code, uri=uri, payload=payload)
    if cf is not None:
        msg.opt.content_format = cf
    for k, v in opt.items():
        setattr(msg.opt, k, v)
    return await asyncio.wait_for(ctx.request(msg).response, 15)


def diag(resp: Message) -> str:
    return resp.payload.decode("utf-8", "replace")


@pytest.mark.req("SC-005", "SC-061", "SC-153", "SC-035", "SC-045", "SC-062", "SC-102", "SC-047", "SC-060")
@pytest.mark.parametrize("transport", ["tls", "dtls"])
async def test_each_bad_request_gets_its_code(server: ServerProcess, transport: str) -> None:
    ctx = await raw_client(server.pki)
    cuid = server.client_cuid
    m = lambda mid: server.uri(transport, f"mitigate/cuid={cuid}/mid={mid}")  # noqa: E731
    try:
        cases = [
            (dict(uri=m(1), payload=os.urandom(40)), coap.BAD_REQUEST, ""),
            (dict(uri=m(1), payload=FIG8[:-3]), coap.BAD_REQUEST, "CBOR"),
            (dict(uri=m(1), payload=FIG8, cf=0), coap.UNSUPPORTED_CONTENT_FORMAT, "271"),
            (dict(uri=m(1), payload=FIG8, cf=None), coap.UNSUPPORTED_CONTENT_FORMAT, "271"),
            (dict(uri=m(1), payload=cbor2.dumps({1: {2: [{6: ["192.0.2.0/24"], 14: 60, 99: 1}]}})),
             coap.BAD_REQUEST, "99"),
            (dict(uri=m(1), payload=cbor2.dumps({1: {2: [{6: ["192.0.2.0/24"], 14: 60, 4: cuid}]}})),
             coap.BAD_REQUEST, "cuid"),
            (dict(uri=m(1), payload=cbor2.dumps({1: {2: [{6: ["192.0.2.0/24"], 14: 60, 5: 1}]}})),
             coap.BAD_REQUEST, "mid"),
            (dict(uri=m(1), payload=cbor2.dumps({1: {2: [{6: ["192.0.2.0/24"], 14: 60}] * 2}})),
             coap.BAD_REQUEST, "scope"),
            (dict(uri=m(1), payload=cbor2.dumps({1: {2: [{6: ["192.0.2.0/24"], 14: 0}]}})),
             coap.BAD_REQUEST, "lifetime"),
            (dict(uri=m(1), payload=cbor2.dumps({1: {2: [{6: ["192.0.2.0/24"], 14: "60"}]}})),
             coap.BAD_REQUEST, "lifetime"),
            (dict(uri=m(1), payload=cbor2.dumps({1: {2: [{6: ["127.0.0.1/32"], 14: 60}]}})),
             coap.BAD_REQUEST, "loopback"),
            (dict(uri=m(1), payload=cbor2.dumps({1: {2: [{14: 60}]}})), coap.BAD_REQUEST, "target"),
            (dict(uri=m(1), payload=cbor2.dumps({1: {2: [{13: ["alias"], 14: 60}]}})),
             coap.BAD_REQUEST, "alias"),
            (dict(uri=server.uri(transport, f"mitigate/cuid={cuid}"), payload=FIG8), coap.BAD_REQUEST, "mid"),
            (dict(uri=server.uri(transport, f"mitigate/mid=1/cuid={cuid}"), payload=FIG8), coap.BAD_REQUEST,
             "order"),
            (dict(uri=server.uri(transport, f"mitigate/cuid={cuid}/mid="), payload=FIG8), coap.BAD_REQUEST,
             "empty"),
            (dict(uri=server.uri(transport, f"mitigate/cuid={cuid}/mid=x"), payload=FIG8), coap.BAD_REQUEST,
             "unsigned"),
            (dict(uri=server.uri(transport, f"mitigate/cuid={cuid}"), code=coap.DELETE, cf=None),
             coap.BAD_REQUEST, "mid"),
            (dict(uri=server.uri(transport, "nothing"), code=coap.GET, cf=None), coap.NOT_FOUND, ""),
            (dict(uri=server.uri(transport, "hb"), code=coap.POST), coap.METHOD_NOT_ALLOWED, ""),
            (dict(uri=m(1) + "?c=x", code=coap.GET, cf=None), coap.BAD_REQUEST, "c="),
        ]
        for kwargs, code, word in cases:
            resp = await send(ctx, **kwargs)
            assert resp.code == code, (kwargs.get("uri"), resp.code, diag(resp))
            assert resp.payload, "every 4.xx carries a diagnostic payload (SC-005)"
            assert word.lower() in diag(resp).lower(), (word, diag(resp))
    finally:
        await ctx.shutdown()


@pytest.mark.req("SC-016", "SC-037")
async def test_other_clients_mitigations_are_refused(server: ServerProcess) -> None:
    issue_client(server.pki, "intruder")
    owner, intruder = await raw_client(server.pki), await raw_client(server.pki, "intruder")
    cuid = server.client_cuid
    uri = server.uri("tls", f"mitigate/cuid={cuid}/mid=7")
    try:
        assert (await send(owner, uri, payload=FIG8)).code == coap.CREATED
        for code, payload in ((coap.GET, b""), (coap.DELETE, b""), (coap.PUT, FIG8)):
            resp = await send(intruder, uri, code=code, payload=payload, cf=CF if payload else None)
            assert resp.code == coap.FORBIDDEN and cuid in diag(resp)
        resp = await send(owner, uri, code=coap.GET, cf=None)
        assert decode_cbor(resp.payload, Direction.RESPONSE).members()["scope"][0]["status"] == \
            "attack-mitigation-in-progress"
        own = certificate_cuid(server.pki / "intruder.crt")
        resp = await send(intruder, server.uri("tls", f"mitigate/cuid={own}/mid=1"), payload=FIG8)
        assert resp.code == coap.CONFLICT  # same targets as the owner's active request
        assert decode_cbor(resp.payload, Direction.RESPONSE).members()["scope"][0]["conflict-information"][
            "conflict-cause"] == "overlapping-targets"
    finally:
        await send(owner, uri, code=coap.DELETE, cf=None)
        await owner.shutdown()
        await intruder.shutdown()


async def test_flood_of_malformed_messages(server: ServerProcess) -> None:
    """10,000 malformed requests over both transports; the server keeps serving and state stays intact."""
    ctx = await raw_client(server.pki)
    cuid = server.client_cuid
    keep = server.uri("tls", f"mitigate/cuid={cuid}/mid=4242")
    rnd = random.Random(7)
    try:
        assert (await send(ctx, keep, payload=FIG8)).code == coap.CREATED
        before = (await send(ctx, keep, code=coap.GET, cf=None)).payload
        bodies = [bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 60))) for _ in range(64)]
        bodies += [FIG8[: rnd.randint(1, len(FIG8) - 1)] for _ in range(64)]
        sem = asyncio.Semaphore(64)
        codes: dict[str, int] = {}

        async def one(i: int) -> None:
            transport = "tls" if i % 2 else "dtls"
            async with sem:
                resp = await send(ctx, server.uri(transport, f"mitigate/cuid={cuid}/mid={10_000 + i}"),
                                  payload=bodies[i % len(bodies)])
            codes[resp.code.dotted] = codes.get(resp.code.dotted, 0) + 1

        await asyncio.gather(*(one(i) for i in range(10_000)))
        assert set(codes) <= {"4.00"}, codes
        assert sum(codes.values()) == 10_000
        assert server.alive()
        after = (await send(ctx, keep, code=coap.GET, cf=None)).payload
        a, b = (decode_cbor(x, Direction.RESPONSE).members()["scope"][0] for x in (before, after))
        a.pop("lifetime"), b.pop("lifetime")
        assert a == b
        all_resp = await send(ctx, server.uri("dtls", f"mitigate/cuid={cuid}"), code=coap.GET, cf=None)
        mids = [s["mid"] for s in decode_cbor(all_resp.payload, Direction.RESPONSE).members()["scope"]]
        assert 4242 in mids and not any(m >= 10_000 for m in mids)
    finally:
        await send(ctx, keep, code=coap.DELETE, cf=None)
        await ctx.shutdown()


async def test_per_client_limit_and_oversized_scope(tmp_path) -> None:
    """A client cannot make the server hold unbounded requests or decide on huge scopes."""
    cfg = {"dots-agent:dots-agent": {"server": {"max-mitigations-per-client": 3}}}
    server = ServerProcess(tmp_path, config=cfg).start()
    ctx = await raw_client(server.pki)
    cuid = server.client_cuid
    try:
        for mid in (1, 2, 3):
            body = cbor2.dumps({1: {2: [{6: [f"198.51.100.{mid}/32"], 14: 60}]}})
            assert (await send(ctx, server.uri("tls", f"mitigate/cuid={cuid}/mid={mid}"), payload=body)).code \
                == coap.CREATED
        body = cbor2.dumps({1: {2: [{6: ["198.51.100.9/32"], 14: 60}]}})
        resp = await send(ctx, server.uri("tls", f"mitigate/cuid={cuid}/mid=4"), payload=body)
        assert resp.code == coap.BAD_REQUEST and "holds 3" in diag(resp)
        refresh = cbor2.dumps({1: {2: [{6: ["198.51.100.1/32"], 14: 120}]}})
        assert (await send(ctx, server.uri("tls", f"mitigate/cuid={cuid}/mid=1"), payload=refresh)).code \
            == coap.CHANGED  # existing requests can still be renewed
        huge = cbor2.dumps({1: {2: [{6: [f"10.{i // 256}.{i % 256}.0/24" for i in range(2000)], 14: 60}]}})
        resp = await send(ctx, server.uri("tls", f"mitigate/cuid={cuid}/mid=5"), payload=huge)
        assert resp.code == coap.BAD_REQUEST and "at most" in diag(resp)
        assert server.alive()
    finally:
        await ctx.shutdown()
        server.stop()
