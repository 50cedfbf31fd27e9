"""NETCONF protocol operations: one ``<rpc>`` element in, one ``<rpc-reply>`` document out.

Theory of operation: :class:`NetconfOps.handle` runs on the management loop.  It checks the
envelope (message-id, exactly one operation), dispatches on the operation's namespace and
name (RFC 6241 base operations, RFC 6022 ``get-schema``, RFC 5277 ``create-subscription``,
and the RPCs of ``dots-agent`` through the registered handlers), checks that every parameter
element is known, and renders :class:`mgmt.errors.MgmtError` as ``<rpc-error>`` with
``error-path`` (module names declared as XML prefixes).  The transport never sees an
exception: whatever happens, a reply carrying the request's attributes goes back.

NACM (RFC 8341): every operation is checked for ``exec`` access of the session's user before
anything else happens (``close-session`` is always permitted); ``get`` / ``get-config`` results
are filtered by read access and writes by the datastore's guard (:mod:`mgmt.access`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from xml.sax.saxutils import escape

from lxml import etree

from mgmt.errors import MgmtError
from mgmt.interfaces import SessionInfo
from mgmt.manager import Management
from mgmt.monitoring import schema_text
from mgmt.tree import ConfigTree
from mgmt.yangctx import AGENT_NS, NC_NS

log = logging.getLogger(__name__)

MON_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring"
NOTIF_NS = "urn:ietf:params:xml:ns:netconf:notification:1.0"

_PARAMS = {
    "get": {"filter", "with-defaults"},
    "get-config": {"source", "filter", "with-defaults"},
    "edit-config": {"target", "default-operation", "test-option", "error-option", "config"},
    "copy-config": {"target", "source"},
    "delete-config": {"target"},
    "lock": {"target"},
    "unlock": {"target"},
    "validate": {"source"},
    "commit": {"confirmed", "confirm-timeout", "persist", "persist-id"},
    "cancel-commit": {"persist-id"},
    "discard-changes": set(),
    "close-session": set(),
    "kill-session": {"session-id"},
}
_MODULE_PREFIX = re.compile(r"([A-Za-z_][\w.-]*):")
_OP_MODULES = {NC_NS: "ietf-netconf", MON_NS: "ietf-netconf-monitoring", NOTIF_NS: "notifications",
               AGENT_NS: "dots-agent"}


def _uint32(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` also takes '²' and '２３') and within uint32."""
    return text.isascii() and text.isdigit() and len(text) <= 10 and int(text) <= 0xFFFFFFFF


@dataclass
class Outcome:
    reply: str
    close: bool = False
    kill: int | None = None


def _nc(name: str) -> str:
    return f"{{{NC_NS}}}{name}"


