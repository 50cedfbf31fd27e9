"""Management users (password hashes, SSH public keys) and the SSH host key.

Theory of operation: a :class:`UserDB` answers "may USER log in with this password / key".
Users come from the settings (a password file of ``name:crypt-hash`` lines, explicit
:class:`User` objects) and, live, from ``/dots-agent/management/user`` in running (RFC 7317
``crypt-hash``: ``$0$clear`` or a crypt(3) hash; ``ssh-public-key`` entries).  The SSH host
key is an Ed25519 key generated on first start and kept (mode 0600) in the given file.

Identities are NACM user names (RFC 8341): a NETCONF user is its SSH login name as it is; a
RESTCONF client certificate is mapped by :func:`certificate_user` through
``/dots-agent/management/cert-to-name`` (entries by ascending ``id``, first match wins; a
``fingerprint`` is ``sha-256:`` and the colon-separated SHA-256 of the DER end-entity
certificate, a ``subject`` the RFC 4514 string compared exactly).  No match: no user.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt  # noqa: I001  (stdlib, deprecated in 3.11, still the only crypt(3) binding)


@dataclass
class User:
    name: str
    password_hash: str | None = None
    public_keys: list[paramiko.PKey] = field(default_factory=list)


def hash_password(password: str) -> str:
    """SHA-512 crypt(3) hash ($6$) of *password*."""
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))


def check_password(stored: str, password: str) -> bool:
    if stored.startswith("$0$"):
        return hmac.compare_digest(stored[3:].encode(), password.encode())
    computed = crypt.crypt(password, stored)
    return computed is not None and hmac.compare_digest(computed.encode(), stored.encode())


def public_key(algorithm: str, key_data: str | bytes) -> paramiko.PKey:
    """paramiko key from an OpenSSH algorithm name and base64 (or raw) key blob."""
    blob = base64.b64decode(key_data) if isinstance(key_data, str) else key_data
    return paramiko.PKey.from_type_string(algorithm, blob)


def load_password_file(path: Path) -> list[User]:
    """``name:hash`` per line (``#`` comments)."""
    users = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and ":" in line:
            name, hashed = line.split(":", 1)
            users.append(User(name, hashed.split(":", 1)[0] if hashed.startswith("$") else hashed))
    return users


def users_from_running(running: dict[str, Any]) -> list[User]:
    mgmt = running.get("dots-agent:dots-agent", {}).get("management", {})
    users = []
    for u in mgmt.get("user", []):
        keys = []
        for k in u.get("ssh-public-key", []):
            try:
                keys.append(public_key(k["algorithm"], k["key-data"]))
            except Exception:  # noqa: BLE001 - a bad key must not lock everyone out
                continue
        users.append(User(u["name"], u.get("password"), keys))
    return users


class UserDB:
    """Static users plus (optionally) the users configured in running."""

    def __init__(self, users: list[User] | None = None, password_file: Path | None = None,
                 running: Callable[[], dict[str, Any]] | None = None,
                 on_failure: Callable[[str], None] | None = None) -> None:
        self.static = list(users or [])
        if password_file is not None:
            self.static += load_password_file(password_file)
        self.running = running
        self.on_failure = on_failure  # told about every wrong password (authentication-failures)

    def lookup(self, name: str) -> list[User]:
        found = [u for u in self.static if u.name == name]
        if self.running is not None:
            found += [u for u in users_from_running(self.running()) if u.name == name]
        return found

    def check_password(self, name: str, password: str) -> bool:
        ok = any(u.password_hash and check_password(u.password_hash, password) for u in self.lookup(name))
        if not ok and self.on_failure is not None:
            self.on_failure(name)
        return ok

    def check_key(self, name: str, key: paramiko.PKey) -> bool:
        return any(k == key for u in self.lookup(name) for k in u.public_keys)


def certificate_fingerprint(der: bytes) -> str:
    """``sha-256:ab:cd:..`` of a DER certificate (the form of ``cert-to-name/fingerprint``)."""
    return "sha-256:" + ":".join(f"{b:02x}" for b in hashlib.sha256(der).digest())


def certificate_subject(der: bytes) -> str:
    """The subject of a DER certificate as an RFC 4514 string (e.g. ``CN=admin,O=Example``)."""
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


def certificate_user(running: dict[str, Any], der: bytes) -> str | None:
    """NACM user name of a client certificate per ``cert-to-name`` in *running*, or None."""
    entries = running.get("dots-agent:dots-agent", {}).get("management", {}).get("cert-to-name", [])
    fingerprint: str | None = None
    subject: str | None = None
    for entry in sorted(entries, key=lambda e: int(e["id"])):
        if "fingerprint" in entry:
            fingerprint = fingerprint or certificate_fingerprint(der)
            if entry["fingerprint"].lower() == fingerprint:
                return str(entry["name"])
        elif "subject" in entry:
            if subject is None:
                try:
                    subject = certificate_subject(der)
                except ValueError:
                    subject = ""
            if entry["subject"] == subject:
                return str(entry["name"])
    return None


def load_or_create_host_key(path: Path) -> paramiko.PKey:
    """Ed25519 host key in OpenSSH format; created (0600) if *path* does not exist."""
    path = Path(path)
    if not path.exists():
        key = ed25519.Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
    return paramiko.Ed25519Key.from_private_key_file(str(path))
