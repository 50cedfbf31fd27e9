"""CoAP over DTLS 1.2 with mutual X.509 (agent.transports.dtls): our client and server, libcoap as a
peer, refusals, garbage, IPv6, record sizes for a 1280-byte path MTU, PSK.

Real sockets on loopback, certificates from ``agent.pki.init_pki`` in a temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from aiocoap import resource

from agent.pki import certificate_cuid, cuid_from_certificate, init_pki, issue_server
from agent.transports.credentials import Credentials
from agent.transports.dtls import (
    DTLSClientRemote,
    DTLSServerRemote,
    FatalDTLSError,
    IdleTimeout,
    add_dtls_client,
    add_dtls_server,
)

TIMEOUT = 10.0
DTLS1_0 = 0xFEFF
LIBCOAP = shutil.which("coap-client-openssl")
LIBCOAP_SERVER = shutil.which("coap-server-openssl")


class Echo(resource.Resource):
    """Remembers the requests it saw and answers with the payload (PUT) or a greeting (GET)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[aiocoap.Message] = []
        self.big = b""

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        self.seen.append(request)
        return aiocoap.Message(code=aiocoap.CONTENT, payload=self.big or b"hello dtls")

    async def render_put(self, request: aiocoap.Message) -> aiocoap.Message:
        self.seen.append(request)
        return aiocoap.Message(code=aiocoap.CHANGED, payload=request.payload)


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
    site.add_resource(["x"], echo)
    return site


async def _server(echo: Echo, pki: Path, bind: tuple[str, int] = ("127.0.0.1", 0), **kw: Any):
    ctx = aiocoap.Context(serversite=_site(echo))
    creds = kw.pop("credentials", None) or Credentials.from_pki_dir(pki, "server")
    transport = await add_dtls_server(ctx, bind, creds, **kw)
    return ctx, transport


@pytest.fixture
async def server(pki: Path, echo: Echo):
    ctx, transport = await _server(echo, pki)
    yield transport
    await ctx.shutdown()


@pytest.fixture
async def client(pki: Path):
    ctx = aiocoap.Context()
    await add_dtls_client(ctx, Credentials.from_pki_dir(pki, "client"))
    yield ctx
    await ctx.shutdown()


async def _get(ctx: aiocoap.Context, uri: str, **kw: Any) -> aiocoap.Message:
    req = aiocoap.Message(code=kw.pop("code", aiocoap.GET), uri=uri, **kw)
    return await asyncio.wait_for(ctx.request(req).response, TIMEOUT)


def _libcoap(pki: Path, uri: str, *extra: str, cert: bool = True) -> subprocess.CompletedProcess[str]:
    if LIBCOAP is None:
        pytest.skip("coap-client-openssl (Debian package libcoap3-bin) is not installed")
    args = [LIBCOAP, "-m", "get", "-B", "5", *extra]
    if cert:
        args += ["-c", str(pki / "client.crt"), "-j", str(pki / "client.key"), "-C", str(pki / "ca.crt")]
    return subprocess.run([*args, uri], capture_output=True, text=True, timeout=20)


# ----------------------------------------------------------------------------------- (a) basics


@pytest.mark.req("SC-155", "SC-154")
async def test_get_and_put_with_mutual_certificates(server, client, echo: Echo, pki: Path):
    base = f"coaps://127.0.0.1:{server.port}/x"
    r = await _get(client, base)
    assert r.code == aiocoap.CONTENT and r.payload == b"hello dtls"
    r = await _get(client, base, code=aiocoap.PUT, payload=b"\xa1\x01\x02")
    assert r.code == aiocoap.CHANGED and r.payload == b"\xa1\x01\x02"

    seen = echo.seen[-1].remote
    assert isinstance(seen, DTLSServerRemote)
    assert seen.scheme == "coaps" and not seen.is_multicast and seen.psk_identity is None
    assert seen.uri_base.startswith("coaps://127.0.0.1:")
    assert seen.peer_cert_der is not None
    assert cuid_from_certificate(seen.peer_cert_der) == certificate_cuid(pki / "client.crt")

    # client side: server certificate and negotiated parameters (RFC 7525: ECDHE, AEAD, 1.2+)
    remote = r.remote
    assert isinstance(remote, DTLSClientRemote)
    assert cuid_from_certificate(remote.peer_cert_der) == certificate_cuid(pki / "server.crt")
    conn = remote.channel.conn
    assert conn.get_protocol_version_name() in ("DTLSv1.2", "DTLSv1.3")
    cipher = conn.get_cipher_name()
    assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher or "CCM" in cipher)
    # both requests went over one association
    assert server.stats["accepted"] == 1 and len(server.peers) == 1


