"""``dots client alerts`` and ``dots client portal``: long-running front ends on one DOTS client.

``alerts`` (RFC 8903 §3.1.1-3.1.4) turns detector alerts (our JSON format or Prometheus
Alertmanager webhooks) into mitigation requests and withdraws them when the alert resolves.
``portal`` (§3.1.5/3.1.6) serves the HTTPS web portal where authorised personnel request,
watch, update and withdraw mitigations.  Both hold one ``DotsClient`` session to ``--server``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
from pathlib import Path

from agent.transports.credentials import Credentials

log = logging.getLogger("dots.client")


def _server_tls(pki: str) -> ssl.SSLContext | None:
    """HTTPS with the --pki server certificate (clients need not present one: people use browsers)."""
    cert, key = Path(pki) / "server.crt", Path(pki) / "server.key"
    if not cert.exists():
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


async def _run(args: argparse.Namespace) -> int:
    from agent.client import DotsClient, default_state_path

    creds = Credentials.from_pki_dir(args.pki, "client")
    state = Path(args.state) if args.state else default_state_path()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tls = None if args.plain_http else _server_tls(args.pki)
    async with DotsClient(args.server, creds, args.transport, state=state) as client:
        if args.action == "alerts":
            from agent.alerts import serve_alerts

            token = Path(args.token_file).read_text().strip() if args.token_file else None
            server = serve_alerts(client, state.with_name("alerts.json"), args.listen, args.port, token=token,
                                  ssl_context=tls, default_lifetime=args.lifetime)
            async with server:
                log.info("alert endpoint on %s:%s (%s)", args.listen, server.port, "https" if tls else "http")
                await stop.wait()
        else:
            from agent.portal import Portal, load_users

            portal = Portal(client, load_users(args.users), state.parent / "portal", host=args.listen,
                            port=args.port, ssl_context=tls)
            async with portal:
                log.info("portal on %s:%s", args.listen, portal.port)
                await stop.wait()
    return 0


def run(args: argparse.Namespace) -> int:
    """Entered through ``dots client`` (``agent.cli_client.run`` dispatches here)."""
    return asyncio.run(_run(args))


def add_parsers(acts: argparse._SubParsersAction) -> None:
    q = acts.add_parser("alerts", help="HTTP(S) endpoint turning detector / Alertmanager alerts into mitigations")
    q.add_argument("--listen", default="127.0.0.1", help="address (default 127.0.0.1)")
    q.add_argument("--port", type=int, default=9646, help="port (default 9646)")
    q.add_argument("--token-file", help="file with the bearer token alerts must carry")
    q.add_argument("--lifetime", type=int, default=3600, help="lifetime of requests made from alerts")
    q.add_argument("--plain-http", action="store_true", help="no TLS (loopback only)")
    q = acts.add_parser("portal", help="HTTPS web portal for authorised personnel")
    q.add_argument("--listen", default="127.0.0.1", help="address (default 127.0.0.1)")
    q.add_argument("--port", type=int, default=8443, help="port (default 8443)")
    q.add_argument("--users", required=True, help="JSON file of users: name, scrypt password hash, prefixes "
                   "(hash with: python -m agent.portal.passwords)")
    q.add_argument("--plain-http", action="store_true", help="no TLS (loopback only)")
