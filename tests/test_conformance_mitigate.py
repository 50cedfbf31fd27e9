"""RFC 9132 §4.4 conformance: Uri-Path identifiers, 'cdid', GET (Block2/ETag, 4.04, times),
DELETE, notification pacing -- against the real server on loopback, with our client and raw
aiocoap requests."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import pytest
from aiocoap import Message
from aiocoap import numbers as coap
from aiocoap.optiontypes import BlockOption
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.client import DotsClient
from agent.pki import certificate_cuid, init_pki, issue_client
from agent.server.app import DotsServer, ServerOptions
from agent.transports.credentials import Credentials
from tests.servers import raw_client

CF = 271
TIMEOUT = 15.0
FIG8 = bytes.fromhex((Path(__file__).parent / "data" / "rfc" / "fig08-mitigation-request.cbor.hex").read_text().strip())


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    init_pki(d)
    return d


@pytest.fixture
async def server(pki: Path, tmp_path: Path) -> Any:
    config = {"dots-agent:dots-agent": {"server": {"max-mitigations-per-client": 500}}}  # the Block2 test needs 80
    s = DotsServer(ServerOptions(credentials=Credentials.from_pki_dir(pki, "server"), listen=["127.0.0.1"],
                                 port=0, db=tmp_path / "s.db", heartbeats=False, config=config))
    await s.start()
    yield s
    await s.stop()


def record(server: DotsServer) -> list[Message]:
    """Every request the server's DOTS resource receives, in order."""
    seen: list[Message] = []
    orig = server.resource.render_to_pipe

    async def recording(pipe: Any) -> None:
        seen.append(pipe.request.copy())  # as received (the server may adjust options)
        await orig(pipe)

    server.resource.render_to_pipe = recording  # type: ignore[method-assign]
    return seen


def uri(server: DotsServer, transport: str, path: str) -> str:
    host, port = next(a for a in server.addresses[transport] if a[0] == "127.0.0.1")
    scheme = "coaps+tcp" if transport == "tls" else "coaps"
    return f"{scheme}://{host}:{port}/.well-known/dots/{path}"


def dots_client(server: DotsServer, pki: Path, transport: str, name: str = "client", **kw: Any) -> DotsClient:
    return DotsClient(tuple(server.addresses["tls"][0]), Credentials.from_pki_dir(pki, name), transport,
                      request_timeout=TIMEOUT, **kw)


async def send(ctx: aiocoap.Context, target: str, code: coap.Code = coap.GET, payload: bytes = b"",
               *, blockwise: bool = True, **opt: Any) -> Message:
    msg = Message(code=code, uri=target, payload=payload)
    if payload:
        msg.opt.content_format = CF
    for k, v in opt.items():
        setattr(msg.opt, k, v)
    return await asyncio.wait_for(ctx.request(msg, handle_blockwise=blockwise).response, TIMEOUT)


def scope_body(prefix: str, lifetime: int = 3600) -> bytes:
    return cbor2.dumps({1: {2: [{6: [prefix], 14: lifetime}]}})


def params(msg: Message) -> list[str]:
    """The Uri-Path segments after /.well-known/dots/<resource>."""
    return list(msg.opt.uri_path[3:])


# ------------------------------------------------------------------------- §4.4.1.1 identifiers


