"""YANG validation of message instances with libyang (must, when, ranges, fraction-digits, choices).

pyangbind checks types and ranges while objects are built but not ``must`` expressions nor
decimal64 fraction-digits; libyang checks everything.  Messages are validated as instances of
the derived modules in ``bindings/generated/yang`` (RFC 8791 structures compiled as
``config false`` containers), which accept exactly the same data as the structures.
``dots-agent-iana-updates`` (loaded last, so implemented) deviates them like the bindings build.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import libyang

import yang
from bindings.build import GENERATED_DIR

from .errors import CodecError

SIGNAL_MODULES = ("ietf-dots-data-channel", "ietf-dots-signal-channel", "ietf-dots-call-home",
                  "dots-agent-iana-updates")
_local = threading.local()


def search_path() -> str:
    return ":".join(str(p) for p in [GENERATED_DIR / "yang", *yang.search_path()])


def context() -> libyang.Context:
    """One libyang context per thread (libyang contexts are not thread-safe)."""
    ctx = getattr(_local, "ctx", None)
    if ctx is None:
        ctx = libyang.Context(search_path())
        for name in SIGNAL_MODULES:
            derived = sorted((GENERATED_DIR / "yang").glob(f"{name}@*.yang"))
            if derived:  # load the derived copy by file: the search path also has the verbatim one
                with open(derived[-1]) as f:
                    ctx.parse_module_file(f, "yang")
            else:
                ctx.load_module(name)
        _local.ctx = ctx
    return ctx


def validate_tree(tree: dict[str, Any]) -> None:
    """Validate an RFC 7951 instance tree; raise ``CodecError`` with libyang's reason."""
    text = json.dumps(tree)
    ctx = context()
    try:
        node = ctx.parse_data_mem(text, "json", strict=True, validate_present=True)
    except libyang.LibyangError as exc:
        raise CodecError(_error_path(ctx, exc), _error_reason(exc)) from None
    if node is not None:
        node.free()


def _error_reason(exc: libyang.LibyangError) -> str:
    msg = str(exc)
    prefix = "failed to parse data tree: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg


def _error_path(ctx: libyang.Context, exc: libyang.LibyangError) -> str:
    try:
        err = ctx.err_last() if hasattr(ctx, "err_last") else None
        path = getattr(err, "path", None) if err is not None else None
        return str(path) if path else "yang"
    except Exception:  # pragma: no cover - best effort only
        return "yang"
