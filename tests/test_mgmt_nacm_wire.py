"""NACM (RFC 8341) and explicit identities over the wire: NETCONF (ncclient over SSH) and
RESTCONF (HTTPS with client certificates, urllib and curl).

The configuration holds the default NACM of the process (group ``admin`` = the bootstrap user)
plus a read-only group ``operators`` (user ``viewer``, password configured in running), as in
docs/nacm.md.  RESTCONF certificates come from a management CA apart from the DOTS client CA
(``dots pki init``) and map to NACM users through ``/dots-agent/management/cert-to-name``.
"""

from __future__ import annotations

import json
import logging
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from ncclient.operations.rpc import RPCError

from agent.pki import certificate_fingerprint, init_pki, issue_mgmt_client
from mgmt.restconf_server import RestconfSettings
from tests.test_mgmt_harness import NS, USER, Harness, server_example

NACM_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-acm"
VIEWER, VIEWER_PW = "viewer", "view-only-pw"
CLIENT_B = (f'<config><dots-agent xmlns="{NS}"><server><clients><client><name>customer-b</name>'
            '<cuid>bbbbbbbbbbbbbbbbbbbbbb</cuid><protected-prefix>203.0.113.0/24</protected-prefix>'
            '</client></clients></server></dots-agent></config>')
CLIENTS = "/restconf/data/dots-agent:dots-agent/server/clients"


