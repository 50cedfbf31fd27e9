"""Development PKI and the client identity of RFC 9132 §4.4.1.1.

``init_pki`` writes a small CA and ECDSA P-256 server/client certificates, enough for
mutual X.509 on loopback, plus a separate *management* CA (``mgmt-ca.crt``) and the
administrator's RESTCONF client certificate (``admin.crt``) issued by it: the management plane
trusts only the management CA, so a DOTS client certificate never reaches RESTCONF.
``cuid_from_spki`` derives the 22-character cuid from a
certificate's SubjectPublicKeyInfo (SHA-256, truncated to 16 bytes, base64url, no padding).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_SANS = ("localhost", "127.0.0.1", "::1")
VALIDITY = dt.timedelta(days=825)
MGMT_CA_CERT = "mgmt-ca.crt"
ADMIN_CERT = "admin.crt"
ADMIN_CN = "admin"


@dataclass(frozen=True)
class PkiPaths:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    mgmt_ca_cert: Path
    mgmt_ca_key: Path
    admin_cert: Path
    admin_key: Path

    @classmethod
    def in_dir(cls, directory: str | Path) -> PkiPaths:
        d = Path(directory)
        return cls(d / "ca.crt", d / "ca.key", d / "server.crt", d / "server.key",
                   d / "client.crt", d / "client.key", d / MGMT_CA_CERT, d / "mgmt-ca.key",
                   d / ADMIN_CERT, d / "admin.key")


def cuid_from_spki(spki_der: bytes) -> str:
    """RFC 9132 §4.4.1.1: base64url(SHA-256(SPKI)[:16]) without padding (22 characters)."""
    digest = hashlib.sha256(spki_der).digest()[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def spki_der(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def cuid_from_certificate(cert: x509.Certificate | bytes) -> str:
    """cuid of a certificate given as an object or as DER bytes."""
    if isinstance(cert, bytes):
        cert = x509.load_der_x509_certificate(cert)
    return cuid_from_spki(spki_der(cert))


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dots-agent dev PKI"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _sans(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def issue(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, cn: str,
          sans: tuple[str, ...], server: bool, key: ec.EllipticCurvePrivateKey | None = None,
          ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Issue an end-entity certificate signed by the CA (for *key*, or a new one)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if sans:
        builder = builder.add_extension(_sans(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _make_ca(cn: str = "dots-agent dev CA") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = _name(cn)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def load_ca(directory: str | Path, stem: str = "ca") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    d = Path(directory)
    cert = x509.load_pem_x509_certificate((d / f"{stem}.crt").read_bytes())
    key = serialization.load_pem_private_key((d / f"{stem}.key").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def write_pair(directory: str | Path, stem: str, cert: x509.Certificate,
               key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    d = Path(directory)
    crt, k = d / f"{stem}.crt", d / f"{stem}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(k, key)
    return crt, k


def init_pki(directory: str | Path, server_sans: tuple[str, ...] = SERVER_SANS,
             force: bool = False) -> PkiPaths:
    """Create ``ca.crt``, ``server.crt/.key`` and ``client.crt/.key`` in *directory*.

    An existing CA is kept unless *force* is set, so re-running adds nothing surprising.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = PkiPaths.in_dir(d)
    if paths.ca_cert.exists() and paths.ca_key.exists() and not force:
        ca_cert, ca_key = load_ca(d)
    else:
        ca_cert, ca_key = _make_ca()
        write_pair(d, "ca", ca_cert, ca_key)
    if force or not paths.server_cert.exists():
        write_pair(d, "server", *issue(ca_cert, ca_key, server_sans[0], server_sans, server=True))
    if force or not paths.client_cert.exists():
        write_pair(d, "client", *issue(ca_cert, ca_key, "dots-client", ("dots-client",), server=False))
    if paths.mgmt_ca_cert.exists() and paths.mgmt_ca_key.exists() and not force:
        mgmt_cert, mgmt_key = load_ca(d, "mgmt-ca")
    else:
        mgmt_cert, mgmt_key = _make_ca("dots-agent management CA")
        write_pair(d, "mgmt-ca", mgmt_cert, mgmt_key)
        force = True  # a new management CA needs a new administrator certificate
    if force or not paths.admin_cert.exists():
        write_pair(d, "admin", *issue(mgmt_cert, mgmt_key, ADMIN_CN, (), server=False))
    return paths


