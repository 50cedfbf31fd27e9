"""``dots pki renew``: a fresh certificate for the same key, so the client keeps its cuid."""

from __future__ import annotations

import shutil
import subprocess

from cryptography import x509

from agent.pki import certificate_cuid, init_pki
from tests.servers import DOTS


def _sans(cert):
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def _cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_renew_keeps_key_cuid_names_and_issuer(tmp_path):
    pki = tmp_path / "pki"
    init_pki(pki)
    for stem, ca in (("client", "ca"), ("server", "ca"), ("admin", "mgmt-ca")):
        before = _cert(pki / f"{stem}.crt")
        cuid = certificate_cuid(pki / f"{stem}.crt")
        r = subprocess.run([*DOTS, "pki", "renew", str(pki), stem], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        after = _cert(pki / f"{stem}.crt")
        assert after.serial_number != before.serial_number
        assert after.public_key() == before.public_key() and certificate_cuid(pki / f"{stem}.crt") == cuid
        assert after.subject == before.subject and after.issuer == _cert(pki / f"{ca}.crt").subject
        assert _sans(after) == _sans(before)
        assert f"cuid={cuid}" in r.stdout


def test_renew_refuses_a_key_that_is_not_the_certificates(tmp_path):
    pki = tmp_path / "pki"
    init_pki(pki)
    shutil.copy(pki / "server.key", pki / "client.key")
    r = subprocess.run([*DOTS, "pki", "renew", str(pki), "client"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == f"dots pki renew: {pki / 'client.key'} is not the key of {pki / 'client.crt'}"
