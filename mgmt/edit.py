"""NETCONF ``<edit-config>`` semantics (RFC 6241 Section 7.2) on a libyang tree.

Theory of operation: the edit is walked as XML (lxml) alongside the compiled schema
(``lys_find_child``), which gives for each element its schema node, its data path (list
keys become predicates, leaf-list values ``[.='v']``) and the effective operation
(``nc:operation`` attribute, else inherited, else the default-operation).  Each operation is
then carried out on a *working copy* of the target tree with libyang primitives:
``lyd_find_path`` (existence), ``lyd_new_path`` (create/merge, typed values checked by
libyang) and ``lyd_free_tree`` (delete/remove/replace).  The caller validates the whole copy
afterwards and swaps it in only on success, so errors never leave a partial edit behind.
Empty ``delete`` leaves never reach libyang's value parser, which is why the walk is done on
XML and not on a libyang parse of the edit.
"""

from __future__ import annotations

from typing import Any

from _libyang import ffi, lib
from lxml import etree

from mgmt.errors import MgmtError
from mgmt.tree import ConfigTree
from mgmt.yangctx import NC_NS, YangContext

OPERATIONS = ("merge", "replace", "create", "delete", "remove", "none")
_OP_ATTR = f"{{{NC_NS}}}operation"


def _quote(value: str) -> str:
    return f"'{value}'" if "'" not in value else f'"{value}"'


def _text(elem: etree._Element) -> str:
    text = elem.text or ""
    return text.strip() if "\n" in text or text.strip() == "" else text


class EditEngine:
    """Applies one edit-config ``<config>`` element to a working tree."""

    def __init__(self, yc: YangContext) -> None:
        self.yc = yc

    # ------------------------------------------------------------ schema helpers
    def _schema_child(self, parent_snode: Any, elem: etree._Element, parent_path: str) -> tuple[Any, str]:
        qname = etree.QName(elem)
        if qname.namespace is None:
            raise MgmtError("unknown-namespace", f"element {qname.localname} has no namespace",
                            path=parent_path or "/", info={"bad-element": qname.localname})
        module = self.yc.module_for_ns(qname.namespace)
        if module is None:
            raise MgmtError("unknown-namespace", f"unknown namespace {qname.namespace}",
                            path=parent_path or "/",
                            info={"bad-element": qname.localname, "bad-namespace": qname.namespace})
        mod_c = self.yc.module_cdata(module)
        if not mod_c:
            raise MgmtError("unknown-namespace", f"module {module} has no data", path=parent_path or "/")
        snode = lib.lys_find_child(parent_snode if parent_snode is not None else ffi.NULL, mod_c,
                                   qname.localname.encode(), 0, 0, 0)
        if not snode:
            raise MgmtError("unknown-element", f"unknown element {qname.localname}",
                            path=parent_path or "/", info={"bad-element": qname.localname})
        if snode.flags & lib.LYS_CONFIG_R:
            raise MgmtError("invalid-value", f"{qname.localname} is state data (config false)",
                            path=f"{parent_path}/{qname.localname}", info={"bad-element": qname.localname})
        parent_mod = ffi.string(parent_snode.module.name).decode() if parent_snode is not None else None
        segment = qname.localname if parent_mod == module else f"{module}:{qname.localname}"
        return snode, segment

    def _json_value(self, snode: Any, elem: etree._Element) -> str:
        """Leaf text in the JSON encoding lyd_new_path expects (identityref prefixes -> module names)."""
        value = _text(elem)
        leaf = ffi.cast("struct lysc_node_leaf *", snode)
        if leaf.type.basetype == lib.LY_TYPE_IDENT and ":" in value:
            prefix, name = value.split(":", 1)
            ns = elem.nsmap.get(prefix)
            module = self.yc.module_for_ns(ns) if ns else None
            if module is None:
                raise MgmtError("invalid-value", f"unknown prefix {prefix!r} in identity {value!r}")
            value = f"{module}:{name}"
        return value

    def _keys(self, snode: Any) -> list[Any]:
        keys = []
        child = lib.lysc_node_child(snode)
        while child:
            if child.flags & lib.LYS_KEY:
                keys.append(child)
            child = child.next
        return keys

    def _data_path(self, snode: Any, segment: str, elem: etree._Element, parent_path: str) -> str:
        path = f"{parent_path}/{segment}"
        if snode.nodetype == lib.LYS_LIST:
            for key in self._keys(snode):
                kname = ffi.string(key.name).decode()
                kelem = next((c for c in elem if isinstance(c.tag, str) and etree.QName(c).localname == kname),
                             None)
                if kelem is None:
                    raise MgmtError("missing-element", f"list key {kname} missing", type="protocol",
                                    path=path, info={"bad-element": kname})
                path += f"[{kname}={_quote(self._json_value(key, kelem))}]"
        elif snode.nodetype == lib.LYS_LEAFLIST:
            path += f"[.={_quote(self._json_value(snode, elem))}]"
        return path

    # ------------------------------------------------------------ edit
    def apply(self, work: ConfigTree, config: etree._Element, default_op: str) -> None:
        """Apply the children of *config* to *work* (in place)."""
        if default_op not in ("merge", "replace", "none"):
            raise MgmtError("invalid-value", f"bad default-operation {default_op}", type="protocol")
        for elem in config:
            if isinstance(elem.tag, str):
                self._process(work, elem, None, "", default_op)

    def _process(self, work: ConfigTree, elem: etree._Element, parent_snode: Any, parent_path: str,
                 inherited: str) -> None:
        snode, segment = self._schema_child(parent_snode, elem, parent_path)
        path = self._data_path(snode, segment, elem, parent_path)
        op = elem.get(_OP_ATTR, inherited)
        if op not in OPERATIONS:
            raise MgmtError("bad-attribute", f"bad operation {op!r}", type="protocol", path=path,
                            info={"bad-attribute": "operation", "bad-element": etree.QName(elem).localname})
        existing = work.find(path)
        is_leaf = snode.nodetype == lib.LYS_LEAF
        value = self._json_value(snode, elem) if is_leaf else None
        if snode.nodetype & (lib.LYS_ANYXML | lib.LYS_ANYDATA):
            raise MgmtError("operation-not-supported", "anydata is not editable", path=path)

        if op == "delete" and existing is None:
            raise MgmtError("data-missing", "node to delete does not exist", path=path)
        if op == "create" and existing is not None:
            raise MgmtError("data-exists", "node to create already exists", path=path)
        if op in ("delete", "remove"):
            if existing is not None:
                work.delete(existing)
            return
        if op == "replace" and existing is not None:
            work.delete(existing)
            existing = None
        if is_leaf:
            if op != "none":
                work.create(path, value)
            return
        created = False
        if existing is None:
            if op == "none" and snode.nodetype != lib.LYS_LIST and snode.nodetype != lib.LYS_CONTAINER:
                return
            work.create(path, None)
            created = True
        child_op = "merge" if op in ("create", "replace") else op
        key_names = {ffi.string(k.name).decode() for k in self._keys(snode)} \
            if snode.nodetype == lib.LYS_LIST else set()
        for child in elem:
            if not isinstance(child.tag, str):
                continue
            if etree.QName(child).localname in key_names and child.get(_OP_ATTR) is None:
                continue
            self._process(work, child, snode, path, child_op)
        if created and op == "none":
            node = work.find(path)
            if node is not None and not _has_non_key_children(node):
                work.delete(node)


def _has_non_key_children(node: Any) -> bool:
    child = lib.lyd_child(node)
    while child:
        if child.schema and not (child.schema.flags & lib.LYS_KEY):
            return True
        child = child.next
    return False
