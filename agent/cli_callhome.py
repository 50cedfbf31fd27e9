"""``dots call-home ...``: the RFC 9066 Call Home roles on the command line.

* ``dots call-home server --pki DIR --client HOST:PORT --internal-prefix P ...`` -- the CPE side
  (Call Home DOTS server): calls the provider, answers its mitigation requests, enforces them
  (``--mitigator nftables``), optionally behind NAT44 (``--nat-conntrack``, ``--nat-static``),
  with administrator consent (``--consent manual``; decide with ``dots call-home approve|reject``
  through ``--control SOCK``).
* ``dots call-home client --pki DIR --listen ADDR --port N`` -- the provider side (Call Home DOTS
  client), long-running; with an action (``mitigate``, ``withdraw``, ``status``, ``redirect``,
  ``peers``) it is one-shot: it waits for the CPE to call home, signals, prints the answer as
  JSON and exits.  ``--control SOCK`` with an action sends the action to a running provider.

Certificates: the CPE presents ``client.crt`` and the provider ``server.crt`` of ``--pki`` by
default (the provider is the (D)TLS server, so its certificate carries the names/addresses the
CPE checks); ``--cert-stem`` picks other files of the same directory.

Management plane: both long-running roles accept the flags of ``dots server``
(``--netconf-port``, ``--netconf-user``, ``--netconf-password-file``, ``--restconf-port``,
``--mgmt-dir``) plus ``--mgmt-listen``; ``/dots-agent:dots-agent/call-home`` is then their
configuration and state (:mod:`agent.callhome.management`): running is seeded from the flags
when ``--mgmt-dir`` holds no startup datastore.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from agent import mgmt_embed
from agent.transports.credentials import Credentials

log = logging.getLogger("dots.callhome")


def _hostport(text: str) -> tuple[str, int]:
    t = text.strip()
    if t.startswith("["):
        host, _, rest = t[1:].partition("]")
        if not rest.startswith(":"):
            raise argparse.ArgumentTypeError("a port is required (RFC 9066 has no default port)")
        return host, int(rest[1:])
    host, sep, port = t.rpartition(":")
    if not sep or ":" in host:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT or [V6]:PORT (no default port)")
    return host, int(port)


def _range(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    a, b = int(lo), int(hi or lo)
    if a > b:
        raise argparse.ArgumentTypeError(f"{text!r}: lower bound above upper bound")
    return [a, b]


def _credentials(args: argparse.Namespace, default_stem: str) -> Credentials:
    stem = args.cert_stem or default_stem
    creds = Credentials.from_pki_dir(args.pki, stem)
    for f in (creds.cert, creds.key, creds.cafile):
        if not Path(f).exists():
            raise SystemExit(f"missing {f} (create a PKI with 'dots pki init {args.pki}')")
    return creds


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    await stop.wait()


# -- CPE side --------------------------------------------------------------------------------
async def _run_server(args: argparse.Namespace) -> int:
    from agent.callhome.control import serve_control
    from agent.callhome.server import CallHomeServer, CallHomeServerOptions, parse_static_mappings

    db = Path(args.db)
    opts = mgmt_embed.options_from(args, args.mgmt_listen or "127.0.0.1", db.parent / f"{db.stem}-mgmt")
    from_startup = opts.enabled and opts.startup_file.exists()
    if not from_startup and (args.client is None or not args.internal_prefix):
        raise SystemExit("--client and --internal-prefix are required (unless a startup datastore exists "
                         "in --mgmt-dir)")
    options = CallHomeServerOptions(
        credentials=_credentials(args, "client"), client=args.client or ("", 0), client_name=args.client_name,
        internal_prefixes=args.internal_prefix or [], transport=args.transport, consent=args.consent,
        mitigator=args.mitigator, netns=args.netns, db=Path(args.db), nft_table=args.nft_table,
        nat_static=parse_static_mappings(args.nat_static or []), nat_conntrack=args.nat_conntrack,
        legitimate=args.legitimate or [], approval_timeout=args.approval_timeout,
        binding_timeout=args.binding_timeout, reconnect_min=args.reconnect_min, reconnect_max=args.reconnect_max,
        terminating_period=args.terminating_period, counter_interval=args.counter_interval)
    if args.heartbeat_interval:
        from agent.callhome.server import session_config_for_tests

        options.session_config = session_config_for_tests(args.heartbeat_interval, args.missing_hb_allowed)
    management = None
    if opts.enabled:  # running (startup datastore, else the flags) is the configuration
        from agent.callhome.management import CpeManagement
        from mgmt.errors import MgmtError

        try:
            management = CpeManagement(opts, options, seed=not from_startup)
            options = management.options(options)
        except (MgmtError, ValueError) as exc:
            log.error("invalid configuration: %s", exc)
            return 2
    server = CallHomeServer(options)
    await server.start()
    control = await serve_control(args.control, server.control_handlers()) if args.control else None
    try:
        addresses: dict[str, Any] = {}
        if management is not None:
            addresses = await management.start(server)
        if args.ready_file:
            Path(args.ready_file).write_text(json.dumps({"client": list(options.client),
                                                         "transport": options.transport, **addresses}))
        await _wait_for_signal()
    finally:
        if control is not None:
            control.close()
        if management is not None:
            await management.close()
        await server.stop()
    return 0


def server_cmd(args: argparse.Namespace) -> int:
    return asyncio.run(_run_server(args))


def _report(answer: dict[str, Any]) -> int:
    """Print the answer (JSON on stdout); a failure or a 4.xx/5.xx from the peer also gets one
    line on stderr with the peer's diagnostic, and exit status 1."""
    print(json.dumps(answer, indent=1, default=str))
    if not answer.get("ok"):
        print(f"dots call-home: {answer.get('error', 'failed')}", file=sys.stderr)
        return 1
    code = str(answer.get("code", ""))
    if code.startswith(("4.", "5.")):
        diagnostic = answer.get("diagnostic") or ""
        print(f"dots call-home: refused with {code}" + (f": {diagnostic}" if diagnostic else ""), file=sys.stderr)
        return 1
    return 0