def issue_client(directory: str | Path, stem: str, cn: str | None = None) -> tuple[Path, Path]:
    """Issue one more client certificate from the CA in *directory* (``STEM.crt``/``STEM.key``)."""
    ca_cert, ca_key = load_ca(directory)
    cert, key = issue(ca_cert, ca_key, cn or stem, (cn or stem,), server=False)
    return write_pair(directory, stem, cert, key)


def issue_mgmt_client(directory: str | Path, stem: str, cn: str | None = None) -> tuple[Path, Path]:
    """Issue a management (RESTCONF) client certificate from the management CA in *directory*."""
    ca_cert, ca_key = load_ca(directory, "mgmt-ca")
    cert, key = issue(ca_cert, ca_key, cn or stem, (), server=False)
    return write_pair(directory, stem, cert, key)


def issue_server(directory: str | Path, stem: str, sans: tuple[str, ...]) -> tuple[Path, Path]:
    """Issue one more server certificate (e.g. for a second server or a Call Home peer)."""
    ca_cert, ca_key = load_ca(directory)
    cert, key = issue(ca_cert, ca_key, sans[0], sans, server=True)
    return write_pair(directory, stem, cert, key)


def renew(directory: str | Path, stem: str) -> Path:
    """Re-issue ``STEM.crt`` for the key it already has (``STEM.key``), with a fresh validity.

    The same key keeps the same cuid (RFC 9132 §4.4.1.1 hashes the public key), so a DOTS
    client's requests stay its own across the renewal.  Signed by whichever of the DOTS CA
    (``ca``) and the management CA (``mgmt-ca``) issued the old certificate.
    """
    d = Path(directory)
    old = x509.load_pem_x509_certificate((d / f"{stem}.crt").read_bytes())
    key = serialization.load_pem_private_key((d / f"{stem}.key").read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != old.public_key():
        raise ValueError(f"{d / f'{stem}.key'} is not the key of {d / f'{stem}.crt'}")
    for ca_stem in ("ca", "mgmt-ca"):
        if (d / f"{ca_stem}.crt").exists():
            ca_cert, ca_key = load_ca(d, ca_stem)
            if ca_cert.subject == old.issuer:
                break
    else:
        raise ValueError(f"no CA in {d} issued {stem}.crt ({old.issuer.rfc4514_string()})")
    cn = old.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    try:
        san = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = tuple(str(v) for v in san.get_values_for_type(x509.DNSName)) + tuple(
            str(v) for v in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        sans = ()
    eku = old.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    cert, _ = issue(ca_cert, ca_key, str(cn), sans, ExtendedKeyUsageOID.SERVER_AUTH in eku, key=key)
    crt = d / f"{stem}.crt"
    tmp = crt.with_suffix(".crt.new")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tmp.replace(crt)  # atomic: a reader sees the old or the new certificate, never half of one
    return crt


def certificate_fingerprint(path: str | Path) -> str:
    """``sha-256:..`` fingerprint of the PEM certificate at *path* (for ``cert-to-name``)."""
    der = x509.load_pem_x509_certificate(Path(path).read_bytes()).public_bytes(serialization.Encoding.DER)
    return "sha-256:" + ":".join(f"{b:02x}" for b in hashlib.sha256(der).digest())


def certificate_cuid(path: str | Path) -> str:
    """cuid of the PEM certificate at *path*."""
    return cuid_from_certificate(x509.load_pem_x509_certificate(Path(path).read_bytes()))
