"""Use case 3.2.2 (auto-provisioning): the mitigator is chosen per client from configuration and
changed through NETCONF on a running server.

A real ``dots server`` (TLS, NETCONF on 127.0.0.1) authorises two clients: A is mitigated with
BGP Flowspec, B with the ``log`` mitigator.  The Flowspec rules go through a gobgpd speaker to a
second gobgpd, the "router" (as in ``tests/test_mitigator_bgp.py``); assertions read the router's
RIB.  Then A's mitigator is switched to ``log`` with ``<edit-config>``: A's next request no longer
produces a rule, and its earlier request is still withdrawn from the router by the Flowspec
mitigator that installed it (the back-end is recorded per request).

Current behaviour this test relies on (see ``ServerSettings.from_config``):

* the speaker cannot be configured through the YANG model (the ``flowspec`` container has only
  ``next-hop``, which the mitigator ignores, and the action), so the server's Flowspec mitigator
  uses the default speaker, an operator-run gobgpd whose API is ``127.0.0.1:50051``; the test runs
  that gobgpd itself and skips when the port is taken;
* back-end parameters are keyed by mitigator type, not by client: the first client carrying a
  ``flowspec`` container provides the Flowspec parameters for every client (a server-level
  container would override it), and they are read when the back-end is first used.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.mitigators.bgp import gobgpd_config
from agent.pki import certificate_cuid, init_pki, issue_client
from tests.integration_mgmt import NS, ROOT, connect, dots_client, netconf_port, server_config, start_server, stop_all
from tests.test_mitigator_bgp import HAVE_GOBGP, ROUTER_IP, SPEAKER_IP, Router, flow_keys

pytestmark = pytest.mark.skipif(not HAVE_GOBGP, reason="gobgpd/gobgp not installed (apt-get install gobgpd)")
DEFAULT_API = ("127.0.0.1", 50051)  # speaker_from_options(None): what a YANG-configured flowspec mitigator uses
RATE = 125000  # bytes/s, client A's flowspec/rate-limit


class DefaultSpeaker:
    """The operator-run gobgpd at the default API address, peered with the router."""

    def __init__(self, workdir: Path, router: Router) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "speaker.json"
        conf.write_text(json.dumps(gobgpd_config({
            "as": 64512, "router-id": SPEAKER_IP, "listen-address": SPEAKER_IP, "listen-port": -1,
            "neighbors": [{"address": ROUTER_IP, "as": 64513, "port": router.bgp_port, "connect-retry": 1}]})))
        self.log = open(workdir / "speaker.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(["gobgpd", "-f", str(conf), "-t", "json", "--api-hosts",
                                      "{}:{}".format(*DEFAULT_API), "--pprof-disable"],
                                     stdout=self.log, stderr=self.log)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _wait(pred, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


@pytest.fixture
def bgp(tmp_path: Path) -> Iterator[Router]:
    if not _port_free(*DEFAULT_API):
        pytest.skip("127.0.0.1:50051 (the default gobgpd API the server's flowspec mitigator uses) is taken")
    router = Router(tmp_path / "router")
    speaker = None
    try:
        speaker = DefaultSpeaker(tmp_path / "speaker", router)
        _wait(router.established, 30)
        yield router
    finally:
        if speaker is not None:
            speaker.stop()
        router.stop()


def _client_b_pki(pki: Path, dest: Path) -> str:
    """A second client certificate, as ``client.crt`` of its own --pki directory; returns its cuid."""
    crt, key = issue_client(pki, "client-b")
    dest.mkdir()
    shutil.copy(pki / "ca.crt", dest / "ca.crt")
    shutil.copy(crt, dest / "client.crt")
    shutil.copy(key, dest / "client.key")
    return certificate_cuid(crt)


def _mitigated_keys(log: Path, verb: str = "apply") -> list[str]:
    """Request keys (cuid/mid) the log mitigator reported (``dots.mitigator: apply KEY: ...``)."""
    out = []
    for line in log.read_text().splitlines():
        if " dots.mitigator: " in line:
            words = line.split(" dots.mitigator: ", 1)[1].split()
            if len(words) >= 2 and words[0] == verb:
                out.append(words[1].rstrip(":"))
    return out


def test_mitigator_per_client_and_changed_by_netconf(tmp_path: Path, bgp: Router) -> None:
    router = bgp
    workdir = tmp_path / "srv"
    pki = workdir / "pki"
    init_pki(pki)  # ServerProcess keeps an existing PKI: the config below needs A's cuid first
    cuid_a = certificate_cuid(pki / "client.crt")
    pki_b = tmp_path / "pki-b"
    cuid_b = _client_b_pki(pki, pki_b)
    config = server_config(pki, [
        {"name": "customer-a", "cuid": cuid_a, "protected-prefix": ["198.51.100.0/24"],
         "mitigator": {"type": "dots-agent:flowspec", "flowspec": {"rate-limit": str(RATE)}}},
        {"name": "customer-b", "cuid": cuid_b, "protected-prefix": ["203.0.113.0/24"],
         "mitigator": {"type": "dots-agent:log"}},
    ])
    config[ROOT]["server"]["active-but-terminating"] = {"initial-period": 0}
    server = start_server(workdir, config)
    try:
        state_a, state_b = tmp_path / "a.json", tmp_path / "b.json"
        code, out = dots_client(server, "mitigate", "--target-prefix", "198.51.100.0/25", "--port", "53",
                                "--protocol", "17", state=state_a)
        assert code == 0 and out["code"] == "2.01", out
        mid_a1 = out["mid"]
        rule_a1 = "[destination: 198.51.100.0/25][protocol: ==udp][destination-port: ==53]"
        _wait(lambda: rule_a1 in router.rib("ipv4-flowspec"))
        assert f'"rate": {RATE}' in flow_keys(router, "ipv4-flowspec")[rule_a1]  # A's flowspec/rate-limit
        assert f"{cuid_a}/{mid_a1}" not in _mitigated_keys(server.log)

        # B: the log mitigator, nothing at the router
        b_server = _as_client(server, pki_b)
        code, out = dots_client(b_server, "mitigate", "--target-prefix", "203.0.113.0/24", state=state_b)
        assert code == 0 and out["code"] == "2.01", out
        key_b = f"{cuid_b}/{out['mid']}"
        _wait(lambda: key_b in _mitigated_keys(server.log))
        assert list(router.rib("ipv4-flowspec")) == [rule_a1]

        # NETCONF: customer-a -> log (replace drops the flowspec container, whose 'when' needs type flowspec)
        with connect(netconf_port(server.addresses)) as m:
            m.edit_config(target="running", config=(
                f'<config xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0"><dots-agent xmlns="{NS}">'
                '<server><clients><client><name>customer-a</name><mitigator nc:operation="replace">'
                '<type>log</type></mitigator></client></clients></server>'
                '</dots-agent></config>'))
        code, out = dots_client(server, "mitigate", "--target-prefix", "198.51.100.128/25", "--protocol", "6",
                                state=state_a)
        assert code == 0 and out["code"] == "2.01", out
        key_a2 = f"{cuid_a}/{out['mid']}"
        _wait(lambda: key_a2 in _mitigated_keys(server.log))
        assert list(router.rib("ipv4-flowspec")) == [rule_a1]  # no rule for A's new request

        # A's first request was installed by flowspec: withdrawing it removes the rule
        code, out = dots_client(server, "withdraw", "--mid", str(mid_a1), state=state_a)
        assert code == 0 and out["code"] == "2.02", out
        _wait(lambda: not router.rib("ipv4-flowspec"))
        assert f"{cuid_a}/{mid_a1}" not in _mitigated_keys(server.log, "remove")
        code, out = dots_client(server, "status", state=state_a)
        assert code == 0 and [s["mid"] for s in out["scope"]] == [int(key_a2.rpartition("/")[2])], out
        assert "Traceback" not in server.log.read_text()
    finally:
        stop_all(server)


def _as_client(server, pki: Path):  # type: ignore[no-untyped-def]
    """A view of *server* whose ``pki`` is another client's directory (for ``dots_client``)."""

    class View:
        addresses = server.addresses
        port_of = server.port_of

    view = View()
    view.pki = pki  # type: ignore[attr-defined]
    return view