@pytest.mark.req("SC-018", "SC-019", "SC-034", "SC-054", "SC-023")
@pytest.mark.parametrize("transport", ["tls", "dtls"])
async def test_client_generates_cuid_and_mid_in_order(server: DotsServer, pki: Path, transport: str) -> None:
    seen = record(server)
    # the cuid is computed by the client itself, before any exchange with the server (SC-019)
    cert = x509.load_pem_x509_certificate((pki / "client.crt").read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    expected_cuid = base64.urlsafe_b64encode(hashlib.sha256(spki).digest()[:16]).rstrip(b"=").decode()
    c = dots_client(server, pki, transport)
    assert c.cuid == expected_cuid and not seen
    async with c:
        first = await c.mitigate(target_prefixes=["192.0.2.0/28"])
        second = await c.mitigate(target_prefixes=["192.0.2.16/28"])
        await c.status(first.mid)
        await c.status()
        await c.withdraw(first.mid)
        cuids = {c.cuid}
        await c.close()
        await c.connect()  # a new session, while 'second' is still active: same cuid (SC-023)
        await c.status(second.mid)
        cuids.add(c.cuid)
    assert cuids == {expected_cuid}
    mitigate = [m for m in seen if m.opt.uri_path[2] == "mitigate"]
    assert len(mitigate) >= 6
    for m in mitigate:
        p = params(m)
        assert p[0] == f"cuid={expected_cuid}", p  # cuid first, then mid (SC-018)
        assert all(not s.startswith("cdid=") for s in p), p  # never a cdid from a client (SC-054)
        if len(p) > 1:
            assert len(p) == 2 and p[1].startswith("mid="), p
    # the mids were chosen by the client: they travel in the request, not in a server answer (SC-034)
    puts = [params(m) for m in mitigate if m.code == coap.PUT]
    assert [p[1] for p in puts] == [f"mid={first.mid}", f"mid={second.mid}"]
    assert second.mid > first.mid


@pytest.mark.req("SC-030", "SC-031")
async def test_new_mid_is_unique_among_active_requests(server: DotsServer, pki: Path, tmp_path: Path) -> None:
    """A client whose state was lost must not pick a mid still active at the server."""
    async with dots_client(server, pki, "tls", state=tmp_path / "a.json") as c:
        held = [(await c.mitigate(target_prefixes=[f"198.51.100.{i}/32"])).mid for i in range(3)]
    async with dots_client(server, pki, "dtls", state=tmp_path / "b.json") as c:
        fresh = await c.mitigate(target_prefixes=["198.51.100.9/32"])
        assert fresh.code == "2.01" and fresh.mid not in held
        assert sorted(s["mid"] for s in await c.status()) == sorted([*held, fresh.mid])


# ------------------------------------------------------------------------- §4.4.1.2 'cdid'


@pytest.mark.req("SC-055", "SC-077", "SC-100")
@pytest.mark.parametrize("transport", ["tls", "dtls"])
async def test_server_ignores_cdid_supplied_by_a_client(server: DotsServer, pki: Path, transport: str) -> None:
    issue_client(pki, "other")
    other = certificate_cuid(pki / "other.crt")
    ctx = await raw_client(pki)
    cuid = certificate_cuid(pki / "client.crt")
    try:
        # a cdid naming another client's domain changes nothing: the request is the client's own
        r = await send(ctx, uri(server, transport, f"mitigate/cdid={other}/cuid={cuid}/mid=5"), coap.PUT,
                       scope_body("192.0.2.0/24"))
        assert r.code == coap.CREATED, r.payload
        entry = server.service.get(cuid, 5)
        assert entry is not None and entry.record.cdid is None  # not stored, not used for policy
        assert server.service.of_client(other) == []
        # GET with a cdid: the same answer as without it
        with_cdid = await send(ctx, uri(server, transport, f"mitigate/cdid={other}/cuid={cuid}/mid=5") + "?c=c")
        without = await send(ctx, uri(server, transport, f"mitigate/cuid={cuid}/mid=5") + "?c=c")
        assert with_cdid.code == without.code == coap.CONTENT
        assert with_cdid.payload == without.payload
        # DELETE with a cdid removes the client's own request
        r = await send(ctx, uri(server, transport, f"mitigate/cdid=x/cuid={cuid}/mid=5"), coap.DELETE)
        assert r.code == coap.DELETED
        assert server.service.get(cuid, 5).machine.status.yang == "dots-client-withdrawn-mitigation"
    finally:
        await ctx.shutdown()


@pytest.mark.req("SC-058")
async def test_cdid_after_cuid_is_refused(server: DotsServer, pki: Path) -> None:
    ctx = await raw_client(pki)
    cuid = certificate_cuid(pki / "client.crt")
    try:
        for code, payload in ((coap.PUT, scope_body("192.0.2.0/24")), (coap.GET, b""), (coap.DELETE, b"")):
            r = await send(ctx, uri(server, "tls", f"mitigate/cuid={cuid}/cdid=gw/mid=1"), code, payload)
            assert r.code == coap.BAD_REQUEST and b"order" in r.payload, (code, r.payload)
        assert server.service.of_client(cuid) == []
    finally:
        await ctx.shutdown()


# ------------------------------------------------------------------------- §4.4.2 / §4.4.4 empty values


@pytest.mark.req("SC-076", "SC-101")
@pytest.mark.parametrize("transport", ["tls", "dtls"])
async def test_empty_uri_path_values_in_get_and_delete(server: DotsServer, pki: Path, transport: str) -> None:
    ctx = await raw_client(pki)
    cuid = certificate_cuid(pki / "client.crt")
    try:
        assert (await send(ctx, uri(server, transport, f"mitigate/cuid={cuid}/mid=3"), coap.PUT,
                           scope_body("192.0.2.0/24"))).code == coap.CREATED
        for code in (coap.GET, coap.DELETE):
            for path in (f"mitigate/cuid={cuid}/mid=", "mitigate/cuid=/mid=3", "mitigate/cuid=",
                         f"mitigate/cdid=/cuid={cuid}/mid=3"):
                r = await send(ctx, uri(server, transport, path), code)
                assert r.code == coap.BAD_REQUEST, (code, path, r.code)
                assert b"empty" in r.payload, r.payload
        # nothing was deleted by the refused DELETEs
        assert server.service.get(cuid, 3).machine.status.yang == "attack-mitigation-in-progress"
    finally:
        await ctx.shutdown()


# ------------------------------------------------------------------------- §4.4.2 GET


@pytest.mark.req("SC-085")
@pytest.mark.parametrize("transport", ["tls", "dtls"])
async def test_get_all_without_any_request_is_404(server: DotsServer, pki: Path, transport: str) -> None:
    ctx = await raw_client(pki)
    cuid = certificate_cuid(pki / "client.crt")
    try:
        r = await send(ctx, uri(server, transport, f"mitigate/cuid={cuid}"))
        assert r.code == coap.NOT_FOUND and r.payload  # with a diagnostic
        assert (await send(ctx, uri(server, transport, f"mitigate/cuid={cuid}/mid=1"), coap.PUT,
                           scope_body("192.0.2.0/24"))).code == coap.CREATED
        assert (await send(ctx, uri(server, transport, f"mitigate/cuid={cuid}"))).code == coap.CONTENT
    finally:
        await ctx.shutdown()
    issue_client(pki, "empty")
    async with dots_client(server, pki, transport, name="empty") as c:
        assert await c.status() == []  # the client maps that 4.04 to "no requests"


@pytest.mark.req("SC-080", "SC-081", "SC-082", "SC-083")
async def test_large_get_uses_block2_with_etag(server: DotsServer, pki: Path) -> None:
    ctx = await raw_client(pki)
    cuid = certificate_cuid(pki / "client.crt")
    n = 80
    try:
        for i in range(n):
            r = await send(ctx, uri(server, "dtls", f"mitigate/cuid={cuid}/mid={i + 1}"), coap.PUT,
                           scope_body(f"198.51.100.{i}/32"))
            assert r.code == coap.CREATED
        for query in ("", "?c=n", "?c=a"):
            first = await send(ctx, uri(server, "dtls", f"mitigate/cuid={cuid}") + query, blockwise=False)
            assert first.code == coap.CONTENT
            b2 = first.opt.block2
            assert b2 is not None and b2.block_number == 0 and b2.more, "SC-080: Block2 with NUM = 0"
            assert len(first.payload) == b2.size <= first.remote.maximum_payload_size
            assert first.opt.etag, "SC-082: a dynamically changing resource sent in blocks carries an ETag"
            nxt = await send(ctx, uri(server, "dtls", f"mitigate/cuid={cuid}") + query, blockwise=False,
                             block2=BlockOption.BlockwiseTuple(1, False, b2.size_exponent), etags=[first.opt.etag])
            assert nxt.code == coap.CONTENT and nxt.opt.block2.block_number == 1
            assert nxt.opt.etag == first.opt.etag  # the same representation
    finally:
        await ctx.shutdown()
    # our client reassembles the blocks, at the server's block size and with the ETag (SC-081, SC-083)
    seen = record(server)
    async with dots_client(server, pki, "dtls") as c:
        scopes = await c.status()
    assert sorted(s["mid"] for s in scopes) == list(range(1, n + 1))
    gets = [m for m in seen if m.code == coap.GET and m.opt.uri_path[2] == "mitigate"]
    later = [m for m in gets if m.opt.block2 is not None and m.opt.block2.block_number > 0]
    assert later, "the status was fetched in several blocks"
    assert {m.opt.block2.size_exponent for m in later} == {b2.size_exponent}
    assert all(len(m.opt.etags) == 1 and len(m.opt.etags[0]) > 0 for m in later), [m.opt.etags for m in later]
    assert len({m.opt.etags[0] for m in later}) == 1


@pytest.mark.req("SC-086")
async def test_mitigation_start_is_plain_integer_without_tag_1(server: DotsServer, pki: Path) -> None:
    ctx = await raw_client(pki)
    cuid = certificate_cuid(pki / "client.crt")
    try:
        before = int(time.time())
        assert (await send(ctx, uri(server, "tls", f"mitigate/cuid={cuid}/mid=1"), coap.PUT,
                           scope_body("192.0.2.0/24"))).code == coap.CREATED
        deadline = time.monotonic() + 10
        while True:
            r = await send(ctx, uri(server, "tls", f"mitigate/cuid={cuid}/mid=1"))
            raw = cbor2.loads(r.payload)
            scope = raw[1][2][0]
            if 15 in scope or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert 15 in scope, "no mitigation-start in the status"
        start = scope[15]
        assert type(start) is int and not isinstance(start, cbor2.CBORTag), repr(start)
        assert before - 2 <= start <= int(time.time()) + 2  # seconds since the epoch
    finally:
        await ctx.shutdown()


# ------------------------------------------------------------------------- §4.4.2.1 / §4.4.2.2 pacing


@pytest.mark.req("SC-091", "SC-090")
async def test_notifications_over_dtls_at_most_one_every_3s(server: DotsServer, pki: Path) -> None:
    """Without an RTT estimate the server sends at most one NON notification every 3 s (per observation)."""
    ctx = await raw_client(pki)
    cuid = certificate_cuid(pki / "client.crt")
    try:
        assert (await send(ctx, uri(server, "dtls", f"mitigate/cuid={cuid}/mid=1"), coap.PUT,
                           scope_body("192.0.2.0/24"))).code == coap.CREATED
        obs = Message(code=coap.GET, uri=uri(server, "dtls", f"mitigate/cuid={cuid}"), observe=0)
        req = ctx.request(obs)
        first = await asyncio.wait_for(req.response, TIMEOUT)
        assert first.code == coap.CONTENT
        arrivals: list[tuple[float, Message]] = [(time.monotonic(), first)]

        async def collect() -> None:
            async for note in req.observation:
                arrivals.append((time.monotonic(), note))

        task = asyncio.create_task(collect())
        # a burst of changes (a new request every 0.3 s) over the other transport
        for i in range(2, 18):
            r = await send(ctx, uri(server, "tls", f"mitigate/cuid={cuid}/mid={i}"), coap.PUT,
                           scope_body(f"198.51.100.{i}/32"))
            assert r.code == coap.CREATED
            await asyncio.sleep(0.3)
        await asyncio.sleep(4.0)
        task.cancel()
        if not req.observation.cancelled:
            req.observation.cancel()
    finally:
        await ctx.shutdown()
    notes = arrivals[1:]
    assert len(notes) >= 2, "the changes were notified"
    assert all(m.mtype == aiocoap.NON for _, m in notes)
    gaps = [b[0] - a[0] for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert min(gaps) >= 2.9, gaps  # a little slack for timer granularity
    assert len(notes) <= 3  # ~5 s of changes, ~9 s observed: no more than one every 3 s


@pytest.mark.req("SC-095", "SC-013")
async def test_status_polling_over_dtls_at_most_one_datagram_per_rtt(server: DotsServer, pki: Path) -> None:
    seen: list[float] = []
    orig = server.resource.render_to_pipe

    async def stamp(pipe: Any) -> None:
        if pipe.request.code == coap.GET and pipe.request.opt.uri_path[2] == "mitigate":
            seen.append(time.monotonic())
        await orig(pipe)

    server.resource.render_to_pipe = stamp  # type: ignore[method-assign]
    async with dots_client(server, pki, "dtls", heartbeats=False) as c:
        r = await c.mitigate(target_prefixes=["192.0.2.0/24"])
        # make the estimated RTT large enough to be measured on loopback
        for _ in range(20):
            c._pacer.rtt.sample(0.4)
        assert 0.35 <= c._pacer.spacing <= 0.45, c._pacer.spacing
        seen.clear()
        await asyncio.gather(*(c.status(r.mid) for _ in range(4)))
    assert len(seen) == 4
    gaps = [b - a for a, b in zip(seen, seen[1:], strict=False)]
    # each answer adds a ~1 ms sample, so SRTT shrinks by 1/8 per request: 0.4, 0.35, 0.31 s
    assert min(gaps) >= 0.25, gaps
