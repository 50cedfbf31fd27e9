"""Our server driven by an implementation we did not write: libcoap's coap-client-openssl."""

from __future__ import annotations

import io
import subprocess
import time
from pathlib import Path

import cbor2
import pytest

from agent.codec import Direction, decode_cbor
from tests.servers import COAP_CLIENT, ServerProcess, coap_client

pytestmark = pytest.mark.skipif(COAP_CLIENT is None, reason="coap-client-openssl (libcoap3-bin) not installed")
FIG8 = (Path(__file__).parent / "data" / "rfc" / "fig08-mitigation-request.cbor.hex").read_text().strip()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    s = ServerProcess(tmp_path_factory.mktemp("interop")).start()
    yield s
    s.stop()


def body_file(tmp: Path) -> Path:
    f = tmp / "fig8.cbor"
    f.write_bytes(bytes.fromhex(FIG8))
    return f


@pytest.mark.req("SC-001", "SC-003", "SC-004", "SC-008", "SC-016", "SC-089")
@pytest.mark.parametrize("transport", ["tls", "dtls"])
def test_put_get_observe_delete(server: ServerProcess, tmp_path: Path, transport: str) -> None:
    cuid, mid = server.client_cuid, 100 if transport == "tls" else 200
    uri = server.uri(transport, f"mitigate/cuid={cuid}/mid={mid}")
    out = tmp_path / "put.out"
    r = coap_client(server.pki, "-m", "put", "-t", "271", "-f", str(body_file(tmp_path)), "-o", str(out), uri)
    assert r.returncode == 0, r.stderr
    created = decode_cbor(out.read_bytes(), Direction.RESPONSE).members()
    assert created == {"scope": [{"mid": mid, "lifetime": 3600}]}  # RFC 9132 Figure 10 shape

    r = coap_client(server.pki, "-m", "get", "-o", str(out), uri)
    assert r.returncode == 0, r.stderr
    scope = decode_cbor(out.read_bytes(), Direction.RESPONSE).members()["scope"][0]
    assert scope["status"] == "attack-mitigation-in-progress" and scope["mid"] == mid
    assert scope["target-prefix"] == ["2001:db8:6401::1/128", "2001:db8:6401::2/128"]
    assert 3590 <= scope["lifetime"] <= 3600

    obs_out = tmp_path / "obs.out"
    watcher = subprocess.Popen([COAP_CLIENT, "-c", str(server.pki / "client.crt"), "-j",
                                str(server.pki / "client.key"), "-C", str(server.pki / "ca.crt"),
                                "-m", "get", "-s", "6", "-o", str(obs_out), uri],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.5)
    r = coap_client(server.pki, "-m", "delete", uri)
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout  # 2.02, no payload
    watcher.wait(20)
    data, statuses = obs_out.read_bytes(), []
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        statuses.append(cbor2.CBORDecoder(stream).decode()[1][2][0][16])
    assert statuses[0] == 1 and 5 in statuses, statuses  # notification: active-but-terminating


@pytest.mark.req("SC-005", "SC-084")
@pytest.mark.parametrize("transport", ["tls", "dtls"])
def test_errors_carry_diagnostics(server: ServerProcess, transport: str) -> None:
    r = coap_client(server.pki, "-m", "get", server.uri(transport, f"mitigate/cuid={server.client_cuid}/mid=999"))
    assert r.stderr.startswith(b"4.04 ") and len(r.stderr.strip()) > 5, r.stderr
    r = coap_client(server.pki, "-m", "put", "-t", "0", "-e", "hello",
                    server.uri(transport, f"mitigate/cuid={server.client_cuid}/mid=1"))
    assert r.stderr.startswith(b"4.15 "), r.stderr


@pytest.mark.req("SC-089")
def test_config_get_over_libcoap(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "cfg.out"
    r = coap_client(server.pki, "-m", "get", "-o", str(out), server.uri("dtls", "config"))
    assert r.returncode == 0, r.stderr
    cfg = decode_cbor(out.read_bytes(), Direction.RESPONSE).members()
    hb = cfg["mitigating-config"]["heartbeat-interval"]
    assert hb == {"max-value": 240, "min-value": 15, "current-value": 30}


@pytest.mark.req("SC-141")
def test_heartbeat_from_libcoap(server: ServerProcess, tmp_path: Path) -> None:
    body = tmp_path / "hb.cbor"
    body.write_bytes(bytes.fromhex("A11831A11833F5"))
    r = coap_client(server.pki, "-m", "put", "-N", "-t", "271", "-f", str(body), server.uri("dtls", "hb"))
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout  # 2.04 Changed, empty
    r = coap_client(server.pki, "-m", "put", "-t", "271", "-f", str(body),
                    server.uri("dtls", f"hb/cuid={server.client_cuid}"))
    assert r.stderr.startswith(b"4.00 "), r.stderr
