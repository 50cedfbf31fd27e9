"""Third-party notification (RFC 8903 §3.2.3): a real MitigationService notifying a local HTTP
receiver and local syslog receivers (UDP and TCP) on loopback."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.mitigators.log import LogMitigator
from agent.server.mitigations import MitigationService
from agent.server.notify import ThirdPartyNotifier, syslog_message
from agent.server.settings import ClientPolicy, ServerSettings
from agent.store.sqlite import SqliteStore

CUID_A, CUID_B = "cuid-customer-a", "cuid-customer-b"


@dataclass
class Receivers:
    http: list[dict[str, Any]] = field(default_factory=list)
    http_status: int = 200
    http_delay: float = 0.0
    udp: list[bytes] = field(default_factory=list)
    tcp: list[bytes] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)


async def start_receivers(rx: Receivers) -> list[Any]:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
        body = await reader.readexactly(length)
        assert head.startswith(b"POST /events HTTP/1.1")
        await asyncio.sleep(rx.http_delay)
        rx.http.append(json.loads(body))
        writer.write(f"HTTP/1.1 {rx.http_status} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:  # RFC 6587 octet counting
            try:
                n = int((await reader.readuntil(b" "))[:-1])
            except (asyncio.IncompleteReadError, ValueError):
                return
            rx.tcp.append(await reader.readexactly(n))

    class Udp(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            rx.udp.append(data)

    loop = asyncio.get_running_loop()
    hs = await asyncio.start_server(http, "127.0.0.1", 0)
    ts = await asyncio.start_server(tcp, "127.0.0.1", 0)
    ut, _ = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
    rx.ports = {"http": hs.sockets[0].getsockname()[1], "tcp": ts.sockets[0].getsockname()[1],
                "udp": ut.get_extra_info("sockname")[1]}
    return [hs, ts, ut]


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[MitigationService]:
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    mitigator = LogMitigator()

    async def mitigators(name: str) -> LogMitigator:
        return mitigator

    settings = ServerSettings(allow_unlisted=False, clients=(
        ClientPolicy("customer-a", CUID_A, None), ClientPolicy("customer-b", CUID_B, None)))
    svc = MitigationService(store, mitigators, settings, counter_interval=3600)
    await svc.start()
    yield svc
    await svc.stop()
    await store.close()


async def until(pred: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_webhook_and_syslog_parties_with_filters(service: MitigationService) -> None:
    rx = Receivers()
    servers = await start_receivers(rx)
    parties = [
        {"name": "soc-webhook", "webhook": {"url": f"http://127.0.0.1:{rx.ports['http']}/events"},
         "filter": {"event": ["mitigation-created", "mitigation-status-change"],
                    "status": ["attack-mitigation-in-progress", "dots-client-withdrawn-mitigation"],
                    "client": ["customer-a"]},
         "field": ["cuid", "mid", "target", "status"]},
        {"name": "noc-udp", "syslog": {"address": "127.0.0.1", "port": rx.ports["udp"], "facility": 16}},
        {"name": "noc-tcp", "syslog": {"address": "127.0.0.1", "port": rx.ports["tcp"], "protocol": "tcp"}},
        {"name": "off", "enabled": False, "webhook": {"url": "http://127.0.0.1:9/x"}},
    ]
    n = ThirdPartyNotifier(parties)
    n.attach(service)
    try:
        scope = {"target-prefix": ["198.51.100.0/24"], "target-protocol": [6], "lifetime": 3600}
        assert (await service.put(CUID_A, 1, scope)).code == "2.01"
        assert (await service.put(CUID_B, 1, {"target-prefix": ["203.0.113.0/24"], "lifetime": 60})).code == "2.01"
        assert (await service.put("cuid-intruder", 2, {"target-prefix": ["198.51.100.0/24"],
                                                       "lifetime": 3600})).code == "4.03"  # not authorised
        await service.delete(CUID_A, 1)
        await until(lambda: len(rx.http) == 2 and len(rx.udp) >= 5 and len(rx.tcp) >= 5)
        await asyncio.sleep(0.2)
    finally:
        await n.close()
        for s in servers:
            s.close()

    # the webhook: customer-a only, created + status change to 5, only the configured fields
    assert [d["event"] for d in rx.http] == ["mitigation-created", "mitigation-status-change"]
    assert rx.http[0]["status"] == "attack-mitigation-in-progress"
    assert rx.http[1]["status"] == "dots-client-withdrawn-mitigation"
    assert set(rx.http[0]) == {"event", "time", "party", "cuid", "mid", "target", "status"}
    assert rx.http[0]["target"] == {"target-prefix": ["198.51.100.0/24"], "target-protocol": [6]}
    assert rx.http[0]["cuid"] == CUID_A and rx.http[0]["mid"] == 1

    # syslog: everything, all fields, RFC 5424 framing
    for msgs in (rx.udp, rx.tcp):
        docs = [json.loads(m[m.index(b"] ") + 2:]) for m in msgs]
        events = [(d["event"], d["cuid"], d["mid"]) for d in docs]
        assert events == [("mitigation-created", CUID_A, 1), ("mitigation-created", CUID_B, 1),
                          ("request-rejected", "cuid-intruder", 2), ("mitigation-status-change", CUID_A, 1),
                          ("mitigation-terminated", CUID_A, 1)]
        assert docs[0]["client-name"] == "customer-a" and docs[0]["mitigator"] == "log"
        assert set(docs[0]["counters"]) == {"bytes-dropped", "pkts-dropped", "bps-dropped", "pps-dropped"}
        assert 3590 <= docs[0]["lifetime"] <= 3600
        assert docs[2]["code"].startswith("4.") and docs[2]["diagnostic"]
        assert re.match(rb"<133>1 \d{4}-\d\d-\d\dT[\d:.]+Z \S+ dots-agent \d+ mitigation-created "
                        rb"\[dots@32473 event=\"mitigation-created\" cuid=\"cuid-customer-a\" mid=\"1\" "
                        rb"status=\"attack-mitigation-in-progress\"\] \{", msgs[0])
        assert msgs[2].startswith(b"<132>1 ")  # warning severity for the rejection
    assert n.stats["off"].queued == 0
    assert n.stats["soc-webhook"].sent == 2 and n.stats["noc-tcp"].failed == 0


async def test_slow_or_dead_parties_never_block_the_service(service: MitigationService) -> None:
    rx = Receivers(http_delay=4.0)
    servers = await start_receivers(rx)
    n = ThirdPartyNotifier([
        {"name": "slow", "webhook": {"url": f"http://127.0.0.1:{rx.ports['http']}/events", "timeout": 1}},
        {"name": "dead", "syslog": {"address": "127.0.0.1", "port": 9, "protocol": "tcp"}},
    ], queue_size=4)
    n.attach(service)
    try:
        t0 = time.monotonic()
        for mid in range(1, 21):
            out = await service.put(CUID_A, mid, {"target-prefix": [f"10.0.{mid}.0/24"], "lifetime": 60})
            assert out.code == "2.01"
        assert time.monotonic() - t0 < 3.0  # the 4 s receiver did not slow the requests down
        await until(lambda: n.stats["dead"].failed >= 4, 10)  # connection refused: counted
        assert n.stats["slow"].dropped > 0  # bounded queue: the overflow was dropped and counted
        await until(lambda: n.stats["slow"].failed >= 1, 5)  # 1 s timeout
    finally:
        await n.close(drain=0)
        for s in servers:
            s.close()


def test_party_validation_and_syslog_format() -> None:
    with pytest.raises(ValueError):
        ThirdPartyNotifier([{"name": "x", "webhook": {"url": "ftp://a/b"}}])
    with pytest.raises(ValueError):
        ThirdPartyNotifier([{"name": "x", "syslog": {"address": "a"}, "field": ["bogus"]}])
    n = ThirdPartyNotifier.from_config({"party": [{"name": "noc", "syslog": {"address": "192.0.2.50",
                                                                             "protocol": "tcp"}}]})
    assert n.parties[0].port == 514 and n.parties[0].protocol == "tcp" and n.parties[0].facility == 16
    msg = syslog_message({"event": "request-rejected", "time": "2026-01-01T00:00:00.000Z", "cuid": 'a"]b'}, 23,
                         hostname="h")
    assert msg.startswith(b'<188>1 2026-01-01T00:00:00.000Z h dots-agent ')
    assert b'cuid="a\\"\\]b"' in msg
