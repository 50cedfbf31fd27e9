"""RFC 9066 §5.2.2 (redirected signaling) and §5.3.1 (prefix lengths) conformance, in process."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import pytest
import pytest_asyncio
from aiocoap import numbers as coap

from agent.client.redirect import Redirection
from agent.codec import MessageType
from agent.codec.messages import encode_members
from agent.numbers import rfc9132
from agent.pki import certificate_cuid, init_pki
from agent.server.app import DotsServer, ServerOptions
from agent.server.settings import Redirect
from agent.transports.credentials import Credentials
from tests.servers import raw_client
from tests.test_callhome_local import Pair, make_pair

CH = "ietf-dots-call-home:"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    init_pki(d, server_sans=("127.0.0.1", "localhost", "alt.example"))
    return d


@pytest_asyncio.fixture(params=["tls", "dtls"])
async def pair(request: pytest.FixtureRequest, pki: Path, tmp_path: Path) -> AsyncIterator[Pair]:
    p = await make_pair(pki, tmp_path, request.param)
    yield p
    await p.cpe.stop()
    await p.provider.stop()


def base_redirect_response() -> aiocoap.Message:
    msg = aiocoap.Message(code=coap.SERVICE_UNAVAILABLE, content_format=rfc9132.CONTENT_FORMAT_DOTS_CBOR,
                          payload=encode_members(MessageType.REDIRECTED_SIGNAL,
                                                 {"alt-server": "alt.example", "alt-server-record": ["127.0.0.2"]}))
    msg.opt.max_age = 600
    return msg


@pytest.mark.req("CH-005")
async def test_call_home_server_never_sends_a_5_03_redirect(pair: Pair) -> None:
    peer = await pair.provider.wait_for_peer(10)
    # even a configuration asking for a base redirection cannot switch it on (CH-005)
    settings = dataclasses.replace(pair.cpe.settings, redirect=Redirect("alt.example", ("127.0.0.2",), 600))
    assert settings.redirect is None
    pair.cpe.settings = settings
    assert pair.cpe.resource.settings.redirect is None
    config = await peer.request(coap.GET, rfc9132.PATH_CONFIG, timeout=10)
    assert config.code == "2.05"
    mid, answer = await peer.mitigate(["10.98.3.2/32"], ["10.98.1.2/32"], lifetime=600)
    assert answer.code == "2.01"
    status = await peer.request(coap.GET, rfc9132.PATH_MITIGATE, f"cuid={peer.client.cuid}", f"mid={mid}")
    assert status.code == "2.05"
    assert peer.discarded_redirects == 0


@pytest.mark.req("CH-006")
async def test_call_home_client_silently_discards_a_5_03_redirect(pair: Pair) -> None:
    peer = await pair.provider.wait_for_peer(10)
    calls: list[str] = []

    async def misbehaving(request: aiocoap.Message) -> aiocoap.Message:  # a CPE that breaks CH-005
        calls.append("/".join(request.opt.uri_path))
        return base_redirect_response()

    pair.cpe.resource._dispatch = misbehaving  # type: ignore[method-assign]
    with pytest.raises(TimeoutError):
        await peer.request(coap.GET, rfc9132.PATH_CONFIG, timeout=2.5)
    assert calls and peer.discarded_redirects >= 1
    # no new connection is attempted by the client: it still talks over the association the CPE opened
    assert pair.provider.ready_peers() == [peer] and not peer.closed


@pytest.mark.req("CH-008", "CH-009", "CH-010")
async def test_call_home_redirect_attributes_are_not_base_dots(pki: Path, tmp_path: Path) -> None:
    """'alt-ch-client', 'alt-ch-client-record' and 'ttl' play no part in base signal channel operations."""
    body = encode_members(MessageType.REDIRECTED_SIGNAL, {f"{CH}alt-ch-client": "alt.example",
                                                          f"{CH}alt-ch-client-record": ["127.0.0.2"],
                                                          f"{CH}ttl": 600})
    # a base DOTS client does not take them for a redirection
    msg = aiocoap.Message(code=coap.SERVICE_UNAVAILABLE, content_format=rfc9132.CONTENT_FORMAT_DOTS_CBOR,
                          payload=body)
    assert Redirection.from_response(msg) is None
    # mixed into a base redirection, they make it invalid: the base client does not act on it
    both = encode_members(MessageType.REDIRECTED_SIGNAL, {"alt-server": "alt.example", f"{CH}ttl": 5,
                                                          f"{CH}alt-ch-client-record": ["127.0.0.9"]})
    msg = aiocoap.Message(code=coap.SERVICE_UNAVAILABLE, content_format=rfc9132.CONTENT_FORMAT_DOTS_CBOR,
                          payload=both)
    msg.opt.max_age = 600
    assert Redirection.from_response(msg) is None
    msg.payload = encode_members(MessageType.REDIRECTED_SIGNAL, {"alt-server": "alt.example"})
    assert Redirection.from_response(msg) is not None  # the same without them is followed
    # a base DOTS server offers no 'redirect' resource to carry them
    server = DotsServer(ServerOptions(credentials=Credentials.from_pki_dir(pki, "server"), listen=["127.0.0.1"],
                                      port=0, db=tmp_path / "s.db", heartbeats=False))
    await server.start()
    ctx = await raw_client(pki)
    try:
        host, port = server.addresses["tls"][0]
        cuid = certificate_cuid(pki / "client.crt")
        req = aiocoap.Message(code=coap.PUT, payload=body, content_format=rfc9132.CONTENT_FORMAT_DOTS_CBOR,
                              uri=f"coaps+tcp://{host}:{port}/.well-known/dots/redirect/cuid={cuid}/mid=1")
        r = await asyncio.wait_for(ctx.request(req).response, 10)
        assert r.code == coap.NOT_FOUND
        # nor does a base mitigation request accept them
        scope = {6: ["192.0.2.0/24"], 14: 60}
        for key, value in ((32773, "alt.example"), (32774, ["127.0.0.2"]), (32775, 600)):
            req = aiocoap.Message(code=coap.PUT, content_format=rfc9132.CONTENT_FORMAT_DOTS_CBOR,
                                  payload=cbor2.dumps({1: {2: [{**scope, key: value}]}}),
                                  uri=f"coaps+tcp://{host}:{port}/.well-known/dots/mitigate/cuid={cuid}/mid=1")
            r = await asyncio.wait_for(ctx.request(req).response, 10)
            assert r.code == coap.BAD_REQUEST, (key, r.code, r.payload)
    finally:
        await ctx.shutdown()
        await server.stop()


@pytest.mark.req("CH-011")
async def test_prefix_lengths_beyond_32_or_128_are_refused(pair: Pair) -> None:
    peer = await pair.provider.wait_for_peer(10)
    cuid = pair.provider.cuid
    good = {6: ["10.98.3.2/32"], 32768: ["10.98.1.2/32"], 14: 60}
    cases: list[dict[int, Any]] = [
        {**good, 32768: ["10.98.1.2/33"]},
        {**good, 32768: ["2001:db8::1/129"]},
        {**good, 6: ["10.98.3.2/33"]},
        {**good, 6: ["2001:db8::/129"]},
    ]
    for i, scope in enumerate(cases):
        answer = await peer.request(coap.PUT, rfc9132.PATH_MITIGATE, f"cuid={cuid}", f"mid={10 + i}",
                                    payload=cbor2.dumps({1: {2: [scope]}}))
        assert answer.code == "4.00", (scope, answer)
    assert pair.cpe.service.entries == {}
    answer = await peer.request(coap.PUT, rfc9132.PATH_MITIGATE, f"cuid={cuid}", "mid=20",
                                payload=cbor2.dumps({1: {2: [good]}}))
    assert answer.code == "2.01", answer
