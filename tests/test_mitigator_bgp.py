"""Flowspec and RTBH mitigators against a real BGP peer (gobgpd as the "router") on loopback.

The mitigators own a gobgpd speaker on 127.0.0.2 that connects to a second gobgpd, the router,
listening on 127.0.0.3 (ports and gRPC API ports are free ports of this host; nothing leaves
loopback).  Assertions read the router's RIB: what a real router would receive.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.mitigators import MitigationAction, Mitigator, MitigatorError, make_mitigator
from agent.mitigators.bgp import GoBgpSpeaker, gobgpd_config
from agent.mitigators.flowspec import FlowRule, FlowspecMitigator, flow_rules
from agent.mitigators.rtbh import RtbhMitigator

NET = ipaddress.ip_network
HAVE_GOBGP = bool(shutil.which("gobgpd") and shutil.which("gobgp"))
needs_gobgp = pytest.mark.skipif(not HAVE_GOBGP, reason="gobgpd/gobgp not installed (apt-get install gobgpd)")
SPEAKER_IP, ROUTER_IP = "127.0.0.2", "127.0.0.3"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# --- rule generation (no BGP needed) ------------------------------------------------------
def test_flow_rules_ports_protocols_families() -> None:
    a = MitigationAction(key="c/1", target_prefixes=(NET("198.51.100.0/25"), NET("198.51.100.128/25"),
                                                       NET("2001:db8::/48")),
                         target_port_ranges=((80, 80), (1000, 2000), (1500, 2500)), target_protocols=(6, 47))
    rules = flow_rules(a)
    assert [r.match_args() for r in rules] == [
        ["destination", "198.51.100.0/24", "protocol", "==6", "destination-port", "==80", ">=1000&<=2500"],
        ["destination", "198.51.100.0/24", "protocol", "==47"],
        ["destination", "2001:db8::/48", "protocol", "==6", "destination-port", "==80", ">=1000&<=2500"],
        ["destination", "2001:db8::/48", "protocol", "==47"],
    ]
    assert {r.family for r in rules} == {"ipv4-flowspec", "ipv6-flowspec"}


def test_flow_rules_call_home_sources_and_icmp() -> None:
    a = MitigationAction(key="k", source_prefixes=(NET("2001:db8:1::/64"),), source_icmp_type_ranges=((8, 8),),
                         source_port_ranges=((1024, 65535),))
    assert [r.match_args() for r in flow_rules(a)] == [
        ["source", "2001:db8:1::/64", "protocol", "==6", "==17", "==33", "==132", "source-port", ">=1024"],
        ["source", "2001:db8:1::/64", "protocol", "==58", "icmp-type", "==8"],
    ]


def test_flow_rule_round_trips_gobgp_json() -> None:
    nlri = [{"type": 1, "value": {"prefix": "198.51.100.0/24"}}, {"type": 3, "value": [
        {"op": 1, "value": 6}, {"op": 129, "value": 17}]}, {"type": 5, "value": [
            {"op": 19, "value": 1000}, {"op": 85, "value": 2000}, {"op": 129, "value": 80}]}]
    rule = FlowRule.from_nlri(4, nlri)
    assert rule == FlowRule.make(4, "198.51.100.0/24", protocols=[6, 17], dports=[(1000, 2000), (80, 80)])
    assert FlowRule.from_nlri(4, [{"type": 9, "value": [{"op": 129, "value": 2}]}]) is None  # tcp-flags: foreign


def test_rtbh_refuses_source_only_requests() -> None:
    m = RtbhMitigator(GoBgpSpeaker("127.0.0.1:1"), next_hop="192.0.2.254")
    with pytest.raises(MitigatorError):
        m.routes_of(MitigationAction(key="k", source_prefixes=(NET("192.0.2.0/24"),)))


def test_make_mitigator_factory(tmp_path: Path) -> None:
    assert make_mitigator("log").name == "log"
    assert make_mitigator("dots-agent:nftables", {"table-name": "dots"}).name == "nftables"
    fs = make_mitigator("flowspec", {"rate-limit": "12500", "speaker": {"api": "127.0.0.1:1"}})
    assert isinstance(fs, FlowspecMitigator) and fs.rate_limit == 12500.0
    rt = make_mitigator("rtbh", {"next-hop": "192.0.2.254", "speaker": {"api": "127.0.0.1:1"}})
    assert isinstance(rt, RtbhMitigator) and rt.speaker is fs.speaker  # shared speaker per api
    assert isinstance(rt, Mitigator)
    with pytest.raises(ValueError):
        make_mitigator("nonsense")


# --- against a real BGP peer ----------------------------------------------------------------
class Router:
    """A gobgpd standing in for the router that receives the announcements."""

    def __init__(self, workdir: Path, speaker_as: int = 64512) -> None:
        self.api_port = free_port()
        self.bgp_port = free_port(ROUTER_IP)
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "router.json"
        conf.write_text(json.dumps(gobgpd_config({
            "as": 64513, "router-id": ROUTER_IP, "listen-address": ROUTER_IP, "listen-port": self.bgp_port,
            "neighbors": [{"address": SPEAKER_IP, "as": speaker_as, "passive": True}]})))
        self.log = open(workdir / "router.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(["gobgpd", "-f", str(conf), "-t", "json", "--api-hosts",
                                      f"127.0.0.1:{self.api_port}", "--pprof-disable", "-p"],
                                     stdout=self.log, stderr=self.log)

    def cli(self, *args: str) -> Any:
        out = subprocess.run(["gobgp", "-p", str(self.api_port), *args, "-j"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
        return json.loads(out or "null")

    def rib(self, family: str) -> dict[str, list[dict[str, Any]]]:
        return self.cli("global", "rib", "-a", family) or {}

    def established(self) -> bool:
        try:
            peers = self.cli("neighbor") or []
        except subprocess.CalledProcessError:
            return False
        return any(p.get("state", {}).get("session_state") == 6 for p in peers)  # ESTABLISHED

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


async def wait_for(pred: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


@pytest.fixture
def router(tmp_path: Path) -> Iterator[Router]:
    if not HAVE_GOBGP:
        pytest.skip("gobgpd/gobgp not installed (apt-get install gobgpd)")
    r = Router(tmp_path / "router")
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
async def speaker(tmp_path: Path, router: Router) -> AsyncIterator[GoBgpSpeaker]:
    sp = GoBgpSpeaker(f"127.0.0.1:{free_port()}", workdir=tmp_path / "speaker", stop_on_close=True, config={
        "as": 64512, "router-id": SPEAKER_IP, "listen-address": SPEAKER_IP, "listen-port": -1,
        "neighbors": [{"address": ROUTER_IP, "as": 64513, "port": router.bgp_port, "connect-retry": 1}]})
    await sp.start()
    try:
        await wait_for(router.established, 20)
        yield sp
    finally:
        await sp.stop()


def flow_keys(router: Router, family: str) -> dict[str, str]:
    """Router's flowspec RIB: NLRI text -> extended communities text."""
    out = {}
    for dest, paths in router.rib(family).items():
        ecs = [ec for a in paths[0]["attrs"] if a["type"] == 16 for ec in a["value"]]
        out[dest] = json.dumps(ecs)
    return out


