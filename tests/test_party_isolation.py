"""Parties sharing one DOTS client (portal users, alert sources, configured requests) are isolated.

RFC 9132 §4.4.1: a request of the same client that overlaps an active one replaces it.  All the
parties behind one front-end share one cuid, so without bookkeeping in the client one party's
request silently replaced or ended another's.  These tests run a real ``dots server``, real
portal (HTTPS) and alert endpoint (HTTP) over loopback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.alerts import AlertBridge, AlertServer
from agent.client import DotsClient
from agent.portal import Portal, hash_password, load_users
from tests.frontend_helpers import TOKEN, PortalSession, dots_client, portal_tls, post_json
from tests.servers import ServerProcess

ALICE, BOB = "alice's password", "bob's password"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    sp = ServerProcess(tmp_path_factory.mktemp("parties-server")).start()
    try:
        yield sp
    finally:
        sp.stop()


@pytest.fixture(scope="module")
def hashes() -> dict[str, str]:
    return {"alice": hash_password(ALICE), "bob": hash_password(BOB)}


@pytest.fixture
async def stack(server: ServerProcess, tmp_path: Path, hashes: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
    """One DOTS client shared by a portal (alice, bob) and an alert endpoint: one process."""
    users = load_users({"users": [
        {"name": "alice", "password": hashes["alice"], "prefixes": ["198.51.100.0/24"]},
        {"name": "bob", "password": hashes["bob"], "prefixes": ["198.51.100.0/25"]}]})
    client = dots_client(server, tmp_path / "client-state.json")
    async with client:
        async with Portal(client, users, tmp_path / "portal", ssl_context=portal_tls(server)) as portal:
            async with AlertServer(AlertBridge(client, tmp_path / "alerts.json"), token=TOKEN) as alerts:
                alice = await PortalSession.login(portal.port, "alice", ALICE, portal.sessions)
                bob = await PortalSession.login(portal.port, "bob", BOB, portal.sessions)
                yield {"client": client, "portal": portal, "alerts": alerts, "alice": alice, "bob": bob}
        await withdraw_everything(client)


async def withdraw_everything(client: DotsClient) -> None:
    """The tests share one server and one cuid: leave nothing active for the next test."""
    for scope in await client.status():
        await client.withdraw(int(scope["mid"]))


async def active(client: DotsClient, mid: int) -> bool:
    [scope] = await client.status(mid)
    return scope["status"] in ("attack-mitigation-in-progress", "attack-successfully-mitigated")


async def test_portal_user_cannot_replace_another_users_mitigation(stack: dict[str, Any]) -> None:
    alice, bob, client = stack["alice"], stack["bob"], stack["client"]
    status, answer = await alice.call("POST", "/api/mitigations", {"target-prefix": ["198.51.100.0/24"]})
    assert status == 200, answer
    mid = answer["mid"]
    # bob's /25 lies inside alice's /24: the same-client rule would replace alice's request
    status, answer = await bob.call("POST", "/api/mitigations", {"target-prefix": ["198.51.100.0/25"]})
    assert status == 409, answer
    assert f"overlaps mitigation {mid} of portal user alice" in answer["error"]
    assert await active(client, mid)


async def test_later_request_of_one_user_does_not_end_others(stack: dict[str, Any]) -> None:
    alice, bob, client = stack["alice"], stack["bob"], stack["client"]
    status, answer = await bob.call("POST", "/api/mitigations", {"target-prefix": ["198.51.100.0/26"]})
    assert status == 200, answer
    bobs = answer["mid"]
    status, answer = await post_json(stack["alerts"].port, "/alert", {
        "id": "det/1", "target-prefix": ["198.51.100.200"], "lifetime": 600})
    assert status == 200 and answer["results"][0]["code"] == "2.01", answer
    alerts = answer["results"][0]["mid"]
    for prefix, victim, whom in (("198.51.100.1/32", bobs, "portal user bob"),
                                 ("198.51.100.200/32", alerts, "alert source det/1")):
        status, answer = await alice.call("POST", "/api/mitigations", {"target-prefix": [prefix]})
        assert status == 409, answer
        assert f"overlaps mitigation {victim} of {whom}" in answer["error"]
    assert await active(client, bobs) and await active(client, alerts)


async def test_alert_cannot_replace_a_portal_mitigation_with_a_short_copy(stack: dict[str, Any]) -> None:
    alice, client = stack["alice"], stack["client"]
    status, answer = await alice.call("POST", "/api/mitigations", {"target-prefix": ["198.51.100.0/24"]})
    assert status == 200, answer
    mid = answer["mid"]
    status, answer = await post_json(stack["alerts"].port, "/alert", {
        "id": "evil", "target-prefix": ["198.51.100.0/24"], "lifetime": 1})
    assert status == 409, answer
    assert f"overlaps mitigation {mid} of portal user alice" in answer["results"][0]["error"]
    [scope] = await client.status(mid)
    assert scope["lifetime"] > 60


async def test_user_cannot_withdraw_or_update_another_users_mitigation(stack: dict[str, Any]) -> None:
    alice, bob, client = stack["alice"], stack["bob"], stack["client"]
    status, answer = await alice.call("POST", "/api/mitigations", {"target-prefix": ["198.51.100.128/25"]})
    assert status == 200, answer
    mid = answer["mid"]
    assert (await bob.call("DELETE", f"/api/mitigations/{mid}"))[0] == 404
    assert (await bob.call("POST", f"/api/mitigations/{mid}/efficacy", {"attack-status": "under-attack"}))[0] == 404
    assert await active(client, mid)
    assert (await alice.call("DELETE", f"/api/mitigations/{mid}"))[0] == 200


async def test_another_process_with_the_same_identity(server: ServerProcess, tmp_path: Path,
                                                      stack: dict[str, Any]) -> None:
    """A second process (own state file, same client certificate, same cuid) must not replace them."""
    alice = stack["alice"]
    status, answer = await alice.call("POST", "/api/mitigations", {"target-prefix": ["198.51.100.0/24"]})
    assert status == 200, answer
    mid = answer["mid"]
    other = dots_client(server, tmp_path / "elsewhere" / "client-state.json")
    async with other:
        async with AlertServer(AlertBridge(other, tmp_path / "elsewhere" / "alerts.json"), token=TOKEN) as ep:
            status, answer = await post_json(ep.port, "/alert", {"id": "x", "target-prefix": ["198.51.100.9"]})
    assert status == 409, answer
    assert (f"overlaps mitigation {mid} of another process using this client identity"
            in answer["results"][0]["error"])
    assert await active(stack["client"], mid)