def operators_nacm(extra_rules: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Default NACM + the read-only ``operators`` group of docs/nacm.md."""
    return {"ietf-netconf-acm:nacm": {
        "enable-nacm": True, "read-default": "permit", "write-default": "deny", "exec-default": "permit",
        "groups": {"group": [{"name": "admin", "user-name": [USER]},
                             {"name": "operators", "user-name": [VIEWER]}]},
        "rule-list": [
            {"name": "admin", "group": ["admin"],
             "rule": [{"name": "permit-all", "module-name": "*", "access-operations": "*", "action": "permit"}]},
            {"name": "operators", "group": ["operators"],
             "rule": [*(extra_rules or []),
                      {"name": "no-writes", "module-name": "*", "access-operations": "create update delete",
                       "action": "deny"}]}]}}


def config_with(nacm: dict[str, Any] | None = None, cert_to_name: list[dict[str, Any]] | None = None) -> dict:
    cfg = server_example()
    mgmt = cfg["dots-agent:dots-agent"].setdefault("management", {})
    mgmt.setdefault("user", []).append({"name": VIEWER, "password": f"$0${VIEWER_PW}"})
    if cert_to_name:
        mgmt["cert-to-name"] = cert_to_name
    if nacm:
        cfg.update(nacm)
    return cfg


@pytest.fixture
def nc(tmp_path: Path):
    h = Harness(tmp_path, initial=config_with(operators_nacm()))
    yield h
    h.close()


def _viewer(h: Harness) -> Any:
    return h.connect(username=VIEWER, password=VIEWER_PW)


def _client_names(xml: str) -> list[str]:
    root = etree.fromstring(xml.encode())
    return [n.text for c in root.iter(f"{{{NS}}}client") for n in c.findall(f"{{{NS}}}name")]


# ----------------------------------------------------------------------------- NETCONF


def test_read_only_user_cannot_edit(nc: Harness, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="dots.mgmt.audit")
    before = nc.mgmt.running_dict()
    with _viewer(nc) as m:
        for target in ("running", "candidate"):
            with pytest.raises(RPCError) as err:
                m.edit_config(target=target, config=CLIENT_B)
            assert err.value.tag == "access-denied" and err.value.type == "application"
        assert m.get_config("running").ok  # reading is allowed
        assert nc.mgmt.running_dict() == before
        with nc.connect() as admin:  # the administrator may write
            admin.edit_config(target="running", config=CLIENT_B)
            with pytest.raises(RPCError) as err:  # startup would change: a write too
                m.copy_config(source="running", target="startup")
            assert err.value.tag == "access-denied"
            state = admin.get(filter=("subtree", f'<nacm xmlns="{NACM_NS}"><denied-data-writes/></nacm>')).data_xml
    assert "customer-b" in json.dumps(nc.mgmt.running_dict())
    assert "<denied-data-writes>3</denied-data-writes>" in state
    audit = [r.getMessage() for r in caplog.records if r.name == "dots.mgmt.audit"]
    assert any(f"user {USER}" in a and "netconf" in a and "client[name='customer-b']" in a for a in audit), audit
    assert any("denied" in a and f"user {VIEWER}" in a for a in audit), audit


def test_default_nacm_installed_and_only_the_administrator_writes(tmp_path: Path):
    h = Harness(tmp_path, initial=config_with())  # no /nacm in the configuration
    try:
        with h.connect() as m:
            nacm = etree.fromstring(m.get_config("running", filter=("subtree", f'<nacm xmlns="{NACM_NS}"/>'))
                                    .data_xml.encode())
            ns = {"n": NACM_NS}
            assert nacm.xpath("//n:write-default/text()", namespaces=ns) == ["deny"]
            assert nacm.xpath("//n:group[n:name='admin']/n:user-name/text()", namespaces=ns) == [USER]
            m.edit_config(target="running", config=CLIENT_B)
        with _viewer(h) as m:
            with pytest.raises(RPCError) as err:
                m.edit_config(target="running", config=CLIENT_B.replace("customer-b", "customer-c"))
            assert err.value.tag == "access-denied"
            # /nacm is default-deny-all: a non-administrator does not even see it
            assert "nacm" not in m.get_config("running").data_xml
    finally:
        h.close()


def test_reads_are_filtered(tmp_path: Path):
    deny_clients = {"name": "hide-clients", "module-name": "dots-agent",
                    "path": "/dots-agent:dots-agent/server/clients",
                    "access-operations": "read", "action": "deny"}
    h = Harness(tmp_path, initial=config_with(operators_nacm([deny_clients])))
    try:
        with _viewer(h) as m:
            for reply in (m.get_config("running").data_xml, m.get().data_xml):
                assert "<clients" not in reply and "allow-unlisted" not in reply
                assert "<key>" not in reply and "$0$" not in reply  # default-deny-all: PSKs, passwords
                assert "<credential>" in reply or "credential" in reply
                assert f"<nacm xmlns=\"{NACM_NS}\"" not in reply
        with h.connect() as m:
            reply = m.get_config("running").data_xml
            assert "customer-a" in reply and "$0$" in reply and NACM_NS in reply
    finally:
        h.close()


def test_exec_rules(tmp_path: Path):
    deny_get = {"name": "no-get", "module-name": "ietf-netconf", "rpc-name": "get",
                "access-operations": "exec", "action": "deny"}
    h = Harness(tmp_path, initial=config_with(operators_nacm([deny_get])))
    calls: list[str] = []

    async def approve(rpc_input: dict, session: Any) -> None:
        calls.append(session.username)

    class PendingState:
        async def state(self) -> dict:
            return {"dots-agent:dots-agent": {"call-home": {"call-home-server": {"pending-approvals": {
                "pending-approval": [{"cuid": "c1", "mid": 5}]}}}}}

    h.mgmt.register_rpc("approve-mitigation", approve)
    h.mgmt.set_state_provider(PendingState())
    rpc = f'<approve-mitigation xmlns="{NS}"><cuid>c1</cuid><mid>5</mid></approve-mitigation>'
    try:
        with _viewer(h) as m, h.connect() as admin:
            with pytest.raises(RPCError) as err:
                m.get()
            assert err.value.tag == "access-denied" and err.value.type == "protocol"
            assert m.get_config("running").ok
            with pytest.raises(RPCError) as err:  # nacm:default-deny-all in dots-agent
                m.dispatch(etree.fromstring(rpc))
            assert err.value.tag == "access-denied"
            with pytest.raises(RPCError) as err:  # default-deny-all per RFC 8341
                m.kill_session(str(admin.session_id))
            assert err.value.tag == "access-denied"
            admin.dispatch(etree.fromstring(rpc))
            counters = admin.get(filter=("subtree", f'<nacm xmlns="{NACM_NS}"/>')).data_xml
        assert calls == [USER]
        assert "<denied-operations>3</denied-operations>" in counters
    finally:
        h.close()


def test_notifications_filtered(tmp_path: Path):
    deny = {"name": "no-mitigation-events", "module-name": "dots-agent",
            "notification-name": "mitigation-status-change", "access-operations": "read", "action": "deny"}
    h = Harness(tmp_path, initial=config_with(operators_nacm([deny])))
    mitigation = {"dots-agent:mitigation-status-change": {"role": "server", "cuid": "dz6pHjaADkaFTbjr0JGBpw",
                                                          "mid": 12, "status": "attack-mitigation-in-progress"}}
    session = {"dots-agent:session-status-change": {"role": "server", "session-id": "s1",
                                                    "peer-address": "192.0.2.9", "status": "healthy"}}
    try:
        with _viewer(h) as m, h.connect() as admin:
            m.create_subscription()
            admin.create_subscription()
            assert h.run(lambda: h.mgmt.notify(mitigation)) == 1
            assert h.run(lambda: h.mgmt.notify(session)) == 2
            first = m.take_notification(timeout=10)
            assert first is not None and "session-status-change" in first.notification_xml
            got = admin.take_notification(timeout=10)
            assert got is not None and "<mid>12</mid>" in got.notification_xml
            counters = admin.get(filter=("subtree", f'<nacm xmlns="{NACM_NS}"/>')).data_xml
            assert "<denied-notifications>1</denied-notifications>" in counters
    finally:
        h.close()


# ----------------------------------------------------------------------------- RESTCONF


@pytest.fixture
def rc(tmp_path: Path):
    pki = init_pki(tmp_path / "pki")
    op_crt, op_key = issue_mgmt_client(tmp_path / "pki", "noc-viewer")
    stranger_crt, stranger_key = issue_mgmt_client(tmp_path / "pki", "stranger")
    mapping = [{"id": 10, "fingerprint": certificate_fingerprint(pki.admin_cert), "name": USER},
               {"id": 20, "subject": "CN=noc-viewer,O=dots-agent dev PKI", "name": VIEWER}]
    h = Harness(tmp_path, initial=config_with(operators_nacm(), mapping))
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.mgmt_ca_cert))
    sctx.load_cert_chain(pki.server_cert, pki.server_key)
    sctx.verify_mode = ssl.CERT_REQUIRED
    server = h.run(lambda: h.mgmt.start_restconf(RestconfSettings(ssl_context=sctx, port=0)))

    def ctx(crt: Path, key: Path) -> ssl.SSLContext:
        c = ssl.create_default_context(cafile=str(pki.ca_cert))
        c.load_cert_chain(crt, key)
        return c

    ctxs = {"admin": ctx(pki.admin_cert, pki.admin_key), "viewer": ctx(op_crt, op_key),
            "stranger": ctx(stranger_crt, stranger_key), "dots-client": ctx(pki.client_cert, pki.client_key)}
    yield h, f"https://localhost:{server.port}", ctxs, pki
    h.close()


def _req(base: str, ctx: ssl.SSLContext, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    r = urllib.request.Request(base + path, method=method, data=data,
                               headers={"Content-Type": "application/yang-data+json"})
    try:
        with urllib.request.urlopen(r, context=ctx, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _tag(body: dict) -> str:
    return body["ietf-restconf:errors"]["error"][0]["error-tag"]


def test_restconf_identities_and_nacm(rc, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="dots.mgmt.audit")
    h, base, ctxs, _ = rc
    before = h.mgmt.running_dict()
    widen = {"dots-agent:client": [{"name": "customer-a", "protected-prefix": ["0.0.0.0/0"]}]}
    # read-only operator (mapped by subject): reads, cannot write
    status, body = _req(base, ctxs["viewer"], "PATCH", CLIENTS + "/client=customer-a", widen)
    assert status == 403 and _tag(body) == "access-denied", body
    status, body = _req(base, ctxs["viewer"], "GET", "/restconf/data/dots-agent:dots-agent/management")
    assert status == 200 and "$0$" not in json.dumps(body)  # passwords are default-deny-all
    # a management certificate that maps to no user: no access at all
    status, body = _req(base, ctxs["stranger"], "GET", CLIENTS)
    assert status == 401 and _tag(body) == "access-denied"
    assert h.mgmt.running_dict() == before
    # the DOTS client CA is not trusted for management
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        _req(base, ctxs["dots-client"], "GET", CLIENTS)
    # the administrator certificate (mapped by fingerprint)
    ok = {"dots-agent:client": [{"name": "customer-a", "protected-prefix": ["198.51.100.0/25"]}]}
    assert _req(base, ctxs["admin"], "PATCH", CLIENTS + "/client=customer-a", ok)[0] == 204
    secret = {"dots-agent:user": [{"name": VIEWER, "password": "$0$brand-new-secret"}]}
    assert _req(base, ctxs["admin"], "PATCH", "/restconf/data/dots-agent:dots-agent/management/user=viewer",
                secret)[0] == 204
    from mgmt.limits import stats_for

    assert stats_for(h.mgmt).authentication_failures == 1
    audit = [r.getMessage() for r in caplog.records if r.name == "dots.mgmt.audit"]
    assert any(f"user {USER}" in a and "restconf" in a and "customer-a" in a for a in audit), audit
    assert any("denied" in a and f"user {VIEWER}" in a for a in audit), audit
    assert any("user[name='viewer']/password" in a for a in audit), audit
    assert not any("brand-new-secret" in a for a in audit)  # paths, not values


def test_restconf_with_curl(rc):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    h, base, _, pki = rc
    d = Path(pki.admin_cert).parent
    common = [curl, "-sS", "--cacert", str(pki.ca_cert), "-o", "/dev/null", "-w", "%{http_code}",
              "-H", "Content-Type: application/yang-data+json"]
    body = json.dumps({"dots-agent:client": [{"name": "curl-customer", "cuid": "curlcurlcurlcurlcurlcu"}]})
    res = subprocess.run([*common, "--cert", str(pki.admin_cert), "--key", str(pki.admin_key),
                          "-X", "POST", "--data", body, base + CLIENTS], capture_output=True, text=True, timeout=30)
    assert res.stdout == "201", res.stderr
    res = subprocess.run([*common, "--cert", str(d / "noc-viewer.crt"), "--key", str(d / "noc-viewer.key"),
                          "-X", "DELETE", base + CLIENTS + "/client=curl-customer"],
                         capture_output=True, text=True, timeout=30)
    assert res.stdout == "403", res.stderr
    assert "curl-customer" in json.dumps(h.mgmt.running_dict())
