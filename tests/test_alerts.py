"""Detector/application alerts (RFC 8903 §3.1.1-3.1.4): an Alertmanager webhook that fires then
resolves creates then withdraws a mitigation on a real ``dots server`` subprocess."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.alerts import Alert, AlertBridge, AlertError, AlertServer, alerts_of, serve_alerts
from agent.client import DotsClient, DotsError
from agent.transports.credentials import Credentials
from tests.servers import ServerProcess

TOKEN = "s3cret-token"


async def post(port: int, path: str, body: Any, token: str | None = TOKEN) -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = json.dumps(body).encode()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}"
                 f"Content-Length: {len(raw)}\r\n\r\n".encode() + raw)
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(rest)


def alertmanager(status: str, fingerprint: str = "a1b2c3d4e5f60718") -> dict[str, Any]:
    return {
        "version": "4", "groupKey": "{}:{alertname=\"DDoS\"}", "truncatedAlerts": 0, "status": status,
        "receiver": "dots", "groupLabels": {"alertname": "DDoS"}, "commonLabels": {"alertname": "DDoS"},
        "commonAnnotations": {}, "externalURL": "http://alertmanager:9093",
        "alerts": [{
            "status": status, "labels": {"alertname": "DDoS", "dots_target": "192.0.2.80, 2001:db8::80",
                                         "dots_port": "80,443", "dots_protocol": "tcp"},
            "annotations": {"summary": "SYN flood on www", "dots_lifetime": "600"},
            "startsAt": "2026-11-21T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z" if status == "firing"
            else "2026-11-21T10:05:00Z", "generatorURL": "http://prometheus/graph", "fingerprint": fingerprint},
            {"status": status, "labels": {"alertname": "DiskFull", "instance": "db1"}, "annotations": {},
             "fingerprint": "ffff"}],
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    sp = ServerProcess(tmp_path_factory.mktemp("alerts-server")).start()
    try:
        yield sp
    finally:
        sp.stop()


@pytest.fixture
async def client(server: ServerProcess, tmp_path: Path) -> AsyncIterator[DotsClient]:
    c = DotsClient(("127.0.0.1", server.port_of("tls")), Credentials.from_pki_dir(server.pki, "client"), "tls",
                   state=tmp_path / "client-state.json", request_timeout=15)
    async with c:
        yield c


async def test_alertmanager_fire_then_resolve(client: DotsClient, server: ServerProcess, tmp_path: Path) -> None:
    state = tmp_path / "alerts.json"
    async with serve_alerts(client, state, "127.0.0.1", 0, token=TOKEN) as endpoint:
        assert (await post(endpoint.port, "/alertmanager", alertmanager("firing"), token=None))[0] == 401
        assert (await post(endpoint.port, "/alertmanager", alertmanager("firing"), token="wrong"))[0] == 401

        code, answer = await post(endpoint.port, "/alertmanager", alertmanager("firing"))
        assert code == 200, answer
        first, other = answer["results"]
        assert first["action"] == "mitigate" and first["code"] == "2.01" and first["lifetime"] == 600
        assert other == {"id": "am:ffff", "action": "ignored", "reason": "no target labels"}
        mid = first["mid"]
        assert json.loads(state.read_text()) == {"alerts": {"am:a1b2c3d4e5f60718": mid}}

        # what the server holds
        [scope] = await client.status(mid)
        assert scope["status"] == "attack-mitigation-in-progress"
        assert sorted(scope["target-prefix"]) == ["192.0.2.80/32", "2001:db8::80/128"]
        assert scope["target-protocol"] == [6]
        assert {p["lower-port"] for p in scope["target-port-range"]} == {80, 443}

        # Alertmanager repeats the firing notification: same mid, a renewal
        code, answer = await post(endpoint.port, "/alertmanager", alertmanager("firing"))
        assert answer["results"][0]["mid"] == mid and answer["results"][0]["code"] == "2.04"

    # a restarted bridge (state file) resolves it
    async with serve_alerts(client, state, "127.0.0.1", 0, token=TOKEN) as endpoint:
        code, answer = await post(endpoint.port, "/alertmanager", alertmanager("resolved"))
        assert code == 200
        assert answer["results"][0] == {"id": "am:a1b2c3d4e5f60718", "action": "withdraw", "mid": mid,
                                        "code": "2.02"}
        assert json.loads(state.read_text()) == {"alerts": {}}
    try:
        scopes = await client.status(mid)
        assert scopes[0]["status"] in ("dots-client-withdrawn-mitigation", "attack-mitigation-terminated")
    except DotsError as exc:  # already gone
        assert exc.code == "4.04"


async def test_native_alert_format(client: DotsClient, tmp_path: Path) -> None:
    async with AlertServer(AlertBridge(client, tmp_path / "s.json"), token=TOKEN) as endpoint:
        body = {"id": "det-1/flood-42", "target-prefix": ["198.51.100.7"], "target-port": ["53"],
                "target-protocol": ["udp"], "lifetime": 300}
        code, answer = await post(endpoint.port, "/alert", body)
        assert code == 200 and answer["results"][0]["code"] == "2.01"
        mid = answer["results"][0]["mid"]
        code, answer = await post(endpoint.port, "/alert", [{"id": "det-1/flood-42", "status": "resolved"},
                                                             {"id": "never-seen", "status": "resolved"}])
        assert [r["action"] for r in answer["results"]] == ["withdraw", "ignored"]
        assert answer["results"][0]["mid"] == mid
        assert (await post(endpoint.port, "/alert", {"id": "x", "target-prefix": ["nonsense"]}))[0] == 400
        assert (await post(endpoint.port, "/nope", {}))[0] == 404


def test_parsing() -> None:
    a = Alert.from_native({"id": "i", "target-prefix": "10.0.0.1, 2001:db8::/32", "target-port": [22, "1000-2000"],
                           "target-protocol": "tcp,17"})
    assert a.prefixes == ["10.0.0.1/32", "2001:db8::/32"] and a.ports == [22, (1000, 2000)] and a.protocols == [6, 17]
    with pytest.raises(AlertError):
        Alert.from_native({"id": "i", "target-port": ["70000"]})
    with pytest.raises(AlertError):
        alerts_of("/alertmanager", {"version": "3", "alerts": []})
    [b] = alerts_of("/alertmanager", {"status": "resolved", "alerts": [{"labels": {"target_prefix": "192.0.2.1"}}]})
    assert not b.firing and b.id.startswith("am:") and b.prefixes == ["192.0.2.1/32"]
