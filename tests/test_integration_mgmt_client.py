"""``dots client agent``: a NETCONF edit on the client agent becomes a DOTS mitigation.

Real processes on loopback: ``dots server`` (with NETCONF, to read what it holds) and
``dots client agent`` (NETCONF in, CBOR out).  The agent's ``<get>`` shows what the server
answered; deleting the entry withdraws the request.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest
from lxml import etree

from tests.integration_mgmt import (
    NS,
    AgentProcess,
    connect,
    get_xml,
    netconf_port,
    start_server,
    stop_all,
    texts,
    wait_for,
)

REQUEST = (f'<config><dots-agent xmlns="{NS}"><client><mitigation-request><name>web</name><scope>'
           '<target-prefix>{prefix}</target-prefix><lifetime>{lifetime}</lifetime>'
           '</scope></mitigation-request></client></dots-agent></config>')
DELETE = (f'<config xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0"><dots-agent xmlns="{NS}"><client>'
          '<mitigation-request nc:operation="delete"><name>web</name></mitigation-request>'
          '</client></dots-agent></config>')


@pytest.fixture
def pair(tmp_path: Path):
    server = start_server(tmp_path / "srv")
    agent = None
    try:
        agent = AgentProcess(tmp_path / "agent", server.pki, f"127.0.0.1:{server.port_of('tls')}").start()
        yield server, agent
    finally:
        stop_all(agent, server)


def _server_mitigations(m) -> list[tuple[str, str]]:
    root = get_xml(m, "<server><mitigations/></server>")
    return [(e.findtext(f"{{{NS}}}mid"), e.findtext(f"{{{NS}}}scope/{{{NS}}}status"))
            for e in root.iter(f"{{{NS}}}mitigation")]


def _agent_state(m) -> etree._Element:
    return get_xml(m, "<client><mitigation-request><name>web</name></mitigation-request></client>")


def test_netconf_edit_on_agent_signals_and_withdraws(pair):
    server, agent = pair
    with connect(netconf_port(server.addresses)) as srv, connect(agent.netconf_port) as ag:
        ag.create_subscription()
        t0 = time.monotonic()
        ag.edit_config(target="running", config=REQUEST.format(prefix="198.51.100.0/24", lifetime=3600))
        committed = time.monotonic()
        found = wait_for(lambda: [x for x in _server_mitigations(srv) if x[1] == "attack-mitigation-in-progress"],
                         interval=0.01)
        at_server = time.monotonic()
        mid = found[0][0]
        state = wait_for(lambda: (lambda r: r if texts(r, "state/scope/status") else None)(_agent_state(ag)))
        print(f"\nedit-config rpc {committed - t0:.3f} s; commit -> mitigation at the server "
              f"{at_server - committed:.3f} s (seen through the server's <get>)")
        assert texts(state, "state/mid") == [mid]
        assert texts(state, "state/last-response-code") == ["2.01"]
        assert texts(state, "state/scope/status") == ["attack-mitigation-in-progress"]
        assert texts(state, "state/scope/target-prefix") == ["198.51.100.0/24"]
        assert texts(state, "state/server") == ["default"]
        note = ag.take_notification(block=True, timeout=10)
        event = etree.fromstring(note.notification_xml.encode()).find(f"{{{NS}}}mitigation-status-change")
        assert event.findtext(f"{{{NS}}}role") == "client" and event.findtext(f"{{{NS}}}mid") == mid
        assert event.findtext(f"{{{NS}}}status") == "attack-mitigation-in-progress"
        sessions = get_xml(ag, "<client><sessions/></client>")
        assert texts(sessions, "session/transport") == ["tls"]
        assert texts(sessions, "session/active-config") == ["mitigating"]

        # A lifetime change renews the same mid (SC-073); the agent shows the new answer.
        ag.edit_config(target="running", config=REQUEST.format(prefix="198.51.100.0/24", lifetime=1800))
        wait_for(lambda: texts(_agent_state(ag), "state/last-response-code") == ["2.04"])
        assert texts(_agent_state(ag), "state/mid") == [mid]

        # Changing the targets replaces the request: a new mid, and the old one goes.
        ag.edit_config(target="running", config=REQUEST.format(prefix="198.51.100.0/25", lifetime=1800))
        new = wait_for(lambda: [x for x in _server_mitigations(srv)
                                if x[0] != mid and x[1] == "attack-mitigation-in-progress"])
        new_mid = new[0][0]
        wait_for(lambda: texts(_agent_state(ag), "state/mid") == [new_mid])
        assert not [x for x in _server_mitigations(srv) if x[0] == mid and x[1] == "attack-mitigation-in-progress"]

        t1 = time.monotonic()
        ag.edit_config(target="running", config=DELETE)
        wait_for(lambda: (new_mid, "dots-client-withdrawn-mitigation") in _server_mitigations(srv), interval=0.01)
        print(f"delete -> withdrawn at the server {time.monotonic() - t1:.3f} s")
        assert not texts(get_xml(ag, "<client><mitigation-request/></client>"), "mitigation-request/name")
    print(f"in the agent's log: commit -> 2.01 {_logged_latency(agent.log, 'mid 0 2.01') * 1000:.0f} ms")


def _logged_latency(log: Path, answer: str) -> float:
    """Seconds between the agent logging the first configuration change and *answer*."""
    stamps: dict[str, datetime] = {}
    for line in log.read_text().splitlines():
        for key in ("running configuration changed", answer):
            if key in line and key not in stamps:
                stamps[key] = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return (stamps[answer] - stamps["running configuration changed"]).total_seconds()