class NetconfOps:
    """Executes NETCONF operations against a :class:`Management`."""

    def __init__(self, mgmt: Management) -> None:
        self.mgmt = mgmt

    # ------------------------------------------------------------ rendering
    def reply(self, rpc: etree._Element | None, body: str, message_id: str | None = None) -> str:
        attrs = ""
        if rpc is not None:
            for k, v in rpc.attrib.items():
                q = etree.QName(k)
                if q.namespace is None:
                    attrs += f' {q.localname}="{escape(v, {chr(34): "&quot;"})}"'
            for prefix, ns in rpc.nsmap.items():
                if prefix and ns != NC_NS:
                    attrs += f' xmlns:{prefix}="{escape(ns)}"'
        elif message_id is not None:
            attrs = f' message-id="{escape(message_id)}"'
        return f'<rpc-reply xmlns="{NC_NS}"{attrs}>{body}</rpc-reply>'

    def error_xml(self, err: MgmtError) -> str:
        parts = [f"<error-type>{err.type}</error-type>", f"<error-tag>{err.tag}</error-tag>",
                 "<error-severity>error</error-severity>"]
        if err.app_tag:
            parts.append(f"<error-app-tag>{escape(err.app_tag)}</error-app-tag>")
        if err.path:
            decls = ""
            for module in sorted(set(_MODULE_PREFIX.findall(err.path))):
                ns = self.mgmt.yc.ns_for_module(module)
                if ns:
                    decls += f' xmlns:{module}="{escape(ns)}"'
            parts.append(f"<error-path{decls}>{escape(err.path)}</error-path>")
        parts.append(f'<error-message xml:lang="en">{escape(err.message)}</error-message>')
        if err.info:
            info = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in err.info.items())
            parts.append(f"<error-info>{info}</error-info>")
        return "<rpc-error>" + "".join(parts) + "</rpc-error>"

    # ------------------------------------------------------------ entry point
    async def handle(self, session: SessionInfo, rpc: etree._Element) -> Outcome:
        session.counters["in-rpcs"] += 1
        try:
            return await self._handle(session, rpc)
        except MgmtError as err:
            session.counters["out-rpc-errors"] += 1
            return Outcome(self.reply(rpc, self.error_xml(err)))
        except Exception as exc:  # never let the session die on a bug
            log.exception("operation failed")
            session.counters["out-rpc-errors"] += 1
            return Outcome(self.reply(rpc, self.error_xml(MgmtError("operation-failed", str(exc)))))

    async def _handle(self, session: SessionInfo, rpc: etree._Element) -> Outcome:
        if rpc.get("message-id") is None:
            raise MgmtError("missing-attribute", "rpc without message-id", type="rpc",
                            info={"bad-attribute": "message-id", "bad-element": "rpc"})
        ops = [c for c in rpc if isinstance(c.tag, str)]
        if len(ops) != 1:
            raise MgmtError("malformed-message" if not ops else "unknown-element",
                            "an rpc carries exactly one operation", type="rpc")
        op = ops[0]
        q = etree.QName(op)
        module = _OP_MODULES.get(q.namespace or "") or self.mgmt.yc.module_for_ns(q.namespace or "")
        if module is not None:
            self.mgmt.access.check_exec(session, module, q.localname)
        if q.namespace == NC_NS:
            return await self._base(session, rpc, op, q.localname)
        if q.namespace == MON_NS and q.localname == "get-schema":
            return Outcome(self.reply(rpc, self._get_schema(op)))
        if q.namespace == NOTIF_NS and q.localname == "create-subscription":
            return Outcome(self.reply(rpc, self._subscribe(session, op)))
        if q.namespace == AGENT_NS:
            out = await self.mgmt.call_rpc(etree.tostring(op, encoding="unicode"), session)
            return Outcome(self.reply(rpc, out or "<ok/>"))
        if q.namespace is None or self.mgmt.yc.module_for_ns(q.namespace) is None:
            raise MgmtError("unknown-namespace", f"unknown namespace {q.namespace}", type="protocol",
                            info={"bad-element": q.localname, "bad-namespace": q.namespace or ""})
        raise MgmtError("operation-not-supported", f"operation {q.localname} is not supported",
                        type="protocol")

    # ------------------------------------------------------------ base operations
    def _params(self, op: etree._Element, name: str) -> dict[str, etree._Element]:
        allowed = _PARAMS[name]
        found: dict[str, etree._Element] = {}
        for child in op:
            if not isinstance(child.tag, str):
                continue
            q = etree.QName(child)
            if q.namespace not in (NC_NS, None) or q.localname not in allowed:
                if q.namespace not in (NC_NS, None) and self.mgmt.yc.module_for_ns(q.namespace) is None:
                    raise MgmtError("unknown-namespace", f"unknown namespace {q.namespace}",
                                    type="protocol",
                                    info={"bad-element": q.localname, "bad-namespace": q.namespace})
                raise MgmtError("unknown-element", f"unknown parameter {q.localname} of {name}",
                                type="protocol", info={"bad-element": q.localname})
            found[q.localname] = child
        return found

    def _datastore(self, parent: etree._Element | None, what: str, op: str) -> str:
        if parent is None:
            raise MgmtError("missing-element", f"{op} needs <{what}>", type="protocol",
                            info={"bad-element": what})
        kids = [c for c in parent if isinstance(c.tag, str)]
        if len(kids) != 1:
            raise MgmtError("missing-element", f"<{what}> needs one datastore", type="protocol",
                            info={"bad-element": what})
        name = etree.QName(kids[0]).localname
        if name not in ("running", "candidate", "startup"):
            raise MgmtError("invalid-value" if name != "url" else "operation-not-supported",
                            f"datastore {name} not supported", type="protocol",
                            info={"bad-element": name})
        return name

    def _inline_config(self, parent: etree._Element) -> ConfigTree | None:
        kids = [c for c in parent if isinstance(c.tag, str)]
        if len(kids) == 1 and etree.QName(kids[0]).localname == "config":
            xml = "".join(etree.tostring(c, encoding="unicode") for c in kids[0] if isinstance(c.tag, str))
            return ConfigTree.parse(self.mgmt.yc, xml, "xml", validate=False)
        return None

    async def _base(self, session: SessionInfo, rpc: etree._Element, op: etree._Element,
                    name: str) -> Outcome:
        if name not in _PARAMS:
            raise MgmtError("operation-not-supported", f"operation {name} is not supported",
                            type="protocol")
        p = self._params(op, name)
        ds = self.mgmt.ds
        sid = session.session_id
        ok = self.reply(rpc, "<ok/>")
        if name in ("get", "get-config"):
            source = self._datastore(p.get("source"), "source", name) if name == "get-config" else "running"
            elems = await self.mgmt.get_xml(source, name == "get", p.get("filter"), session)
            body = "".join(etree.tostring(e, encoding="unicode") for e in elems)
            return Outcome(self.reply(rpc, f"<data>{body}</data>"))
        if name == "edit-config":
            target = self._datastore(p.get("target"), "target", name)
            config = p.get("config")
            if config is None:
                raise MgmtError("missing-element", "edit-config needs <config>", type="protocol",
                                info={"bad-element": "config"})
            default_op = _text(p.get("default-operation"), "merge")
            test_option = _text(p.get("test-option"), "test-then-set")
            error_option = _text(p.get("error-option"), "stop-on-error")
            if test_option not in ("test-then-set", "set", "test-only"):
                raise MgmtError("invalid-value", f"bad test-option {test_option}", type="protocol")
            if error_option not in ("stop-on-error", "continue-on-error", "rollback-on-error"):
                raise MgmtError("invalid-value", f"bad error-option {error_option}", type="protocol")
            await ds.edit_config(sid, target, config, default_op, test_option)
            return Outcome(ok)
        if name == "copy-config":
            target = self._datastore(p.get("target"), "target", name)
            source_elem = p.get("source")
            if source_elem is None:
                raise MgmtError("missing-element", "copy-config needs <source>", type="protocol",
                                info={"bad-element": "source"})
            inline = self._inline_config(source_elem)
            source = inline if inline is not None else self._datastore(source_elem, "source", name)
            try:
                await ds.copy_config(sid, source, target)
            finally:
                if inline is not None:
                    inline.free()
            return Outcome(ok)
        if name == "delete-config":
            await ds.delete_config(sid, self._datastore(p.get("target"), "target", name))
            return Outcome(ok)
        if name == "validate":
            source_elem = p.get("source")
            if source_elem is None:
                raise MgmtError("missing-element", "validate needs <source>", type="protocol",
                                info={"bad-element": "source"})
            inline = self._inline_config(source_elem)
            try:
                ds.validate(inline if inline is not None else self._datastore(source_elem, "source", name))
            finally:
                if inline is not None:
                    inline.free()
            return Outcome(ok)
        if name == "lock":
            ds.lock(sid, self._datastore(p.get("target"), "target", name))
            return Outcome(ok)
        if name == "unlock":
            ds.unlock(sid, self._datastore(p.get("target"), "target", name))
            return Outcome(ok)
        if name == "commit":
            timeout_text = _text(p.get("confirm-timeout"), "600")
            if not _uint32(timeout_text) or int(timeout_text) == 0:
                raise MgmtError("invalid-value", "confirm-timeout must be a positive integer",
                                type="protocol", info={"bad-element": "confirm-timeout"})
            await ds.commit(sid, confirmed="confirmed" in p, timeout=float(timeout_text),
                            persist=_text(p.get("persist"), None) if "persist" in p else None,
                            persist_id=_text(p.get("persist-id"), None))
            return Outcome(ok)
        if name == "cancel-commit":
            await ds.cancel_commit(sid, _text(p.get("persist-id"), None))
            return Outcome(ok)
        if name == "discard-changes":
            ds.discard_changes()
            return Outcome(ok)
        if name == "close-session":
            return Outcome(ok, close=True)
        if name == "kill-session":
            target_text = _text(p.get("session-id"), "")
            if not _uint32(target_text):
                raise MgmtError("missing-element", "kill-session needs <session-id>", type="protocol",
                                info={"bad-element": "session-id"})
            target = int(target_text)
            if target == sid:
                raise MgmtError("invalid-value", "a session cannot kill itself", type="protocol")
            if target not in self.mgmt.sessions:
                raise MgmtError("invalid-value", f"no session {target}", type="protocol")
            return Outcome(ok, kill=target)
        raise MgmtError("operation-not-supported", name, type="protocol")  # pragma: no cover

    # ------------------------------------------------------------ other modules
    def _get_schema(self, op: etree._Element) -> str:
        fields = {etree.QName(c).localname: (c.text or "").strip() for c in op if isinstance(c.tag, str)}
        ident = fields.get("identifier")
        if not ident:
            raise MgmtError("missing-element", "get-schema needs identifier", type="protocol",
                            info={"bad-element": "identifier"})
        if fields.get("format", "yang").split(":")[-1] != "yang":
            raise MgmtError("invalid-value", "only the yang format is available", type="application")
        text = schema_text(self.mgmt.yc, ident, fields.get("version"))
        if text is None:
            raise MgmtError("invalid-value", f"no schema {ident}", type="application")
        return f'<data xmlns="{MON_NS}">{escape(text)}</data>'

    def _subscribe(self, session: SessionInfo, op: etree._Element) -> str:
        fields = {etree.QName(c).localname: (c.text or "").strip() for c in op if isinstance(c.tag, str)}
        stream = fields.get("stream", "NETCONF")
        if stream != "NETCONF":
            raise MgmtError("invalid-value", f"unknown stream {stream}", type="application")
        if "startTime" in fields:
            raise MgmtError("operation-failed", "replay is not supported", type="protocol")
        sink = getattr(session, "notification_sink", None)
        if sink is None:
            raise MgmtError("operation-not-supported", "this transport cannot carry notifications")
        self.mgmt.subscribe(session.session_id, sink)
        return "<ok/>"


def _text(elem: etree._Element | None, default: str | None) -> str:
    if elem is None:
        return default  # type: ignore[return-value]
    return (elem.text or "").strip()
