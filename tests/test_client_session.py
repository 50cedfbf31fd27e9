"""The DOTS client API against our real server on loopback (TLS and DTLS, mutual X.509)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from agent.client import ClientState, DotsClient, DotsConnectionError, DotsError
from agent.numbers.rfc9132 import MID_ROLLOVER
from agent.pki import init_pki, issue_client
from agent.server.app import DotsServer, ServerOptions
from agent.transports.credentials import Credentials

TIMEOUT = 15.0


def hb_config(current: int = 30, missing: int = 15) -> dict[str, Any]:
    """A dots-agent tree letting heartbeat-interval go down to 1 s (tests only)."""
    side = {"heartbeat-interval": {"min-value": 1, "max-value": 240, "current-value": current},
            "missing-hb-allowed": {"min-value": 1, "max-value": 20, "current-value": missing}}
    return {"dots-agent:dots-agent": {"server": {"session-config": {"mitigating-config": side,
                                                                     "idle-config": side}}}}


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    init_pki(d)
    return d


async def start_server(pki: Path, tmp_path: Path, config: dict[str, Any] | None = None, port: int = 0) -> DotsServer:
    server = DotsServer(ServerOptions(credentials=Credentials.from_pki_dir(pki, "server"), listen=["127.0.0.1"],
                                      port=port, db=tmp_path / "s.db", config=config))
    await server.start()
    return server


@pytest.fixture
async def server(pki: Path, tmp_path: Path) -> Any:
    s = await start_server(pki, tmp_path)
    yield s
    await s.stop()


def client(server: DotsServer, pki: Path, transport: str, *, name: str = "client", **kw: Any) -> DotsClient:
    host, port = server.addresses["tls"][0]
    return DotsClient((host, port), Credentials.from_pki_dir(pki, name), transport, request_timeout=TIMEOUT, **kw)


@pytest.mark.parametrize("transport", ["tls", "dtls"])
@pytest.mark.req("SC-003", "SC-016", "SC-031", "SC-090", "SC-104")
async def test_mitigate_status_watch_withdraw(server: DotsServer, pki: Path, transport: str) -> None:
    async with client(server, pki, transport) as c:
        assert c.transport == transport
        r = await c.mitigate(target_prefixes=["192.0.2.0/24"], ports=[80, (1000, 2000)], protocols=[6])
        assert (r.code, r.lifetime) == ("2.01", 3600)
        [scope] = await c.status(r.mid)
        assert scope["mid"] == r.mid and scope["status"] == "attack-mitigation-in-progress"
        assert scope["target-port-range"] == [{"lower-port": 80}, {"lower-port": 1000, "upper-port": 2000}]

        seen: list[str] = []

        async def follow() -> None:
            async for update in c.watch(r.mid):
                seen.extend(s["status"] for s in update.scopes)
                if "dots-client-withdrawn-mitigation" in seen:
                    return

        task = asyncio.create_task(follow())
        while not seen:
            await asyncio.sleep(0.05)
        assert await c.withdraw(r.mid) == "2.02"
        await asyncio.wait_for(task, TIMEOUT)
        assert seen[0] == "attack-mitigation-in-progress" and seen[-1] == "dots-client-withdrawn-mitigation"
        r2 = await c.mitigate(target_prefixes=["198.51.100.1/32"])
        assert r2.mid > r.mid


@pytest.mark.parametrize("transport", ["tls", "dtls"])
@pytest.mark.req("SC-073", "SC-097", "SC-098")
async def test_refresh_and_efficacy_update(server: DotsServer, pki: Path, transport: str) -> None:
    async with client(server, pki, transport) as c:
        r = await c.mitigate(target_prefixes=["192.0.2.0/24"], ports=[443], protocols=[6, 17], lifetime=600)
        renewed = await c.refresh(r.mid)
        assert (renewed.code, renewed.lifetime) == ("2.04", 600)
        longer = await c.refresh(r.mid, lifetime=1200)
        assert (longer.code, longer.lifetime) == ("2.04", 1200)
        update = await c.efficacy_update(r.mid, "under-attack")
        assert update.code == "2.04"
        update = await c.efficacy_update(r.mid, "attack-successfully-mitigated")
        assert update.code == "2.04"
        [scope] = await c.status(r.mid)
        assert scope["target-protocol"] == [6, 17] and "attack-status" not in scope
        with pytest.raises(ValueError):
            await c.efficacy_update(r.mid, "gone")


@pytest.mark.req("SC-065")
async def test_overlapping_higher_mid_replaces_lower(server: DotsServer, pki: Path) -> None:
    async with client(server, pki, "tls") as c:
        low = await c.mitigate(target_prefixes=["192.0.2.0/24"])
        high = await c.mitigate(target_prefixes=["192.0.2.0/25"])
        assert high.code == "2.01" and high.mid > low.mid
        assert [s["mid"] for s in await c.status()] == [high.mid]
        with pytest.raises(DotsError) as err:
            await c.status(low.mid)
        assert err.value.code == "4.04"


@pytest.mark.req("SC-066", "SC-070")
async def test_other_client_conflict(server: DotsServer, pki: Path) -> None:
    issue_client(pki, "client2")
    async with client(server, pki, "dtls") as c1, client(server, pki, "tls", name="client2") as c2:
        assert c1.cuid != c2.cuid
        first = await c1.mitigate(target_prefixes=["203.0.113.0/24"], ports=[53], protocols=[17])
        with pytest.raises(DotsError) as err:
            await c2.mitigate(target_prefixes=["203.0.113.7/32"], ports=[53], protocols=[17])
        e = err.value
        assert e.code == "4.09" and e.conflict is not None
        assert e.conflict.conflict_cause == "overlapping-targets"
        assert e.conflict.conflict_status == "request-inactive-other-active"
        assert e.conflict.retry_timer is not None and e.conflict.retry_timer > 0
        assert e.conflict.conflict_scope.get("target-prefix")  # the overlapping targets
        assert await c2.status() == []
        assert (await c1.status(first.mid))[0]["status"] == "attack-mitigation-in-progress"


@pytest.mark.parametrize("transport", ["tls", "dtls"])
@pytest.mark.req("SC-117", "SC-119", "SC-123", "SC-124", "SC-125", "SC-126", "SC-133")
async def test_config_set_get_reset(server: DotsServer, pki: Path, transport: str) -> None:
    async with client(server, pki, transport) as c:
        default = await c.get_config()
        hb = default.members["mitigating-config"]["heartbeat-interval"]
        assert (hb["min-value"], hb["max-value"], hb["current-value"]) == (15, 240, 30)
        made = await c.set_config(heartbeat_interval=60, missing_hb_allowed=5, ack_timeout="3.5")
        assert made.code == "2.01" and made.sid is not None
        assert made.config.mitigating.heartbeat_interval == 60
        assert str(made.config.idle.ack_timeout) == "3.50"
        assert c.session_config.mitigating.missing_hb_allowed == 5  # used from now on (SC-117)
        changed = await c.set_config(heartbeat_interval=90)
        assert changed.sid is not None and changed.sid > made.sid
        assert (await c.get_config(changed.sid)).config.idle.heartbeat_interval == 90
        with pytest.raises(DotsError) as err:
            await c.set_config(heartbeat_interval=5)
        assert err.value.code == "4.22" and "heartbeat-interval" in err.value.diagnostic
        assert err.value.details["acceptable"]["mitigating-config"]["heartbeat-interval"]["min-value"] == 15
        assert await c.reset_config() == "2.02"
        assert (await c.get_config()).config.mitigating.heartbeat_interval == 30
        assert c.session_config.mitigating.heartbeat_interval == 30


@pytest.mark.parametrize("transport", ["tls", "dtls"])
@pytest.mark.req("SC-141", "SC-142", "SC-117")
async def test_heartbeats_both_ways(pki: Path, tmp_path: Path, transport: str) -> None:
    server = await start_server(pki, tmp_path, hb_config(current=30))
    try:
        async with client(server, pki, transport) as c:
            await c.set_config(heartbeat_interval=1)
            for _ in range(100):
                if c.heartbeats_answered >= 2 and c.heartbeats_received >= 2:
                    break
                await asyncio.sleep(0.1)
            assert c.heartbeats_answered >= 2, "the server answers our heartbeats with 2.04"
            assert c.heartbeats_received >= 2, "the server's heartbeats reach our /hb resource"
            assert c.connected and c.generation == 1
    finally:
        await server.stop()


@pytest.mark.parametrize("transport", ["tls", "dtls"])
@pytest.mark.req("SC-143", "SC-144")
async def test_reconnects_and_observes_again_after_session_loss(pki: Path, tmp_path: Path, transport: str) -> None:
    server = await start_server(pki, tmp_path, hb_config(current=1, missing=2))
    port = server.addresses["tls"][0][1]
    c = DotsClient(("127.0.0.1", port), Credentials.from_pki_dir(pki, "client"), transport,
                   request_timeout=TIMEOUT, reconnect_min_interval=0.5)  # < 60 s: tests only
    try:
        await c.connect()
        r = await c.mitigate(target_prefixes=["192.0.2.0/24"])
        updates: asyncio.Queue[Any] = asyncio.Queue()

        async def follow() -> None:
            async for update in c.watch(r.mid):
                await updates.put(update)

        task = asyncio.create_task(follow())
        await asyncio.wait_for(updates.get(), TIMEOUT)
        await server.stop()
        for _ in range(150):  # heartbeats go unanswered: the session is declared lost
            if not c.connected:
                break
            await asyncio.sleep(0.1)
        assert not c.connected
        server = await start_server(pki, tmp_path, hb_config(current=1, missing=2), port=port)
        update = await asyncio.wait_for(updates.get(), 20)
        assert c.generation >= 2 and c.connected
        assert update.scopes[0]["mid"] == r.mid  # the observation was registered again
        task.cancel()
    finally:
        await c.close()
        await server.stop()


async def test_cannot_connect(pki: Path) -> None:
    c = DotsClient(("127.0.0.1", 9), Credentials.from_pki_dir(pki, "client"), "auto", connect_timeout=2,
                   auto_dtls_timeout=0.5)
    with pytest.raises(DotsConnectionError):
        await c.connect()
    await c.close()


@pytest.mark.req("SC-031")
async def test_mids_persist_across_clients(server: DotsServer, pki: Path, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    async with client(server, pki, "tls", state=state) as c:
        first = await c.mitigate(target_prefixes=["192.0.2.1/32"])
    async with client(server, pki, "dtls", state=state) as c:
        second = await c.mitigate(target_prefixes=["192.0.2.2/32"])
        refreshed = await c.refresh(first.mid)  # parameters come from the state file
    assert second.mid == first.mid + 1 and refreshed.code == "2.04"
    assert json.loads(state.read_text())["clients"][c.cuid]["last-mid"] == second.mid
    # a lost state file: the client learns the mids the server still holds
    async with client(server, pki, "tls", state=tmp_path / "fresh.json") as c:
        third = await c.mitigate(target_prefixes=["192.0.2.3/32"])
    assert third.mid == second.mid + 1


@pytest.mark.req("SC-031", "SC-032", "SC-119")
def test_state_identifiers(tmp_path: Path) -> None:
    s = ClientState(tmp_path / "st.json")
    assert [s.allocate_mid("c") for _ in range(3)] == [0, 1, 2]
    assert [s.allocate_sid("c") for _ in range(2)] == [0, 1]
    s.raise_mid_floor("c", MID_ROLLOVER)
    s.remember("c", MID_ROLLOVER, {"target-prefix": ["192.0.2.0/24"]}, 3600)
    assert s.allocate_mid("c") == MID_ROLLOVER + 1  # an active request: no rollover yet
    s.forget("c", MID_ROLLOVER)
    assert s.allocate_mid("c") == 0  # SC-032: reset once nothing is active
    assert ClientState(tmp_path / "st.json").last_mid("c") == 0


@pytest.mark.req("SC-092")
async def test_request_held_until_retry_timer_after_conflict(server: DotsServer, pki: Path) -> None:
    """After a 4.09 with a retry-timer the same request is not sent again before it expires."""
    issue_client(pki, "client3")
    async with client(server, pki, "tls") as c1, client(server, pki, "tls", name="client3") as c3:
        first = await c1.mitigate(target_prefixes=["192.0.2.0/24"], ports=[123], protocols=[17], lifetime=60)
        with pytest.raises(DotsError) as err:
            await c3.mitigate(target_prefixes=["192.0.2.8/32"], ports=[123], protocols=[17], lifetime=60)
        assert err.value.conflict is not None and 0 < (err.value.conflict.retry_timer or 0) <= 60
        puts_before = server.service.stats.puts
        with pytest.raises(DotsError) as held:
            await c3.mitigate(target_prefixes=["192.0.2.8/32"], ports=[123], protocols=[17], lifetime=120)
        assert "retry-timer" in held.value.diagnostic
        assert server.service.stats.puts == puts_before  # nothing reached the server
        other = await c3.mitigate(target_prefixes=["198.51.100.77/32"], lifetime=60)  # a different request
        assert other.code == "2.01"
        await c1.withdraw(first.mid)
