"""NftablesMitigator: rule generation (pure) and real packet drops inside test network namespaces.

The namespace tests build an "attacker" and a "target" namespace joined by one veth pair
(10.99.0.0/24 and fd00:99::/64 exist only inside them), install the mitigator in the target
namespace and send real packets from the attacker.  No traffic leaves the namespaces.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import statistics
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from agent.mitigators import Counters, MitigationAction, Mitigator, MitigatorError, NftablesMitigator
from agent.mitigators.nftables import key_hash, rule_matches
from tests.netns import Link, Topology, skip_reason

NET = ipaddress.ip_network
T4, A4, A4B = "10.99.0.2", "10.99.0.1", "10.99.0.3"
T6, A6, A6B = "fd00:99::2", "fd00:99::1", "fd00:99::3"
PAYLOAD = 64
IP4_LEN = PAYLOAD + 8 + 20  # what nft counters count per UDP datagram (network layer)
IP6_LEN = PAYLOAD + 8 + 40


# --- rule generation (no privileges needed) --------------------------------------------
def test_rules_udp_port_v4() -> None:
    a = MitigationAction(
        key="c/1",
        target_prefixes=(NET("10.99.0.2/32"),),
        target_port_ranges=((5000, 5000),),
        target_protocols=(17,),
    )
    assert rule_matches(a) == ["ip daddr { 10.99.0.2/32 } meta l4proto { 17 } th dport { 5000 }"]


def test_rules_mixed_families_and_merging() -> None:
    a = MitigationAction(
        key="k",
        target_prefixes=(NET("10.0.0.0/8"), NET("10.1.0.0/16"), NET("2001:db8::/32")),
        target_port_ranges=((80, 90), (85, 100), (443, 443)),
    )
    assert rule_matches(a) == [
        "ip daddr { 10.0.0.0/8 } meta l4proto { 6, 17, 33, 132 } th dport { 80-100, 443 }",
        "ip6 daddr { 2001:db8::/32 } meta l4proto { 6, 17, 33, 132 } th dport { 80-100, 443 }",
    ]
    assert rule_matches(a, "ip6") == [rule_matches(a)[1]]


def test_rules_call_home_sources_icmp_and_other_protocols() -> None:
    a = MitigationAction(
        key="k",
        target_prefixes=(NET("192.0.2.0/24"),),
        source_prefixes=(NET("198.51.100.0/24"), NET("2001:db8::/32")),
        source_port_ranges=((1024, 65535),),
        source_icmp_type_ranges=((0, 0), (8, 8)),
        target_protocols=(6, 1, 47),
    )
    # IPv6 source with an IPv4-only target cannot match: no ip6 rule
    assert rule_matches(a) == [
        "ip daddr { 192.0.2.0/24 } ip saddr { 198.51.100.0/24 } meta l4proto { 6 } th sport { 1024-65535 }",
        "ip daddr { 192.0.2.0/24 } ip saddr { 198.51.100.0/24 } icmp type { 0, 8 }",
        "ip daddr { 192.0.2.0/24 } ip saddr { 198.51.100.0/24 } meta l4proto { 47 }",
    ]


def test_rules_all_protocols() -> None:
    a = MitigationAction(key="k", source_prefixes=(NET("2001:db8::/32"),))
    assert rule_matches(a) == ["ip6 saddr { 2001:db8::/32 }"]
    assert rule_matches(a, "ip") == []


def test_constructor_validates_names() -> None:
    with pytest.raises(ValueError):
        NftablesMitigator(table="bad name; flush ruleset")
    with pytest.raises(ValueError):
        NftablesMitigator(family="bridge")


async def test_missing_nft_binary_is_a_mitigator_error() -> None:
    m = NftablesMitigator(nft="/nonexistent/nft")
    with pytest.raises(MitigatorError):
        await m.apply(MitigationAction(key="k", target_prefixes=(NET("10.99.0.2/32"),)))


# --- namespace tests ----------------------------------------------------------------------
_SKIP = skip_reason("nft")
netns_only = [pytest.mark.netns, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    if _SKIP:
        pytest.skip(_SKIP)
    with Topology(
        ["attacker", "target"],
        [
            Link(
                "attacker",
                "target",
                [f"{A4}/24", f"{A4B}/24", f"{A6}/64", f"{A6B}/64"],
                [f"{T4}/24", f"{T6}/64"],
            )
        ],
    ) as t:
        yield t


@pytest.fixture
async def mit(topo: Topology) -> AsyncIterator[NftablesMitigator]:
    m = NftablesMitigator(
        table=f"dots_test_{secrets.token_hex(3)}", netns=topo["target"].name, keep_on_close=False
    )
    yield m
    await m.close()
    assert topo["target"].run("nft", "list", "tables").stdout.count(m.table) == 0


def send_udp(topo: Topology, dst: str, counts: dict[int, int], src: str | None = None) -> dict[int, int]:
    """Send counts[port] datagrams from the attacker to dst; return what the target received."""
    fam = 6 if ":" in dst else 4
    with topo["target"].udp_receiver(list(counts), fam) as rx:
        for port, n in counts.items():
            topo["attacker"].udp_send(dst, port, n, src=src, size=PAYLOAD, gap=0.0005)
        time.sleep(0.1)
        return {p: c[0] for p, c in rx.stop().items()}


def udp_action(key: str, dst: str, port: int = 5000, **kw: object) -> MitigationAction:
    return MitigationAction(
        key=key,
        target_prefixes=(NET(dst),),
        target_port_ranges=((port, port),),
        target_protocols=(17,),
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.req("SC-108")
@pytest.mark.parametrize(("dst", "length"), [(T4, IP4_LEN), (T6, IP6_LEN)], ids=["ipv4", "ipv6"])
@pytest.mark.netns
@pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")
async def test_drop_udp_port_then_remove(
    topo: Topology, mit: NftablesMitigator, dst: str, length: int
) -> None:
    assert isinstance(mit, Mitigator)
    prefix = f"{dst}/{32 if ':' not in dst else 128}"
    assert send_udp(topo, dst, {5000: 5, 5001: 5}) == {5000: 5, 5001: 5}  # baseline
    await mit.apply(udp_action("cuid-a/1", prefix))
    got = send_udp(topo, dst, {5000: 50, 5001: 20})
    assert got == {5000: 0, 5001: 20}
    assert await mit.counters("cuid-a/1") == Counters(bytes_dropped=50 * length, pkts_dropped=50)
    # termination removes the mitigation: traffic flows again, no rule or counter left
    await mit.remove("cuid-a/1")
    assert send_udp(topo, dst, {5000: 10}) == {5000: 10}
    assert await mit.counters("cuid-a/1") == Counters()
    listing = topo["target"].run("nft", "list", "table", "inet", mit.table).stdout
    assert f"k_{key_hash('cuid-a/1')}" not in listing and "jump" not in listing
    await mit.remove("cuid-a/1")  # idempotent


@pytest.mark.netns
@pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")
@pytest.mark.parametrize(("dst", "bad", "good"), [(T4, A4B, A4), (T6, A6B, A6)], ids=["ipv4", "ipv6"])
async def test_source_prefix_blocks_only_that_source(
    topo: Topology, mit: NftablesMitigator, dst: str, bad: str, good: str
) -> None:
    plen = 128 if ":" in dst else 32
    await mit.apply(
        MitigationAction(
            key="ch/1", target_prefixes=(NET(f"{dst}/{plen}"),), source_prefixes=(NET(f"{bad}/{plen}"),)
        )
    )
    assert send_udp(topo, dst, {5000: 30}, src=bad) == {5000: 0}
    assert send_udp(topo, dst, {5000: 30}, src=good) == {5000: 30}
    assert (await mit.counters("ch/1")).pkts_dropped == 30


@pytest.mark.netns
@pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")
@pytest.mark.parametrize(("dst", "src", "echo"), [(T4, A4, 8), (T6, A6, 128)], ids=["ipv4", "ipv6"])
async def test_icmp_type_range(topo: Topology, mit: NftablesMitigator, dst: str, src: str, echo: int) -> None:
    plen = 128 if ":" in dst else 32
    assert topo["attacker"].icmp_echo(dst, 2) == 2
    await mit.apply(
        MitigationAction(
            key="icmp/1",
            target_prefixes=(NET(f"{dst}/{plen}"),),
            source_prefixes=(NET(f"{src}/{plen}"),),
            source_icmp_type_ranges=((echo, echo),),
        )
    )
    assert topo["attacker"].icmp_echo(dst, 3, timeout=0.3, src=src) == 0
    assert (await mit.counters("icmp/1")).pkts_dropped == 3
    assert send_udp(topo, dst, {5000: 10}) == {5000: 10}  # other protocols untouched (and ND still works)


@pytest.mark.netns
@pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")
async def test_reapply_replaces_rules_and_keeps_counters(topo: Topology, mit: NftablesMitigator) -> None:
    await mit.apply(udp_action("k/1", f"{T4}/32", 5000))
    await mit.apply(udp_action("k/1", f"{T4}/32", 5000))  # idempotent
    assert send_udp(topo, T4, {5000: 10, 5001: 10}) == {5000: 0, 5001: 10}
    await mit.apply(udp_action("k/1", f"{T4}/32", 5001))  # same key: replaced
    assert send_udp(topo, T4, {5000: 10, 5001: 10}) == {5000: 10, 5001: 0}
    assert (await mit.counters("k/1")).pkts_dropped == 20  # cumulative across re-apply
    assert list((await mit.all_counters()).values()) == [Counters(20 * IP4_LEN, 20)]


@pytest.mark.netns
@pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")
async def test_rate_limit(topo: Topology, mit: NftablesMitigator) -> None:
    await mit.apply(udp_action("rl/1", f"{T4}/32", action="rate-limit", rate_limit_pps=20))
    with topo["target"].udp_receiver([5000]) as rx:
        topo["attacker"].udp_send(T4, 5000, 300, size=PAYLOAD, gap=0)
        time.sleep(0.1)
        got = rx.stop()[5000][0]
    dropped = (await mit.counters("rl/1")).pkts_dropped
    assert 0 < got < 100 and got + dropped == 300
    await mit.apply(udp_action("rl/1", f"{T4}/32"))  # rate-limit -> drop: the limit object goes
    assert "limit l_" not in topo["target"].run("nft", "list", "table", "inet", mit.table).stdout


@pytest.mark.netns
@pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")
async def test_reconcile_after_restart(topo: Topology, mit: NftablesMitigator) -> None:
    await mit.apply(udp_action("a/1", f"{T4}/32", 5000))
    await mit.apply(udp_action("b/1", f"{T4}/32", 5001))
    await mit.apply(udp_action("c/1", f"{T4}/32", 5002, action="rate-limit", rate_limit_pps=5))
    send_udp(topo, T4, {5001: 7})
    # "restart": a fresh instance, keeping the kernel state, told that only b and d are active
    m2 = NftablesMitigator(table=mit.table, netns=mit.netns, keep_on_close=False)
    await m2.reconcile([udp_action("b/1", f"{T4}/32", 5001), udp_action("d/1", f"{T4}/32", 5003)])
    listing = topo["target"].run("nft", "list", "table", "inet", mit.table).stdout
    for gone in ("a/1", "c/1"):
        assert key_hash(gone) not in listing
    assert send_udp(topo, T4, {5000: 5, 5001: 5, 5002: 5, 5003: 5}) == {5000: 5, 5001: 0, 5002: 5, 5003: 0}
    assert (await m2.counters("b/1")).pkts_dropped == 12  # counters survive reconcile
    await m2.reconcile([])
    assert send_udp(topo, T4, {5001: 3, 5003: 3}) == {5001: 3, 5003: 3}
    assert "jump" not in topo["target"].run("nft", "list", "table", "inet", mit.table).stdout


@pytest.mark.netns
@pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")
async def test_foreign_tables_untouched_and_keep_on_close(topo: Topology) -> None:
    tgt = topo["target"]
    foreign = (
        "table inet foreign_fw {\n\tchain input {\n"
        "\t\ttype filter hook input priority filter; policy accept;\n"
        "\t\tudp dport 5009 counter drop\n\t}\n}\n"
    )
    tgt.run("nft", "-f", "-", input=foreign)
    tgt.run("nft", "add", "table", "ip", "dots_agent")  # same name, other family: not ours either
    try:
        before = tgt.run("nft", "list", "table", "inet", "foreign_fw").stdout
        m = NftablesMitigator(netns=tgt.name)  # default table inet dots_agent, keep on close
        await m.apply(udp_action("x/1", f"{T4}/32"))
        await m.reconcile([udp_action("y/1", f"{T4}/32", 5001)])
        await m.close()
        assert "dots_agent" in tgt.run("nft", "list", "tables").stdout
        m2 = NftablesMitigator(netns=tgt.name, keep_on_close=False)
        assert send_udp(topo, T4, {5001: 4}) == {5001: 0}  # kept across close
        assert (await m2.counters("y/1")).pkts_dropped == 4
        await m2.close()
        tables = tgt.run("nft", "list", "tables").stdout
        assert "table inet dots_agent" not in tables and "table ip dots_agent" in tables
        assert tgt.run("nft", "list", "table", "inet", "foreign_fw").stdout == before
    finally:
        tgt.run("nft", "delete", "table", "inet", "foreign_fw", check=False)
        tgt.run("nft", "delete", "table", "ip", "dots_agent", check=False)
        tgt.run("nft", "delete", "table", "inet", "dots_agent", check=False)


@pytest.mark.netns
@pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")
async def test_recovers_when_table_deleted_behind_its_back(topo: Topology, mit: NftablesMitigator) -> None:
    await mit.apply(udp_action("a/1", f"{T4}/32", 5000))
    topo["target"].run("nft", "delete", "table", "inet", mit.table)
    await mit.apply(udp_action("b/1", f"{T4}/32", 5001))  # stale cache -> reload -> retry
    assert send_udp(topo, T4, {5000: 3, 5001: 3}) == {5000: 3, 5001: 0}


@pytest.mark.netns
@pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")
async def test_apply_latency(topo: Topology, mit: NftablesMitigator) -> None:
    n = 100
    lat = []
    for i in range(n):
        await mit.apply(udp_action(f"lat/{i}", f"10.98.{i // 250}.{i % 250 + 1}/32", 1000 + i))
        assert mit.last_apply_seconds is not None
        lat.append(mit.last_apply_seconds)
    t0 = time.perf_counter()
    await asyncio.gather(*(mit.counters(f"lat/{i}") for i in range(20)))
    per_counter = (time.perf_counter() - t0) / 20
    t0 = time.perf_counter()
    await mit.reconcile([udp_action(f"lat/{i}", f"10.98.0.{i + 1}/32", 1000 + i) for i in range(n)])
    rec = time.perf_counter() - t0
    print(
        f"\nnft_apply_ms median={statistics.median(lat) * 1e3:.1f} "
        f"p95={sorted(lat)[int(n * 0.95)] * 1e3:.1f} (with up to {n} keys installed); "
        f"counters_ms={per_counter * 1e3:.1f}; reconcile_{n}_ms={rec * 1e3:.0f}"
    )
