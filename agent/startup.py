"""Start-up checks whose failure is the operator's to fix (issue 11).

Theory of operation: a long-running ``dots`` command checks what the operator gave it -- the
credentials, the database location, the ``--config`` file -- *before* it binds a port or
creates a file.  A failed check raises :class:`OperatorError` carrying one line that names
what to fix; :func:`agent.cli.main` prints it as ``dots <command>: <message>`` and exits 2
(the traceback only with ``-vv``).  :class:`Leftovers` removes what a failed start created.

``--config`` is validated by the management plane's own parser
(:meth:`mgmt.tree.ConfigTree.parse`, what seeds a datastore and what ``<edit-config>`` ends
with), so a file is refused exactly as the same tree sent over NETCONF would be.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

ROOT = "dots-agent:dots-agent"


class OperatorError(Exception):
    """A start-up failure the operator can fix; ``str()`` is the one line to print."""


# ---------------------------------------------------------------- credentials
def _read(path: Path, pki_dir: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise OperatorError(f"{path} is missing (create the PKI with 'dots pki init {pki_dir}')") from None
    except OSError as exc:
        raise OperatorError(f"cannot read {path}: {exc.strerror or exc}") from None


def check_credentials(pki_dir: str | Path, role: str) -> None:
    """ca.crt, ROLE.crt and ROLE.key of *pki_dir* exist, are PEM and the key is the certificate's."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    d = Path(pki_dir)
    if not d.is_dir():
        raise OperatorError(f"PKI directory {d} does not exist (create it with 'dots pki init {d}')")
    ca, cert, key = d / "ca.crt", d / f"{role}.crt", d / f"{role}.key"
    blobs = {p: _read(p, d) for p in (ca, cert, key)}
    certs = {}
    for path in (ca, cert):
        try:
            certs[path] = x509.load_pem_x509_certificates(blobs[path])[0]
        except ValueError:
            raise OperatorError(f"{path} is not a PEM certificate") from None
    try:
        private = serialization.load_pem_private_key(blobs[key], password=None)
    except (ValueError, TypeError):
        raise OperatorError(f"{key} is not an unencrypted PEM private key") from None

    def spki(k: Any) -> bytes:
        return k.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    if spki(private.public_key()) != spki(certs[cert].public_key()):
        raise OperatorError(f"{key} does not match {cert} (the key is not the certificate's)")


# ---------------------------------------------------------------- database
def check_db(db: Path) -> None:
    """The database's directory exists and is writable; an existing file is a readable file."""
    parent = db.parent if str(db.parent) else Path(".")
    if not parent.is_dir():
        raise OperatorError(f"database directory {parent} does not exist (--db {db})")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OperatorError(f"database directory {parent} is not writable (--db {db})")
    if db.exists() and (not db.is_file() or not os.access(db, os.R_OK | os.W_OK)):
        raise OperatorError(f"database {db} is not a readable and writable file (--db)")


# ---------------------------------------------------------------- configuration
def read_config(path: str | Path) -> dict[str, Any]:
    """The JSON of a ``--config`` file; OperatorError (with line/column) when it is not JSON."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise OperatorError(f"configuration file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OperatorError(f"cannot read configuration {p}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        tree = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OperatorError(f"invalid configuration {p}: line {exc.lineno} column {exc.colno}: "
                            f"not JSON ({exc.msg})") from None
    if not isinstance(tree, dict):
        raise OperatorError(f"invalid configuration {p}: not a JSON object")
    return tree


def complete_server_config(tree: dict[str, Any], bootstrap: dict[str, Any]) -> dict[str, Any]:
    """*tree* plus what the bootstrap flags provide when the file does not say it: the server's
    credential (``--pki``) and listen endpoints (``--listen``/``--port``) -- what will run."""
    out = copy.deepcopy(tree)
    root, boot = out.get(ROOT), bootstrap[ROOT]
    if not isinstance(root, dict):
        return out  # the schema check names what is wrong
    server = root.setdefault("server", {})
    if not isinstance(server, dict):
        return out
    if "credential" not in server:
        creds = root.setdefault("credentials", {})
        if isinstance(creds, dict) and isinstance(creds.setdefault("credential", []), list):
            mine = boot["credentials"]["credential"][0]
            if not any(isinstance(c, dict) and c.get("name") == mine["name"] for c in creds["credential"]):
                creds["credential"].append(mine)
            server["credential"] = mine["name"]
    if "listen" not in server:
        server["listen"] = boot["server"]["listen"]
    return out


def validate_config(tree: dict[str, Any], path: str | Path) -> None:
    """Validate *tree* as the management plane does (libyang, same error path and reason)."""
    from mgmt.errors import MgmtError
    from mgmt.tree import ConfigTree
    from mgmt.yangctx import YangContext

    try:
        ConfigTree.parse(YangContext(), json.dumps(tree), "json").free()
    except MgmtError as exc:
        where = f"{exc.path}: " if exc.path else ""
        raise OperatorError(f"invalid configuration {path}: {where}{exc.message}") from None


# ---------------------------------------------------------------- clean-up
class Leftovers:
    """Remembers which of some paths did not exist; :meth:`remove` deletes those that now do."""

    def __init__(self, *paths: Path) -> None:
        self.new = [p for p in paths if not p.exists()]

    def remove(self) -> None:
        for p in self.new:
            try:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink(missing_ok=True)
            except OSError:  # pragma: no cover - best effort
                pass


def db_files(db: Path) -> tuple[Path, ...]:
    """The SQLite file and its WAL companions (only worth removing with a new database)."""
    return (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"))
