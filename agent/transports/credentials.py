"""Credentials a (D)TLS endpoint presents and checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Credentials:
    """Certificate, key and trust anchors of one endpoint.

    ``cafile`` is the CA bundle the peer's certificate must chain to (mutual X.509).
    ``psk`` optionally maps PSK identities to keys (DTLS only; RFC 9132 allows PSK).
    ``server_hostname`` is what a client checks the server certificate against (RFC 6125)
    and sends as SNI; ``None`` means the host part of the URI.
    """

    cert: Path
    key: Path
    cafile: Path
    psk: dict[bytes, bytes] | None = None
    server_hostname: str | None = None

    @classmethod
    def from_pki_dir(cls, directory: str | Path, role: str) -> Credentials:
        """``role`` is ``server`` or ``client`` (file stems written by ``dots pki init``)."""
        d = Path(directory)
        return cls(cert=d / f"{role}.crt", key=d / f"{role}.key", cafile=d / "ca.crt")
