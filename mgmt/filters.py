"""``<filter>`` handling for get / get-config: subtree (RFC 6241 Section 6) and XPath.

Theory of operation: subtree filtering is done on the XML that libyang prints for the tree,
element by element: a filter element with children is a containment node, an empty one a
selection node, one with text a content-match node (siblings are selected only if every
content match of the level holds).  List keys are always kept in the output so entries stay
identifiable.  XPath filters are evaluated by libyang itself (``lyd_find_xpath``) after the
XML prefixes of the ``select`` expression are rewritten into module names; every selected node
is copied with its ancestors into the result tree.
"""

from __future__ import annotations

import re
from copy import deepcopy

from _libyang import ffi, lib
from lxml import etree

from mgmt.errors import MgmtError
from mgmt.tree import ConfigTree
from mgmt.yangctx import YangContext


def _is_element(e: object) -> bool:
    return isinstance(getattr(e, "tag", None), str)


def _match_name(data: etree._Element, flt: etree._Element) -> bool:
    dq, fq = etree.QName(data), etree.QName(flt)
    return dq.localname == fq.localname and (fq.namespace is None or fq.namespace == dq.namespace)


class SubtreeFilter:
    """RFC 6241 subtree filter over lxml trees."""

    def __init__(self, list_keys: dict[str, set[str]]) -> None:
        self.list_keys = list_keys  # list element localname -> key localnames

    def apply(self, data_roots: list[etree._Element], flt: etree._Element) -> list[etree._Element]:
        out: list[etree._Element] = []
        filters = [f for f in flt if _is_element(f)]
        for d in data_roots:
            for f in filters:
                if _match_name(d, f):
                    kept = self._node(d, f)
                    if kept is not None:
                        out.append(kept)
                        break
        return out

    def _node(self, data: etree._Element, flt: etree._Element) -> etree._Element | None:
        children = [f for f in flt if _is_element(f)]
        text = (flt.text or "").strip()
        if not children:
            if text:  # content match at this level
                return deepcopy(data) if (data.text or "").strip() == text else None
            return deepcopy(data)  # selection node
        content = [f for f in children if not any(_is_element(c) for c in f) and (f.text or "").strip()]
        for cm in content:
            if not any(_match_name(d, cm) and (d.text or "").strip() == (cm.text or "").strip()
                       for d in data if _is_element(d)):
                return None
        others = [f for f in children if f not in content]
        result = etree.Element(data.tag, nsmap=data.nsmap)
        keys = self.list_keys.get(etree.QName(data).localname, set())
        matched_other = False
        for d in data:
            if not _is_element(d):
                continue
            name = etree.QName(d).localname
            if not others:
                result.append(deepcopy(d))
                continue
            if name in keys or any(_match_name(d, cm) for cm in content):
                result.append(deepcopy(d))
                continue
            for f in others:
                if _match_name(d, f):
                    kept = self._node(d, f)
                    if kept is not None:
                        result.append(kept)
                        matched_other = True
                    break
        if others and not matched_other:
            return None
        return result


def list_keys_of(yc: YangContext, module: str) -> dict[str, set[str]]:
    """Key leaf names of every list in *module* (by list name)."""
    keys: dict[str, set[str]] = {}
    mod = yc.module_cdata(module)
    if mod is None:
        return keys
    stack = []
    node = lib.lys_getnext(ffi.NULL, ffi.NULL, mod.compiled, 0)
    while node:
        stack.append(node)
        node = lib.lys_getnext(node, ffi.NULL, mod.compiled, 0)
    while stack:
        snode = stack.pop()
        if snode.nodetype == lib.LYS_LIST:
            names = keys.setdefault(ffi.string(snode.name).decode(), set())
            child = lib.lysc_node_child(snode)
            while child:
                if child.flags & lib.LYS_KEY:
                    names.add(ffi.string(child.name).decode())
                child = child.next
        child = lib.lys_getnext(ffi.NULL, snode, ffi.NULL, 0)
        while child:
            stack.append(child)
            child = lib.lys_getnext(child, snode, ffi.NULL, 0)
    return keys


_PREFIX = re.compile(r"(?<![\w.:-])([A-Za-z_][\w.-]*):(?!:)")


def xpath_select(yc: YangContext, tree: ConfigTree, select: str, nsmap: dict[str | None, str]) -> ConfigTree:
    """Nodes of *tree* selected by an XPath 1.0 expression, with their ancestors."""
    def to_module(match: re.Match[str]) -> str:
        prefix = match.group(1)
        ns = nsmap.get(prefix)
        module = yc.module_for_ns(ns) if ns else None
        if module is None and yc.ns_for_module(prefix):
            module = prefix  # already a module name (JSON style)
        if module is None:
            raise MgmtError("invalid-value", f"unknown prefix {prefix!r} in xpath filter",
                            type="protocol")
        return f"{module}:"

    expr = _PREFIX.sub(to_module, select)
    result = ConfigTree.empty(yc)
    if tree.root is None:
        return result
    yc.clear_errors()
    found = ffi.new("struct ly_set **")
    if lib.lyd_find_xpath(tree.root, expr.encode(), found) != lib.LY_SUCCESS:
        errs = yc.errors()
        raise MgmtError("invalid-value", errs[0].message if errs else f"bad xpath {select}",
                        type="protocol")
    try:
        for i in range(found[0].count):
            node = found[0].dnodes[i]
            out = ffi.new("struct lyd_node **")
            flags = lib.LYD_DUP_RECURSIVE | lib.LYD_DUP_WITH_PARENTS | lib.LYD_DUP_WITH_FLAGS
            if lib.lyd_dup_single(node, ffi.NULL, flags, out) != lib.LY_SUCCESS:
                continue
            top = out[0]
            while top.parent:
                top = ffi.cast("struct lyd_node *", top.parent)
            result.merge_from(ConfigTree(yc, top))
            lib.lyd_free_all(top)
    finally:
        lib.ly_set_free(found[0], ffi.NULL)
    return result
