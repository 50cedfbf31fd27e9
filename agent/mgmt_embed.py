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
* RESTCONF over HTTPS on the same address, with a certificate from ``--pki`` and client
  certificates required from the same CA.

The caller wires the behaviour (subscriber, state provider, notifications) before calling
:func:`start_servers`, so that no request is served before the seams are in place.
"""

from __future__ import annotations

import argparse
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mgmt.auth import User, UserDB, hash_password
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

    @property
    def enabled(self) -> bool:
        return self.netconf_port is not None or self.restconf_port is not None

    @property
    def startup_file(self) -> Path:
        return self.mgmt_dir / STARTUP


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
                   help="serve RESTCONF (HTTPS, client certificates from the --pki CA) on this port")
    g.add_argument("--mgmt-dir", metavar="DIR", help="SSH host key and startup datastore (default: next to "
                   "the database / state file)")


def options_from(args: argparse.Namespace, host: str, default_dir: Path) -> MgmtOptions:
    return MgmtOptions(host=host, mgmt_dir=Path(args.mgmt_dir) if args.mgmt_dir else default_dir,
                       netconf_port=args.netconf_port, netconf_user=args.netconf_user,
                       password_file=Path(args.netconf_password_file) if args.netconf_password_file else None,
                       restconf_port=args.restconf_port)


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
    return Management(startup_file=opts.startup_file, initial_config=initial)


async def start_servers(mgmt: Management, opts: MgmtOptions, tls: tuple[Path, Path, Path] | None
                        ) -> dict[str, list[tuple[str, int]]]:
    """Start NETCONF and/or RESTCONF; returns the bound addresses by protocol."""
    bound: dict[str, list[tuple[str, int]]] = {}
    if opts.netconf_port is not None:
        settings = NetconfSettings(host_key_file=opts.mgmt_dir / HOST_KEY, users=users(opts, mgmt.running_dict),
                                   host=opts.host, port=opts.netconf_port)
        server = await mgmt.start_netconf(settings)
        bound["netconf"] = [(opts.host, server.port)]
    if opts.restconf_port is not None:
        if tls is None:
            raise ValueError("RESTCONF needs a certificate (--pki)")
        rc = await mgmt.start_restconf(RestconfSettings(ssl_context=restconf_context(*tls), host=opts.host,
                                                        port=opts.restconf_port))
        bound["restconf"] = [(opts.host, rc.port)]
    log.info("management plane: %s; startup datastore %s",
             ", ".join(f"{k} {h}:{p}" for k, a in bound.items() for h, p in a) or "no protocol",
             opts.startup_file)
    return bound
