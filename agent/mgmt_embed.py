"""Embedding the management plane (:mod:`mgmt`) in a long-running ``dots`` process.

Theory of operation: ``dots server`` and ``dots client agent`` share the same bootstrap flags
(:func:`add_arguments`): ``--netconf-port``, ``--netconf-user``, ``--netconf-password-file``,
``--restconf-port`` and ``--mgmt-dir``.  :func:`start` builds one :class:`mgmt.Management` on
the process's asyncio loop with

* the *startup* datastore kept in ``MGMT_DIR/startup.json`` (loaded when it exists; otherwise
  running is seeded from the given initial configuration: ``--config`` or a tree derived from
  the other bootstrap flags),
* NETCONF over SSH on one address only (the first ``--listen`` address of the process), host
  key ``MGMT_DIR/ssh_host_ed25519_key`` (generated on first start), users from the bootstrap
  flags plus those configured under ``/dots-agent/management/user``,
* RESTCONF over HTTPS on the same address, with the server certificate from ``--pki`` and
  client certificates required from the *management* CA: ``--restconf-ca`` (default
  ``PKI/mgmt-ca.crt``, written by ``dots pki init``), else
  ``/dots-agent/management/restconf/trust-anchor-file`` -- never the DOTS client CA;
* access control by NACM (RFC 8341, docs/nacm.md): the bootstrap users (``--netconf-user``, or
  the names of ``--netconf-password-file``; ``admin`` when there are none) are the
  administrators: when running has no ``/nacm`` only they may write, and when it has no
  ``cert-to-name`` the administrator certificate (``--restconf-admin-cert``, default
  ``PKI/admin.crt``) is mapped to the first of them by its fingerprint.

The caller wires the behaviour (subscriber, state provider, notifications) before calling
:func:`start_servers`, so that no request is served before the seams are in place.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.pki import ADMIN_CERT, MGMT_CA_CERT, certificate_fingerprint
from agent.startup import OperatorError
from mgmt.auth import User, UserDB, hash_password, load_password_file
from mgmt.errors import MgmtError
from mgmt.limits import stats_for
from mgmt.manager import Management
from mgmt.netconf_server import NetconfSettings
from mgmt.restconf_server import RestconfSettings

log = logging.getLogger("dots.mgmt")

HOST_KEY = "ssh_host_ed25519_key"
STARTUP = "startup.json"


@dataclass(frozen=True)
class MgmtOptions:
    """The bootstrap flags of the management plane."""

    host: str
    mgmt_dir: Path
    netconf_port: int | None = None
    netconf_user: str | None = None
    password_file: Path | None = None
    restconf_port: int | None = None
    pki_dir: Path | None = None
    restconf_ca: Path | None = None
    restconf_admin_cert: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.netconf_port is not None or self.restconf_port is not None

    @property
    def startup_file(self) -> Path:
        return self.mgmt_dir / STARTUP

    @property
    def administrators(self) -> tuple[str, ...]:
        """The bootstrap users: the NACM administrators of the default /nacm."""
        if self.netconf_user:
            return (self.netconf_user,)
        if self.password_file is not None and self.password_file.exists():
            names = tuple(dict.fromkeys(u.name for u in load_password_file(self.password_file)))
            if names:
                return names
        return ("admin",)

    @property
    def admin_cert(self) -> Path | None:
        if self.restconf_admin_cert is not None:
            return self.restconf_admin_cert
        default = self.pki_dir / ADMIN_CERT if self.pki_dir is not None else None
        return default if default is not None and default.exists() else None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The management flags (same names for ``dots server`` and ``dots client agent``)."""
    g = p.add_argument_group("management plane (NETCONF/RESTCONF)")
    g.add_argument("--netconf-port", type=int, metavar="N",
                   help="serve NETCONF over SSH on this port of the first --listen address (0: any free port)")
    g.add_argument("--netconf-user", metavar="NAME", help="NETCONF user (password in --netconf-password-file)")
    g.add_argument("--netconf-password-file", metavar="FILE",
                   help="with --netconf-user: the password (or a crypt(3) hash) on the first line; "
                   "without: 'name:crypt-hash' lines")
    g.add_argument("--restconf-port", type=int, metavar="N",
                   help="serve RESTCONF (HTTPS, client certificates from the management CA) on this port")
    g.add_argument("--restconf-ca", metavar="FILE",
                   help="CA certificates RESTCONF clients must chain to (default: PKI/mgmt-ca.crt; "
                   "never the DOTS client CA)")
    g.add_argument("--restconf-admin-cert", metavar="FILE",
                   help="administrator's RESTCONF client certificate, mapped to the administrator when "
                   "running has no cert-to-name (default: PKI/admin.crt)")
    g.add_argument("--mgmt-dir", metavar="DIR", help="SSH host key and startup datastore (default: next to "
                   "the database / state file)")


def options_from(args: argparse.Namespace, host: str, default_dir: Path) -> MgmtOptions:
    return MgmtOptions(host=host, mgmt_dir=Path(args.mgmt_dir) if args.mgmt_dir else default_dir,
                       netconf_port=args.netconf_port, netconf_user=args.netconf_user,
                       password_file=Path(args.netconf_password_file) if args.netconf_password_file else None,
                       restconf_port=args.restconf_port,
                       pki_dir=Path(args.pki) if getattr(args, "pki", None) else None,
                       restconf_ca=Path(args.restconf_ca) if getattr(args, "restconf_ca", None) else None,
                       restconf_admin_cert=Path(args.restconf_admin_cert)
                       if getattr(args, "restconf_admin_cert", None) else None)


