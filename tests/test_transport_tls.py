"""coaps+tcp (RFC 8323) with mutual X.509: our client and server, libcoap as a peer, refusals.

Real sockets on loopback, certificates from ``agent.pki.init_pki`` in a temporary directory.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import warnings
from dataclasses import replace
from pathlib import Path

import aiocoap
import cbor2
import pytest
from aiocoap import resource
from aiocoap.transports.udp6 import MessageInterfaceUDP6

from agent.pki import certificate_cuid, init_pki, issue_client, issue_server
from agent.transports import identity, tls
from agent.transports.credentials import Credentials

DOTS_CBOR = 271
TIMEOUT = 10.0


class Echo(resource.Resource, resource.PathCapable):
    """Answers with what it saw: method, remaining path, body, peer cuid and address."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[aiocoap.Message] = []

    async def _answer(self, request: aiocoap.Message, code: aiocoap.numbers.codes.Code) -> aiocoap.Message:
        self.seen.append(request)
        transport = getattr(request.remote, "_transport", None)
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        body = {
            "method": str(request.code),
            "path": list(request.opt.uri_path),
            "cf": request.opt.content_format,
            "body": request.payload,
            "cuid": identity.peer_cuid(request.remote),
            "addr": list(identity.peer_address(request.remote) or ()),
            "tls": ssl_object.version() if ssl_object else None,
            "alpn": ssl_object.selected_alpn_protocol() if ssl_object else None,
            "resumed": ssl_object.session_reused if ssl_object else None,
        }
        return aiocoap.Message(code=code, payload=cbor2.dumps(body), content_format=DOTS_CBOR)

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return await self._answer(request, aiocoap.CONTENT)

    async def render_put(self, request: aiocoap.Message) -> aiocoap.Message:
        return await self._answer(request, aiocoap.CHANGED)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    init_pki(d)
    return d


@pytest.fixture
def echo() -> Echo:
    return Echo()


def _site(echo: Echo) -> resource.Site:
    site = resource.Site()
    site.add_resource([".well-known", "dots"], echo)
    return site


@pytest.fixture
async def server(pki: Path, echo: Echo):
    ctx = await tls.create_server_context(_site(echo), [("127.0.0.1", 0), ("::1", 0)],
                                          Credentials.from_pki_dir(pki, "server"))
    yield ctx
    await ctx.shutdown()


def _port(ctx: aiocoap.Context, family: int = socket.AF_INET) -> int:
    srv = tls.tls_server(ctx)
    assert srv is not None
    for host, port in srv.addresses:
        if (":" in host) == (family == socket.AF_INET6):
            return port
    raise AssertionError("no such listener")


@pytest.fixture
async def client(pki: Path):
    ctx = await tls.create_client_context(Credentials.from_pki_dir(pki, "client"))
    yield ctx
    await ctx.shutdown()


async def _request(ctx: aiocoap.Context, code: aiocoap.numbers.codes.Code, uri: str,
                   payload: bytes = b"") -> aiocoap.Message:
    msg = aiocoap.Message(code=code, uri=uri, payload=payload)
    if payload:
        msg.opt.content_format = DOTS_CBOR
    return await asyncio.wait_for(ctx.request(msg).response, TIMEOUT)


# ----------------------------------------------------------------------------- (a) ours <-> ours


@pytest.mark.req("SC-155", "SC-156", "SC-157")
async def test_put_and_get_carry_client_cuid(server, client, pki, echo):
    port = _port(server)
    body = cbor2.dumps({1: {4: [{5: "cuid"}]}})
    uri = f"coaps+tcp://127.0.0.1:{port}/.well-known/dots/mitigate/cuid=x/mid=1"
    resp = await _request(client, aiocoap.PUT, uri, body)
    assert resp.code == aiocoap.CHANGED
    assert resp.opt.content_format == DOTS_CBOR
    seen = cbor2.loads(resp.payload)
    assert seen["cuid"] == certificate_cuid(pki / "client.crt")
    assert seen["path"] == ["mitigate", "cuid=x", "mid=1"]
    assert seen["cf"] == DOTS_CBOR and seen["body"] == body
    assert seen["tls"] in ("TLSv1.2", "TLSv1.3")
    assert seen["alpn"] == "coap"
    assert seen["addr"][0] == "127.0.0.1"

    resp = await _request(client, aiocoap.GET, uri)
    assert resp.code == aiocoap.CONTENT
    assert cbor2.loads(resp.payload)["cuid"] == certificate_cuid(pki / "client.crt")
    # the client side sees the server's certificate the same way
    assert identity.peer_certificate(resp.remote) is not None
    assert identity.peer_cuid(resp.remote) == certificate_cuid(pki / "server.crt")
    assert identity.peer_psk_identity(resp.remote) is None


