"""``dots client``: send DOTS signals from the command line (or a detector's hook script).

Each invocation opens a signal channel session, does one action and closes it (``watch`` keeps
it open until interrupted).  mids and sids are kept in a state file (``--state``, default
``$XDG_STATE_HOME/dots/client.json``) so consecutive runs never reuse an identifier and can
repeat a request's parameters (lifetime renewal, efficacy update).

Exit codes: 0 success, 1 DOTS error response (4.xx/5.xx), 2 usage error, 3 cannot connect,
4 a certificate was refused (ours by the server, or the server's by us: unknown CA, name
mismatch, expired) — retrying will not help, a file or a name needs fixing.

``dots client agent`` instead runs until stopped: a client agent whose mitigation requests are
configured through NETCONF/RESTCONF (:mod:`agent.client_agent`).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from agent.transports.credentials import Credentials

EXIT_OK, EXIT_DOTS_ERROR, EXIT_USAGE, EXIT_CONNECT, EXIT_CERTIFICATE = 0, 1, 2, 3, 4


def _port(text: str) -> int | tuple[int, int]:
    lo, sep, hi = text.partition("-")
    try:
        low = int(lo)
        high = int(hi) if sep else low
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be N or N-M, got {text!r}") from None
    if not (0 <= low <= high <= 65535):
        raise argparse.ArgumentTypeError(f"invalid port range {text!r}")
    return low if low == high else (low, high)


def _server(text: str) -> str:
    """--server: checked here so a bad port is a usage error (2), not 'cannot connect'."""
    from agent.client.connection import parse_servers

    try:
        parse_servers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _prefix(text: str) -> str:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid prefix {text!r}") from None
    return text


class Output:
    def __init__(self, as_json: bool, quiet: bool) -> None:
        self.as_json = as_json
        self.quiet = quiet

    def emit(self, obj: Any, text: str) -> None:
        if self.as_json:
            print(json.dumps(obj, sort_keys=False, default=str), flush=True)
        elif not self.quiet:
            print(text, flush=True)

    def error(self, obj: dict[str, Any], text: str) -> None:
        if self.as_json:
            print(json.dumps({"error": obj}, default=str), flush=True)
        else:
            print(f"dots client: {text}", file=sys.stderr, flush=True)


def _scope_line(scope: dict[str, Any]) -> str:
    keys = ("target-prefix", "target-port-range", "target-protocol", "target-fqdn", "target-uri", "alias-name")
    targets = []
    for k in keys:
        for v in scope.get(k, []):
            if isinstance(v, dict):
                lo, hi = v.get("lower-port"), v.get("upper-port")
                v = f"port {lo}" if hi in (None, lo) else f"ports {lo}-{hi}"
            elif k == "target-protocol":
                v = f"proto {v}"
            targets.append(str(v))
    status = scope.get("status", "?")
    extra = ""
    if "conflict-information" in scope:
        extra = f" conflict={scope['conflict-information']}"
    counters = ""
    if "pkts-dropped" in scope:
        counters = f" dropped {scope.get('pkts-dropped')} pkts/{scope.get('bytes-dropped')} B"
    return (f"mid {scope.get('mid')}: {status}, lifetime {scope.get('lifetime')}{counters}{extra}"
            + (f" [{', '.join(targets)}]" if targets else ""))


async def _action(args: argparse.Namespace, client: Any, out: Output) -> int:
    action = args.action
    if action == "mitigate":
        # A request too large for one datagram is split over several mids (RFC 9132 §7.3, SC-170).
        results = await client.mitigate_all(target_prefixes=args.target_prefix or [], ports=args.port or [],
                                             protocols=args.protocol or [], fqdns=args.fqdn or [],
                                             uris=args.uri or [], lifetime=args.lifetime,
                                             trigger_mitigation=not args.no_trigger)
        for result in results:
            extra = f" ({result.conflict.describe()})" if result.conflict else ""
            out.emit(result.to_json_obj(), f"mid {result.mid}: {result.code} "
                     f"{'Created' if result.created else 'Changed'}, lifetime {result.lifetime}{extra}")
    elif action == "refresh":
        result = await client.refresh(args.mid, args.lifetime)
        out.emit(result.to_json_obj(), f"mid {result.mid}: {result.code}, lifetime {result.lifetime}")
    elif action == "efficacy":
        result = await client.efficacy_update(args.mid, args.attack_status)
        out.emit(result.to_json_obj(), f"mid {result.mid}: {result.code} ({args.attack_status})")
    elif action == "status":
        scopes = await client.status(args.mid, args.content)
        out.emit({"scope": scopes}, "\n".join(_scope_line(s) for s in scopes) or "no mitigation requests")
    elif action == "withdraw":
        # RFC 9132 §4.4.4 answers 2.02 even for a mid the server does not hold: ask first, so
        # the operator learns about a wrong mid (the DELETE is still sent, as the RFC wants).
        held = await _holds(client, args.mid)
        code = await client.withdraw(args.mid)
        note = "" if held else " (the server held no request with this mid)"
        out.emit({"mid": args.mid, "code": code, "held": held}, f"mid {args.mid}: {code} Deleted{note}")
    elif action == "config":
        values = {k: getattr(args, k) for k in ("heartbeat_interval", "missing_hb_allowed", "probing_rate",
                                                 "max_retransmit", "ack_timeout", "ack_random_factor")}
        if args.reset:
            code = await client.reset_config()
            out.emit({"code": code}, f"{code} configuration reset to the server's defaults")
            return EXIT_OK
        if any(v is not None for v in values.values()):
            sets = ("mitigating-config", "idle-config") if args.set == "both" else (f"{args.set}-config",)
            cfg = await client.set_config(**values, sets=sets)
        else:
            cfg = await client.get_config(args.sid)
        out.emit(cfg.to_json_obj(), _config_text(cfg))
    elif action == "watch":
        async for update in client.watch(args.mid, args.content):
            if update.final:
                out.emit(update.to_json_obj(), f"{update.code} {update.diagnostic or 'observation ended'}")
                break
            out.emit(update.to_json_obj(), "\n".join(_scope_line(s) for s in update.scopes))
    return EXIT_OK


async def _holds(client: Any, mid: int) -> bool:
    from agent.client import DotsError

    try:
        return bool(await client.status(mid, "c"))
    except DotsError as exc:
        if exc.code == "4.04":
            return False
        raise


def _config_text(cfg: Any) -> str:
    lines = [f"{cfg.code}" + (f" sid {cfg.sid}" if cfg.sid is not None else "")
             + (f" (max-age {cfg.max_age} s)" if cfg.max_age is not None else "")]
    for side in ("mitigating-config", "idle-config"):
        parts = []
        for name, node in (cfg.members.get(side) or {}).items():
            cur = node.get("current-value", node.get("current-value-decimal"))
            lo = node.get("min-value", node.get("min-value-decimal"))
            hi = node.get("max-value", node.get("max-value-decimal"))
            parts.append(f"{name}={cur}" + (f" [{lo}..{hi}]" if lo is not None else ""))
        lines.append(f"  {side}: " + ", ".join(parts))
    return "\n".join(lines)


async def _main(args: argparse.Namespace) -> int:
    from agent.client import DotsCertificateError, DotsClient, DotsConnectionError, DotsError, default_state_path

    out = Output(args.json, args.quiet)
    creds = Credentials.from_pki_dir(args.pki, "client")
    for path in (creds.cert, creds.key, creds.cafile):
        if not Path(path).is_file():
            out.error({"code": "usage", "diagnostic": f"missing {path}"}, f"missing {path} (see dots pki init)")
            return EXIT_USAGE
    state = Path(args.state) if args.state else default_state_path()
    try:
        # Signalling an attack: race connection attempts 100 ms apart (RFC 9132 §4.3, SC-011).
        attack = args.action == "mitigate" or (args.action == "efficacy" and args.attack_status == "under-attack")
        client = DotsClient(args.server, creds, args.transport, state=state, request_timeout=args.timeout,
                            connect_timeout=args.timeout, under_attack=attack)
    except ValueError as exc:
        out.error({"code": "usage", "diagnostic": str(exc)}, str(exc))
        return EXIT_USAGE
    try:
        await client.connect()
        return await _action(args, client, out)
    except DotsCertificateError as exc:
        out.error({"code": "certificate", "diagnostic": str(exc)}, str(exc))
        return EXIT_CERTIFICATE
    except DotsConnectionError as exc:
        out.error({"code": "connect", "diagnostic": str(exc)}, str(exc))
        return EXIT_CONNECT
    except DotsError as exc:
        out.error(exc.to_json_obj(), str(exc))
        return EXIT_DOTS_ERROR
    except ValueError as exc:
        out.error({"code": "usage", "diagnostic": str(exc)}, str(exc))
        return EXIT_USAGE
    finally:
        await client.close()


async def _interruptible(coro: Coroutine[Any, Any, int]) -> int:
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    interrupted = False

    def stop() -> None:
        nonlocal interrupted
        interrupted = True
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    try:
        return await task
    except asyncio.CancelledError:
        if interrupted:
            return EXIT_OK  # watch: interrupted by the user is the normal end
        raise


def run(args: argparse.Namespace) -> int:
    if args.action == "agent":
        from agent.client_agent.main import serve

        return asyncio.run(serve(args))
    if not args.server:
        print("dots client: --server is required for this action", file=sys.stderr)
        return EXIT_USAGE
    if args.action in ("alerts", "portal"):
        from agent.cli_frontends import run as run_frontend

        return run_frontend(args)
    return asyncio.run(_interruptible(_main(args)))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("client", help="DOTS client: request mitigation, query, withdraw, configure",
                       description="Talk to a DOTS server. Exit codes: 0 success, 1 DOTS error response "
                       "(4.xx/5.xx), 2 usage, 3 cannot connect, 4 certificate refused.")
    p.add_argument("--pki", required=True, help="directory with ca.crt, client.crt, client.key (dots pki init)")
    p.add_argument("--server", type=_server,
                   help="HOST[:PORT] or [V6]:PORT of the DOTS server (port 4646; required except "
                   "for 'agent', which can take its servers from its configuration)")
    p.add_argument("--transport", choices=("tls", "dtls", "auto"), default="auto",
                   help="signal channel transport (default auto: DTLS, then TLS)")
    p.add_argument("--state", help="state file for mids/sids (default $XDG_STATE_HOME/dots/client.json)")
    p.add_argument("--json", action="store_true", help="print JSON (one object per line)")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the server (default 30)")
    p.set_defaults(handler=run)
    acts = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    q = acts.add_parser("mitigate", help="request mitigation (prints the mid)")
    q.add_argument("--target-prefix", action="append", type=_prefix, metavar="PREFIX",
                   help="target prefix (repeat)")
    q.add_argument("--port", action="append", type=_port, metavar="N[-M]", help="target port or range (repeat)")
    q.add_argument("--protocol", action="append", type=int, metavar="N", help="IANA protocol number (repeat)")
    q.add_argument("--fqdn", action="append", metavar="NAME", help="target FQDN (repeat)")
    q.add_argument("--uri", action="append", metavar="URI", help="target URI (repeat)")
    q.add_argument("--lifetime", type=int, default=3600, help="seconds (-1: indefinite; default 3600)")
    q.add_argument("--no-trigger", action="store_true", help="trigger-mitigation=false (start on signal loss)")

    q = acts.add_parser("status", help="show the status of one or all requests")
    q.add_argument("--mid", type=int)
    q.add_argument("--content", choices=("a", "c", "n"), default="a", help="c=config, n=non-config, a=all")

    q = acts.add_parser("withdraw", help="withdraw a request")
    q.add_argument("--mid", type=int, required=True)

    q = acts.add_parser("refresh", help="renew a request's lifetime (same parameters)")
    q.add_argument("--mid", type=int, required=True)
    q.add_argument("--lifetime", type=int)

    q = acts.add_parser("efficacy", help="send an efficacy update")
    q.add_argument("--mid", type=int, required=True)
    q.add_argument("--attack-status", required=True, choices=("under-attack", "attack-successfully-mitigated"))

    q = acts.add_parser("config", help="show, set or reset the session configuration")
    q.add_argument("--heartbeat-interval", type=int)
    q.add_argument("--missing-hb-allowed", type=int)
    q.add_argument("--probing-rate", type=int)
    q.add_argument("--max-retransmit", type=int)
    q.add_argument("--ack-timeout", help="seconds, decimal (e.g. 2.00)")
    q.add_argument("--ack-random-factor", help="decimal (e.g. 1.50)")
    q.add_argument("--set", choices=("both", "mitigating", "idle"), default="both",
                   help="which configuration set to change (default both)")
    q.add_argument("--sid", type=int, help="show the configuration negotiated with this sid")
    q.add_argument("--reset", action="store_true", help="DELETE the configuration (back to defaults)")

    q = acts.add_parser("watch", help="follow status changes (Observe) until interrupted")
    q.add_argument("--mid", type=int)
    q.add_argument("--content", choices=("a", "c", "n"), default="a")

    from agent.cli_frontends import add_parsers
    from agent.client_agent.main import add_parser

    add_parser(acts)
    add_parsers(acts)
