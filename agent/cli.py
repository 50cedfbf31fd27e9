"""The ``dots`` command line: one entry point, one sub-command per job.

Sub-commands are registered by small modules (``agent.cli_codec``, ``agent.cli_pki``, ...)
so that each stays readable; this module only wires them together.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import sys
import traceback
from collections.abc import Callable

# Modules that contribute sub-commands: each has ``register(subparsers)``.
COMMAND_MODULES = ("agent.cli_codec", "agent.cli_pki", "agent.cli_server", "agent.cli_client",
                   "agent.cli_callhome")


def _version() -> str:
    try:
        return importlib.metadata.version("dots-agent")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dots", description="DOTS agent (RFC 9132 signal channel, "
                                     "RFC 9066 Call Home)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def _command_of(args: argparse.Namespace) -> str:
    """``server``, ``call-home server``, ``client agent``: the sub-command words as typed."""
    if args.command == "call-home" and getattr(args, "call_home_command", None):
        return f"call-home {args.call_home_command}"
    if args.command == "client" and getattr(args, "action", None) in ("agent", "alerts", "portal"):
        return f"client {args.action}"
    return str(args.command)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verbose < 2:  # aiocoap's per-connection chatter only with -vv
        for name in ("coap", "coap-client", "coap-server"):
            logging.getLogger(name).setLevel(logging.WARNING)
    handler: Callable[[argparse.Namespace], int] = args.handler
    from agent.startup import OperatorError

    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except OperatorError as exc:  # the operator's to fix: one line, no traceback unless -vv
        if args.verbose >= 2:
            traceback.print_exc()
        print(f"dots {_command_of(args)}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
