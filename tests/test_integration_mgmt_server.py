"""``dots server`` with its management plane: NETCONF in, CBOR out, on real processes.

Each test runs the shipped ``dots server`` (TLS on loopback, NETCONF on 127.0.0.1) and drives
it like an operator (Ansible, ncclient) and a DOTS client (``dots client``) would.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from lxml import etree
from ncclient.operations.rpc import RPCError

import yang
from tests.integration_mgmt import (
    NS,
    PASSWORD,
    USER,
    connect,
    dots_client,
    get_xml,
    netconf_port,
    server_config,
    start_server,
    stop_all,
    texts,
    wait_for,
)
from tests.servers import ServerProcess

MODULE = yang.MODULE_DIR / "dots-agent@2026-11-21.yang"
OTHER = {"name": "other-customer", "cuid": "otherotherotherother12", "protected-prefix": ["203.0.113.0/24"]}


def _closed_server(tmp_path: Path, restconf: bool = False) -> ServerProcess:
    """allow-unlisted false and one unrelated authorised client."""
    pki = tmp_path / "srv" / "pki"
    return start_server(tmp_path / "srv", server_config(pki, [OTHER], allow_unlisted=False), restconf=restconf)


def _restconf_get(server: ServerProcess, path: str) -> dict:
    """RESTCONF GET with the administrator certificate of the test PKI (management CA)."""
    pki = server.pki
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(pki / "admin.crt", pki / "admin.key")
    port = server.addresses["restconf"][0][1]
    req = urllib.request.Request(f"https://localhost:{port}/restconf/data/{path}",
                                 headers={"Accept": "application/yang-data+json"})
    with urllib.request.urlopen(req, context=ctx, timeout=20) as resp:
        return json.loads(resp.read())


def _client_xml(name: str, cuid: str, prefix: str) -> str:
    return (f'<config><dots-agent xmlns="{NS}"><server><clients><client><name>{name}</name><cuid>{cuid}</cuid>'
            f'<protected-prefix>{prefix}</protected-prefix></client></clients></server></dots-agent></config>')


def _ansible_playbook() -> str:
    beside = Path(sys.executable).parent / "ansible-playbook"
    if beside.exists():
        return str(beside)
    found = shutil.which("ansible-playbook")
    if found is None:
        pytest.skip("ansible is not installed")
    return found


PLAYBOOK = """
- hosts: dots
  gather_facts: false
  tasks:
    - name: authorise the DOTS client and its protected prefix
      ansible.netcommon.netconf_config:
        target: running
        content: |
          <config>
            <dots-agent xmlns="{ns}">
              <server><clients><client>
                <name>customer-ansible</name>
                <cuid>{cuid}</cuid>
                <protected-prefix>198.51.100.0/24</protected-prefix>
              </client></clients></server>
            </dots-agent>
          </config>
      register: edit
    - name: changed
      ansible.builtin.assert:
        that: [edit.changed]
