"""RFC 9132 §7.1 / §7.2 conformance: the DTLS profile items, and no early data (0-RTT) accepted."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import aiocoap
import pytest
from OpenSSL import SSL
from OpenSSL._util import lib as _lib

from agent.transports.credentials import Credentials
from agent.transports.dtls import IdleTimeout, add_dtls_client
from tests.test_conformance_mitigate import pki, server  # noqa: F401
from tests.test_transport_dtls import Echo, _get, _server

OPENSSL = shutil.which("openssl")


@pytest.mark.req("SC-161")
async def test_dtls_profile_stateless_resumption_and_ecdhe_psk(pki: Path) -> None:  # noqa: F811
    """§7.1 items 2 and 3: resumption without server-side state (session tickets) and a PSK
    handshake with ECDHE.  (Item 1, record replay detection, is OpenSSL's DTLS replay window.)"""
    echo = Echo()
    ctx, transport = await _server(echo, pki)
    client = aiocoap.Context()
    await add_dtls_client(client, Credentials.from_pki_dir(pki, "client"))
    try:
        uri = f"coaps://127.0.0.1:{transport.port}/x"
        first = (await _get(client, uri)).remote
        assert not first.session_reused
        # the server keeps no session state: resumption must work from the client's ticket alone
        _lib.SSL_CTX_set_session_cache_mode(transport.ssl_context._context,
                                            SSL.SESS_CACHE_SERVER | SSL.SESS_CACHE_NO_INTERNAL)
        first.close(IdleTimeout("test: drop the association"))
        await asyncio.sleep(0.05)
        second = (await _get(client, uri)).remote
        assert second is not first and second.session_reused, "no stateless (ticket) resumption"
    finally:
        await client.shutdown()
        await ctx.shutdown()
    # PSK with (EC)DHE key exchange
    table = {b"client-one": b"0123456789abcdef"}
    ctx, transport = await _server(echo, pki, credentials=replace(Credentials.from_pki_dir(pki, "server"), psk=table))
    client = aiocoap.Context()
    await add_dtls_client(client, Credentials(cert=None, key=None, cafile=pki / "ca.crt",  # type: ignore[arg-type]
                                              psk=dict(table)))
    try:
        r = await _get(client, f"coaps://127.0.0.1:{transport.port}/x")
        assert r.remote.psk_identity == b"client-one"
        assert r.remote.channel.conn.get_cipher_name().startswith("ECDHE-PSK-"), r.remote.channel.conn.get_cipher_name()
    finally:
        await client.shutdown()
        await ctx.shutdown()


@pytest.mark.req("SC-164", "SC-165", "SC-166")
@pytest.mark.skipif(OPENSSL is None, reason="the openssl command is needed to attempt early data")
async def test_tls_server_never_accepts_early_data(server, pki: Path, tmp_path: Path) -> None:  # noqa: F811
    """The server never accepts 0-RTT: its TLS 1.3 tickets allow no early data, so neither a CoAP
    Ping nor anything else can arrive as early data and no replay protection for it is needed.
    (DTLS 1.3 is not offered at all: the DTLS transport negotiates DTLS 1.2.)"""
    host, port = server.addresses["tls"][0]
    base = [str(OPENSSL), "s_client", "-connect", f"{host}:{port}", "-alpn", "coap", "-tls1_3",
            "-cert", str(pki / "client.crt"), "-key", str(pki / "client.key"), "-CAfile", str(pki / "ca.crt")]
    sess = tmp_path / "sess.pem"
    early = tmp_path / "early.bin"
    early.write_bytes(bytes.fromhex("00000e"))  # a CoAP-over-TCP empty message: what a Ping would start with

    def run(*extra: str) -> str:
        proc = subprocess.run(f"sleep 1 | {' '.join([*base, *extra])}", shell=True, capture_output=True,  # noqa: S602
                              timeout=30, check=False)
        return (proc.stdout + proc.stderr).decode("latin-1")

    out = await asyncio.to_thread(run, "-sess_out", str(sess))
    assert "TLSv1.3" in out and "Max Early Data: 0" in out, out[-2000:]
    assert "Max Early Data: " not in out.replace("Max Early Data: 0", "")  # no ticket allows early data
    out = await asyncio.to_thread(run, "-sess_in", str(sess), "-early_data", str(early))
    assert "Reused" in out, out[-2000:]
    assert "Early data was not sent" in out or "Early data was rejected" in out, out[-2000:]
    assert "Early data was accepted" not in out