@needs_gobgp
async def test_flowspec_apply_remove_reconcile(speaker: GoBgpSpeaker, router: Router) -> None:
    m = FlowspecMitigator(speaker)
    a1 = MitigationAction(key="cuid-a/1", target_prefixes=(NET("198.51.100.0/24"), NET("2001:db8:1::/48")),
                          target_port_ranges=((53, 53),), target_protocols=(17,))
    await m.apply(a1)
    await wait_for(lambda: len(router.rib("ipv4-flowspec")) == 1 and len(router.rib("ipv6-flowspec")) == 1)
    v4 = flow_keys(router, "ipv4-flowspec")
    assert list(v4) == ["[destination: 198.51.100.0/24][protocol: ==udp][destination-port: ==53]"]
    assert '"rate": 0' in next(iter(v4.values()))  # traffic-rate 0 = discard
    assert "2001:db8:1::/48" in next(iter(router.rib("ipv6-flowspec")))

    calls: list[tuple[str, ...]] = []
    real_cli = speaker.cli

    async def counting(*args: str, check: bool = True) -> str:
        calls.append(args)
        return await real_cli(*args, check=check)

    speaker.cli = counting  # type: ignore[method-assign]
    await m.apply(a1)  # idempotent: nothing sent
    assert calls == []
    speaker.cli = real_cli  # type: ignore[method-assign]

    # the same NLRI from a rate-limit action of another key: discard (stricter) stays
    a2 = MitigationAction(key="cuid-b/7", target_prefixes=(NET("203.0.113.8/29"),), action="rate-limit",
                          rate_limit_pps=10)
    await m.apply(a2)
    await wait_for(lambda: len(router.rib("ipv4-flowspec")) == 2)
    assert '"rate": 10000' in flow_keys(router, "ipv4-flowspec")["[destination: 203.0.113.8/29]"]

    await m.remove("cuid-a/1")
    await wait_for(lambda: list(router.rib("ipv4-flowspec")) == ["[destination: 203.0.113.8/29]"]
                   and not router.rib("ipv6-flowspec"))
    await m.remove("cuid-a/1")  # no-op

    # a "restarted server": a fresh mitigator reconciles to a3 only -> a2's rule (stale) goes
    m2 = FlowspecMitigator(speaker)
    a3 = MitigationAction(key="cuid-c/2", target_prefixes=(NET("192.0.2.1/32"),), target_protocols=(6,))
    await m2.reconcile([a3])
    await wait_for(lambda: list(router.rib("ipv4-flowspec")) == ["[destination: 192.0.2.1/32][protocol: ==tcp]"])
    assert await m2.counters("cuid-c/2") == await m2.counters("unknown")  # zeros: no Flowspec feedback
    await m2.reconcile([])
    await wait_for(lambda: not router.rib("ipv4-flowspec"))


