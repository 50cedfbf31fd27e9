"""``dots client alerts`` and ``dots client portal``: long-running front ends on one DOTS client.

``alerts`` (RFC 8903 §3.1.1-3.1.4) turns detector alerts (our JSON format or Prometheus
Alertmanager webhooks) into mitigation requests and withdraws them when the alert resolves.
``portal`` (§3.1.5/3.1.6) serves the HTTPS web portal where authorised personnel request,
watch, update and withdraw mitigations.  Both hold one ``DotsClient`` session to ``--server``.

Operator mistakes (no token, no server certificate without ``--plain-http``, an unreadable
users file, a bad limit) are reported in one line before anything connects: exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

from agent.http_front import HttpLimits
from agent.transports.credentials import Credentials

log = logging.getLogger("dots.client")


class UsageError(Exception):
    """An operator mistake: one line naming what to fix (exit 2)."""


def _server_tls(pki: str, plain_http: bool) -> ssl.SSLContext | None:
    """HTTPS with the --pki server certificate (clients need not present one: people use browsers).

    No certificate: refused unless ``--plain-http`` (then None, and the caller warns)."""
    cert, key = Path(pki) / "server.crt", Path(pki) / "server.key"
    if plain_http:
        return None
    if not cert.exists():
        raise UsageError(f"no server certificate {cert}: issue one (dots pki) or give --plain-http "
                         "(loopback tests only)")
    if not key.exists():
        raise UsageError(f"no private key {key} for {cert}")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load {cert} / {key}: {exc}") from None
    return ctx


def _limits(args: argparse.Namespace) -> HttpLimits:
    try:
        return HttpLimits(max_body=args.max_body, max_header=args.max_header, max_headers=args.max_headers,
                          read_timeout=args.read_timeout, max_connections=args.max_connections)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Everything an operator can get wrong, checked before connecting (UsageError)."""
    prepared: dict[str, Any] = {"tls": _server_tls(args.pki, args.plain_http), "limits": _limits(args)}
    if args.action == "alerts":
        from agent.alerts import parse_lifetime, read_token

        try:
            prepared["token"] = read_token(args.token_file)
            parse_lifetime(args.lifetime)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    else:
        from agent.portal import load_users
        from agent.portal.throttle import LoginLimits

        try:
            prepared["users"] = load_users(args.users)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UsageError(f"cannot read the users file {args.users}: {exc}") from None
        from agent.portal.passwords import is_hash

        plain = [name for name, user in prepared["users"].items() if not is_hash(user.password_hash)]
        if plain:
            raise UsageError(f"users file {args.users}: the password of {', '.join(sorted(plain))} is not an "
                             "scrypt hash (hash it with: python -m agent.portal.passwords)")
        try:
            prepared["login"] = LoginLimits(user_failures=args.login_failures_per_user,
                                            address_failures=args.login_failures_per_address,
                                            max_lockout=args.max_lockout)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if args.plain_http:
        log.warning("%s: serving plain HTTP (--plain-http): tokens, passwords and cookies cross the network in "
                    "clear; use it on loopback for tests only", args.action)
    return prepared


def _bind_error(what: str, host: str, port: int, exc: OSError) -> Exception:
    import os

    from agent.startup import OperatorError

    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
    return OperatorError(f"cannot listen for {what} on {where}: {reason} (--listen/--port)")


async def _run(args: argparse.Namespace, prepared: dict[str, Any]) -> int:
    from agent.client import DotsClient, default_state_path

    creds = Credentials.from_pki_dir(args.pki, "client")
    state = Path(args.state) if args.state else default_state_path()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tls = prepared["tls"]
    async with DotsClient(args.server, creds, args.transport, state=state) as client:
        if args.action == "alerts":
            from agent.alerts import serve_alerts

            server = serve_alerts(client, state.with_name("alerts.json"), args.listen, args.port,
                                  token=prepared["token"], ssl_context=tls, default_lifetime=args.lifetime,
                                  limits=prepared["limits"])
            try:
                async with server:
                    log.info("alert endpoint on %s:%s (%s)", args.listen, server.port, "https" if tls else "http")
                    await stop.wait()
            except OSError as exc:  # the body only waits: the listener could not be opened
                raise _bind_error("the alert endpoint", args.listen, args.port, exc) from exc
        else:
            from agent.portal import Portal

            portal = Portal(client, prepared["users"], state.parent / "portal", host=args.listen,
                            port=args.port, ssl_context=tls, plain_http=args.plain_http,
                            limits=prepared["limits"], login_limits=prepared["login"])
            try:
                async with portal:
                    log.info("portal on %s:%s", args.listen, portal.port)
                    await stop.wait()
            except OSError as exc:  # the body only waits: the listener could not be opened
                raise _bind_error("the portal", args.listen, args.port, exc) from exc
    return 0


def run(args: argparse.Namespace) -> int:
    """Entered through ``dots client`` (``agent.cli_client.run`` dispatches here)."""
    try:
        prepared = _prepare(args)
    except UsageError as exc:
        print(f"dots client {args.action}: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_run(args, prepared))


def _limit_flags(q: argparse.ArgumentParser) -> None:
    d = HttpLimits()
    q.add_argument("--max-body", type=int, default=d.max_body, help=f"largest request body (default {d.max_body})")
    q.add_argument("--max-header", type=int, default=d.max_header,
                   help=f"largest request line + headers in bytes (default {d.max_header})")
    q.add_argument("--max-headers", type=int, default=d.max_headers,
                   help=f"most header lines (default {d.max_headers})")
    q.add_argument("--read-timeout", type=float, default=d.read_timeout,
                   help=f"seconds to send one request (default {d.read_timeout:g})")
    q.add_argument("--max-connections", type=int, default=d.max_connections,
                   help=f"connections served at once (default {d.max_connections})")


def add_parsers(acts: argparse._SubParsersAction) -> None:
    q = acts.add_parser("alerts", help="HTTP(S) endpoint turning detector / Alertmanager alerts into mitigations")
    q.add_argument("--listen", default="127.0.0.1", help="address (default 127.0.0.1)")
    q.add_argument("--port", type=int, default=9646, help="port (default 9646)")
    q.add_argument("--token-file", help="file whose first line is the bearer token alerts must carry "
                   "(default: $DOTS_ALERT_TOKEN; one of them is required)")
    q.add_argument("--lifetime", type=int, default=3600, help="lifetime of requests made from alerts")
    q.add_argument("--plain-http", action="store_true", help="no TLS (loopback tests only; warns)")
    _limit_flags(q)
    q = acts.add_parser("portal", help="HTTPS web portal for authorised personnel")
    q.add_argument("--listen", default="127.0.0.1", help="address (default 127.0.0.1)")
    q.add_argument("--port", type=int, default=8443, help="port (default 8443)")
    q.add_argument("--users", required=True, help="JSON file of users: name, scrypt password hash, prefixes "
                   "(hash with: python -m agent.portal.passwords)")
    q.add_argument("--plain-http", action="store_true", help="no TLS (loopback tests only; warns)")
    q.add_argument("--login-failures-per-user", type=int, default=5,
                   help="failed sign-ins of one user name before lock-outs start (default 5)")
    q.add_argument("--login-failures-per-address", type=int, default=20,
                   help="failed sign-ins from one address before lock-outs start (default 20)")
    q.add_argument("--max-lockout", type=float, default=900.0,
                   help="longest lock-out in seconds; lock-outs double from 1 s (default 900)")
    _limit_flags(q)
