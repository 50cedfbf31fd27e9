"""Password hashes for portal users: scrypt (stdlib ``hashlib.scrypt``), self-describing strings.

Format: ``scrypt$<n>$<r>$<p>$<salt, base64>$<hash, base64>`` (n=2**14, r=8, p=1, 16-byte salt,
32-byte key by default).  Verification recomputes with the stored parameters and compares in
constant time.  ``python -m agent.portal.passwords`` prints the hash of a password read from stdin.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import sys


def hash_password(password: str, *, n: int = 2**14, r: int = 8, p: int = 1) -> str:
    salt = os.urandom(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


def is_hash(stored: str) -> bool:
    """Whether *stored* has the form of :func:`hash_password`'s output (not a plaintext password)."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt" or not all(x.isdigit() for x in parts[1:4]):
        return False
    try:
        base64.b64decode(parts[4], validate=True)
        return len(base64.b64decode(parts[5], validate=True)) > 0
    except ValueError:
        return False


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(key)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


if __name__ == "__main__":
    print(hash_password(sys.stdin.readline().rstrip("\n")))