@needs_gobgp
async def test_rtbh_apply_remove_reconcile(speaker: GoBgpSpeaker, router: Router) -> None:
    m = RtbhMitigator(speaker, next_hop="192.0.2.254")
    a1 = MitigationAction(key="cuid-a/1", target_prefixes=(NET("198.51.100.7/32"), NET("2001:db8::7/128")))
    await m.apply(a1)
    await wait_for(lambda: "198.51.100.7/32" in router.rib("ipv4") and "2001:db8::7/128" in router.rib("ipv6"))
    path = router.rib("ipv4")["198.51.100.7/32"][0]
    comms = next(a["communities"] for a in path["attrs"] if a["type"] == 8)
    assert (65535 << 16) | 666 in comms  # BLACKHOLE 65535:666
    assert (65535 << 16) | 65281 in comms  # NO_EXPORT
    assert next(a["nexthop"] for a in path["attrs"] if a["type"] == 3) == "192.0.2.254"
    v6 = router.rib("ipv6")["2001:db8::7/128"][0]
    assert next(a["nexthop"] for a in v6["attrs"] if a["type"] == 14) == "100::1"

    # two keys black-holing one prefix: it stays until both are gone
    a2 = MitigationAction(key="cuid-b/1", target_prefixes=(NET("198.51.100.7/32"),))
    await m.apply(a2)
    await m.remove("cuid-a/1")
    await wait_for(lambda: "2001:db8::7/128" not in router.rib("ipv6"))
    assert "198.51.100.7/32" in router.rib("ipv4")

    m2 = RtbhMitigator(speaker, next_hop="192.0.2.254")  # after a restart: reconcile removes the stale one
    await m2.reconcile([MitigationAction(key="cuid-c/3", target_prefixes=(NET("203.0.113.0/24"),))])
    await wait_for(lambda: list(router.rib("ipv4")) == ["203.0.113.0/24"])
    await m2.remove("cuid-c/3")
    await wait_for(lambda: not router.rib("ipv4"))
