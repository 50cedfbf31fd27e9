"""RESTCONF (RFC 8040) over real TLS with a client certificate, on the shared datastores.

Client certificates come from the management CA of ``dots pki init`` (``mgmt-ca.crt``); the
administrator's ``admin.crt`` is mapped to the administrator through ``cert-to-name``.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agent.pki import certificate_fingerprint, init_pki
from mgmt.restconf_server import RestconfSettings
from tests.test_mgmt_harness import Harness, server_example
from tests.test_mgmt_netconf import Refuser

CLIENTS = "/restconf/data/dots-agent:dots-agent/server/clients"


def _serve(tmp_path: Path, client_ca: str, cert: Path, key: Path):
    """Harness + RESTCONF trusting *client_ca*; the administrator certificate is mapped to USER."""
    pki = init_pki(tmp_path / "pki")
    h = Harness(tmp_path, initial=server_example(), admin_certificates=(certificate_fingerprint(pki.admin_cert),))
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(getattr(pki, client_ca)))
    sctx.load_cert_chain(pki.server_cert, pki.server_key)
    sctx.verify_mode = ssl.CERT_REQUIRED
    server = h.run(lambda: h.mgmt.start_restconf(RestconfSettings(ssl_context=sctx, port=0)))
    cctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    cctx.load_cert_chain(getattr(pki, cert), getattr(pki, key))
    return h, f"https://localhost:{server.port}", cctx, pki


@pytest.fixture
def rc(tmp_path: Path):
    """RESTCONF as shipped: management CA, the administrator's certificate."""
    served = _serve(tmp_path, "mgmt_ca_cert", "admin_cert", "admin_key")
    yield served
    served[0].close()


@pytest.fixture
def dots_ca_rc(tmp_path: Path):
    """A misconfigured RESTCONF that trusts the DOTS client CA, used with the DOTS client certificate."""
    served = _serve(tmp_path, "ca_cert", "client_cert", "client_key")
    yield served
    served[0].close()


def _req(base: str, ctx: ssl.SSLContext, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    r = urllib.request.Request(base + path, method=method, data=data,
                               headers={"Content-Type": "application/yang-data+json",
                                        "Accept": "application/yang-data+json"})
    try:
        with urllib.request.urlopen(r, context=ctx, timeout=10) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw and raw.lstrip().startswith(b"{") else {"raw": raw})
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_discovery(rc):
    _, base, ctx, _ = rc
    status, body = _req(base, ctx, "GET", "/.well-known/host-meta")
    assert status == 200 and b"/restconf" in body["raw"]
    status, body = _req(base, ctx, "GET", "/restconf/yang-library-version")
    assert status == 200 and body == {"ietf-restconf:yang-library-version": "2019-01-04"}


def test_crud_and_errors(rc):
    h, base, ctx, _ = rc
    new = {"dots-agent:client": [{"name": "rc-customer", "cuid": "restconfrestconfrestco"}]}
    assert _req(base, ctx, "POST", CLIENTS, new)[0] == 201
    status, body = _req(base, ctx, "POST", CLIENTS, new)
    assert status == 409 and body["ietf-restconf:errors"]["error"][0]["error-tag"] == "data-exists"
    status, body = _req(base, ctx, "GET", CLIENTS + "/client=rc-customer")
    assert status == 200 and body["dots-agent:client"][0]["cuid"] == "restconfrestconfrestco"
    patch = {"dots-agent:client": [{"name": "rc-customer", "protected-prefix": ["192.0.2.0/28"]}]}
    assert _req(base, ctx, "PATCH", CLIENTS + "/client=rc-customer", patch)[0] == 204
    # invalid: RFC 8040 errors with error-path, running untouched
    before = h.mgmt.running_dict()
    status, body = _req(base, ctx, "PUT", "/restconf/data/dots-agent:dots-agent/server/credential",
                        {"dots-agent:credential": "missing"})
    err = body["ietf-restconf:errors"]["error"][0]
    assert status == 409 and err["error-tag"] == "data-missing"
    assert err["error-path"] == "/dots-agent:dots-agent/server/credential"
    assert h.mgmt.running_dict() == before
    assert _req(base, ctx, "DELETE", CLIENTS + "/client=rc-customer")[0] == 204
    assert _req(base, ctx, "DELETE", CLIENTS + "/client=rc-customer")[0] == 409
    # NETCONF sees the same datastore
    with h.connect() as m:
        assert "rc-customer" not in m.get_config("running").data_xml


def test_subscriber_refusal_is_an_error(rc):
    h, base, ctx, _ = rc
    h.mgmt.add_subscriber(Refuser())
    status, body = _req(base, ctx, "POST", CLIENTS,
                        {"dots-agent:client": [{"name": "customer-b", "cuid": "bbbbbbbbbbbbbbbbbbbbbb"}]})
    assert status == 500
    assert body["ietf-restconf:errors"]["error"][0]["error-tag"] == "operation-failed"


def test_dots_client_certificate_refused_by_the_management_ca(rc):
    _, base, _, pki = rc
    dots_client = ssl.create_default_context(cafile=str(pki.ca_cert))
    dots_client.load_cert_chain(pki.client_cert, pki.client_key)
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        _req(base, dots_client, "GET", "/restconf/data/dots-agent:dots-agent")


def test_client_certificate_required(rc):
    _, base, _, pki = rc
    anonymous = ssl.create_default_context(cafile=str(pki.ca_cert))
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        _req(base, anonymous, "GET", "/restconf/yang-library-version")


def test_dots_client_certificate_gets_no_access(dots_ca_rc):
    """Issue 10 probe: a certificate that maps to no NACM user (here: the DOTS client certificate of
    a server that, misconfigured, trusts the DOTS CA) must not change anything: 401, counted."""
    h, base, ctx, _ = dots_ca_rc
    before = h.mgmt.running_dict()
    widen = {"dots-agent:client": [{"name": "customer-a", "protected-prefix": ["0.0.0.0/0"]}]}
    status, body = _req(base, ctx, "PATCH", CLIENTS + "/client=customer-a", widen)
    assert status == 401, (status, body)
    assert body["ietf-restconf:errors"]["error"][0]["error-tag"] == "access-denied"
    status, _ = _req(base, ctx, "PATCH", CLIENTS, {"dots-agent:clients": {"allow-unlisted": False}})
    assert status == 401
    assert _req(base, ctx, "GET", CLIENTS)[0] == 401
    assert h.mgmt.running_dict() == before
    from mgmt.limits import stats_for

    assert stats_for(h.mgmt).authentication_failures >= 1
