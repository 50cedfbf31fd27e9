"""DOTS Call Home agents with their management plane: NETCONF in, RFC 9066 signalling out, real processes.

Each test runs the shipped ``dots call-home client`` (provider, long-running, with a control
socket) and ``dots call-home server`` (CPE) on loopback over TLS, both with NETCONF on
127.0.0.1, and drives them like an operator (ncclient) and the provider's tooling (``dots
call-home client --control SOCK mitigate``) would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from ncclient.operations.rpc import RPCError

import yang
from agent.pki import certificate_cuid, init_pki
from tests.integration_mgmt import NS, connect, get_xml, mgmt_flags, netconf_port, stop_all, texts, wait_for
from tests.servers import DOTS, wait_ready

MODULE = yang.MODULE_DIR / "dots-agent@2026-11-21.yang"
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
INTERNAL = "10.98.1.0/24"
TARGET = "203.0.113.5/32"


class Proc:
    """A ``dots call-home ...`` child process that writes a ready file (its bound addresses)."""

    def __init__(self, workdir: Path, argv: list[str], control: Path | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.control = control
        self.ready = workdir / "ready.json"
        self.log = workdir / "process.log"
        self.argv = [*argv, "--ready-file", str(self.ready), *mgmt_flags(workdir)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.addresses: dict[str, Any] = {}

    def start(self, timeout: float = 30.0) -> Proc:
        self.ready.unlink(missing_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=ENV)
        self.addresses = wait_ready(self.proc, self.ready, self.log, self.log.stem, timeout)
        return self

    @property
    def netconf_port(self) -> int:
        return netconf_port(self.addresses)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(10)
        return self.proc.returncode if self.proc else 0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    init_pki(d, server_sans=("127.0.0.1", "localhost"))
    return d


def provider(tmp: Path, pki: Path) -> Proc:
    control = tmp / "provider.sock"
    p = Proc(tmp / "provider", [*DOTS, "-v", "call-home", "client", "--pki", str(pki), "--listen", "127.0.0.1",
                                "--port", "0", "--transport", "tls", "--control", str(control),
                                "--poll-interval", "0.3", "--mgmt-dir", str(tmp / "provider" / "mgmt")],
             control=control)
    return p.start()


def cpe(tmp: Path, pki: Path, provider_port: int, *extra: str) -> Proc:
    return Proc(tmp / "cpe", [*DOTS, "-v", "call-home", "server", "--pki", str(pki), "--client",
                              f"127.0.0.1:{provider_port}", "--transport", "tls", "--internal-prefix", INTERNAL,
                              "--db", str(tmp / "cpe" / "cpe.db"), "--reconnect-min", "0.2", "--reconnect-max",
                              "1", "--counter-interval", "0.5", *extra]).start()


def mitigate(prov: Proc, source: str, target: str = TARGET) -> dict[str, Any]:
    """``dots call-home client --control SOCK mitigate``: the answer the provider printed."""
    res = subprocess.run([*DOTS, "call-home", "client", "--control", str(prov.control),
                          "mitigate", "--source-prefix", source, "--target-prefix", target, "--lifetime", "600"],
                         capture_output=True, text=True, timeout=90, env=ENV)
    assert res.returncode in (0, 1) and res.stdout.strip(), res.stdout + res.stderr  # 1: the peer refused
    answer: dict[str, Any] = json.loads(res.stdout)
    return answer


def consent_rpc(name: str, cuid: str, mid: int, note: str) -> etree._Element:
    leaf = "comment" if name == "approve-mitigation" else "reason"
    return etree.fromstring(f'<{name} xmlns="{NS}"><cuid>{cuid}</cuid><mid>{mid}</mid><{leaf}>{note}</{leaf}>'
                            f"</{name}>")


def validate_get(root: etree._Element, path: Path) -> None:
    """yanglint accepts the <get> answer as data and as a get reply."""
    yanglint = shutil.which("yanglint")
    if yanglint is None:
        pytest.skip("yanglint is not installed")
    path.write_bytes(b"".join(etree.tostring(child) for child in root))
    search = [arg for d in yang.search_path() for arg in ("-p", str(d))]
    for kind in ("data", "get"):
        res = subprocess.run([yanglint, *search, "-t", kind, str(MODULE), str(path)], capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0 and not res.stderr.strip(), (kind, res.stderr, path.read_text()[:4000])


def status_events(m: Any, seen: list[tuple[str, str, str]]) -> None:
    """Drain the mitigation-status-change notifications received so far into *seen*."""
    while (note := m.take_notification(block=True, timeout=0.2)) is not None:
        event = etree.fromstring(note.notification_xml.encode()).find(f"{{{NS}}}mitigation-status-change")
        if event is not None:
            seen.append((event.findtext(f"{{{NS}}}role") or "", event.findtext(f"{{{NS}}}mid") or "",
                         event.findtext(f"{{{NS}}}status") or ""))


def below(element: etree._Element, path: str) -> list[str]:
    """Texts at a '/'-separated path of dots-agent local names below *element* (not the whole reply)."""
    xpath = "./" + "/".join(f"a:{p}" for p in path.split("/"))
    return [e.text or "" for e in element.xpath(xpath, namespaces={"a": NS})]


def request_state(m: Any, mid: int) -> etree._Element | None:
    root = get_xml(m, "<call-home><call-home-client><requests/></call-home-client></call-home>")
    found = root.xpath(f"//a:requests/a:request[a:mid='{mid}']", namespaces={"a": NS})
    return found[0] if found else None


@pytest.mark.req("CH-020", "CH-021")
def test_manual_consent_through_netconf(tmp_path: Path, pki: Path) -> None:
    """pending-approvals in <get>, approve-mitigation -> 2 at the provider, reject-mitigation -> 7 with
    conflict-cause 4; both sides notify, both <get> answers validate."""
    prov = provider(tmp_path, pki)
    cpe_proc = None
    try:
        cpe_proc = cpe(tmp_path, pki, prov.addresses["tls"][0][1], "--consent", "manual")
        provider_cuid = certificate_cuid(pki / "server.crt")
        cpe_cuid = certificate_cuid(pki / "client.crt")
        with connect(cpe_proc.netconf_port) as m, connect(prov.netconf_port) as pm:
            m.create_subscription()
            pm.create_subscription()
            wait_for(lambda: texts(get_xml(m, "<call-home><sessions/></call-home>"),
                                   "call-home/sessions/session/cuid"), timeout=30)
            root = get_xml(m, "<call-home><sessions/></call-home>")
            assert texts(root, "sessions/session/role") == ["call-home-server"]
            assert texts(root, "sessions/session/transport") == ["tls"]
            assert texts(root, "sessions/session/resumed") == ["false"]
            assert texts(root, "sessions/session/heartbeat/status") == ["healthy"]

            answer = mitigate(prov, "10.98.1.2/32")
            assert answer["ok"] and answer["code"] == "2.01", answer
            mid = int(answer["mid"])
            root = get_xml(m, "")
            assert texts(root, "pending-approvals/pending-approval/mid") == [str(mid)]
            assert texts(root, "pending-approvals/pending-approval/cuid") == [provider_cuid]
            assert texts(root, "pending-approvals/pending-approval/scope/source-prefix") == ["10.98.1.2/32"]
            assert texts(root, "call-home-server/mitigations/mitigation/pending-consent") == ["true"]
            assert texts(root, "call-home-server/mitigations/mitigation/scope/status") == [
                "attack-mitigation-in-progress"]
            validate_get(root, tmp_path / "cpe-get.xml")

            m.dispatch(consent_rpc("approve-mitigation", provider_cuid, mid, "confirmed infected camera"))
            state = wait_for(lambda: (r := request_state(pm, mid)) is not None and below(
                r, "scope/status") == ["attack-successfully-mitigated"] and r, timeout=20)
            assert below(state, "last-response-code") == ["2.01"]
            root = get_xml(m, "")
            assert texts(root, "pending-approvals/pending-approval/mid") == []
            assert texts(root, "call-home-server/mitigations/mitigation/enforced-source-prefix") == ["10.98.1.2/32"]

            answer = mitigate(prov, "10.98.1.3/32", "203.0.113.9/32")
            assert answer["code"] == "2.01", answer
            mid2 = int(answer["mid"])
            wait_for(lambda: str(mid2) in texts(get_xml(m, "<call-home/>"), "pending-approval/mid"))
            with pytest.raises(RPCError) as err:  # the leafref: only pending requests can be decided
                m.dispatch(consent_rpc("reject-mitigation", provider_cuid, mid, "already approved"))
            assert err.value.tag in ("data-missing", "invalid-value", "operation-failed"), err.value.message
            m.dispatch(consent_rpc("reject-mitigation", provider_cuid, mid2, "printer firmware update"))
            state = wait_for(lambda: (r := request_state(pm, mid2)) is not None and below(
                r, "scope/status") == ["attack-mitigation-withdrawn"] and r, timeout=20)
            assert below(state, "scope/conflict-information/conflict-cause") == [
                "request-rejected-legitimate-traffic"]

            root = get_xml(pm, "")
            assert texts(root, "call-home/sessions/session/cuid") == [cpe_cuid]
            assert texts(root, "sessions/session/role") == ["call-home-client"]
            assert sorted(texts(root, "requests/request/mid")) == sorted([str(mid), str(mid2)])
            validate_get(root, tmp_path / "provider-get.xml")

            cpe_seen: list[tuple[str, str, str]] = []
            wait_for(lambda: status_events(m, cpe_seen) or ("call-home-server", str(mid2),
                                                            "attack-mitigation-withdrawn") in cpe_seen)
            assert ("call-home-server", str(mid), "attack-mitigation-in-progress") in cpe_seen
            assert ("call-home-server", str(mid), "attack-successfully-mitigated") in cpe_seen
            prov_seen: list[tuple[str, str, str]] = []
            wait_for(lambda: status_events(pm, prov_seen) or ("call-home-client", str(mid2),
                                                              "attack-mitigation-withdrawn") in prov_seen)
            assert ("call-home-client", str(mid), "attack-successfully-mitigated") in prov_seen
    finally:
        stop_all(cpe_proc, prov)


@pytest.mark.req("CH-019")
def test_internal_prefix_added_live(tmp_path: Path, pki: Path) -> None:
    """A source outside the internal prefixes is refused (4.00) until edit-config adds its prefix
    (2.01 afterwards); a bad prefix is refused with an error-path and changes nothing."""
    prov = provider(tmp_path, pki)
    cpe_proc = None
    try:
        cpe_proc = cpe(tmp_path, pki, prov.addresses["tls"][0][1], "--consent", "auto")
        answer = mitigate(prov, "10.99.0.7/32")
        assert answer["code"] == "4.00" and "outside" in answer["diagnostic"], answer
        with connect(cpe_proc.netconf_port) as m:
            before = m.get_config(source="running").data_xml
            with pytest.raises(RPCError) as err:
                m.edit_config(target="running", config=(
                    f'<config><dots-agent xmlns="{NS}"><call-home><call-home-server>'
                    "<internal-prefix>10.99.0.0/33</internal-prefix>"
                    "</call-home-server></call-home></dots-agent></config>"))
            assert "internal-prefix" in (err.value.path or ""), (err.value.path, err.value.message)
            assert m.get_config(source="running").data_xml == before
            m.edit_config(target="running", config=(
                f'<config><dots-agent xmlns="{NS}"><call-home><call-home-server>'
                "<internal-prefix>10.99.0.0/16</internal-prefix>"
                "</call-home-server></call-home></dots-agent></config>"))
            answer = mitigate(prov, "10.99.0.7/32")
            assert answer["code"] == "2.01", answer
            root = get_xml(m, "<call-home/>")
            assert texts(root, "call-home-server/mitigations/mitigation/scope/status") == [
                "attack-successfully-mitigated"]
            assert texts(root, "call-home-server/mitigations/mitigation/pending-consent") == ["false"]
        assert cpe_proc.alive()
    finally:
        stop_all(cpe_proc, prov)


def test_peer_change_reconnects(tmp_path: Path, pki: Path) -> None:
    """Replacing the peer's port in running makes the CPE call the new Call Home DOTS client."""
    first = provider(tmp_path / "a", pki)
    second = provider(tmp_path / "b", pki)
    cpe_proc = None
    try:
        cpe_proc = cpe(tmp_path, pki, first.addresses["tls"][0][1], "--consent", "auto")
        with connect(cpe_proc.netconf_port) as m, connect(second.netconf_port) as sm:
            wait_for(lambda: texts(get_xml(m, "<call-home><sessions/></call-home>"), "session/peer-port") == [
                str(first.addresses["tls"][0][1])], timeout=30)
            name = texts(get_xml(m, "<call-home><call-home-server><peer/></call-home-server></call-home>"),
                         "peer/name")[0]
            m.edit_config(target="running", config=(
                f'<config><dots-agent xmlns="{NS}"><call-home><call-home-server><peer><name>{name}</name>'
                f'<port>{second.addresses["tls"][0][1]}</port></peer>'
                "</call-home-server></call-home></dots-agent></config>"))
            wait_for(lambda: texts(get_xml(m, "<call-home><sessions/></call-home>"), "session/peer-port") == [
                str(second.addresses["tls"][0][1])], timeout=30)
            wait_for(lambda: texts(get_xml(sm, "<call-home><sessions/></call-home>"), "session/role") == [
                "call-home-client"], timeout=30)
    finally:
        stop_all(cpe_proc, first, second)