async def test_session_resumption_keeps_identity(server, client, echo: Echo, pki: Path):
    uri = f"coaps://127.0.0.1:{server.port}/x"
    first = (await _get(client, uri)).remote
    assert not first.session_reused
    first.close(IdleTimeout("test: drop the association"))
    await asyncio.sleep(0.05)
    second = (await _get(client, uri)).remote
    assert second is not first
    assert second.session_reused, "the cached DTLS session was not resumed"
    assert echo.seen[-1].remote.peer_cert_der is not None
    assert cuid_from_certificate(echo.seen[-1].remote.peer_cert_der) == certificate_cuid(pki / "client.crt")


async def test_server_closes_idle_associations_with_close_notify(pki: Path, echo: Echo, client):
    ctx, server = await _server(echo, pki, idle_timeout=0.5)
    try:
        r = await _get(client, f"coaps://127.0.0.1:{server.port}/x")
        remote = r.remote
        assert len(server.peers) == 1
        for _ in range(40):
            await asyncio.sleep(0.1)
            if remote.closed:
                break
        assert not server.peers
        assert remote.closed, "client did not see the server's close_notify"
        # and a new request simply builds a new association
        r2 = await _get(client, f"coaps://127.0.0.1:{server.port}/x")
        assert r2.code == aiocoap.CONTENT and r2.remote is not remote
    finally:
        await ctx.shutdown()


async def test_client_recovers_after_server_restart(pki: Path, echo: Echo):
    ctx, server = await _server(echo, pki)
    port = server.port
    c = aiocoap.Context()
    await add_dtls_client(c, Credentials.from_pki_dir(pki, "client"), dead_peer_timeout=1.0)
    try:
        first = await _get(c, f"coaps://127.0.0.1:{port}/x")
        await ctx.shutdown()  # sends close_notify: the client must notice
        await asyncio.sleep(0.1)
        assert first.remote.closed
        ctx, server = await _server(echo, pki, bind=("127.0.0.1", port))
        r = await _get(c, f"coaps://127.0.0.1:{port}/x")
        assert r.payload == b"hello dtls" and r.remote is not first.remote
        # now a restart the client is not told about (state lost, no close_notify)
        server.peers.clear()
        with pytest.raises(aiocoap.error.NetworkError):
            await _get(c, f"coaps://127.0.0.1:{port}/x")
        r = await _get(c, f"coaps://127.0.0.1:{port}/x")
        assert r.payload == b"hello dtls"
    finally:
        await c.shutdown()
        await ctx.shutdown()


async def test_transport_shutdown_detaches_from_context(pki: Path, echo: Echo):
    ctx, server = await _server(echo, pki)
    await add_dtls_client(ctx, Credentials.from_pki_dir(pki, "client"))  # (aiocoap cannot shut down
    n = len(ctx.request_interfaces)                                       # a context left empty)
    await server.shutdown()
    assert len(ctx.request_interfaces) == n - 1
    assert server._udp is None and not server.peers
    await ctx.shutdown()


# ----------------------------------------------------------------------------------- (b) libcoap


@pytest.mark.req("SC-155")
async def test_libcoap_client_gets_response(server, echo: Echo, pki: Path):
    proc = await asyncio.to_thread(_libcoap, pki, f"coaps://127.0.0.1:{server.port}/x")
    assert "hello dtls" in proc.stdout, proc.stderr
    remote = echo.seen[-1].remote
    assert cuid_from_certificate(remote.peer_cert_der) == certificate_cuid(pki / "client.crt")