async def test_each_client_certificate_gives_its_own_cuid(server, pki):
    issue_client(pki, "client2")
    creds = Credentials(cert=pki / "client2.crt", key=pki / "client2.key", cafile=pki / "ca.crt")
    ctx = await tls.create_client_context(creds)
    try:
        resp = await _request(ctx, aiocoap.GET, f"coaps+tcp://127.0.0.1:{_port(server)}/.well-known/dots/hb")
        cuid = cbor2.loads(resp.payload)["cuid"]
        assert cuid == certificate_cuid(pki / "client2.crt")
        assert cuid != certificate_cuid(pki / "client.crt")
    finally:
        await ctx.shutdown()


async def test_session_is_resumed_and_identity_survives(server, client, pki):
    uri = f"coaps+tcp://127.0.0.1:{_port(server)}/.well-known/dots/hb"
    first = await _request(client, aiocoap.GET, uri)
    assert cbor2.loads(first.payload)["resumed"] is False
    await first.remote.release()
    await asyncio.sleep(0.05)
    second = await _request(client, aiocoap.GET, uri)
    seen = cbor2.loads(second.payload)
    assert second.remote is not first.remote
    assert seen["resumed"] is True
    assert seen["cuid"] == certificate_cuid(pki / "client.crt")
    # a request right after the connection was closed locally opens a new one (no stale pool entry)
    second.remote._transport.close()
    third = await _request(client, aiocoap.GET, uri)
    assert third.remote is not second.remote
    assert cbor2.loads(third.payload)["resumed"] is True


# ----------------------------------------------------------------------------- (b) libcoap


