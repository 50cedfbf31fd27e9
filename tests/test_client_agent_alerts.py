"""The client agent's alert endpoint (``client/alert-endpoint``): never without a token, its
limits from the configuration, alerts signalled through the first server's DOTS client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.client_agent.agent import ClientAgent
from agent.client_agent.config import ROOT, parse
from tests.frontend_helpers import TOKEN, exchange, post_json
from tests.servers import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    sp = ServerProcess(tmp_path_factory.mktemp("agent-alerts-server")).start()
    try:
        yield sp
    finally:
        sp.stop()


def tree(server: ServerProcess, endpoint: dict[str, Any]) -> dict[str, Any]:
    pki = server.pki
    return {ROOT: {
        "credentials": {"credential": [{"name": "c", "certificate-file": str(pki / "client.crt"),
                                        "private-key-file": str(pki / "client.key"), "ca-file": str(pki / "ca.crt")}]},
        "client": {"server": [{"name": "default", "address": ["127.0.0.1"], "port": server.port_of("tls"),
                               "transport": ["tls"], "credential": "c"}],
                   "alert-endpoint": endpoint}}}


def test_alert_endpoint_without_token_is_refused(server: ServerProcess, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a bearer token") as exc:
        parse(tree(server, {"port": 0}))
    assert len(str(exc.value).splitlines()) == 1
    with pytest.raises(ValueError, match=str(tmp_path / "missing")):
        parse(tree(server, {"token-file": str(tmp_path / "missing")}))
    (tmp_path / "empty").write_text("")
    with pytest.raises(ValueError, match="empty"):
        parse(tree(server, {"token-file": str(tmp_path / "empty")}))
    (tmp_path / "tok").write_text(TOKEN + "\n")
    spec = parse(tree(server, {"token-file": str(tmp_path / "tok")})).alert_endpoint
    assert spec is not None and spec.token == TOKEN and TOKEN not in repr(spec)


async def test_agent_serves_alerts_with_token_and_limits(server: ServerProcess, tmp_path: Path) -> None:
    agent = ClientAgent(tmp_path / "agent")
    agent.reconfigure(parse(tree(server, {"port": 0, "token": TOKEN, "max-body-size": 512, "path": "/hooks"})))
    try:
        await asyncio.gather(*agent._closing)  # the endpoint's start-up task
        assert agent.alerts is not None
        port = agent.alerts.port
        body = {"id": "det/1", "target-prefix": ["198.51.100.77"], "lifetime": 300}
        assert (await post_json(port, "/hooks", body, token=None))[0] == 401
        assert (await post_json(port, "/hooks", b"[" + b" " * 600 + b"]"))[0] == 413
        status, answer = await post_json(port, "/hooks", body)
        assert status == 200 and answer["results"][0]["code"] == "2.01", answer
        mid = answer["results"][0]["mid"]
        status, answer = await post_json(port, "/hooks/alertmanager", {"version": "4", "alerts": [
            {"status": "firing", "fingerprint": "f1", "labels": {"dots_target": "198.51.100.77"}}]})
        assert status == 409, answer
        assert f"overlaps mitigation {mid} of alert source det/1" in answer["results"][0]["error"]
        status, answer = await post_json(port, "/hooks", {"id": "det/1", "status": "resolved"})
        assert answer["results"][0]["action"] == "withdraw" and answer["results"][0]["code"] == "2.02"
        assert (await exchange(port, b"POST /hooks HTTP/1.1\r\nContent-Length: abc\r\n\r\n"))[0] == 400
    finally:
        await agent.close()
