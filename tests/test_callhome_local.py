"""DOTS Call Home (RFC 9066) over loopback, in process: role reversal on both transports, policy,
consent, redirect, re-establishment with (D)TLS resumption, NAT44 lookups.

The CPE side (``CallHomeServer``) uses the log mitigator here; the namespace tests
(``test_callhome_netns.py``) cover nftables enforcement end to end.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiocoap import numbers as coap

from agent.callhome.client import CallHomeClient, CallHomeError, CallHomePeer
from agent.callhome.nat import StaticMapping, map_sources, parse_conntrack
from agent.callhome.server import CallHomeServer, CallHomeServerOptions, session_config_for_tests
from agent.codec import MessageType
from agent.codec.messages import encode_members
from agent.numbers import rfc9132
from agent.pki import init_pki
from agent.transports.credentials import Credentials

CH = "ietf-dots-call-home:"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    init_pki(d, server_sans=("127.0.0.1", "localhost", "alt.example"))
    return d


class Pair:
    def __init__(self, provider: CallHomeClient, cpe: CallHomeServer) -> None:
        self.provider, self.cpe = provider, cpe

    async def peer(self) -> CallHomePeer:
        return await self.provider.wait_for_peer(10)


async def make_pair(pki: Path, tmp: Path, transport: str, **opts: Any) -> Pair:
    provider = CallHomeClient(Credentials.from_pki_dir(pki, "server"), [("127.0.0.1", 0)], transports=(transport,))
    await provider.start()
    port = provider.addresses[transport][0][1]
    options = CallHomeServerOptions(Credentials.from_pki_dir(pki, "client"), ("127.0.0.1", port), ["10.98.1.0/24"],
                                    transport=transport, db=tmp / f"cpe-{transport}.db", reconnect_min=0.2,
                                    reconnect_max=1.0, terminating_period=1, counter_interval=0.5, **opts)
    cpe = CallHomeServer(options)
    await cpe.start()
    return Pair(provider, cpe)


@pytest_asyncio.fixture(params=["tls", "dtls"])
async def pair(request: pytest.FixtureRequest, pki: Path, tmp_path: Path) -> AsyncIterator[Pair]:
    p = await make_pair(pki, tmp_path, request.param)
    yield p
    await p.cpe.stop()
    await p.provider.stop()


@pytest.mark.req("CH-019", "CH-014", "CH-015")
async def test_role_reversal_mitigate_status_withdraw(pair: Pair) -> None:
    peer = await pair.peer()
    assert pair.cpe.association is not None and pair.cpe.association.cuid == pair.provider.cuid
    mid, answer = await peer.mitigate(["10.98.3.2/32"], ["10.98.1.2/32"], source_ports=[(5000, 5010)],
                                      fqdns=["victim.example"], lifetime=600)
    assert answer.code == "2.01" and answer.scopes[0]["lifetime"] == 600
    scope = await peer.wait_status(mid, ["attack-successfully-mitigated"], 5)
    assert scope[f"{CH}source-prefix"] == ["10.98.1.2/32"]
    action = pair.cpe.service._action(pair.cpe.service.get(pair.provider.cuid, mid))  # type: ignore[arg-type]
    assert action.target_prefixes == (ipaddress.ip_network("10.98.3.2/32"),)  # the FQDN is not enforced
    assert action.source_port_ranges == ((5000, 5010),)
    # outside the internal prefixes: 4.00, nothing stored
    with pytest.raises(CallHomeError) as exc:
        await peer.mitigate(["10.98.3.2/32"], ["192.0.2.1/32"])
    assert exc.value.code == "4.00" and "outside" in exc.value.diagnostic
    assert await peer.withdraw(mid) == "2.02"


@pytest.mark.req("CH-017", "CH-018", "CH-014")
async def test_trigger_false_and_missing_source_refused(pair: Pair) -> None:
    peer = await pair.peer()
    for scope in ({"target-prefix": ["10.98.3.2/32"], f"{CH}source-prefix": ["10.98.1.2/32"],
                   "trigger-mitigation": False, "lifetime": 60},
                  {"target-prefix": ["10.98.3.2/32"], "lifetime": 60},
                  {f"{CH}source-prefix": ["10.98.1.2/32"], "target-fqdn": ["x.example"], "lifetime": 60}):
        body = encode_members(MessageType.MITIGATION, {"scope": [scope]})
        answer = await peer.request(coap.PUT, rfc9132.PATH_MITIGATE, f"cuid={pair.provider.cuid}", "mid=77",
                                    payload=body)
        assert answer.code == "4.00", (scope, answer)
    assert pair.cpe.service.entries == {}


@pytest.mark.req("CH-020", "CH-021")
async def test_manual_consent_approve_and_reject(pki: Path, tmp_path: Path) -> None:
    p = await make_pair(pki, tmp_path, "dtls", consent="manual")
    try:
        peer = await p.peer()
        mid, answer = await peer.mitigate(["10.98.3.2/32"], ["10.98.1.2/32"])
        assert answer.code == "2.01"
        assert (await peer.status(mid))[0]["status"] == "attack-mitigation-in-progress"
        assert [x["mid"] for x in p.cpe.pending()] == [mid]
        log_mitigator = await p.cpe.mitigator("log")
        assert not log_mitigator.installed  # type: ignore[attr-defined]  # pending: nothing enforced
        assert await p.cpe.approve(p.provider.cuid, mid) == "attack-successfully-mitigated"
        assert (await peer.status(mid))[0]["status"] == "attack-successfully-mitigated"
        assert f"{p.provider.cuid}/{mid}" in log_mitigator.installed  # type: ignore[attr-defined]
        mid2, _ = await peer.mitigate(["10.98.3.9/32"], ["10.98.1.3/32"])
        assert await p.cpe.reject(p.provider.cuid, mid2, "printer firmware update") == "attack-mitigation-withdrawn"
        scope = (await peer.status(mid2))[0]
        assert scope["status"] == "attack-mitigation-withdrawn"
        assert scope["conflict-information"]["conflict-cause"] == "request-rejected-legitimate-traffic"
        assert p.cpe.pending() == []
    finally:
        await p.cpe.stop()
        await p.provider.stop()


async def test_legitimate_traffic_is_409_cause_4(pki: Path, tmp_path: Path) -> None:
    p = await make_pair(pki, tmp_path, "tls", legitimate=["10.98.1.200/29"])
    try:
        peer = await p.peer()
        with pytest.raises(CallHomeError) as exc:
            await peer.mitigate(["10.98.3.2/32"], ["10.98.1.201/32"])
        assert exc.value.code == "4.09"
        info = exc.value.members["scope"][0]["conflict-information"]
        assert info["conflict-cause"] == "request-rejected-legitimate-traffic"
    finally:
        await p.cpe.stop()
        await p.provider.stop()


@pytest.mark.req("CH-007")
@pytest.mark.parametrize("transport", ["tls", "dtls"])
async def test_redirect_to_alternate_client(pki: Path, tmp_path: Path, transport: str) -> None:
    p = await make_pair(pki, tmp_path, transport)
    alt = CallHomeClient(Credentials.from_pki_dir(pki, "server"), [("127.0.0.2", 0)], transports=(transport,))
    await alt.start()
    try:
        # the alternate listens on another address; the port of the call stays the configured one
        await alt.stop()
        alt = CallHomeClient(Credentials.from_pki_dir(pki, "server"),
                             [("127.0.0.2", p.cpe.options.client[1])], transports=(transport,))
        await alt.start()
        peer = await p.peer()
        assert await peer.redirect("alt.example", ["127.0.0.2"], ttl=600) == "2.01"
        new = await alt.wait_for_peer(10)
        assert new.cuid == peer.cuid
        assert p.cpe.association is not None and p.cpe.association.name == "alt.example"
    finally:
        await alt.stop()
        await p.cpe.stop()
        await p.provider.stop()


@pytest.mark.req("CH-004")
@pytest.mark.parametrize("transport", ["tls", "dtls"])
async def test_reestablishes_with_resumption(pki: Path, tmp_path: Path, transport: str) -> None:
    p = await make_pair(pki, tmp_path, transport, session_config=session_config_for_tests(1, 2, ack_timeout=0.5))
    try:
        peer = await p.peer()
        await asyncio.sleep(0.5)  # TLS 1.3 tickets arrive after the handshake
        if transport == "tls":
            peer.remote._transport.close()  # the provider side drops the connection
        else:
            # silently forget the association: the CPE's heartbeats go unanswered (no traffic at all)
            peer.remote.channel.close(ConnectionResetError("test"), notify=False)
        again = await _next_peer(p.provider, peer, 15)
        assert again is not peer
        assert p.cpe.history[-1]["resumed"] is True, p.cpe.history
    finally:
        await p.cpe.stop()
        await p.provider.stop()


async def _next_peer(client: CallHomeClient, old: CallHomePeer, timeout: float) -> CallHomePeer:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        for peer in client.ready_peers():
            if peer is not old:
                return peer
        await asyncio.sleep(0.1)
    raise TimeoutError("the CPE did not call again")


@pytest.mark.req("CH-025")
def test_nat_lookup_static_and_conntrack() -> None:
    table = (
        "udp      17 29 src=10.98.1.2 dst=10.98.2.3 sport=42000 dport=9000 src=10.98.2.3 dst=10.98.2.1 "
        "sport=9000 dport=42000 mark=0 use=1\n"
        "udp      17 29 src=10.98.1.3 dst=10.98.2.3 sport=42001 dport=9000 src=10.98.2.3 dst=10.98.2.1 "
        "sport=9000 dport=1024 mark=0 use=1\n"
        "ipv4     2 tcp      6 431999 ESTABLISHED src=10.98.2.1 dst=10.98.2.2 sport=5000 dport=47001 "
        "src=10.98.2.2 dst=10.98.2.1 sport=47001 dport=5000 [ASSURED] mark=0 use=1\n")
    flows = parse_conntrack(table)
    assert len(flows) == 3 and not flows[2].source_translated
    ext = ipaddress.ip_network("10.98.2.1/32")
    target = [ipaddress.ip_network("10.98.2.3/32")]
    assert map_sources(ext, [(1024, 1024)], target, [], flows) == [(ipaddress.ip_address("10.98.1.3"), None)]
    assert [a for a, _ in map_sources(ext, [], target, [], flows)] == [ipaddress.ip_address("10.98.1.2"),
                                                                       ipaddress.ip_address("10.98.1.3")]
    assert map_sources(ext, [], [ipaddress.ip_network("10.98.9.0/24")], [], flows) == []
    static = StaticMapping.parse("10.98.2.1:8080=10.98.1.5:80/6")
    assert map_sources(ext, [(8080, 8080)], target, [static], []) == [(ipaddress.ip_address("10.98.1.5"), 80)]
    assert map_sources(ext, [(8081, 8081)], target, [static], []) == []
