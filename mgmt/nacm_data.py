"""libyang side of NACM: schema flags, the changes of an edit, and read filtering of a tree.

Theory of operation: :mod:`mgmt.nacm` decides on plain descriptions (:class:`mgmt.nacm.Target`);
this module produces them from libyang.  :class:`SchemaFlags` reads the
``nacm:default-deny-write`` / ``nacm:default-deny-all`` extension instances of compiled schema
nodes (cached per node; a flag on a node covers its descendants).  :func:`changes` computes
``lyd_diff_siblings`` of the current tree against the candidate result and lists every node
created, updated (``replace`` in the diff) or deleted, descendants of created/deleted subtrees
included (default nodes are not the user's doing and are skipped).  :func:`filter_read` walks a
tree and frees every node whose read is denied (RFC 8341 Section 3.4.5: silently removed; a
list entry goes away with a denied key).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from _libyang import ffi, lib

from mgmt.errors import from_libyang
from mgmt.nacm import NACM_MODULE, Segment, Target
from mgmt.tree import ConfigTree
from mgmt.yangctx import YangContext

_DENY_WRITE, _DENY_ALL = "default-deny-write", "default-deny-all"


def _s(ptr: Any) -> str:
    return ffi.string(ptr).decode() if ptr else ""


class SchemaFlags:
    """``(deny_write, deny_all)`` of compiled schema nodes, inherited by descendants."""

    def __init__(self, yc: YangContext) -> None:
        self.yc = yc
        self._cache: dict[int, tuple[bool, bool]] = {}

    def of(self, snode: Any) -> tuple[bool, bool]:
        if not snode:
            return False, False
        key = int(ffi.cast("uintptr_t", snode))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        write, every = self.of(snode.parent)
        exts = snode.exts
        if exts:
            for i in range(ffi.cast("uint64_t *", exts)[-1]):
                ext_def = getattr(exts[i], "def")
                if ext_def and _s(ext_def.module.name) == NACM_MODULE:
                    name = _s(ext_def.name)
                    write |= name == _DENY_WRITE
                    every |= name == _DENY_ALL
        self._cache[key] = (write, every)
        return write, every

    def operation(self, kind: str, module: str, name: str) -> Target:
        """Target of an RPC / notification of *module* (flags from its schema node when loaded)."""
        deny_all = False
        if self.yc.module_cdata(module) is not None:
            snode = lib.lys_find_path(self.yc.ctx.cdata, ffi.NULL, f"/{module}:{name}".encode(), 0)
            if snode:
                deny_all = self.of(snode)[1]
            else:
                self.yc.clear_errors()
        return Target.rpc(module, name, deny_all) if kind == "rpc" else Target.notification(module, name, deny_all)


def segment(node: Any, with_keys: bool = True) -> Segment:
    """Path step of a data node (list keys / leaf-list value when *with_keys*)."""
    snode = node.schema
    keys: tuple[tuple[str, str], ...] = ()
    if with_keys:
        if snode.nodetype == lib.LYS_LIST:
            found = []
            child = lib.lyd_child(node)
            while child and child.schema and child.schema.flags & lib.LYS_KEY:
                found.append((_s(child.schema.name), _s(lib.lyd_get_value(child))))
                child = child.next
            keys = tuple(found)
        elif snode.nodetype == lib.LYS_LEAFLIST:
            keys = ((".", _s(lib.lyd_get_value(node))),)
    return Segment(_s(snode.module.name), _s(snode.name), keys)


def segments(node: Any) -> tuple[Segment, ...]:
    out = []
    while node:
        out.append(segment(node))
        node = ffi.cast("struct lyd_node *", node.parent) if node.parent else None
    return tuple(reversed(out))


def data_path(node: Any) -> str:
    p = lib.lyd_path(node, lib.LYD_PATH_STD, ffi.NULL, 0)
    try:
        return _s(p)
    finally:
        lib.free(p)


@dataclass(frozen=True)
class Change:
    """One node an edit creates, updates or deletes."""

    op: str  # create | update | delete
    path: str
    target: Target


def _operation(node: Any, ctx: Any) -> str | None:
    meta = node.meta
    while meta:
        if _s(meta.name) == "operation" and _s(meta.annotation.module.name) == "yang":
            return _s(lib.lyd_value_get_canonical(ctx, ffi.addressof(meta[0], "value")))
        meta = meta.next
    return None


def _siblings(first: Any) -> Iterator[Any]:
    node = first
    while node:
        yield node
        node = node.next


def changes(yc: YangContext, flags: SchemaFlags, old: ConfigTree, new: ConfigTree) -> list[Change]:
    """Every node created / updated / deleted going from *old* to *new*."""
    yc.clear_errors()
    out = ffi.new("struct lyd_node **")
    first = old.root if old.root is not None else ffi.NULL
    second = new.root if new.root is not None else ffi.NULL
    if lib.lyd_diff_siblings(first, second, 0, out) != lib.LY_SUCCESS:
        raise from_libyang(yc.errors(), "cannot compute the changes of the edit")
    found: list[Change] = []
    ctx = yc.ctx.cdata

    def walk(node: Any, inherited: str | None) -> None:
        if node.flags & lib.LYD_DEFAULT and inherited in ("create", "delete"):
            return
        op = _operation(node, ctx) or inherited
        kind = {"create": "create", "delete": "delete", "replace": "update"}.get(op or "")
        if kind is not None:
            write, every = flags.of(node.schema)
            found.append(Change(kind, data_path(node), Target.data(segments(node), write, every)))
        if node.schema.nodetype & (lib.LYS_CONTAINER | lib.LYS_LIST):
            for child in _siblings(lib.lyd_child(node)):
                walk(child, op if op in ("create", "delete") else None)

    try:
        for top in _siblings(out[0]):
            walk(top, None)
    finally:
        if out[0]:
            lib.lyd_free_all(out[0])
    return found


def filter_read(tree: ConfigTree, flags: SchemaFlags, allowed: Callable[[Target], bool],
                schema_only: bool) -> int:
    """Free every node of *tree* the user may not read; returns how many subtrees were removed.

    *schema_only*: decisions depend on the schema node alone (no rule has list-key predicates),
    so they are made once per schema node of this walk and the path is only built then.
    """
    memo: dict[int, bool] = {}
    removed = 0

    def readable(node: Any) -> bool:
        snode = node.schema
        if not schema_only:
            return allowed(Target.data(segments(node), *flags.of(snode)))
        key = int(ffi.cast("uintptr_t", snode))
        hit = memo.get(key)
        if hit is None:
            path = []
            up = node
            while up:
                path.append(segment(up, with_keys=False))
                up = ffi.cast("struct lyd_node *", up.parent) if up.parent else None
            hit = memo[key] = allowed(Target.data(tuple(reversed(path)), *flags.of(snode)))
        return hit

    def walk(first: Any) -> list[Any]:
        nonlocal removed
        doomed: list[Any] = []
        for node in _siblings(first):
            ok = readable(node)
            if ok and node.schema.nodetype == lib.LYS_LIST:
                for child in _siblings(lib.lyd_child(node)):
                    if not (child.schema and child.schema.flags & lib.LYS_KEY):
                        break
                    if not readable(child):
                        ok = False
                        break
            if not ok:
                doomed.append(node)
                continue
            if node.schema.nodetype & _INNER:
                for child in walk(lib.lyd_child(node)):
                    lib.lyd_free_tree(child)
        removed += len(doomed)
        return doomed

    if tree.root is None:
        return 0
    for node in walk(tree.root):
        tree.delete(node)
    return removed


_INNER = lib.LYS_CONTAINER | lib.LYS_LIST | lib.LYS_RPC | lib.LYS_NOTIF