@pytest.mark.req("SC-155", "SC-156", "SC-157")
async def test_our_client_against_libcoap_server(pki: Path, client):
    if LIBCOAP_SERVER is None:
        pytest.skip("coap-server-openssl (Debian package libcoap3-bin) is not installed")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([LIBCOAP_SERVER, "-A", "127.0.0.1", "-p", str(port - 1),
                             "-c", str(pki / "server.crt"), "-j", str(pki / "server.key"),
                             "-C", str(pki / "ca.crt")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # libcoap serves coaps on port+1
    try:
        await asyncio.sleep(0.5)
        r = await _get(client, f"coaps://127.0.0.1:{port}/")
        assert r.code == aiocoap.CONTENT
        assert cuid_from_certificate(r.remote.peer_cert_der) == certificate_cuid(pki / "server.crt")
    finally:
        proc.terminate()
        proc.wait(5)


# ----------------------------------------------------------------------------------- (c) refusals


async def test_client_without_certificate_is_refused(server, echo: Echo, pki: Path):
    ctx = aiocoap.Context()
    await add_dtls_client(ctx, Credentials(cert=None, key=None, cafile=pki / "ca.crt"))  # type: ignore[arg-type]
    try:
        with pytest.raises(aiocoap.error.NetworkError):
            await _get(ctx, f"coaps://127.0.0.1:{server.port}/x")
    finally:
        await ctx.shutdown()
    assert not echo.seen and not server.peers


async def test_libcoap_client_without_certificate_is_refused(server, echo: Echo, pki: Path):
    proc = await asyncio.to_thread(_libcoap, pki, f"coaps://127.0.0.1:{server.port}/x", cert=False)
    assert "hello dtls" not in proc.stdout
    assert not echo.seen


async def test_client_certificate_from_another_ca_is_refused(server, echo: Echo, pki: Path, tmp_path: Path):
    other = tmp_path / "other"
    init_pki(other)
    ctx = aiocoap.Context()
    # trusts the right server CA but presents a certificate the server does not trust
    await add_dtls_client(ctx, Credentials(cert=other / "client.crt", key=other / "client.key",
                                           cafile=pki / "ca.crt"))
    try:
        with pytest.raises(aiocoap.error.NetworkError):
            await _get(ctx, f"coaps://127.0.0.1:{server.port}/x")
    finally:
        await ctx.shutdown()
    proc = await asyncio.to_thread(
        _libcoap, pki, f"coaps://127.0.0.1:{server.port}/x", "-c", str(other / "client.crt"), "-j",
        str(other / "client.key"), "-C", str(pki / "ca.crt"), cert=False)
    assert "hello dtls" not in proc.stdout
    assert not echo.seen


@pytest.mark.req("SC-156")
async def test_client_refuses_server_from_another_ca(echo: Echo, pki: Path, tmp_path: Path, client):
    other = tmp_path / "other"
    init_pki(other)
    ctx, server = await _server(echo, pki, credentials=Credentials(
        cert=other / "server.crt", key=other / "server.key", cafile=pki / "ca.crt"))
    try:
        with pytest.raises(aiocoap.error.NetworkError):
            await _get(client, f"coaps://127.0.0.1:{server.port}/x")
    finally:
        await ctx.shutdown()
    assert not echo.seen


@pytest.mark.req("SC-157")
async def test_client_checks_server_name(echo: Echo, pki: Path, server):
    # the server certificate names localhost, 127.0.0.1 and ::1
    ok = aiocoap.Context()
    await add_dtls_client(ok, Credentials.from_pki_dir(pki, "client"))
    wrong = aiocoap.Context()
    await add_dtls_client(wrong, replace(Credentials.from_pki_dir(pki, "client"),
                                         server_hostname="dots.example"))
    try:
        r = await _get(ok, f"coaps://localhost:{server.port}/x")
        assert r.code == aiocoap.CONTENT
        with pytest.raises(FatalDTLSError, match="certificate verify failed"):
            await _get(wrong, f"coaps://127.0.0.1:{server.port}/x")
    finally:
        await ok.shutdown()
        await wrong.shutdown()
    # a certificate for another name, from the right CA
    crt, key = issue_server(pki, "elsewhere", ("elsewhere.example",))
    ctx, other = await _server(echo, pki, credentials=Credentials(cert=crt, key=key, cafile=pki / "ca.crt"))
    c = aiocoap.Context()
    await add_dtls_client(c, Credentials.from_pki_dir(pki, "client"))
    try:
        with pytest.raises(aiocoap.error.NetworkError):
            await _get(c, f"coaps://127.0.0.1:{other.port}/x")
    finally:
        await c.shutdown()
        await ctx.shutdown()


@pytest.mark.req("SC-155")
async def test_dtls_1_0_is_refused(server, pki: Path, echo: Echo):
    ctx = aiocoap.Context()
    transport = await add_dtls_client(ctx, Credentials.from_pki_dir(pki, "client"))
    transport.ssl_context.set_min_proto_version(DTLS1_0)
    transport.ssl_context.set_max_proto_version(DTLS1_0)
    try:
        with pytest.raises(aiocoap.error.NetworkError):
            await _get(ctx, f"coaps://127.0.0.1:{server.port}/x")
    finally:
        await ctx.shutdown()
    assert not echo.seen


# ----------------------------------------------------------------------------------- (d) garbage


async def test_garbage_datagrams_do_not_disturb_service(server, client, echo: Echo):
    uri = f"coaps://127.0.0.1:{server.port}/x"
    first = await _get(client, uri)
    target = ("127.0.0.1", server.port)
    # a record header announcing an epoch-0 ClientHello, followed by junk
    bad_hello = bytes([22, 0xFE, 0xFD, 0, 0]) + bytes(6) + (200).to_bytes(2, "big") + b"\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(300):
            s.sendto(os.urandom(1 + i % 1400), target)
            s.sendto(bad_hello + os.urandom(199), target)
            if i % 20 == 0:
                await asyncio.sleep(0.002)  # let the server read: do not overflow the socket buffer
        s.sendto(b"", target)
    # garbage from the legitimate client's own address, inside its association
    udp = first.remote._udp
    for i in range(50):
        udp.sendto(bytes([23, 0xFE, 0xFD, 0, 1]) + os.urandom(8 + i))
        udp.sendto(os.urandom(100))
    await asyncio.sleep(0.2)
    r = await _get(client, uri, code=aiocoap.PUT, payload=b"still here")
    assert r.payload == b"still here"
    assert r.remote is first.remote, "the association did not survive the garbage"
    assert server.stats["dropped"] >= 300, server.stats
    assert server.stats["accepted"] == 1
    # a fresh client still gets in
    ctx = aiocoap.Context()
    await add_dtls_client(ctx, client.request_interfaces[0].token_interface.message_interface.credentials)
    try:
        assert (await _get(ctx, uri)).payload == b"hello dtls"
    finally:
        await ctx.shutdown()


# ----------------------------------------------------------------------------------- (e) IPv6


async def test_ipv6_loopback(pki: Path, echo: Echo, client):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    ctx, server = await _server(echo, pki, bind=("::1", 0))
    try:
        r = await _get(client, f"coaps://[::1]:{server.port}/x")
        assert r.payload == b"hello dtls"
        assert echo.seen[-1].remote.hostinfo.startswith("[::1]:")
        if LIBCOAP:
            proc = await asyncio.to_thread(_libcoap, pki, f"coaps://[::1]:{server.port}/x")
            assert "hello dtls" in proc.stdout, proc.stderr
    finally:
        await ctx.shutdown()


async def test_dual_stack_bind(pki: Path, echo: Echo, client):
    ctx, server = await _server(echo, pki, bind=("::", 0))
    try:
        r4 = await _get(client, f"coaps://127.0.0.1:{server.port}/x")
        r6 = await _get(client, f"coaps://[::1]:{server.port}/x")
        assert r4.payload == r6.payload == b"hello dtls"
        hosts = sorted(m.remote.hostinfo.rsplit(":", 1)[0] for m in echo.seen)
        assert hosts == ["127.0.0.1", "[::1]"]
    finally:
        await ctx.shutdown()


# ----------------------------------------------------------------------------------- SC-167: PMTU


class _RecordingRelay(asyncio.DatagramProtocol):
    """UDP relay between one client and a server that records every datagram's size."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.sizes: list[int] = []
        self.client: Any = None
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.sizes.append(len(data))
        if addr == self.target:
            self.transport.sendto(data, self.client)
        else:
            self.client = addr
            self.transport.sendto(data, self.target)


@pytest.mark.req("SC-167", "SC-169")
@pytest.mark.parametrize("mtu", [1280, 400])
async def test_datagrams_fit_the_path_mtu(pki: Path, echo: Echo, mtu: int):
    echo.big = bytes(range(256)) * 12  # 3 KiB: blockwise responses of 1024-byte blocks
    ctx, server = await _server(echo, pki, mtu=mtu)
    loop = asyncio.get_running_loop()
    relay_transport, relay = await loop.create_datagram_endpoint(
        lambda: _RecordingRelay(("127.0.0.1", server.port)), local_addr=("127.0.0.1", 0))
    c = aiocoap.Context()
    await add_dtls_client(c, Credentials.from_pki_dir(pki, "client"), mtu=mtu)
    try:
        port = relay_transport.get_extra_info("sockname")[1]
        r = await _get(c, f"coaps://127.0.0.1:{port}/x")
        assert r.payload == echo.big
        r = await _get(c, f"coaps://127.0.0.1:{port}/x", code=aiocoap.PUT, payload=b"p" * 900)
        assert r.payload == b"p" * 900
    finally:
        await c.shutdown()
        relay_transport.close()
        await ctx.shutdown()
    assert relay.sizes and max(relay.sizes) <= mtu - 48, (max(relay.sizes), relay.sizes)


# ----------------------------------------------------------------------------------- PSK


async def test_psk_secondary_path(pki: Path, echo: Echo):
    table = {b"client-one": b"0123456789abcdef"}
    ctx, server = await _server(echo, pki, credentials=replace(Credentials.from_pki_dir(pki, "server"),
                                                              psk=table))
    c = aiocoap.Context()
    await add_dtls_client(c, Credentials(cert=None, key=None, cafile=pki / "ca.crt",  # type: ignore[arg-type]
                                         psk={b"client-one": b"0123456789abcdef"}))
    bad = aiocoap.Context()
    # a wrong key makes the Finished records fail authentication; DTLS drops them silently, so
    # the failure shows as a handshake timeout
    await add_dtls_client(bad, Credentials(cert=None, key=None, cafile=pki / "ca.crt",  # type: ignore[arg-type]
                                           psk={b"client-one": b"wrong key......."}), handshake_timeout=2)
    try:
        r = await _get(c, f"coaps://127.0.0.1:{server.port}/x")
        assert r.payload == b"hello dtls"
        assert echo.seen[-1].remote.psk_identity == b"client-one"
        assert echo.seen[-1].remote.peer_cert_der is None
        with pytest.raises(aiocoap.error.NetworkError):
            await _get(bad, f"coaps://127.0.0.1:{server.port}/x")
        assert len(echo.seen) == 1
        # certificates still work next to PSK
        cert_client = aiocoap.Context()
        await add_dtls_client(cert_client, Credentials.from_pki_dir(pki, "client"))
        try:
            await _get(cert_client, f"coaps://127.0.0.1:{server.port}/x")
        finally:
            await cert_client.shutdown()
        assert echo.seen[-1].remote.peer_cert_der is not None
        if LIBCOAP:
            proc = await asyncio.to_thread(_libcoap, pki, f"coaps://127.0.0.1:{server.port}/x", "-u",
                                           "client-one", "-k", "0123456789abcdef", cert=False)
            assert "hello dtls" in proc.stdout, proc.stderr
    finally:
        await c.shutdown()
        await bad.shutdown()
        await ctx.shutdown()
