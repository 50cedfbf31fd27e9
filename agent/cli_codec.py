"""``dots json2cbor`` and ``dots cbor2json``: convert captured messages for debugging.

Both read one message on stdin and write the other form on stdout.  CBOR input may be binary
or hexadecimal text (whitespace ignored); ``--hex`` makes json2cbor print hex.  Invalid input
exits with status 1 and the codec's message (field and reason) on stderr.

cbor2json never drops data silently: keys the codec does not know (an extension's, or a
typo's) are shown in place as ``"unknown-key-N": VALUE`` with one warning line each on stderr.
With ``--request`` the rules for a client's request apply: an unknown comprehension-required
key is an error (RFC 9132 §6), unknown optional ones are shown and warned about.
"""

from __future__ import annotations

import argparse
import binascii
import json
import string
import sys

from agent.codec import CodecError, Direction, decode_cbor, decode_json
from agent.codec.cbor import loads as cbor_loads
from agent.codec.unknown import annotate_unknown

_HEX = set(string.hexdigits + string.whitespace)


def _direction(args: argparse.Namespace) -> Direction:
    return Direction.REQUEST if args.request else Direction.RESPONSE


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--request", action="store_true",
                   help="apply the rules for a client's request body (no mid, one scope, ...)")


def read_cbor(raw: bytes) -> bytes:
    """Binary CBOR as is; text made only of hex digits and white space is decoded as hex."""
    text = raw.strip()
    if text and all(chr(b) in _HEX for b in text):
        try:
            return binascii.unhexlify(b"".join(text.split()))
        except binascii.Error as exc:
            raise CodecError("/", f"invalid hex input: {exc}") from None
    return raw


def json2cbor(args: argparse.Namespace) -> int:
    try:
        data = decode_json(sys.stdin.buffer.read(), _direction(args)).to_cbor()
    except CodecError as exc:
        print(f"dots json2cbor: {exc}", file=sys.stderr)
        return 1
    if args.hex:
        sys.stdout.write(data.hex() + "\n")
    else:
        sys.stdout.buffer.write(data)
    return 0


def cbor2json(args: argparse.Namespace) -> int:
    try:
        data = read_cbor(sys.stdin.buffer.read())
        msg = decode_cbor(data, _direction(args))
    except CodecError as exc:
        print(f"dots cbor2json: {exc}", file=sys.stderr)
        return 1
    doc = json.loads(msg.to_json())
    for item in annotate_unknown(cbor_loads(data), doc):
        kind = "comprehension-required" if item.required else "comprehension-optional"
        print(f"dots cbor2json: warning: unknown {kind} key {item.key} at {item.path} "
              f"(shown as \"{item.label}\")", file=sys.stderr)
    sys.stdout.write(json.dumps(doc, indent=None if args.compact else 2) + "\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("json2cbor", help="RFC 9132 JSON message on stdin -> CBOR on stdout")
    p.add_argument("--hex", action="store_true", help="print hexadecimal instead of binary")
    _add_common(p)
    p.set_defaults(handler=json2cbor)
    p = sub.add_parser("cbor2json", help="CBOR message (binary or hex) on stdin -> JSON on stdout")
    p.add_argument("--compact", action="store_true", help="one line of JSON")
    _add_common(p)
    p.set_defaults(handler=cbor2json)
