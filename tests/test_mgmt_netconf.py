"""NETCONF management plane over real SSH on loopback, driven by ncclient.

Each test starts a Management (tests/test_mgmt_harness.py) with a throwaway host key and user
in tmp_path, then talks to it like an operator would.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import paramiko
import pytest
from lxml import etree
from ncclient.operations.rpc import RPCError

import yang
from tests.test_mgmt_harness import NS, PASSWORD, USER, Harness, server_example

CLIENT_B = (f'<config><dots-agent xmlns="{NS}"><server><clients><client><name>customer-b</name>'
            '<cuid>bbbbbbbbbbbbbbbbbbbbbb</cuid><protected-prefix>203.0.113.0/24</protected-prefix>'
            '</client></clients></server></dots-agent></config>')
CLIENTS_FILTER = f'<dots-agent xmlns="{NS}"><server><clients/></server></dots-agent>'


@pytest.fixture
def harness(tmp_path: Path):
    h = Harness(tmp_path, initial=server_example())
    yield h
    h.close()


def _names(reply_xml: str) -> list[str]:
    root = etree.fromstring(reply_xml.encode())
    return [e.text for e in root.iter(f"{{{NS}}}client") for e in e.findall(f"{{{NS}}}name")]


def _wait(predicate, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_binds_only_the_configured_address(harness: Harness):
    assert harness.netconf.address[0] == "127.0.0.1"
    # Not reachable through another loopback address of the host.
    with socket.socket() as s:
        s.settimeout(1)
        assert s.connect_ex(("127.0.0.2", harness.port)) != 0


def test_host_key_generated_and_kept(harness: Harness, tmp_path: Path):
    key_file = tmp_path / "ssh_host_key"
    assert key_file.exists() and (key_file.stat().st_mode & 0o077) == 0
    before = key_file.read_bytes()
    harness.close()
    again = Harness(tmp_path)
    try:
        assert key_file.read_bytes() == before
    finally:
        again.close()


def test_capabilities(harness: Harness):
    with harness.connect() as m:
        caps = list(m.server_capabilities)
    for cap in ("urn:ietf:params:netconf:base:1.0", "urn:ietf:params:netconf:base:1.1",
                "urn:ietf:params:netconf:capability:candidate:1.0",
                "urn:ietf:params:netconf:capability:confirmed-commit:1.1",
                "urn:ietf:params:netconf:capability:validate:1.1",
                "urn:ietf:params:netconf:capability:startup:1.0",
                "urn:ietf:params:netconf:capability:xpath:1.0",
                "urn:ietf:params:netconf:capability:notification:1.0",
                "urn:ietf:params:netconf:capability:interleave:1.0"):
        assert cap in caps
    agent = [c for c in caps if c.startswith(NS + "?")]
    assert len(agent) == 1
    assert "module=dots-agent" in agent[0] and "revision=2026-11-21" in agent[0]
    assert "features=" in agent[0] and "dots-server" in agent[0] and "call-home" in agent[0]
    assert any("module=ietf-netconf-monitoring" in c for c in caps)
    assert any("module=ietf-dots-signal-channel&revision=2021-09-02" in c for c in caps)


def test_get_schema_and_monitoring(harness: Harness):
    with harness.connect() as m:
        text = m.get_schema("dots-agent", version="2026-11-21").data
        assert text.startswith("module dots-agent")
        state = m.get(filter=("subtree", '<netconf-state xmlns="urn:ietf:params:xml:ns:yang:'
                                         'ietf-netconf-monitoring"><schemas/></netconf-state>')).data_xml
        assert "<identifier>dots-agent</identifier>" in state


def test_lock_contention_and_release_on_drop(harness: Harness):
    a = harness.connect()
    b = harness.connect()
    try:
        a.lock("running")
        with pytest.raises(RPCError) as err:
            b.lock("running")
        assert err.value.tag == "lock-denied"
        assert f"<session-id>{a.session_id}</session-id>" in err.value.info
        with pytest.raises(RPCError) as err:
            b.edit_config(target="running", config=CLIENT_B)
        assert err.value.tag == "in-use"
    finally:
        a.close_session()  # a session going away releases its locks
    assert _wait(lambda: "running" not in harness.mgmt.ds.locks)
    b.lock("running")
    b.unlock("running")
    b.close_session()


def test_abrupt_drop_releases_lock_and_discards_candidate(harness: Harness):
    a = harness.connect()
    a.lock("candidate")
    a.edit_config(target="candidate", config=CLIENT_B)
    a._session._transport.close()  # the TCP connection dies, no close-session
    assert _wait(lambda: "candidate" not in harness.mgmt.ds.locks)
    with harness.connect() as b:
        b.lock("candidate")
        assert "customer-b" not in _names(b.get_config("candidate", filter=("subtree", CLIENTS_FILTER)).data_xml)
        b.unlock("candidate")


def test_candidate_commit_and_discard(harness: Harness):
    with harness.connect() as m:
        m.edit_config(target="candidate", config=CLIENT_B)
        assert "customer-b" in _names(m.get_config("candidate").data_xml)
        assert "customer-b" not in _names(m.get_config("running").data_xml)
        m.discard_changes()
        assert "customer-b" not in _names(m.get_config("candidate").data_xml)
        m.edit_config(target="candidate", config=CLIENT_B)
        m.validate(source="candidate")
        m.commit()
        assert "customer-b" in _names(m.get_config("running").data_xml)


def test_edit_operations_delete_create_replace(harness: Harness):
    nc = 'xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0"'
    delete = (f'<config {nc}><dots-agent xmlns="{NS}">'
              '<server><clients><client nc:operation="delete"><name>customer-b</name></client></clients>'
              '<lifetime><max-lifetime nc:operation="delete"/></lifetime></server></dots-agent></config>')
    create = CLIENT_B.replace("<client>", f'<client {nc} nc:operation="create">')
    with harness.connect() as m:
        m.edit_config(target="running", config=create)
        with pytest.raises(RPCError) as err:
            m.edit_config(target="running", config=create)
        assert err.value.tag == "data-exists"
        m.edit_config(target="running", config=delete)
        running = m.get_config("running").data_xml
        assert "customer-b" not in _names(running) and "max-lifetime" not in running
        with pytest.raises(RPCError) as err:
            m.edit_config(target="running", config=delete)
        assert err.value.tag == "data-missing"
        assert err.value.path.strip() == "/dots-agent:dots-agent/server/clients/client[name='customer-b']"
        m.edit_config(target="running", config=CLIENT_B)
        replace = CLIENT_B.replace("<client>", f'<client {nc} nc:operation="replace">').replace(
            "<protected-prefix>203.0.113.0/24</protected-prefix>", "")
        m.edit_config(target="running", config=replace)
        assert "203.0.113.0/24" not in m.get_config("running").data_xml
        assert "customer-b" in _names(m.get_config("running").data_xml)


def test_invalid_edit_rejected_with_error_path_and_running_untouched(harness: Harness):
    bad = (f'<config><dots-agent xmlns="{NS}"><server><session-config><mitigating-config><ack-timeout>'
           '<min-value-decimal>9.00</min-value-decimal></ack-timeout></mitigating-config></session-config>'
           '<credential>no-such-credential</credential></server></dots-agent></config>')
    with harness.connect() as m:
        before = m.get_config("running").data_xml
        with pytest.raises(RPCError) as err:
            m.edit_config(target="running", config=bad)
        assert err.value.type == "application"
        assert err.value.path.strip().startswith("/dots-agent:dots-agent/server/")
        assert err.value.message
        assert m.get_config("running").data_xml == before
        bad_value = (f'<config><dots-agent xmlns="{NS}"><server><listen><endpoint><name>tls-v4</name>'
                     '<port>70000</port></endpoint></listen></server></dots-agent></config>')
        with pytest.raises(RPCError) as err:
            m.edit_config(target="running", config=bad_value)
        assert err.value.tag == "invalid-value"
        assert err.value.path.strip() == "/dots-agent:dots-agent/server/listen/endpoint[name='tls-v4']/port"
        with pytest.raises(RPCError) as err:
            m.edit_config(target="running", config=f'<config><dots-agent xmlns="{NS}"><bogus/></dots-agent>'
                                                    '</config>')
        assert err.value.tag == "unknown-element"
        assert m.get_config("running").data_xml == before


def test_get_config_subtree_and_xpath_filters(harness: Harness):
    with harness.connect() as m:
        sub = m.get_config("running", filter=("subtree", f'<dots-agent xmlns="{NS}"><server><clients><client>'
                                                         '<name>customer-a</name><cuid/></client></clients>'
                                                         '</server></dots-agent>')).data_xml
        root = etree.fromstring(sub.encode())
        client = root.find(f".//{{{NS}}}client")
        assert [etree.QName(c).localname for c in client] == ["name", "cuid"]
        assert root.find(f".//{{{NS}}}credentials") is None
        xp = m.get_config("running", filter=("xpath", "/dots-agent:dots-agent/dots-agent:server/"
                                                      "dots-agent:lifetime")).data_xml
        assert "<max-lifetime>86400</max-lifetime>" in xp and "clients" not in xp


class FakeState:
    async def state(self) -> dict:
        return {"dots-agent:dots-agent": {"server": {"sessions": {"session": [
            {"session-id": "s1", "role": "server", "peer-address": "192.0.2.9", "cuid": "dz6pHjaADkaFTbjr0JGBpw"}]}}}}


def test_get_merges_state_from_provider(harness: Harness):
    harness.mgmt.set_state_provider(FakeState())
    with harness.connect() as m:
        data = m.get(filter=("subtree", f'<dots-agent xmlns="{NS}"><server/></dots-agent>')).data_xml
        assert "<peer-address>192.0.2.9</peer-address>" in data
        assert "customer-a" in data  # config too
        assert "192.0.2.9" not in m.get_config("running").data_xml


def test_copy_running_to_startup_and_restart(tmp_path: Path):
    startup = tmp_path / "startup.json"
    h = Harness(tmp_path, startup=startup, initial=server_example())
    try:
        with h.connect() as m:
            m.edit_config(target="running", config=CLIENT_B)
            m.copy_config(source="running", target="startup")
    finally:
        h.close()
    assert "customer-b" in startup.read_text()
    h2 = Harness(tmp_path, startup=startup)
    try:
        with h2.connect() as m:
            assert "customer-b" in _names(m.get_config("running").data_xml)
            assert "customer-b" in _names(m.get_config("startup").data_xml)
    finally:
        h2.close()


def test_confirmed_commit_rolls_back_on_timeout(harness: Harness):
    with harness.connect() as m:
        m.edit_config(target="candidate", config=CLIENT_B)
        m.commit(confirmed=True, timeout="1")
        assert "customer-b" in _names(m.get_config("running").data_xml)
        assert _wait(lambda: "customer-b" not in _names(m.get_config("running").data_xml), 5)
        # confirmed then confirmed by a second commit stays
        m.edit_config(target="candidate", config=CLIENT_B)
        m.commit(confirmed=True, timeout="1")
        m.commit()
        time.sleep(1.5)
        assert "customer-b" in _names(m.get_config("running").data_xml)


def test_cancel_commit(harness: Harness):
    with harness.connect() as m:
        m.edit_config(target="candidate", config=CLIENT_B)
        m.commit(confirmed=True, timeout="60")
        m.cancel_commit()
        assert "customer-b" not in _names(m.get_config("running").data_xml)


def _raw_session(port: int) -> tuple[paramiko.SSHClient, paramiko.Channel]:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect("127.0.0.1", port=port, username=USER, password=PASSWORD, allow_agent=False,
                   look_for_keys=False)
    chan = client.get_transport().open_session()
    chan.invoke_subsystem("netconf")
    chan.settimeout(10)
    chan.sendall(b'<?xml version="1.0"?><hello xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><capabilities>'
                 b"<capability>urn:ietf:params:netconf:base:1.0</capability></capabilities></hello>]]>]]>")
    _read_10(chan)  # server hello
    return client, chan


def _read_10(chan: paramiko.Channel) -> str:
    buf = b""
    while b"]]>]]>" not in buf:
        data = chan.recv(65536)
        if not data:
            break
        buf += data
    return buf.split(b"]]>]]>")[0].decode()


def test_malformed_xml_and_unknown_namespace_get_rpc_errors(harness: Harness):
    client, chan = _raw_session(harness.port)
    try:
        with harness.connect() as other:
            chan.sendall(b'<rpc message-id="7" xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><get></rpc>]]>]]>')
            reply = _read_10(chan)
            assert "<error-tag>malformed-message</error-tag>" in reply and 'message-id="7"' in reply
            chan.sendall(b'<rpc message-id="8" xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
                         b'<frobnicate xmlns="urn:example:unknown"/></rpc>]]>]]>')
            reply = _read_10(chan)
            assert "<error-tag>unknown-namespace</error-tag>" in reply and "<bad-namespace>" in reply
            chan.sendall(b'<rpc message-id="9" xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
                         b'<frobnicate/></rpc>]]>]]>')
            assert "<error-tag>operation-not-supported</error-tag>" in _read_10(chan)
            chan.sendall(b'<rpc message-id="10" xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
                         b'<get-config><source><running/></source><bogus/></get-config></rpc>]]>]]>')
            assert "<error-tag>unknown-element</error-tag>" in _read_10(chan)
            # the same session and the others keep working
            chan.sendall(b'<rpc message-id="11" xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
                         b"<get-config><source><running/></source></get-config></rpc>]]>]]>")
            assert "customer-a" in _read_10(chan)
            assert "customer-a" in other.get_config("running").data_xml
            with pytest.raises(RPCError) as err:
                other.dispatch(etree.fromstring('<frobnicate xmlns="urn:example:unknown"/>'))
            assert err.value.tag == "unknown-namespace"
    finally:
        client.close()


def test_oversized_rpc_refused(tmp_path: Path):
    h = Harness(tmp_path, initial=server_example(), max_rpc_size=16 * 1024)
    try:
        with h.connect() as m:
            huge = "<!--" + "x" * 64 * 1024 + "-->"
            with pytest.raises(RPCError) as err:
                m.edit_config(target="running", config=CLIENT_B.replace("<server>", "<server>" + huge))
            assert err.value.tag == "too-big"
            assert "customer-b" not in _names(m.get_config("running").data_xml)
    finally:
        h.close()


class Refuser:
    def __init__(self) -> None:
        self.calls = 0

    async def apply(self, new_running: dict, old: dict) -> None:
        self.calls += 1
        clients = new_running["dots-agent:dots-agent"]["server"]["clients"]["client"]
        if any(c["name"] == "customer-b" for c in clients):
            raise RuntimeError("mitigator cannot take customer-b")


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[dict, dict]] = []

    async def apply(self, new_running: dict, old: dict) -> None:
        self.seen.append((new_running, old))


def test_subscriber_that_raises_rolls_back(harness: Harness):
    recorder, refuser = Recorder(), Refuser()
    harness.mgmt.add_subscriber(recorder)
    harness.mgmt.add_subscriber(refuser)
    with harness.connect() as m:
        before = m.get_config("running").data_xml
        m.edit_config(target="candidate", config=CLIENT_B)
        with pytest.raises(RPCError) as err:
            m.commit()
        assert err.value.tag == "operation-failed"
        assert "mitigator cannot take customer-b" in err.value.message
        assert m.get_config("running").data_xml == before
        # the recorder saw the change and then the rollback
        assert len(recorder.seen) == 2
        assert recorder.seen[1][0] == recorder.seen[0][1]
        with pytest.raises(RPCError):
            m.edit_config(target="running", config=CLIENT_B)
        assert m.get_config("running").data_xml == before


def test_notifications_reach_subscribed_sessions(harness: Harness):
    with harness.connect() as m:
        m.create_subscription()
        event = {"dots-agent:mitigation-status-change": {"role": "server", "cuid": "dz6pHjaADkaFTbjr0JGBpw",
                                                         "mid": 12, "status": "attack-mitigation-in-progress"}}
        sent = harness.run(lambda: harness.mgmt.notify(event))
        assert sent == 1
        note = m.take_notification(timeout=5)
        assert note is not None
        assert "<mid>12</mid>" in note.notification_xml
        assert m.get_config("running").ok  # interleave: RPCs still work


def test_module_rpc_handler(harness: Harness):
    calls = []

    async def approve(rpc_input: dict, session) -> None:
        calls.append((rpc_input, session.username))

    class PendingState:
        async def state(self) -> dict:
            return {"dots-agent:dots-agent": {"call-home": {"call-home-server": {"pending-approvals": {
                "pending-approval": [{"cuid": "c1", "mid": 5}]}}}}}

    harness.mgmt.register_rpc("approve-mitigation", approve)
    harness.mgmt.set_state_provider(PendingState())
    with harness.connect() as m:
        m.dispatch(etree.fromstring(f'<approve-mitigation xmlns="{NS}"><cuid>c1</cuid><mid>5</mid>'
                                    '</approve-mitigation>'))
        with pytest.raises(RPCError) as err:
            m.dispatch(etree.fromstring(f'<approve-mitigation xmlns="{NS}"><cuid>c1</cuid><mid>6</mid>'
                                        '</approve-mitigation>'))
        assert err.value.tag == "data-missing"
    assert calls == [({"dots-agent:approve-mitigation": {"cuid": "c1", "mid": 5}}, USER)]


def test_get_config_export_validates_with_yanglint(harness: Harness, tmp_path: Path):
    yanglint = shutil.which("yanglint")
    if yanglint is None:
        pytest.skip("yanglint not installed")
    with harness.connect() as m:
        m.edit_config(target="running", config=CLIENT_B)
        data = etree.fromstring(m.get_config("running").data_xml.encode())
    out = tmp_path / "running.xml"
    out.write_text("".join(etree.tostring(c, encoding="unicode") for c in data))
    args = [yanglint]
    for d in yang.search_path():
        args += ["-p", str(d)]
    module = yang.MODULE_DIR / "dots-agent@2026-11-21.yang"
    nacm = next(d / "ietf-netconf-acm.yang" for d in yang.search_path() if (d / "ietf-netconf-acm.yang").exists())
    res = subprocess.run([*args, "-F", "dots-agent:*", "-t", "config", str(module), str(nacm), str(out)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_public_key_login(tmp_path: Path):
    from mgmt.auth import User

    key = paramiko.ECDSAKey.generate()
    key_file = tmp_path / "id_ecdsa"
    key.write_private_key_file(str(key_file))
    h = Harness(tmp_path, initial=server_example())
    try:
        h.settings.users.static.append(User("robot", None, [paramiko.PKey.from_type_string(
            key.get_name(), key.asbytes())]))
        with h.connect(username="robot", password=None, key_filename=str(key_file)) as m:
            assert m.get_config("running").ok
        from ncclient.transport.errors import AuthenticationError

        with pytest.raises(AuthenticationError):
            h.connect(password="wrong")
    finally:
        h.close()


def test_numeric_rpc_parameters_are_ascii_digits(harness: Harness):
    with harness.connect() as m:
        for value in ("２", "²", "99999999999"):
            with pytest.raises(RPCError) as err:
                m.dispatch(etree.fromstring(f'<kill-session xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
                                            f"<session-id>{value}</session-id></kill-session>"))
            assert err.value.tag == "missing-element", value
            m.edit_config(target="candidate", config=CLIENT_B)
            with pytest.raises(RPCError) as err:
                m.commit(confirmed=True, timeout=value)
            assert err.value.tag == "invalid-value", value
            m.discard_changes()
        assert "customer-b" not in _names(m.get_config("running").data_xml)