def users(opts: MgmtOptions, running: Any) -> UserDB:
    """Static users from the flags, plus the users of ``/dots-agent/management/user``."""
    static: list[User] = []
    password_file = None
    if opts.password_file is not None:
        if opts.netconf_user:
            lines = [ln.strip() for ln in opts.password_file.read_text().splitlines()
                     if ln.strip() and not ln.lstrip().startswith("#")]
            if not lines:
                raise ValueError(f"{opts.password_file} holds no password")
            secret = lines[0]
            static.append(User(opts.netconf_user, secret if secret.startswith("$") else hash_password(secret)))
        else:
            password_file = opts.password_file
    elif opts.netconf_user:
        raise ValueError("--netconf-user needs --netconf-password-file")
    return UserDB(static, password_file=password_file, running=running)


def restconf_trust_anchor(opts: MgmtOptions, running: dict[str, Any], dots_ca: Path | None) -> Path:
    """The management CA file of RESTCONF; MgmtError naming what to fix when there is none."""
    configured = (((running.get("dots-agent:dots-agent") or {}).get("management") or {})
                  .get("restconf") or {}).get("trust-anchor-file")
    base = opts.pki_dir or (dots_ca.parent if dots_ca is not None else None)
    path = opts.restconf_ca or (Path(configured) if configured else None) or \
        (base / MGMT_CA_CERT if base is not None else None)
    if path is None or not path.exists():
        raise MgmtError("invalid-value", f"RESTCONF needs a management CA ({path or MGMT_CA_CERT} is missing): "
                        "run 'dots pki init PKI' (existing files are kept) or give --restconf-ca FILE")
    if dots_ca is not None and dots_ca.exists() and path.resolve() == dots_ca.resolve():
        raise MgmtError("invalid-value", f"--restconf-ca {path} is the DOTS client CA: every DOTS client could "
                        "manage the agent; use the management CA (PKI/mgmt-ca.crt)")
    return path


def restconf_context(cert: Path, key: Path, cafile: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(cafile))
    ctx.load_cert_chain(str(cert), str(key))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def create(opts: MgmtOptions, initial: dict[str, Any] | None) -> Management:
    """The Management with its startup file; running = startup, or *initial* when there is none."""
    opts.mgmt_dir.mkdir(parents=True, exist_ok=True)
    if opts.startup_file.exists() and initial is not None:
        log.info("startup datastore %s exists: the initial configuration is not used", opts.startup_file)
    admin_cert = opts.admin_cert
    if admin_cert is not None and not admin_cert.exists():
        raise MgmtError("invalid-value", f"--restconf-admin-cert {admin_cert} does not exist")
    mgmt = Management(startup_file=opts.startup_file, initial_config=initial, administrators=opts.administrators,
                      admin_certificates=(certificate_fingerprint(admin_cert),) if admin_cert else ())
    if opts.restconf_port is not None:
        restconf_trust_anchor(opts, mgmt.running_dict(), opts.pki_dir / "ca.crt" if opts.pki_dir else None)
    return mgmt


def _bind_error(what: str, host: str, port: int, exc: OSError) -> OperatorError:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
    return OperatorError(f"cannot listen for {what} on {where}: {reason} (--{what.split()[0].lower()}-port)")


async def start_servers(mgmt: Management, opts: MgmtOptions, tls: tuple[Path, Path, Path] | None
                        ) -> dict[str, list[tuple[str, int]]]:
    """Start NETCONF and/or RESTCONF; returns the bound addresses by protocol."""
    bound: dict[str, list[tuple[str, int]]] = {}
    if opts.netconf_port is not None:
        db = users(opts, mgmt.running_dict)
        stats = stats_for(mgmt)
        db.on_failure = lambda _name: stats.count("authentication_failures")
        settings = NetconfSettings(host_key_file=opts.mgmt_dir / HOST_KEY, users=db,
                                   host=opts.host, port=opts.netconf_port)
        try:
            server = await mgmt.start_netconf(settings)
        except OSError as exc:
            raise _bind_error("NETCONF (SSH)", opts.host, opts.netconf_port, exc) from exc
        bound["netconf"] = [(opts.host, server.port)]
    if opts.restconf_port is not None:
        if tls is None:
            raise ValueError("RESTCONF needs a certificate (--pki)")
        cert, key, dots_ca = tls
        ca = restconf_trust_anchor(opts, mgmt.running_dict(), dots_ca)
        try:
            rc = await mgmt.start_restconf(RestconfSettings(ssl_context=restconf_context(cert, key, ca),
                                                            host=opts.host, port=opts.restconf_port))
        except OSError as exc:
            raise _bind_error("RESTCONF (HTTPS)", opts.host, opts.restconf_port, exc) from exc
        bound["restconf"] = [(opts.host, rc.port)]
    log.info("management plane: %s; startup datastore %s",
             ", ".join(f"{k} {h}:{p}" for k, a in bound.items() for h, p in a) or "no protocol",
             opts.startup_file)
    return bound
