"""Protocol strictness: ASCII-only numeric Uri-Path parameters, and 4.02 for unknown critical options.

* ``str.isdigit`` accepts Unicode digits: ``mid=²`` crashed a handler (5.00 + traceback) and the
  fullwidth ``mid=２３`` was read as mid 23.  Numbers on the wire are ASCII digits, nothing else:
  anything else is 4.00 with a one-line diagnostic.
* RFC 7252 §5.4.1: an unrecognised critical option (odd number) in a request is answered 4.02
  Bad Option; unrecognised elective options are ignored.  go-dots probes with an empty CON GET
  carrying Q-Block2 (option 31, RFC 9177) and falls back to Block2 on 4.02.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import cbor2
import pytest
from aiocoap import Message, Reliable
from aiocoap import numbers as coap
from aiocoap.optiontypes import OpaqueOption, UintOption

from agent.server.uri import UriError, parse_params
from tests.servers import COAP_CLIENT, ServerProcess, coap_client, raw_client

CF = 271
BODY = cbor2.dumps({1: {2: [{6: ["203.0.113.7/32"], 14: 600}]}})
ALLOWED = ("cdid", "cuid", "mid", "sid")
NOT_ASCII_NUMBERS = ["²", "２３", "٣", "৩", "1²", "𝟙", "Ⅻ", "1_0", "+1", " 1", "1 ", "-1", "0x1", "1e3"]


@pytest.mark.parametrize("value", NOT_ASCII_NUMBERS)
def test_numeric_parameters_are_ascii_digits_only(value: str) -> None:
    for name in ("mid", "sid"):
        with pytest.raises(UriError) as exc:
            parse_params((f"{name}={value}",), ALLOWED)
        assert name in str(exc.value) and "\n" not in str(exc.value)


def test_numeric_parameters_in_range() -> None:
    assert parse_params(("mid=23",), ALLOWED).mid == 23
    assert parse_params(("mid=4294967295",), ALLOWED).mid == 2**32 - 1
    for value in ("4294967296", "9" * 5000):  # 5000 digits: beyond int()'s digit limit, still 4.00
        with pytest.raises(UriError, match="range"):
            parse_params((f"mid={value}",), ALLOWED)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = ServerProcess(tmp_path_factory.mktemp("strict")).start()
    yield s
    s.stop()


async def send(ctx, msg: Message) -> Message:
    return await asyncio.wait_for(ctx.request(msg).response, 15)


def one_line_diagnostic(resp: Message) -> str:
    text = resp.payload.decode("utf-8")
    assert text and "\n" not in text and resp.opt.content_format == 0, text
    return text


@pytest.mark.req("SC-005", "SC-061")
@pytest.mark.parametrize("transport", ["tls", "dtls"])
async def test_unicode_digits_in_uri_path_are_400(server: ServerProcess, transport: str) -> None:
    cuid = server.client_cuid
    ctx = await raw_client(server.pki)
    try:
        for value in ("²", "２３", "٣"):
            for code, path, body in ((coap.PUT, f"mitigate/cuid={cuid}/mid={quote(value)}", BODY),
                                     (coap.GET, f"mitigate/cuid={cuid}/mid={quote(value)}", b""),
                                     (coap.DELETE, f"mitigate/cuid={cuid}/mid={quote(value)}", b""),
                                     (coap.GET, f"config/sid={quote(value)}", b"")):
                msg = Message(code=code, uri=server.uri(transport, path), payload=body)
                if body:
                    msg.opt.content_format = CF
                resp = await send(ctx, msg)
                assert resp.code == coap.BAD_REQUEST, (value, path, resp.code, resp.payload)
                assert "unsigned integer" in one_line_diagnostic(resp)
        # nothing was created under the number the fullwidth digits look like
        get = Message(code=coap.GET, uri=server.uri(transport, f"mitigate/cuid={cuid}/mid=23"))
        assert (await send(ctx, get)).code == coap.NOT_FOUND
        assert "Traceback" not in server.log.read_text()
        assert server.alive()
    finally:
        await ctx.shutdown()


@pytest.mark.req("SC-005")  # 4.02/5.05 carry a diagnostic; 4.02 itself is RFC 7252 §5.4.1
@pytest.mark.parametrize("transport", ["tls", "dtls"])
async def test_unknown_critical_option_is_402_elective_is_ignored(server: ServerProcess, transport: str) -> None:
    cuid = server.client_cuid
    uri = server.uri(transport, f"mitigate/cuid={cuid}/mid={4100 if transport == 'tls' else 4101}")
    ctx = await raw_client(server.pki)
    try:
        for number in (2049, 31, 19, 9, 5):  # unknown, Q-Block2, Q-Block1, OSCORE, If-None-Match
            msg = Message(code=coap.PUT, uri=uri, payload=BODY, content_format=CF)
            msg.opt.add_option(OpaqueOption(number, b"\x01"))
            resp = await send(ctx, msg)
            assert resp.code == coap.BAD_OPTION, (number, resp.code, resp.payload)
            assert str(number) in one_line_diagnostic(resp)
        assert (await send(ctx, Message(code=coap.GET, uri=uri))).code == coap.NOT_FOUND  # not processed
        msg = Message(code=coap.PUT, uri=uri, payload=BODY, content_format=CF)
        msg.opt.add_option(OpaqueOption(2048, b"\x01"))  # even: elective, ignored
        assert (await send(ctx, msg)).code == coap.CREATED
        proxied = Message(code=coap.GET, uri=uri)
        proxied.opt.proxy_scheme = "coap"
        resp = await send(ctx, proxied)
        assert resp.code == coap.PROXYING_NOT_SUPPORTED and "proxy" in one_line_diagnostic(resp)
        assert (await send(ctx, Message(code=coap.DELETE, uri=uri))).code == coap.DELETED
        # the go-dots probe: an empty confirmable GET with Q-Block2 (RFC 9177), on the root and under DOTS
        for probe_uri in (uri.split("/.well-known")[0] + "/", server.uri(transport, "mitigate")):
            probe = Message(code=coap.GET, transport_tuning=Reliable, uri=probe_uri)
            probe.opt.add_option(UintOption(31, 0))
            assert (await send(ctx, probe)).code == coap.BAD_OPTION
    finally:
        await ctx.shutdown()


@pytest.mark.skipif(COAP_CLIENT is None, reason="coap-client-openssl (libcoap3-bin) not installed")
@pytest.mark.parametrize("transport", ["tls", "dtls"])
def test_libcoap_critical_option_gets_402(server: ServerProcess, tmp_path: Path, transport: str) -> None:
    cuid = server.client_cuid
    body = tmp_path / "body.cbor"
    body.write_bytes(BODY)
    uri = server.uri(transport, f"mitigate/cuid={cuid}/mid={4200 if transport == 'tls' else 4201}")
    r = coap_client(server.pki, "-m", "put", "-t", "271", "-f", str(body), "-O", "2049,0x01", uri)
    assert r.stderr.startswith(b"4.02 "), r.stderr
    r = coap_client(server.pki, "-m", "get", uri)
    assert r.stderr.startswith(b"4.04 "), r.stderr  # the refused PUT was not processed
    # go-dots' Q-Block2 probe: empty GET with option 31
    r = coap_client(server.pki, "-m", "get", "-O", "31", uri.split("/.well-known")[0] + "/")
    assert r.stderr.startswith(b"4.02 "), r.stderr
    r = coap_client(server.pki, "-m", "put", "-t", "271", "-f", str(body), "-O", "2048,0x01", uri)
    assert r.returncode == 0 and not r.stderr.startswith(b"4."), r.stderr  # elective: ignored
    r = coap_client(server.pki, "-m", "delete", uri)
    assert r.returncode == 0, r.stderr
    r = coap_client(server.pki, "-m", "get", server.uri(transport, f"mitigate/cuid={cuid}/mid=%C2%B2"))
    assert r.stderr.startswith(b"4.00 ") and b"unsigned integer" in r.stderr, r.stderr


@pytest.mark.req("SC-005", "SC-061")
@pytest.mark.parametrize("transport", ["tls", "dtls"])
async def test_call_home_server_is_as_strict(tmp_path: Path, transport: str) -> None:
    """The CPE (RFC 9066 Call Home DOTS server) answers over the reversed roles with the same rules."""
    from agent.callhome.client import CallHomeClient
    from agent.callhome.server import CallHomeServer, CallHomeServerOptions
    from agent.pki import init_pki
    from agent.transports.credentials import Credentials

    pki = tmp_path / "pki"
    init_pki(pki, server_sans=("127.0.0.1", "localhost"))
    provider = CallHomeClient(Credentials.from_pki_dir(pki, "server"), [("127.0.0.1", 0)], transports=(transport,))
    await provider.start()
    cpe = CallHomeServer(CallHomeServerOptions(
        Credentials.from_pki_dir(pki, "client"), ("127.0.0.1", provider.addresses[transport][0][1]),
        ["10.98.1.0/24"], transport=transport, db=tmp_path / "cpe.db", reconnect_min=0.2, reconnect_max=1.0))
    await cpe.start()
    try:
        peer = await provider.wait_for_peer(10)
        body = cbor2.dumps({1: {2: [{6: ["10.98.3.2/32"], 32768: ["10.98.1.2/32"], 14: 600}]}})

        def request(code: coap.Code, *segments: str, payload: bytes = b"") -> Message:
            msg = Message(code=code, uri_path=(".well-known", "dots", *segments), payload=payload)
            if payload:
                msg.opt.content_format = CF
            msg.remote = peer.remote
            return msg

        assert provider.context is not None
        for value in ("²", "２３"):
            for segments in (("mitigate", f"cuid={provider.cuid}", f"mid={value}"),
                             ("redirect", f"cuid={provider.cuid}", f"mid={value}")):
                resp = await send(provider.context, request(coap.PUT, *segments, payload=body))
                assert resp.code == coap.BAD_REQUEST, (segments, resp.code, resp.payload)
                assert "unsigned integer" in one_line_diagnostic(resp)
        for number in (2049, 31):
            msg = request(coap.PUT, "mitigate", f"cuid={provider.cuid}", "mid=5", payload=body)
            msg.opt.add_option(OpaqueOption(number, b""))
            resp = await send(provider.context, msg)
            assert resp.code == coap.BAD_OPTION and str(number) in one_line_diagnostic(resp)
        assert cpe.service.entries == {}  # nothing was processed
        msg = request(coap.PUT, "mitigate", f"cuid={provider.cuid}", "mid=5", payload=body)
        msg.opt.add_option(OpaqueOption(2048, b"\x01"))  # elective: ignored
        assert (await send(provider.context, msg)).code == coap.CREATED
    finally:
        await cpe.stop()
        await provider.stop()


@pytest.mark.req("SC-005")
@pytest.mark.parametrize("transport", ["tls", "dtls"])
async def test_call_home_client_heartbeat_endpoint_is_as_strict(tmp_path: Path, transport: str) -> None:
    """The provider's own CoAP site (heartbeats from the CPE) refuses unknown critical options too."""
    from agent.callhome.client import CallHomeClient
    from agent.pki import init_pki
    from agent.transports.credentials import Credentials

    pki = tmp_path / "pki"
    init_pki(pki, server_sans=("127.0.0.1", "localhost"))
    provider = CallHomeClient(Credentials.from_pki_dir(pki, "server"), [("127.0.0.1", 0)], transports=(transport,))
    await provider.start()
    ctx = await raw_client(pki)
    try:
        scheme = "coaps+tcp" if transport == "tls" else "coaps"
        uri = f"{scheme}://127.0.0.1:{provider.addresses[transport][0][1]}/.well-known/dots/hb"
        hb = cbor2.dumps({49: {51: True}})

        def heartbeat() -> Message:
            return Message(code=coap.PUT, uri=uri, payload=hb, content_format=CF, mtype=coap.CON)

        msg = heartbeat()
        msg.opt.add_option(OpaqueOption(2049, b"\x01"))
        resp = await send(ctx, msg)
        assert resp.code == coap.BAD_OPTION and "2049" in one_line_diagnostic(resp)
        assert (await send(ctx, heartbeat())).code == coap.CHANGED
    finally:
        await ctx.shutdown()
        await provider.stop()
