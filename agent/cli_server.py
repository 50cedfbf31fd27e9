"""``dots server``: run a DOTS server (TLS/TCP and DTLS/UDP on the same port, mutual X.509).

With ``--netconf-port`` and/or ``--restconf-port`` the server embeds its management plane
(:mod:`agent.server.management`): the running datastore is its configuration (seeded from the
startup file in ``--mgmt-dir``, else from ``--config``) and ``<get>`` reports its state.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from pathlib import Path
from typing import Any

from agent import mgmt_embed, startup
from agent.mitigators import MITIGATOR_NAMES
from agent.numbers import rfc9132
from agent.transports.credentials import Credentials

log = logging.getLogger("dots.server")


async def serve(args: argparse.Namespace) -> int:
    from agent.server.management import bootstrap_config
    from agent.store.interface import StoreError

    listen = args.listen or ["::1", "127.0.0.1"]
    transports = tuple(args.transport) if args.transport else ("tls", "dtls")
    # everything the operator gave is checked before a port is bound or a file created
    startup.check_credentials(args.pki, "server")
    creds = Credentials.from_pki_dir(args.pki, "server")
    config = None
    if args.config:
        config = startup.complete_server_config(startup.read_config(args.config),
                                                bootstrap_config(creds, listen, args.port, transports))
        startup.validate_config(config, args.config)
    db = Path(args.db)
    startup.check_db(db)
    opts = mgmt_embed.options_from(args, listen[0], db.parent / f"{db.stem}-mgmt")
    created = startup.Leftovers(*(startup.db_files(db) if not db.exists() else ()),
                                *((opts.mgmt_dir,) if opts.enabled else ()))
    progress = _Progress()
    try:
        return await _serve(args, creds, config, listen, transports, db, opts, progress)
    except StoreError as exc:
        if progress.may_clean():
            created.remove()
        raise startup.OperatorError(str(exc)) from exc
    except BaseException:
        if progress.may_clean():
            created.remove()
        raise


class _Progress:
    """How far a start got: what it created may be removed only while nothing can depend on it,
    i.e. before the server was fully up and while it holds no mitigation request (a failure
    after that -- a crash at shutdown, say -- must never delete a database or startup datastore
    that acknowledged requests or committed configuration live in)."""

    def __init__(self) -> None:
        self.serving = False
        self.server: Any = None

    def may_clean(self) -> bool:
        return not self.serving and (self.server is None or not self.server.service.entries)


async def _serve(args: argparse.Namespace, creds: Credentials, config: dict[str, Any] | None, listen: list[str],
                 transports: tuple[str, ...], db: Path, opts: mgmt_embed.MgmtOptions, progress: _Progress) -> int:
    from agent.server.app import DotsServer, ServerOptions

    management = None
    if opts.enabled:
        from agent.server.management import ServerManagement, bootstrap_config
        from mgmt.errors import MgmtError

        try:
            management = ServerManagement(opts, creds, config if config is not None else
                                          bootstrap_config(creds, listen, args.port, transports))
        except MgmtError as exc:
            raise startup.OperatorError(f"invalid configuration: {exc}") from exc
        config = management.running()
    options = ServerOptions(
        credentials=creds, listen=listen, port=args.port, db=db,
        mitigator=args.mitigator, config=config,
        transports=transports,
        netns=args.netns, counter_interval=args.counter_interval)
    server = DotsServer(options)
    progress.server = server
    try:  # the configuration must be one this build can honour
        server.check_config(config)
    except ValueError as exc:
        if management is not None:
            await management.close()
        raise startup.OperatorError(f"configuration refused: {exc}") from exc
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        addresses: dict[str, list[tuple[str, int]]] = dict(server.addresses)
        if management is not None:
            addresses.update(await management.start(server))
        progress.serving = True
        if args.ready_file:
            Path(args.ready_file).write_text(json.dumps(addresses))
        await stop.wait()
        log.info("stopping (signal)")
    finally:
        if management is not None:
            await management.close()
        await server.stop()
    return 0


def run(args: argparse.Namespace) -> int:
    return asyncio.run(serve(args))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server", help="run a DOTS server")
    p.add_argument("--pki", required=True, help="directory with ca.crt, server.crt, server.key (dots pki init)")
    p.add_argument("--listen", action="append", help="address to listen on (repeat; default ::1 and 127.0.0.1)")
    p.add_argument("--port", type=int, default=rfc9132.DEFAULT_PORT, help="TCP and UDP port (default 4646)")
    p.add_argument("--db", default="dots-server.db", help="SQLite database file (default dots-server.db)")
    p.add_argument("--mitigator", choices=MITIGATOR_NAMES, help="mitigation back-end (default: the "
                   "configuration's, else log)")
    p.add_argument("--config", help="dots-agent configuration (RFC 7951 JSON) to start with")
    p.add_argument("--transport", action="append", choices=("tls", "dtls"), help="only these transports")
    p.add_argument("--netns", help="run nft inside this network namespace")
    p.add_argument("--counter-interval", type=float, default=5.0, help="seconds between counter reads")
    p.add_argument("--ready-file", help="write the bound addresses (JSON) here once listening")
    mgmt_embed.add_arguments(p)
    p.set_defaults(handler=run)
