"""The management plane an agent embeds: datastores + protocol servers + seams.

Theory of operation: :class:`Management` is created by the agent on its asyncio loop, wired
to the agent through :mod:`mgmt.interfaces` (subscribers, a state provider, RPC handlers) and
started with :meth:`start_netconf` / :meth:`start_restconf`.  Protocol front ends never touch
libyang directly: they call the coroutines here (NETCONF session threads hop onto the loop with
:meth:`call_from_thread`), so every datastore operation runs on one thread.  ``get`` merges a
copy of running with the provider's state and with ietf-netconf-monitoring / ietf-yang-library
data produced here, then filters.  :meth:`notify` validates an event against the module
(``lyd_parse_op`` as a YANG notification) and hands it to every subscribed session.

Access control is NACM (RFC 8341, :mod:`mgmt.access`): ``ietf-netconf-acm`` is implemented in
the context, ``/nacm`` lives in running, and when running has none the *administrators* given
here (the bootstrap users) get :func:`mgmt.nacm.default_nacm` (only they may write; see
docs/nacm.md for a read-only operator group).  Reads given a session are filtered, writes go
through the datastore's guard, notifications are filtered per session.  RESTCONF client
certificates become NACM users through ``/dots-agent/management/cert-to-name``
(:meth:`certificate_user`); *admin_certificates* (SHA-256 fingerprints) are mapped to the first
administrator when running has no ``cert-to-name`` entry at all.

Typical embedding::

    mgmt = Management(startup_file=Path("/var/lib/dots/startup.json"), initial_config=cfg)
    mgmt.add_subscriber(agent_config_applier)
    mgmt.set_state_provider(agent_state)
    mgmt.register_rpc("approve-mitigation", agent.approve)
    await mgmt.start_netconf(NetconfSettings(host="::1", port=8300, host_key_file=..., users=...))
    await mgmt.start_restconf(RestconfSettings(host="::1", port=8443, ssl_context=ctx))
    ...
    await mgmt.notify({"dots-agent:mitigation-status-change": {...}})
    await mgmt.close()
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import libyang
from _libyang import ffi, lib
from lxml import etree

from mgmt.access import AccessControl
from mgmt.auth import certificate_user
from mgmt.datastore import Datastores
from mgmt.errors import MgmtError, from_libyang
from mgmt.filters import SubtreeFilter, list_keys_of, xpath_select
from mgmt.interfaces import ConfigSubscriber, JsonTree, RpcHandler, SessionInfo, StateProvider
from mgmt.limits import statistics_state
from mgmt.monitoring import monitoring_state
from mgmt.nacm import NACM_TOP, default_nacm
from mgmt.tree import ConfigTree
from mgmt.yangctx import AGENT_MODULE, YangContext

log = logging.getLogger(__name__)
T = TypeVar("T")
NotificationSink = Callable[[str], None]


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Management:
    """Datastores, seams and protocol servers of one agent process."""

    def __init__(self, startup_file: Path | None = None, initial_config: JsonTree | None = None,
                 state_provider: StateProvider | None = None,
                 subscribers: tuple[ConfigSubscriber, ...] = (),
                 search_path: list[Path] | None = None, administrators: Sequence[str] = (),
                 admin_certificates: Sequence[str] = ()) -> None:
        self.yc = YangContext(search_path)
        self.ds = Datastores(self.yc, startup_file, initial_config)
        self.ds.subscribers.extend(subscribers)
        self.access = AccessControl(self, administrators)
        self.ds.guard = self.access
        self.ds.seed_running(lambda doc: _seed(doc, tuple(administrators), tuple(admin_certificates)))
        self.state_provider = state_provider
        self.rpc_handlers: dict[str, RpcHandler] = {}
        self.sessions: dict[int, SessionInfo] = {}
        self.notification_sinks: dict[int, NotificationSink] = {}
        self._ids = itertools.count(1)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.servers: list[Any] = []
        self.list_keys = list_keys_of(self.yc, AGENT_MODULE)
        self.started = now_iso()

    # ------------------------------------------------------------ seams
    def add_subscriber(self, subscriber: ConfigSubscriber) -> None:
        self.ds.subscribers.append(subscriber)

    def set_state_provider(self, provider: StateProvider | None) -> None:
        self.state_provider = provider

    def register_rpc(self, name: str, handler: RpcHandler) -> None:
        """Handler for an RPC of dots-agent (e.g. ``approve-mitigation``)."""
        self.rpc_handlers[name] = handler

    def running_dict(self) -> JsonTree:
        """The current running configuration as RFC 7951 JSON (callable from any thread)."""
        return self.ds.running_snapshot

    # ------------------------------------------------------------ threads
    def bind_loop(self) -> asyncio.AbstractEventLoop:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        return self.loop

    def call_from_thread(self, factory: Callable[[], Awaitable[T]], timeout: float = 120.0) -> T:
        """Run a coroutine on the management loop from a protocol thread and wait for it."""
        assert self.loop is not None, "Management not started"

        async def runner() -> T:
            return await factory()

        fut: Future[T] = asyncio.run_coroutine_threadsafe(runner(), self.loop)
        return fut.result(timeout)

    # ------------------------------------------------------------ sessions
    def open_session(self, username: str, transport: str, source_host: str) -> SessionInfo:
        info = SessionInfo(next(self._ids), username, transport, source_host, now_iso())
        self.sessions[info.session_id] = info
        return info

    async def close_session(self, session_id: int) -> None:
        self.sessions.pop(session_id, None)
        self.notification_sinks.pop(session_id, None)
        await self.ds.session_closed(session_id)

    # ------------------------------------------------------------ reads
    async def state_tree(self) -> ConfigTree:
        """Operational state from the agent, parsed (not validated: it is the agent's view)."""
        if self.state_provider is None:
            return ConfigTree.empty(self.yc)
        data = await self.state_provider.state()
        if not data:
            return ConfigTree.empty(self.yc)
        try:
            return ConfigTree.parse(self.yc, json.dumps(data), "json", validate=False, state=True)
        except MgmtError as exc:
            raise MgmtError("operation-failed", f"agent state is invalid: {exc.message}",
                            path=exc.path) from exc

    async def get_tree(self, source: str = "running", with_state: bool = False,
                       session: SessionInfo | None = None) -> ConfigTree:
        """A copy of *source*, plus state and monitoring data when *with_state*; what the NACM
        user of *session* may not read is removed (no session: everything)."""
        tree = self.ds.tree(source).copy()
        if with_state:
            state = await self.state_tree()
            tree.merge_from(state)
            state.free()
            mon = ConfigTree.parse(self.yc, json.dumps({**monitoring_state(self), **statistics_state(self),
                                                        **self.access.state()}), "json",
                                   validate=False, state=True)
            tree.merge_from(mon)
            mon.free()
            ylib = self.yc.yang_library()
            tree.merge_from(ConfigTree(self.yc, ylib.cdata))
            ylib.free()
        if session is not None:
            self.access.filter(session, tree)
        return tree

    async def get_xml(self, source: str, with_state: bool, flt: etree._Element | None,
                      session: SessionInfo | None = None) -> list[etree._Element]:
        """get / get-config result as XML elements (children of ``<data>``), NACM-filtered."""
        tree = await self.get_tree(source, with_state, session)
        try:
            if flt is not None and flt.get("type") == "xpath":
                select = flt.get("select")
                if not select:
                    raise MgmtError("missing-attribute", "xpath filter without select", type="protocol",
                                    info={"bad-attribute": "select", "bad-element": "filter"})
                sub = xpath_select(self.yc, tree, select, dict(flt.nsmap))
                tree.free()
                tree = sub
            xml = tree.to_xml()
        finally:
            tree.free()
        roots = list(etree.fromstring(f"<d>{xml}</d>")) if xml else []
        if flt is not None and flt.get("type", "subtree") == "subtree":
            roots = SubtreeFilter(self.list_keys).apply(roots, flt)
        return roots

    # ------------------------------------------------------------ RPCs of our module
    async def call_rpc(self, rpc_xml: str, session: SessionInfo) -> str | None:
        """Validate a YANG RPC of dots-agent, run its handler; returns output children as XML."""
        self.yc.clear_errors()
        try:
            op = self.yc.ctx.parse_op_mem("xml", rpc_xml, dtype=libyang.DataType.RPC_YANG)
        except libyang.LibyangError as exc:
            raise from_libyang(self.yc.errors(), str(exc)) from exc
        try:
            name = op.name()
            handler = self.rpc_handlers.get(name)
            if handler is None:
                raise MgmtError("operation-not-supported", f"RPC {name} has no handler",
                                type="protocol")
            dep = await self.get_tree("running", with_state=True)
            try:
                ret = lib.lyd_validate_op(op.cdata, dep.root if dep.root is not None else ffi.NULL,
                                          lib.LYD_TYPE_RPC_YANG, ffi.NULL)
                if ret != lib.LY_SUCCESS:
                    raise from_libyang(self.yc.errors(), "invalid RPC input")
            finally:
                dep.free()
            rpc_input = json.loads(op.print_mem("json", with_siblings=True))
        finally:
            op.free()
        output = await handler(rpc_input, session)
        if not output:
            return None
        return _output_xml(self.yc, name, output)

    # ------------------------------------------------------------ notifications
    def subscribe(self, session_id: int, sink: NotificationSink) -> None:
        if session_id in self.notification_sinks:
            raise MgmtError("in-use", "subscription already active", type="protocol")
        self.notification_sinks[session_id] = sink

    async def notify(self, event: JsonTree | str) -> int:
        """Validate and send an RFC 5277 notification to every subscribed session; returns count."""
        text = json.dumps(event) if isinstance(event, dict) else event
        fmt = "xml" if text.lstrip().startswith("<") else "json"
        self.yc.clear_errors()
        try:
            notif = self.yc.ctx.parse_op_mem(fmt, text, dtype=libyang.DataType.NOTIF_YANG)
        except libyang.LibyangError as exc:
            raise from_libyang(self.yc.errors(), str(exc)) from exc
        try:
            body = notif.print_mem("xml", with_siblings=True)
            module, name = notif.module().name(), notif.name()
        finally:
            notif.free()
        message = ('<notification xmlns="urn:ietf:params:xml:ns:netconf:notification:1.0">'
                   f"<eventTime>{now_iso()}</eventTime>{body}</notification>")
        sent = 0
        for sid, sink in list(self.notification_sinks.items()):
            info = self.sessions.get(sid)
            if info is not None and not self.access.notification_allowed(info, module, name):
                continue
            try:
                sink(message)
                sent += 1
                if sid in self.sessions:
                    self.sessions[sid].counters["out-notifications"] += 1
            except Exception:
                log.exception("dropping notification sink of session %s", sid)
                self.notification_sinks.pop(sid, None)
        return sent

    # ------------------------------------------------------------ identities
    def certificate_user(self, der: bytes | None) -> str | None:
        """NACM user name of a RESTCONF client certificate (``cert-to-name``), or None."""
        return certificate_user(self.ds.running_snapshot, der) if der else None

    # ------------------------------------------------------------ servers
    async def start_netconf(self, settings: Any) -> Any:
        from mgmt.netconf_server import NetconfServer

        self.bind_loop()
        server = NetconfServer(self, settings)
        await server.start()
        self.servers.append(server)
        return server

    async def start_restconf(self, settings: Any) -> Any:
        from mgmt.restconf_server import RestconfServer

        self.bind_loop()
        server = RestconfServer(self, settings)
        await server.start()
        self.servers.append(server)
        return server

    async def close(self) -> None:
        for server in reversed(self.servers):
            await server.stop()
        self.servers.clear()
        self.ds.close()


def _seed(doc: JsonTree, administrators: tuple[str, ...], admin_certificates: tuple[str, ...]) -> bool:
    """Add the default ``/nacm`` and the administrators' ``cert-to-name`` when running has none."""
    changed = False
    if administrators and NACM_TOP not in doc:
        doc.update(default_nacm(administrators))
        log.info("running has no /nacm: installed the default (only %s may write)", ", ".join(administrators))
        changed = True
    if administrators and admin_certificates:
        mgmt = doc.setdefault(f"{AGENT_MODULE}:{AGENT_MODULE}", {}).setdefault("management", {})
        if not mgmt.get("cert-to-name"):
            mgmt["cert-to-name"] = [{"id": i, "fingerprint": fp, "name": administrators[0]}
                                    for i, fp in enumerate(admin_certificates, start=1)]
            changed = True
    return changed


def _output_xml(yc: YangContext, rpc_name: str, output: JsonTree) -> str:
    """RPC output JSON -> XML children of rpc-reply (validated as a reply)."""
    body = {f"{AGENT_MODULE}:{rpc_name}": output}
    try:
        reply = yc.ctx.parse_op_mem("json", json.dumps(body), dtype=libyang.DataType.REPLY_YANG)
    except libyang.LibyangError as exc:
        raise from_libyang(yc.errors(), f"invalid RPC output: {exc}") from exc
    try:
        xml = reply.print_mem("xml", with_siblings=True)
    finally:
        reply.free()
    root = etree.fromstring(xml)
    return "".join(etree.tostring(c, encoding="unicode") for c in root)
