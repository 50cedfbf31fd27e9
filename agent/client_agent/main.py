"""``dots client agent``: the client agent process (management plane + ClientAgent).

Theory of operation: the running datastore (startup file in ``--mgmt-dir``, else ``--config``,
else a tree made from ``--server``/``--pki``/``--transport``) is applied to a
:class:`~agent.client_agent.agent.ClientAgent` once at start and then on every change; the
agent is also the state provider of ``<get>``.  Status changes the server reports for a
configured request are sent as ``mitigation-status-change`` notifications (role ``client``).
Stops on SIGINT/SIGTERM (configured requests stay at the server until their lifetime ends).
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
from agent.client.connection import parse_server
from agent.transports.credentials import Credentials

from .agent import ClientAgent
from .config import ROOT, parse

log = logging.getLogger("dots.client.agent")


def bootstrap_config(creds: Credentials, server: str | None, transport: str) -> dict[str, Any]:
    """Running configuration from the flags: the --pki credential and the --server, if given."""
    tree: dict[str, Any] = {"credentials": {"credential": [{
        "name": "client", "certificate-file": str(Path(creds.cert).resolve()),
        "private-key-file": str(Path(creds.key).resolve()), "ca-file": str(Path(creds.cafile).resolve())}]}}
    if server:
        host, port = parse_server(server)
        transports = ["dtls", "tls"] if transport == "auto" else [transport]
        tree["client"] = {"server": [{"name": "default", "address": [host], "port": port,
                                      "transport": transports, "credential": "client"}]}
    return {ROOT: tree}


async def serve(args: argparse.Namespace) -> int:
    from agent.client import default_state_path
    from mgmt.errors import MgmtError

    creds = Credentials.from_pki_dir(args.pki, "client")
    state_dir = Path(args.state).parent if args.state else default_state_path().parent
    opts = mgmt_embed.options_from(args, args.listen, state_dir / "agent-mgmt")
    initial = startup.read_config(args.config) if args.config else \
        bootstrap_config(creds, args.server, args.transport)
    created = startup.Leftovers(opts.mgmt_dir)
    try:
        mgmt = mgmt_embed.create(opts, initial)
    except MgmtError as exc:
        created.remove()
        where = f"{exc.path}: " if exc.path else ""
        source = args.config if args.config and not opts.startup_file.exists() else \
            (opts.startup_file if opts.startup_file.exists() else "")
        raise startup.OperatorError(f"invalid configuration {source}: {where}{exc.message}".replace(
            "configuration : ", "configuration: ")) from exc
    agent = ClientAgent(opts.mgmt_dir)

    async def status_changed(event: dict[str, Any]) -> None:
        try:
            await mgmt.notify({"dots-agent:mitigation-status-change": event})
        except Exception:  # never break the agent for a notification
            log.exception("mitigation-status-change notification failed")

    agent.on_status_change = status_changed
    try:
        agent.reconfigure(parse(mgmt.running_dict()))
    except ValueError as exc:
        log.error("configuration refused: %s", exc)
        await mgmt.close()
        return 2
    mgmt.add_subscriber(agent)
    mgmt.set_state_provider(agent)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server_cert = Path(args.pki) / "server.crt"
    tls = (server_cert, Path(args.pki) / "server.key", Path(creds.cafile)) if server_cert.exists() else None
    try:
        addresses = await mgmt_embed.start_servers(mgmt, opts, tls)
        if args.ready_file:
            Path(args.ready_file).write_text(json.dumps(addresses))
        log.info("DOTS client agent running (%d server(s), %d mitigation request(s) configured)",
                 len(agent.config.servers), len(agent.config.requests))
        await stop.wait()
        log.info("stopping (signal)")
    finally:
        await mgmt.close()
        await agent.close()
    return 0


def add_parser(acts: argparse._SubParsersAction) -> None:
    q = acts.add_parser("agent", help="run as a long-lived agent configured through NETCONF/RESTCONF",
                        description="Hold DOTS sessions to the configured servers and signal every "
                        "/dots-agent:dots-agent/client/mitigation-request entry.")
    q.add_argument("--listen", default="::1", help="address of the management servers (default ::1)")
    q.add_argument("--config", help="dots-agent configuration (RFC 7951 JSON) seeding running when there is "
                   "no startup datastore yet (default: one server from --server/--pki)")
    q.add_argument("--ready-file", help="write the bound management addresses (JSON) here once listening")
    mgmt_embed.add_arguments(q)
