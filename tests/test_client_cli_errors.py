"""``dots client`` tells the real cause: certificate problems, bad arguments, unknown mids."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from agent.client import build_scope
from agent.pki import init_pki, load_ca, write_pair
from tests.servers import DOTS, ServerProcess

EXIT_USAGE, EXIT_CONNECT, EXIT_CERTIFICATE = 2, 3, 4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("clierr"), listen=("127.0.0.1", "127.0.0.2")).start()
    try:
        yield srv
    finally:
        srv.stop()


def client(pki: Path, state: Path, server: str, *args: str, transport: str = "auto"):
    return subprocess.run([*DOTS, "client", "--pki", str(pki), "--server", server, "--state", str(state),
                           "--timeout", "10", "--transport", transport, *args],
                          capture_output=True, text=True, timeout=60)


def _addr(srv: ServerProcess, host: str = "127.0.0.1") -> str:
    return f"{host}:{srv.port_of('tls', host)}"


@pytest.mark.parametrize("transport", ["dtls", "tls"])
def test_server_from_another_ca_is_a_certificate_error(server, tmp_path, transport):
    other = tmp_path / "other"
    init_pki(other)  # trusts another CA
    r = client(other, tmp_path / "s.json", _addr(server), "status", transport=transport)
    assert r.returncode == EXIT_CERTIFICATE, r.stderr
    assert "server's certificate is not issued by our CA" in r.stderr
    assert "cannot reach" not in r.stderr


@pytest.mark.parametrize("transport", ["dtls", "tls"])
def test_name_mismatch_is_a_certificate_error(server, tmp_path, transport):
    # the dev server certificate names localhost, 127.0.0.1 and ::1, not 127.0.0.2
    r = client(server.pki, tmp_path / "s.json", _addr(server, "127.0.0.2"), "status", transport=transport)
    assert r.returncode == EXIT_CERTIFICATE, r.stderr
    assert "does not name the server we asked for" in r.stderr
    assert r.stderr.count("\n") == 1  # one line


def test_server_refusing_our_certificate_is_named(server, tmp_path):
    mixed = tmp_path / "mixed"
    init_pki(tmp_path / "foreign")
    mixed.mkdir()
    shutil.copy(server.pki / "ca.crt", mixed / "ca.crt")  # we trust the server...
    for f in ("client.crt", "client.key"):  # ...but our certificate is from another CA
        shutil.copy(tmp_path / "foreign" / f, mixed / f)
    r = client(mixed, tmp_path / "s.json", _addr(server), "status", transport="dtls")
    assert r.returncode == EXIT_CERTIFICATE, r.stderr
    assert "the server does not trust our client certificate" in r.stderr
    r = client(mixed, tmp_path / "s.json", _addr(server), "status", transport="tls")
    assert r.returncode == EXIT_CONNECT  # TLS 1.3: the alert is lost in the close; a hint instead
    assert "it may not accept our client certificate" in r.stderr


def test_expired_server_certificate(tmp_path):
    srv = ServerProcess(tmp_path / "expired", listen=("127.0.0.1",))
    ca_cert, ca_key = load_ca(srv.pki)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME,
                                                                                  "localhost")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=30)).not_valid_after(now - dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    write_pair(srv.pki, "server", cert, key)
    srv.start()
    try:
        for transport in ("dtls", "tls"):
            r = client(srv.pki, tmp_path / "s.json", f"localhost:{srv.port_of('tls')}", "status",
                       transport=transport)
            assert r.returncode == EXIT_CERTIFICATE, r.stderr
            assert "the server's certificate has expired" in r.stderr
    finally:
        srv.stop()


@pytest.mark.parametrize("spec", ["127.0.0.1:99999", "127.0.0.1:0", "127.0.0.1:abc", "[::1]x", ":4646"])
def test_bad_server_argument_is_a_usage_error(tmp_path, spec):
    init_pki(tmp_path / "pki")
    r = client(tmp_path / "pki", tmp_path / "s.json", spec, "status")
    assert r.returncode == EXIT_USAGE
    assert "argument --server: invalid" in r.stderr
    assert "Traceback" not in r.stderr


def test_malformed_prefix_is_named_without_internals(server, tmp_path):
    r = client(server.pki, tmp_path / "s.json", _addr(server), "mitigate", "--target-prefix", "300.1.1.1/33")
    assert r.returncode == EXIT_USAGE
    assert "invalid prefix '300.1.1.1/33'" in r.stderr
    assert "TypedList" not in r.stderr and "RestrictedClass" not in r.stderr
    with pytest.raises(ValueError, match=r"^invalid prefix '2001:db8::/200'$"):
        build_scope(target_prefixes=["2001:db8::/200"])


def test_withdraw_of_an_unknown_mid_says_so(server, tmp_path):
    state = tmp_path / "s.json"
    r = client(server.pki, state, _addr(server), "--json", "withdraw", "--mid", "4242")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"mid": 4242, "code": "2.02", "held": False}
    r = client(server.pki, state, _addr(server), "withdraw", "--mid", "4242")
    assert "2.02 Deleted (the server held no request with this mid)" in r.stdout
    made = client(server.pki, state, _addr(server), "--json", "mitigate", "--target-prefix", "203.0.113.0/24")
    assert made.returncode == 0, made.stderr
    mid = json.loads(made.stdout)["mid"]
    r = client(server.pki, state, _addr(server), "withdraw", "--mid", str(mid))
    assert r.returncode == 0 and r.stdout.strip() == f"mid {mid}: 2.02 Deleted"


def test_accepted_changes_are_audited_with_the_cuid(server, tmp_path):
    state = tmp_path / "s.json"
    made = client(server.pki, state, _addr(server), "--json", "mitigate", "--target-prefix", "198.51.100.0/24")
    assert made.returncode == 0, made.stderr
    mid = json.loads(made.stdout)["mid"]
    assert client(server.pki, state, _addr(server), "withdraw", "--mid", str(mid)).returncode == 0
    log = server.log.read_text()
    cuid = server.client_cuid
    assert f"dots.audit: signal channel: PUT {cuid}/{mid} -> 2.01" in log
    assert f"dots.audit: signal channel: DELETE {cuid}/{mid} -> 2.02" in log
