"""The libyang context the management plane validates against, and libyang error capture.

Theory of operation: one :class:`YangContext` per management instance loads ``dots-agent``
(every feature enabled), ``ietf-netconf`` (for the ``nc:operation`` annotation and the
capabilities), ``ietf-netconf-monitoring`` and ``ietf-yang-library``.  All data trees of the
datastores live in this context.  libyang's Python binding drops the data path of an error, so
libyang is switched to "log and store every error" and :meth:`YangContext.errors` reads the
stored records (message, data path, app-tag, validation code) straight from the C structures
before anything clears them; :func:`mgmt.errors.from_libyang` turns them into rpc-errors.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libyang
from _libyang import ffi, lib
from libyang.util import c2str

import yang

AGENT_MODULE = "dots-agent"
AGENT_NS = "urn:dots-agent:params:xml:ns:yang:dots-agent"
NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
NC_FEATURES = ("writable-running", "candidate", "confirmed-commit", "rollback-on-error", "validate",
               "startup", "xpath")
EXTRA_MODULES = ("ietf-netconf-monitoring", "ietf-yang-library", "ietf-netconf-with-defaults",
                 "ietf-netconf-acm")  # implemented: /nacm is configuration (RFC 8341)

_LOCATION = re.compile(r'(?:Data|Schema) location "([^"]+)"')
_logging_lock = threading.Lock()
_logging_ready = False


def _enable_error_paths() -> None:
    """libyang fills ``ly_err_item.path`` only when it also logs; route the log to Python logging."""
    global _logging_ready
    with _logging_lock:
        if not _logging_ready:
            libyang.configure_logging(True, logging.ERROR)
            ly_logger = logging.getLogger("libyang")
            if ly_logger.level == logging.NOTSET:  # errors reach the client as rpc-errors instead
                ly_logger.setLevel(logging.CRITICAL)
            _logging_ready = True


@dataclass(frozen=True)
class LyError:
    """One stored libyang error record."""

    message: str
    path: str | None
    app_tag: str | None
    vecode: int


@dataclass(frozen=True)
class ModuleInfo:
    """A module of the context as advertised in hello / netconf-state / yang-library."""

    name: str
    revision: str | None
    namespace: str
    prefix: str
    features: tuple[str, ...]
    implemented: bool
    text: str | None


class YangContext:
    """libyang context with our module set, plus schema helpers used by the edit engine."""

    def __init__(self, search_path: list[Path] | None = None) -> None:
        _enable_error_paths()
        dirs = search_path or yang.search_path()
        self.ctx = libyang.Context(":".join(str(d) for d in dirs))
        agent = self.ctx.load_module(AGENT_MODULE)
        agent.feature_enable_all()
        self.ctx.load_module("ietf-netconf").feature_enable_all()
        for name in EXTRA_MODULES:
            self.ctx.load_module(name)
        self._ns_to_module: dict[str, str] = {}
        self._module_to_ns: dict[str, str] = {}
        for info in self.modules():
            self._ns_to_module[info.namespace] = info.name
            self._module_to_ns[info.name] = info.namespace
        self.clear_errors()

    # ---------------------------------------------------------------- modules
    def modules(self) -> Iterator[ModuleInfo]:
        """Every module of the context (implemented or only imported)."""
        idx = ffi.new("uint32_t *")
        mod = lib.ly_ctx_get_module_iter(self.ctx.cdata, idx)
        while mod:
            name = c2str(mod.name)
            revision = c2str(mod.revision) if mod.revision else None
            features: list[str] = []
            m = libyang.Module(self.ctx, mod)
            if mod.parsed:
                try:
                    features = [f.name() for f in m.features() if m.feature_state(f.name())]
                except libyang.LibyangError:
                    features = []
            yield ModuleInfo(name, revision, c2str(mod.ns), c2str(mod.prefix), tuple(features),
                             bool(mod.implemented), self._module_text(name, revision, mod))
            mod = lib.ly_ctx_get_module_iter(self.ctx.cdata, idx)

    def _module_text(self, name: str, revision: str | None, mod: object) -> str | None:
        path = getattr(mod, "filepath", ffi.NULL)
        if path:
            try:
                return Path(c2str(path)).read_text()
            except OSError:
                return None
        for d in yang.search_path():
            for candidate in ([d / f"{name}@{revision}.yang"] if revision else []) + [d / f"{name}.yang"]:
                if candidate.exists():
                    return candidate.read_text()
        return None

    def module_cdata(self, name: str) -> Any:
        """The implemented ``struct lys_module *`` called *name*, or None."""
        try:
            return self.ctx.get_module(name).cdata
        except libyang.LibyangError:
            self.clear_errors()
            return None

    def module_for_ns(self, namespace: str) -> str | None:
        return self._ns_to_module.get(namespace)

    def ns_for_module(self, module: str) -> str | None:
        return self._module_to_ns.get(module)

    def yang_library(self) -> libyang.DNode:
        """ietf-yang-library data (RFC 8525) of the context, built by libyang."""
        return self.ctx.get_yanglib_data()

    # ---------------------------------------------------------------- errors
    def errors(self) -> list[LyError]:
        """Stored error records of this context (oldest first); clears them."""
        out: list[LyError] = []
        item = lib.ly_err_first(self.ctx.cdata)
        while item:
            msg = _safe(item.msg) or "libyang error"
            raw_path = _safe(item.path)
            path = None
            if raw_path:
                found = _LOCATION.search(raw_path)
                path = found.group(1) if found else None
            out.append(LyError(msg, path, _safe(item.apptag), int(item.vecode)))
            item = item.next
        self.clear_errors()
        return out

    def clear_errors(self) -> None:
        lib.ly_err_clean(self.ctx.cdata, ffi.NULL)


def _safe(ptr: object) -> str | None:
    if not ptr:
        return None
    raw = ffi.string(ptr)
    return raw.decode("utf-8", "replace")