"""


@pytest.mark.req("SC-037")
def test_ansible_authorises_a_client_live(tmp_path: Path):
    """Before: 4.03 (unlisted client).  After the playbook: 2.01 inside its prefix, 4.00 outside."""
    playbook_cmd = _ansible_playbook()
    server = _closed_server(tmp_path)
    try:
        state = tmp_path / "client-state.json"
        code, out = dots_client(server, "mitigate", "--target-prefix", "198.51.100.0/25", state=state)
        assert code == 1 and out["error"]["code"] == "4.03", out

        inventory = tmp_path / "inventory.ini"
        inventory.write_text(
            "[dots]\n"
            f"srv ansible_host=127.0.0.1 ansible_port={netconf_port(server.addresses)} ansible_user={USER} "
            f"ansible_password={PASSWORD} ansible_connection=ansible.netcommon.netconf "
            f"ansible_network_os=default ansible_python_interpreter={sys.executable}\n")
        playbook = tmp_path / "play.yml"
        playbook.write_text(PLAYBOOK.format(ns=NS, cuid=server.client_cuid))
        env = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"),
                   ANSIBLE_PERSISTENT_CONTROL_PATH_DIR=str(tmp_path / "pc"), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_HOME=str(tmp_path / "ansible-home"),
                   PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
        res = subprocess.run([playbook_cmd, "-i", str(inventory), str(playbook)], capture_output=True, text=True,
                             timeout=300, env=env, cwd=tmp_path)
        assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
        applied = time.monotonic()

        code, out = dots_client(server, "mitigate", "--target-prefix", "198.51.100.0/25", state=state)
        assert code == 0 and out["code"] == "2.01", out
        print(f"\nplaybook done -> 2.01 (incl. dots client start-up): {time.monotonic() - applied:.2f} s")
        code, out = dots_client(server, "mitigate", "--target-prefix", "192.0.2.0/24", state=state)
        assert code == 1 and out["error"]["code"] == "4.00", out
        assert "outside" in out["error"]["diagnostic"]
    finally:
        stop_all(server)


def test_invalid_edit_rejected_running_unchanged(tmp_path: Path):
    server = _closed_server(tmp_path)
    try:
        with connect(netconf_port(server.addresses)) as m:
            m.edit_config(target="running", config=_client_xml("me", server.client_cuid, "198.51.100.0/24"))
            before = m.get_config(source="running").data_xml
            with pytest.raises(RPCError) as err:
                m.edit_config(target="running", config=_client_xml("bad", "badbadbadbadbadbadbad1", "198.51.100.0/33"))
            assert "protected-prefix" in (err.value.path or ""), (err.value.path, err.value.message)
            assert "/clients/client" in (err.value.path or "")
            # A tree the schema accepts but the server cannot honour (RTBH without a next hop): refused.
            with pytest.raises(RPCError) as err:
                m.edit_config(target="running", config=(
                    f'<config><dots-agent xmlns="{NS}"><server><mitigator>'
                    '<type>rtbh</type></mitigator></server></dots-agent></config>'))
            assert err.value.tag == "operation-failed" and "rtbh" in err.value.message
            assert m.get_config(source="running").data_xml == before
        assert server.alive()
        code, out = dots_client(server, "mitigate", "--target-prefix", "198.51.100.7/32", state=tmp_path / "st.json")
        assert code == 0 and out["code"] == "2.01", out
    finally:
        stop_all(server)


def _yanglint() -> str:
    found = shutil.which("yanglint")
    if found is None:
        pytest.skip("yanglint is not installed")
    return found


def test_get_state_validates_with_yanglint(tmp_path: Path):
    server = _closed_server(tmp_path, restconf=True)
    try:
        with connect(netconf_port(server.addresses)) as m:
            m.edit_config(target="running", config=_client_xml("me", server.client_cuid, "198.51.100.0/24"))
            code, out = dots_client(server, "mitigate", "--target-prefix", "198.51.100.0/26", "--port", "443",
                                    "--protocol", "6", state=tmp_path / "st.json")
            assert code == 0, out
            root = get_xml(m, "")
        assert texts(root, "server/mitigations/mitigation/scope/status") == ["attack-mitigation-in-progress"]
        assert texts(root, "server/mitigations/mitigation/client-name") == ["me"]
        assert texts(root, "server/sessions/session/cuid") == [server.client_cuid]
        assert texts(root, "server/sessions/session/heartbeat/status") == ["healthy"]
        assert texts(root, "server/statistics/mitigation-requests-accepted") == ["1"]
        data = tmp_path / "get.xml"
        data.write_bytes(b"".join(etree.tostring(child) for child in root))
        search = [arg for d in yang.search_path() for arg in ("-p", str(d))]
        for kind in ("data", "get"):
            res = subprocess.run([_yanglint(), *search, "-t", kind, str(MODULE), str(data)],
                                 capture_output=True, text=True, timeout=120)
            assert res.returncode == 0 and not res.stderr.strip(), (kind, res.stderr, data.read_text()[:3000])
        # The same state over RESTCONF (HTTPS, the administrator certificate of the management CA).
        doc = _restconf_get(server, "dots-agent:dots-agent/server/mitigations")
        scopes = [m["scope"] for m in doc["dots-agent:mitigations"]["mitigation"]]
        assert [s["status"] for s in scopes] == ["attack-mitigation-in-progress"]
    finally:
        stop_all(server)


def test_subscription_gets_status_change_on_withdraw(tmp_path: Path):
    server = _closed_server(tmp_path)
    try:
        with connect(netconf_port(server.addresses)) as m:
            m.edit_config(target="running", config=_client_xml("me", server.client_cuid, "198.51.100.0/24"))
            m.create_subscription()
            state = tmp_path / "st.json"
            code, out = dots_client(server, "mitigate", "--target-prefix", "198.51.100.0/24", state=state)
            assert code == 0, out
            mid = out["mid"]
            code, out = dots_client(server, "withdraw", "--mid", str(mid), state=state)
            assert code == 0 and out["code"] == "2.02", out
            seen: list[tuple[str, str, str | None]] = []

            def withdrawn() -> bool:
                note = m.take_notification(block=True, timeout=1)
                if note is not None:
                    root = etree.fromstring(note.notification_xml.encode())
                    event = root.find(f"{{{NS}}}mitigation-status-change")
                    assert event is not None
                    prev = event.find(f"{{{NS}}}previous-status")
                    seen.append((event.findtext(f"{{{NS}}}mid"), event.findtext(f"{{{NS}}}status"),
                                 prev.text if prev is not None else None))
                return any(s[1] == "dots-client-withdrawn-mitigation" for s in seen)

            wait_for(withdrawn, timeout=20, interval=0)
        assert (str(mid), "attack-mitigation-in-progress", None) in seen
        assert (str(mid), "dots-client-withdrawn-mitigation", "attack-mitigation-in-progress") in seen
    finally:
        stop_all(server)


def test_startup_datastore_wins_over_config_after_restart(tmp_path: Path):
    """--config seeds running only while there is no startup datastore (in --mgmt-dir)."""
    server = _closed_server(tmp_path)
    try:
        with connect(netconf_port(server.addresses)) as m:
            m.edit_config(target="running", config=_client_xml("me", server.client_cuid, "198.51.100.0/24"))
            m.copy_config(source="running", target="startup")
        assert (tmp_path / "srv" / "server-mgmt" / "startup.json").exists()
        server.stop()
        server.start()
        with connect(netconf_port(server.addresses)) as m:
            names = texts(etree.fromstring(m.get_config(source="running").data_xml.encode()),
                          "server/clients/client/name")
        assert sorted(names) == ["me", "other-customer"]
        code, out = dots_client(server, "mitigate", "--target-prefix", "198.51.100.9/32", state=tmp_path / "st.json")
        assert code == 0 and out["code"] == "2.01", out
    finally:
        stop_all(server)


def _restconf_write(server: ServerProcess, method: str, path: str, body: dict, stem: str) -> int:
    """RESTCONF write with certificate STEM.crt of the test PKI; the HTTP status (0: TLS refused)."""
    pki = server.pki
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(pki / f"{stem}.crt", pki / f"{stem}.key")
    port = server.addresses["restconf"][0][1]
    req = urllib.request.Request(f"https://localhost:{port}/restconf/data/{path}", method=method,
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/yang-data+json"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=20) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, ssl.SSLError, ConnectionError):
        return 0


def test_dots_client_certificate_cannot_reconfigure_over_restconf(tmp_path: Path):
    """Issue 10 probe: a customer's DOTS client certificate widened its own prefix over RESTCONF
    (204, then 2.01 outside its prefix), another set allow-unlisted false.  Both must be refused."""
    from agent.pki import issue_client

    server = _closed_server(tmp_path, restconf=True)
    try:
        issue_client(server.pki, "client2", "dots-client-2")
        with connect(netconf_port(server.addresses)) as m:
            m.edit_config(target="running", config=_client_xml("me", server.client_cuid, "198.51.100.0/24"))
            before = m.get_config("running").data_xml
        clients = "dots-agent:dots-agent/server/clients"
        widen = {"dots-agent:client": [{"name": "me", "protected-prefix": ["0.0.0.0/0"]}]}
        assert _restconf_write(server, "PATCH", clients + "/client=me", widen, "client") in (0, 401, 403)
        mine = {"dots-agent:client": [{"name": "mine", "cuid": "minemineminemineminemi"}]}
        assert _restconf_write(server, "POST", clients, mine, "client2") in (0, 401, 403)
        lock = {"dots-agent:clients": {"allow-unlisted": False}}
        assert _restconf_write(server, "PATCH", clients, lock, "client2") in (0, 401, 403)
        with connect(netconf_port(server.addresses)) as m:
            assert m.get_config("running").data_xml == before
        code, out = dots_client(server, "mitigate", "--target-prefix", "192.0.2.0/24", state=tmp_path / "st.json")
        assert code == 1 and out["error"]["code"] == "4.00", out
        # the administrator certificate made by `dots pki init` is accepted
        admin = {"dots-agent:client": [{"name": "me", "protected-prefix": ["198.51.100.0/25"]}]}
        assert _restconf_write(server, "PATCH", clients + "/client=me", admin, "admin") == 204
        log_text = server.log.read_text()
        assert "dots.mgmt.audit" in log_text and "restconf" in log_text
    finally:
        stop_all(server)