@pytest.mark.req("SC-155")
async def test_libcoap_client_interop(server, pki, tmp_path):
    exe = shutil.which("coap-client-openssl")
    if exe is None:
        pytest.skip("coap-client-openssl not installed (Debian package libcoap3-bin)")
    body = cbor2.dumps({"x": 1})
    (tmp_path / "body.cbor").write_bytes(body)
    proc = await asyncio.create_subprocess_exec(
        exe, "-m", "put", "-t", str(DOTS_CBOR), "-f", str(tmp_path / "body.cbor"),
        "-c", str(pki / "client.crt"), "-j", str(pki / "client.key"), "-C", str(pki / "ca.crt"),
        f"coaps+tcp://127.0.0.1:{_port(server)}/.well-known/dots/mitigate/cuid=abc/mid=7",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 0, err
    seen = cbor2.loads(out)
    assert seen["method"] == "PUT"
    assert seen["path"] == ["mitigate", "cuid=abc", "mid=7"]
    assert seen["body"] == body and seen["cf"] == DOTS_CBOR
    assert seen["cuid"] == certificate_cuid(pki / "client.crt")


async def test_libcoap_client_without_certificate_gets_nothing(server, pki, echo):
    exe = shutil.which("coap-client-openssl")
    if exe is None:
        pytest.skip("coap-client-openssl not installed (Debian package libcoap3-bin)")
    proc = await asyncio.create_subprocess_exec(
        exe, "-B", "3", "-m", "get", "-C", str(pki / "ca.crt"),
        f"coaps+tcp://127.0.0.1:{_port(server)}/.well-known/dots/hb",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert b"cuid" not in out  # libcoap logs its failure on stdout; no response body arrives
    assert echo.seen == []


# ----------------------------------------------------------------------------- (c) refusals


async def _expect_refused(ctx: aiocoap.Context, uri: str) -> BaseException:
    with pytest.raises((aiocoap.error.Error, OSError, ConnectionError)) as info:
        await _request(ctx, aiocoap.GET, uri)
    return info.value


def _causes(exc: BaseException | None) -> list[BaseException]:
    out = []
    while exc is not None:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


@pytest.mark.req("SC-155")
async def test_client_without_certificate_is_refused(server, pki, echo):
    ctx = aiocoap.Context(loop=asyncio.get_running_loop())
    bare = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    bare.set_alpn_protocols(["coap"])

    async def make(tman):
        t = await tls.DotsTLSClient.create_client_transport(tman, ctx.log, ctx.loop)
        t.ssl_context = bare
        return t

    await tls.append_token_transport(ctx, make)
    try:
        await _expect_refused(ctx, f"coaps+tcp://127.0.0.1:{_port(server)}/.well-known/dots/hb")
    finally:
        await ctx.shutdown()
    assert echo.seen == []
    assert not tls.tls_server(server)._pool


@pytest.mark.req("SC-155")
async def test_client_certificate_from_another_ca_is_refused(server, pki, tmp_path, echo):
    other = tmp_path / "other"
    init_pki(other)
    creds = Credentials(cert=other / "client.crt", key=other / "client.key", cafile=pki / "ca.crt")
    ctx = await tls.create_client_context(creds)
    try:
        await _expect_refused(ctx, f"coaps+tcp://127.0.0.1:{_port(server)}/.well-known/dots/hb")
    finally:
        await ctx.shutdown()
    assert echo.seen == []


@pytest.mark.req("SC-156")
async def test_client_refuses_server_from_another_ca(pki, tmp_path, echo, client):
    other = tmp_path / "other"
    init_pki(other)
    srv = await tls.create_server_context(_site(echo), [("127.0.0.1", 0)],
                                          replace(Credentials.from_pki_dir(other, "server"),
                                                  cafile=pki / "ca.crt"))
    try:
        exc = await _expect_refused(client, f"coaps+tcp://127.0.0.1:{_port(srv)}/.well-known/dots/hb")
    finally:
        await srv.shutdown()
    assert any(isinstance(e, ssl.SSLCertVerificationError) for e in _causes(exc))
    assert echo.seen == []


@pytest.mark.req("SC-157")
async def test_client_checks_server_name(pki, echo, client):
    crt, key = issue_server(pki, "elsewhere", ("dots.elsewhere.example",))
    srv = await tls.create_server_context(_site(echo), [("127.0.0.1", 0)],
                                          Credentials(cert=crt, key=key, cafile=pki / "ca.crt"))
    uri = f"coaps+tcp://127.0.0.1:{_port(srv)}/.well-known/dots/hb"
    try:
        exc = await _expect_refused(client, uri)
        assert any(isinstance(e, ssl.SSLCertVerificationError) for e in _causes(exc))
        assert echo.seen == []
        # the same certificate is accepted when the expected name is the one it carries
        named = replace(Credentials.from_pki_dir(pki, "client"), server_hostname="dots.elsewhere.example")
        ctx = await tls.create_client_context(named)
        try:
            resp = await _request(ctx, aiocoap.GET, uri)
            assert resp.code == aiocoap.CONTENT
        finally:
            await ctx.shutdown()
    finally:
        await srv.shutdown()


# ----------------------------------------------------------------------------- (d) garbage


async def test_garbage_does_not_break_the_server(server, client, pki):
    port = _port(server)
    for junk in (b"\x00" * 10, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 20, b""):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(junk)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    # a half-open connection that never speaks TLS stays harmless too
    _idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        resp = await _request(client, aiocoap.GET, f"coaps+tcp://127.0.0.1:{port}/.well-known/dots/hb")
        assert cbor2.loads(resp.payload)["cuid"] == certificate_cuid(pki / "client.crt")
    finally:
        idle_writer.close()
    assert len(tls.tls_server(server)._pool) == 1  # failed handshakes leave no connection behind


# ----------------------------------------------------------------------------- (e) IPv6


async def test_ipv6_loopback(server, client, pki):
    port = _port(server, socket.AF_INET6)
    resp = await _request(client, aiocoap.PUT, f"coaps+tcp://[::1]:{port}/.well-known/dots/hb", b"\xa0")
    seen = cbor2.loads(resp.payload)
    assert resp.code == aiocoap.CHANGED
    assert seen["addr"][0] == "::1"
    assert seen["cuid"] == certificate_cuid(pki / "client.crt")


# ----------------------------------------------------------------------------- (f) TLS versions


def _old_tls_client(pki: Path, version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = version
        ctx.maximum_version = version
    return ctx


async def _handshake(port: int, ctx: ssl.SSLContext) -> str:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"), TIMEOUT)
    try:
        return writer.get_extra_info("ssl_object").version()
    finally:
        writer.close()


@pytest.mark.req("SC-155")
async def test_tls11_client_is_refused(server, pki):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        v11 = ssl.TLSVersion.TLSv1_1
    old = _old_tls_client(pki, v11)

    # control: this machine's OpenSSL can speak TLS 1.1 when the server allows it
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.load_cert_chain(str(pki / "server.crt"), str(pki / "server.key"))
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        permissive.minimum_version = v11
    control = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=permissive)
    try:
        control_port = control.sockets[0].getsockname()[1]
        if await _handshake(control_port, old) != "TLSv1.1":  # pragma: no cover
            pytest.skip("local OpenSSL cannot negotiate TLS 1.1 at all")
    except ssl.SSLError as e:  # pragma: no cover
        pytest.skip(f"local OpenSSL cannot negotiate TLS 1.1 at all: {e}")
    finally:
        control.close()

    with pytest.raises((ssl.SSLError, ConnectionError)):
        await _handshake(_port(server), old)
    assert await _handshake(_port(server), _old_tls_client(pki, ssl.TLSVersion.TLSv1_2)) == "TLSv1.2"


@pytest.mark.req("SC-155")
def test_contexts_require_tls12_and_mutual_auth(pki):
    s = tls.server_ssl_context(Credentials.from_pki_dir(pki, "server"))
    c = tls.client_ssl_context(Credentials.from_pki_dir(pki, "client"))
    for ctx in (s, c):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        names = {x["name"] for x in ctx.get_ciphers()}
        assert all("GCM" in n or "CHACHA20" in n for n in names)
    assert c.check_hostname


# ----------------------------------------------------------------------------- sharing a Context


async def test_tcp_and_udp_share_port_number_in_one_context(pki, echo, client):
    """A second (UDP) transport joins the same Context through ``extra_transports``."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()

    async def add_udp(ctx: aiocoap.Context) -> None:
        await ctx._append_tokenmanaged_messagemanaged_transport(
            lambda mman: MessageInterfaceUDP6.create_server_transport_endpoint(
                mman, log=ctx.log, loop=ctx.loop, bind=("127.0.0.1", port), multicast=[]))

    srv = await tls.create_server_context(_site(echo), [("127.0.0.1", port)],
                                          Credentials.from_pki_dir(pki, "server"), extra_transports=[add_udp])
    plain = await aiocoap.Context.create_client_context(transports=["udp6"])
    try:
        resp = await _request(client, aiocoap.GET, f"coaps+tcp://127.0.0.1:{port}/.well-known/dots/hb")
        assert cbor2.loads(resp.payload)["cuid"] == certificate_cuid(pki / "client.crt")
        msg = aiocoap.Message(code=aiocoap.GET, uri=f"coap://127.0.0.1:{port}/.well-known/dots/hb")
        udp_resp = await asyncio.wait_for(plain.request(msg).response, TIMEOUT)
        assert udp_resp.code == aiocoap.CONTENT
        seen = cbor2.loads(udp_resp.payload)
        assert seen["cuid"] is None and seen["tls"] is None  # plain CoAP: no certificate
        assert seen["addr"][0] == "127.0.0.1"  # udp6 reports ::ffff:127.0.0.1; peer_address unmaps it
    finally:
        await plain.shutdown()
        await srv.shutdown()
