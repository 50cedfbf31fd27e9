"""One configuration data tree of ``dots-agent`` held in libyang.

Theory of operation: a :class:`ConfigTree` owns a libyang data tree (``None`` when empty) and
is never shared: datastores hand out copies, edits work on copies, and a copy only replaces a
datastore's tree after :meth:`ConfigTree.validate` succeeded, so an invalid edit never leaves
a half-applied configuration behind.  Parsing and validation errors come back as
:class:`mgmt.errors.MgmtError` with the data path libyang reported.
"""

from __future__ import annotations

import json
from typing import Any

import libyang
from _libyang import ffi, lib

from mgmt.errors import MgmtError, from_libyang
from mgmt.yangctx import AGENT_MODULE, YangContext

_VALIDATE = lib.LYD_VALIDATE_NO_STATE | lib.LYD_VALIDATE_PRESENT


class ConfigTree:
    """A config-only data tree (or the empty configuration)."""

    def __init__(self, yc: YangContext, root: Any = None) -> None:
        self.yc = yc
        self.root = root  # cdata "struct lyd_node *" (first top-level sibling) or None

    # ------------------------------------------------------------ construction
    @classmethod
    def empty(cls, yc: YangContext) -> ConfigTree:
        return cls(yc, None)

    @classmethod
    def parse(cls, yc: YangContext, text: str | bytes, fmt: str, validate: bool = True,
              state: bool = False) -> ConfigTree:
        """Parse XML or RFC 7951 JSON data; config only unless *state*; validated unless told not."""
        if isinstance(text, str):
            text = text.encode("utf-8")
        if not text.strip() or text.strip() in (b"{}", b"<data/>"):
            return cls.empty(yc)
        yc.clear_errors()
        buf = ffi.new("char[]", text)
        inp = ffi.new("struct ly_in **")
        if lib.ly_in_new_memory(buf, inp) != lib.LY_SUCCESS:
            raise MgmtError("operation-failed", "cannot read input")
        out = ffi.new("struct lyd_node **")
        pflags = lib.LYD_PARSE_STRICT | (0 if state else lib.LYD_PARSE_NO_STATE)
        if not validate:
            pflags |= lib.LYD_PARSE_ONLY
        vflags = (0 if state else lib.LYD_VALIDATE_NO_STATE) | lib.LYD_VALIDATE_PRESENT
        fmt_c = lib.LYD_XML if fmt == "xml" else lib.LYD_JSON
        ret = lib.lyd_parse_data(yc.ctx.cdata, ffi.NULL, inp[0], fmt_c, pflags,
                                 0 if not validate else vflags, out)
        lib.ly_in_free(inp[0], 0)
        if ret != lib.LY_SUCCESS:
            if out[0]:
                lib.lyd_free_all(out[0])
            raise from_libyang(yc.errors(), "invalid data")
        return cls(yc, out[0] or None)

    def copy(self) -> ConfigTree:
        if self.root is None:
            return ConfigTree(self.yc, None)
        out = ffi.new("struct lyd_node **")
        flags = lib.LYD_DUP_RECURSIVE | lib.LYD_DUP_WITH_FLAGS
        if lib.lyd_dup_siblings(self.root, ffi.NULL, flags, out) != lib.LY_SUCCESS:
            raise from_libyang(self.yc.errors(), "cannot copy tree")
        return ConfigTree(self.yc, out[0])

    def free(self) -> None:
        if self.root is not None:
            lib.lyd_free_all(self.root)
            self.root = None

    # ------------------------------------------------------------ validation
    def validate(self) -> None:
        """Validate against the whole module set; adds default nodes.  Raises MgmtError."""
        if self.root is None:
            return
        self.yc.clear_errors()
        ptr = ffi.new("struct lyd_node **", self.root)
        ret = lib.lyd_validate_all(ptr, self.yc.ctx.cdata, _VALIDATE, ffi.NULL)
        self.root = ptr[0] or None
        if ret != lib.LY_SUCCESS:
            raise from_libyang(self.yc.errors(), "validation failed")

    # ------------------------------------------------------------ navigation
    def find(self, path: str) -> Any:
        """cdata node at *path* (absolute data path) or None."""
        if self.root is None:
            return None
        out = ffi.new("struct lyd_node **")
        if lib.lyd_find_path(self.root, path.encode(), 0, out) != lib.LY_SUCCESS:
            self.yc.clear_errors()
            return None
        return out[0] or None

    def create(self, path: str, value: str | None) -> Any:
        """Create (or update the value of) the node at *path*; returns it.  Raises MgmtError."""
        self.yc.clear_errors()
        out = ffi.new("struct lyd_node **")
        parent = self.root if self.root is not None else ffi.NULL
        val = value.encode() if value is not None else ffi.NULL
        ret = lib.lyd_new_path(parent, self.yc.ctx.cdata, path.encode(), val,
                               lib.LYD_NEW_PATH_UPDATE, out)
        if ret != lib.LY_SUCCESS:
            err = from_libyang(self.yc.errors(), f"cannot create {path}")
            err.path = path
            raise err
        if self.root is None:
            node = out[0]
            while node.parent:
                node = ffi.cast("struct lyd_node *", node.parent)
            self.root = lib.lyd_first_sibling(node)
        return self.find(path)

    def delete(self, node: Any) -> None:
        """Free *node* and its subtree."""
        if node == self.root:
            nxt = self.root.next
            lib.lyd_free_tree(node)
            self.root = nxt or None
            return
        lib.lyd_free_tree(node)

    # ------------------------------------------------------------ output
    def dnode(self) -> libyang.DNode | None:
        return None if self.root is None else libyang.DNode.new(self.yc.ctx, self.root)

    def to_xml(self, pretty: bool = False) -> str:
        node = self.dnode()
        return "" if node is None else node.print_mem("xml", with_siblings=True, pretty=pretty)

    def to_json(self, pretty: bool = False) -> str:
        node = self.dnode()
        return "{}" if node is None else node.print_mem("json", with_siblings=True, pretty=pretty)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.to_json())

    def is_empty(self) -> bool:
        return self.root is None

    def same_as(self, other: ConfigTree) -> bool:
        return self.to_json() == other.to_json()

    def merge_from(self, other: ConfigTree) -> None:
        """Merge a copy of *other* into this tree (used to add state to a copy of running)."""
        if other.root is None:
            return
        src = other.copy()
        if self.root is None:
            self.root = src.root
            return
        ptr = ffi.new("struct lyd_node **", self.root)
        ret = lib.lyd_merge_siblings(ptr, src.root, lib.LYD_MERGE_DESTRUCT)
        self.root = ptr[0]
        if ret != lib.LY_SUCCESS:
            raise from_libyang(self.yc.errors(), "cannot merge trees")


def agent_top_path() -> str:
    return f"/{AGENT_MODULE}:{AGENT_MODULE}"