async def _control(path: str, request: dict[str, Any]) -> int:
    from agent.callhome.control import call_control

    try:
        answer = await call_control(path, request)
    except (OSError, ConnectionError) as exc:  # no such socket, refused, not ours
        print(f"dots call-home: cannot use the control socket {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return _report(answer)


def decide_cmd(args: argparse.Namespace) -> int:
    request: dict[str, Any] = {"op": args.call_home_command}
    if args.call_home_command in ("approve", "reject"):
        if args.cuid is None or args.mid is None:
            raise SystemExit("--cuid and --mid are required")
        request.update(cuid=args.cuid, mid=args.mid)
        request["comment" if args.call_home_command == "approve" else "reason"] = args.comment or ""
    return asyncio.run(_control(args.control, request))


# -- provider side ---------------------------------------------------------------------------
def _action_request(args: argparse.Namespace) -> dict[str, Any] | None:
    action = getattr(args, "action", None)
    if action is None:
        return None
    req: dict[str, Any] = {"op": action, "wait": args.wait}
    if action == "mitigate":
        req.update(target_prefixes=args.target_prefix, source_prefixes=args.source_prefix,
                   source_ports=args.source_port or [], icmp_types=args.icmp_type or [],
                   target_ports=args.target_port or [], protocols=args.protocol or [],
                   fqdns=args.target_fqdn or [], lifetime=args.lifetime, mid=args.mid,
                   wait_status=args.wait_status)
    elif action in ("withdraw", "status"):
        req["mid"] = args.mid
    elif action == "redirect":
        req.update(alt_ch_client=args.alt_ch_client, records=args.record or [], ttl=args.ttl)
    return req


async def _run_client(args: argparse.Namespace) -> int:
    from agent.callhome.client import CallHomeClient
    from agent.callhome.control import serve_control

    request = _action_request(args)
    if request is not None and args.control and not args.listen:
        return await _control(args.control, request)
    creds = _credentials(args, "server")
    transports: tuple[str, ...] = ("tls", "dtls") if args.transport == "both" else (args.transport,)
    listen = [(a, args.port) for a in args.listen or []] if args.port is not None else []
    opts = mgmt_embed.options_from(args, args.mgmt_listen or (args.listen or ["127.0.0.1"])[0],
                                   Path.cwd() / "dots-call-home-client-mgmt")
    management = None
    if opts.enabled:
        if request is not None:
            raise SystemExit("the management plane needs the long-running mode (no action)")
        from agent.callhome.management import ProviderManagement, provider_bootstrap_config
        from mgmt.errors import MgmtError

        seed = not opts.startup_file.exists()
        if seed and not listen:
            raise SystemExit("--listen and --port are required (RFC 9066 has no default port)")
        try:
            management = ProviderManagement(opts, provider_bootstrap_config(creds, listen, transports) if seed
                                            else None, poll_interval=args.poll_interval)
            listen, transports = management.listen()
        except (MgmtError, ValueError) as exc:
            log.error("invalid configuration: %s", exc)
            return 2
    elif not listen:
        raise SystemExit("--listen and --port are required (RFC 9066 has no default port)")
    client = CallHomeClient(creds, listen, transports=transports)
    await client.start()
    try:
        addresses: dict[str, Any] = dict(client.addresses)
        if management is not None:
            addresses.update(await management.start(client))
        if args.ready_file:
            Path(args.ready_file).write_text(json.dumps({"cuid": client.cuid, **addresses}))
        if request is not None:  # one-shot
            handler = client.control_handlers()[request["op"]]
            try:
                answer = {"ok": True, **await handler(request)}
            except Exception as exc:
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            return _report(answer)
        control = await serve_control(args.control, client.control_handlers()) if args.control else None
        try:
            await _wait_for_signal()
        finally:
            if control is not None:
                control.close()
        return 0
    finally:
        if management is not None:
            await management.close()
        await client.stop()


def client_cmd(args: argparse.Namespace) -> int:
    return asyncio.run(_run_client(args))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("call-home", help="DOTS signal channel Call Home (RFC 9066)")
    csub = p.add_subparsers(dest="call_home_command", required=True, metavar="ROLE")

    s = csub.add_parser("server", help="Call Home DOTS server (CPE): call the provider, enforce its requests")
    s.add_argument("--pki", required=True, help="directory with ca.crt and our certificate/key")
    s.add_argument("--cert-stem", help="certificate file stem in --pki (default: client)")
    s.add_argument("--client", type=_hostport, help="Call Home DOTS client HOST:PORT (required unless a "
                   "startup datastore configures the peer)")
    s.add_argument("--client-name", help="name its certificate must carry (default: the host)")
    s.add_argument("--transport", choices=("tls", "dtls"), default="dtls")
    s.add_argument("--internal-prefix", action="append",
                   help="prefix of the network served (repeat); source-prefix must lie within")
    s.add_argument("--consent", choices=("auto", "manual"), default="auto",
                   help="manual: requests wait for 'dots call-home approve|reject'")
    s.add_argument("--approval-timeout", type=float, default=3600.0)
    s.add_argument("--mitigator", choices=("log", "nftables"), default="log")
    s.add_argument("--nft-table", default="dots_callhome")
    s.add_argument("--netns", help="run nft/conntrack inside this network namespace")
    s.add_argument("--db", default="dots-callhome.db")
    s.add_argument("--nat-conntrack", action="store_true",
                   help="map external sources to internal devices through the conntrack table (NAT44)")
    s.add_argument("--nat-static", action="append", metavar="EXT[:PORT]=INT[:PORT][/PROTO]",
                   help="static NAT44 mapping (repeat)")
    s.add_argument("--legitimate", action="append", metavar="PREFIX",
                   help="sources classified as legitimate: requests are refused with 4.09, cause 4")
    s.add_argument("--binding-timeout", type=float, help="NAT/firewall binding timer on the path (s); "
                   "heartbeat-interval is kept below it")
    s.add_argument("--heartbeat-interval", type=int, help=argparse.SUPPRESS)  # tests: short timers
    s.add_argument("--missing-hb-allowed", type=int, default=3, help=argparse.SUPPRESS)
    s.add_argument("--reconnect-min", type=float, default=60.0, help="back-off start (s) after a failed call")
    s.add_argument("--reconnect-max", type=float, default=300.0)
    s.add_argument("--terminating-period", type=int, default=120,
                   help="active-but-terminating period after a withdrawal (s; RFC 9132 default 120)")
    s.add_argument("--counter-interval", type=float, default=5.0)
    s.add_argument("--control", help="Unix socket for approve/reject/pending/list")
    s.add_argument("--ready-file", help=argparse.SUPPRESS)
    s.add_argument("--mgmt-listen", metavar="ADDR", help="address of NETCONF/RESTCONF (default 127.0.0.1)")
    mgmt_embed.add_arguments(s)
    s.set_defaults(handler=server_cmd)

    c = csub.add_parser("client", help="Call Home DOTS client (provider): wait for calls, signal attacks")
    c.add_argument("--pki", help="directory with ca.crt and our certificate/key")
    c.add_argument("--cert-stem", help="certificate file stem in --pki (default: server)")
    c.add_argument("--listen", action="append", help="address to listen on (repeat)")
    c.add_argument("--port", type=int, help="port (TCP and UDP); RFC 9066 has no default")
    c.add_argument("--transport", choices=("tls", "dtls", "both"), default="both")
    c.add_argument("--control", help="Unix socket: serve it (long-running) or send the action to it")
    c.add_argument("--ready-file", help=argparse.SUPPRESS)
    c.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the CPE to call (one-shot)")
    c.add_argument("--mgmt-listen", metavar="ADDR",
                   help="address of NETCONF/RESTCONF (default: the first --listen address)")
    c.add_argument("--poll-interval", type=float, default=2.0,
                   help="with the management plane: seconds between status polls of the requests sent")
    mgmt_embed.add_arguments(c)
    c.set_defaults(handler=client_cmd)
    acts = c.add_subparsers(dest="action", metavar="ACTION")
    m = acts.add_parser("mitigate", help="signal an attack from the CPE's network",
                        allow_abbrev=False)  # "--wait" must not become --wait-status
    m.add_argument("--source-prefix", action="append", required=True)
    m.add_argument("--target-prefix", action="append", required=True)
    m.add_argument("--source-port", action="append", type=_range, metavar="N[-M]")
    m.add_argument("--icmp-type", action="append", type=_range, metavar="N[-M]")
    m.add_argument("--target-port", action="append", type=_range, metavar="N[-M]")
    m.add_argument("--protocol", action="append", type=int)
    m.add_argument("--target-fqdn", action="append", help="informational only (RFC 9066 §5.3.1)")
    m.add_argument("--lifetime", type=int, default=3600)
    m.add_argument("--mid", type=int)
    m.add_argument("--wait-status", help="also wait until the request reaches this status "
                   "(e.g. attack-successfully-mitigated)")
    w = acts.add_parser("withdraw", help="withdraw a request")
    w.add_argument("--mid", type=int, required=True)
    st = acts.add_parser("status", help="status of one or all requests")
    st.add_argument("--mid", type=int)
    r = acts.add_parser("redirect", help="send the CPE to an alternate Call Home DOTS client")
    r.add_argument("--alt-ch-client", required=True)
    r.add_argument("--record", action="append")
    r.add_argument("--ttl", type=int)
    acts.add_parser("peers", help="list the Call Home DOTS servers connected")

    for name, help_ in (("approve", "approve a pending request (approve-mitigation)"),
                        ("reject", "reject a pending request as legitimate traffic (reject-mitigation)"),
                        ("pending", "list pending requests"), ("list", "requests, counters and session")):
        d = csub.add_parser(name, help=help_)
        d.add_argument("--control", required=True, help="control socket of 'dots call-home server'")
        if name in ("approve", "reject"):
            d.add_argument("--cuid", required=True)
            d.add_argument("--mid", type=int, required=True)
            d.add_argument("--comment", help="audit comment / reason")
        d.set_defaults(handler=decide_cmd)


if __name__ == "__main__":  # pragma: no cover
    from agent.cli import main

    sys.exit(main(["call-home", *sys.argv[1:]]))
