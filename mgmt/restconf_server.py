"""RESTCONF (RFC 8040) over HTTPS with client certificates, on the same datastores.

Theory of operation: a small HTTP/1.1 server on ``asyncio.start_server`` with an
``ssl.SSLContext`` that requires a client certificate from the *management* trust anchor.  The
certificate becomes a NACM user name only through ``/dots-agent/management/cert-to-name``
(:meth:`Management.certificate_user`); one that maps to no user may read the discovery
resources (host-meta, ``/restconf``, yang-library-version) and gets ``401`` with an
``ietf-restconf:errors`` body (``access-denied``) for everything else, counted in
``authentication-failures``.  Reads are NACM-filtered, writes NACM-checked (``403``).

Resources map to libyang data paths (``client=a`` -> ``client[name='a']``).  Writes go to
``running`` through :meth:`Datastores.change`, so they are validated, reach the
:class:`ConfigSubscriber` s and roll back exactly like NETCONF edits:

* ``PATCH`` (plain merge): body parsed under a skeleton of the target's ancestors, merged;
* ``PUT``: target deleted (if present) then body merged; on ``/restconf/data`` the whole
  configuration is replaced;
* ``POST``: body is a child of the target; ``409 data-exists`` if it is already there;
* ``DELETE``: ``409 data-missing`` if absent.

Only ``application/yang-data+json`` is spoken; errors use the ``ietf-restconf:errors``
layout.  No notifications (no SSE stream) over RESTCONF.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Any

from _libyang import ffi, lib

from mgmt.errors import MgmtError, from_libyang
from mgmt.interfaces import SessionInfo
from mgmt.limits import stats_for
from mgmt.manager import Management
from mgmt.tree import ConfigTree

log = logging.getLogger(__name__)

YANG_JSON = "application/yang-data+json"
YANG_LIBRARY_VERSION = "2019-01-04"
MAX_BODY = 1 << 20
HOST_META = ('<XRD xmlns="http://docs.oasis-open.org/ns/xri/xrd-1.0">'
             '<Link rel="restconf" href="/restconf"/></XRD>')


@dataclass
class RestconfSettings:
    ssl_context: ssl.SSLContext
    host: str = "127.0.0.1"
    port: int = 8443
    max_body: int = MAX_BODY


@dataclass
class _Response:
    status: int
    body: bytes = b""
    content_type: str = YANG_JSON


def _errors(err: MgmtError, status: int | None = None) -> _Response:
    entry: dict[str, Any] = {"error-type": err.type, "error-tag": err.tag, "error-message": err.message}
    if err.path:
        entry["error-path"] = err.path
    if err.app_tag:
        entry["error-app-tag"] = err.app_tag
    doc = {"ietf-restconf:errors": {"error": [entry]}}
    return _Response(status or err.http_status, json.dumps(doc).encode())


class RestconfServer:
    """HTTPS RESTCONF front end of a :class:`Management`."""

    def __init__(self, mgmt: Management, settings: RestconfSettings) -> None:
        self.mgmt = mgmt
        self.settings = settings
        self._server: asyncio.Server | None = None
        self.keys = {k: sorted(v) for k, v in mgmt.list_keys.items()}

    async def start(self) -> None:
        # Plain TCP: mgmt.limits admits each connection (max-sessions, per address) before TLS
        # starts on it within handshake-timeout, and gives the handler time-limited reads.
        from mgmt.limits import restconf_admission

        connected = restconf_admission(self.mgmt, self.settings.ssl_context, self._client)
        self._server = await asyncio.start_server(connected, self.settings.host, self.settings.port)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    # ------------------------------------------------------------ HTTP
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        user = self._identify(writer, peer)
        info = self.mgmt.open_session(user or "", "restconf", str(peer[0]))
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    h = (await reader.readline()).decode("latin-1").strip()
                    if not h:
                        break
                    k, _, v = h.partition(":")
                    headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0") or 0)
                if length > self.settings.max_body:
                    resp = _errors(MgmtError("too-big", "request body too large", type="transport"))
                    await self._send(writer, resp, close=True)
                    break
                body = await reader.readexactly(length) if length else b""
                try:
                    resp = await self.dispatch(info, method, target, headers, body)
                except MgmtError as err:
                    resp = _errors(err)
                except Exception as exc:  # noqa: BLE001
                    log.exception("RESTCONF request failed")
                    resp = _errors(MgmtError("operation-failed", str(exc)))
                close = headers.get("connection", "").lower() == "close"
                await self._send(writer, resp, close)
                if close:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, ssl.SSLError):
            pass
        finally:
            await self.mgmt.close_session(info.session_id)
            writer.close()

    def _identify(self, writer: asyncio.StreamWriter, peer: Any) -> str | None:
        """NACM user of the client certificate (cert-to-name), or None (counted, logged)."""
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        user = self.mgmt.certificate_user(der)
        if user is None:
            stats_for(self.mgmt).count("authentication_failures")
            log.warning("RESTCONF: the client certificate from %s maps to no user: add it to "
                        "/dots-agent/management/cert-to-name to grant access", peer[0])
        return user

    async def _send(self, writer: asyncio.StreamWriter, resp: _Response, close: bool) -> None:
        reason = {200: "OK", 201: "Created", 204: "No Content", 401: "Unauthorized",
                  403: "Forbidden"}.get(resp.status, "Error")
        head = [f"HTTP/1.1 {resp.status} {reason}", f"Content-Length: {len(resp.body)}"]
        if resp.body:
            head.append(f"Content-Type: {resp.content_type}")
        if close:
            head.append("Connection: close")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + resp.body)
        await writer.drain()

    # ------------------------------------------------------------ routing
    async def dispatch(self, info: SessionInfo, method: str, target: str, headers: dict[str, str],
                       body: bytes) -> _Response:
        url = urllib.parse.urlsplit(target)
        path = url.path.rstrip("/") or "/"
        query = urllib.parse.parse_qs(url.query)
        if path == "/.well-known/host-meta" and method == "GET":
            return _Response(200, HOST_META.encode(), "application/xrd+xml")
        if path == "/restconf" and method == "GET":
            doc = {"ietf-restconf:restconf": {"data": {}, "operations": {},
                                              "yang-library-version": YANG_LIBRARY_VERSION}}
            return _Response(200, json.dumps(doc).encode())
        if path == "/restconf/yang-library-version" and method == "GET":
            doc = {"ietf-restconf:yang-library-version": YANG_LIBRARY_VERSION}
            return _Response(200, json.dumps(doc).encode())
        if path == "/restconf/data" or path.startswith("/restconf/data/"):
            if not info.username:
                return _errors(MgmtError("access-denied", "the client certificate maps to no user",
                                         type="protocol"), status=401)
            data_path = self.to_data_path(path[len("/restconf/data"):])
            if method in ("GET", "HEAD"):
                return await self._get(info, data_path, query.get("content", ["all"])[0])
            if method in ("PUT", "PATCH", "POST") and \
                    headers.get("content-type", YANG_JSON).split(";")[0].strip() not in (YANG_JSON,
                                                                                      "application/json"):
                return _Response(415, b"")
            return await self._write(info, method, data_path, body)
        raise MgmtError("invalid-value", f"no resource {path}", type="protocol") if method == "GET" \
            else MgmtError("operation-not-supported", f"{method} {path}", type="protocol")

    def to_data_path(self, uri_path: str) -> str:
        """``/m:a/b/list=k1,k2`` -> ``/m:a/b/list[key1='k1'][key2='k2']``."""
        out = ""
        for segment in [s for s in uri_path.split("/") if s]:
            name, eq, keys = segment.partition("=")
            name = urllib.parse.unquote(name)
            out += f"/{name}"
            if eq:
                local = name.split(":")[-1]
                key_names = self.keys.get(local)
                values = [urllib.parse.unquote(v) for v in keys.split(",")]
                if key_names is None:  # leaf-list
                    out += f"[.='{values[0]}']"
                    continue
                if len(values) != len(key_names):
                    raise MgmtError("invalid-value", f"wrong number of keys for {local}", type="protocol")
                out += "".join(f"[{k}='{v}']" for k, v in zip(key_names, values, strict=True))
        return out

    async def _get(self, info: SessionInfo, data_path: str, content: str) -> _Response:
        tree = await self.mgmt.get_tree("running", with_state=content != "config", session=info)
        try:
            if not data_path:
                return _Response(200, tree.to_json().encode())
            node = tree.find(data_path)
            if node is None:
                raise MgmtError("invalid-value", "no such resource", type="protocol", path=data_path)
            out = ffi.new("char **")
            lib.lyd_print_mem(out, node, lib.LYD_JSON, 0)
            text = ffi.string(out[0]).decode()
            lib.free(out[0])
            return _Response(200, text.encode())
        finally:
            tree.free()

    async def _write(self, info: SessionInfo, method: str, data_path: str, body: bytes) -> _Response:
        ds = self.mgmt.ds
        created = {"flag": False}
        yc = self.mgmt.yc

        def mutate(work: ConfigTree) -> None:
            if method == "DELETE":
                node = work.find(data_path) if data_path else work.root
                if node is None:
                    raise MgmtError("data-missing", "resource does not exist", path=data_path or "/")
                if not data_path:
                    work.free()
                else:
                    work.delete(node)
                return
            parent = data_path if method == "POST" else data_path.rsplit("/", 1)[0] if data_path else ""
            if data_path and method != "POST" and data_path.count("/") == 1:
                parent = ""
            incoming, new_path = _parse_body(yc, body, parent)
            try:
                if method == "PUT" and not data_path:
                    work.free()
                    existing = None
                else:
                    target = data_path if method != "POST" else new_path
                    existing = work.find(target) if target else None
                    if method == "PUT" and data_path and new_path != data_path:
                        raise MgmtError("invalid-value", "body does not match the target resource",
                                        type="protocol", path=data_path)
                if method == "POST" and existing is not None:
                    raise MgmtError("data-exists", "resource already exists", path=new_path)
                if method == "PUT" and existing is not None:
                    work.delete(existing)
                created["flag"] = existing is None and method in ("PUT", "POST")
                work.merge_from(incoming)
            finally:
                incoming.free()

        await ds.change(info.session_id, "running", mutate)
        return _Response(201 if created["flag"] else 204)


def _parse_body(yc: Any, body: bytes, parent_path: str) -> tuple[ConfigTree, str]:
    """Body JSON under a skeleton of *parent_path*; returns the tree and the new node's path."""
    if not body.strip():
        raise MgmtError("malformed-message", "empty body", type="protocol")
    try:
        json.loads(body)
    except ValueError as exc:
        raise MgmtError("malformed-message", f"body is not JSON: {exc}", type="protocol") from exc
    if not parent_path:
        tree = ConfigTree.parse(yc, body, "json", validate=False)
        top = tree.root
        path = ""
        if top is not None:
            p = lib.lyd_path(top, lib.LYD_PATH_STD, ffi.NULL, 0)
            path = ffi.string(p).decode()
            lib.free(p)
        return tree, path
    tree = ConfigTree.empty(yc)
    parent = tree.create(parent_path, None)
    before = set()
    child = lib.lyd_child(parent)
    while child:
        before.add(int(ffi.cast("uintptr_t", child)))
        child = child.next
    yc.clear_errors()
    buf = ffi.new("char[]", body)
    inp = ffi.new("struct ly_in **")
    lib.ly_in_new_memory(buf, inp)
    ret = lib.lyd_parse_data(yc.ctx.cdata, parent, inp[0], lib.LYD_JSON,
                             lib.LYD_PARSE_STRICT | lib.LYD_PARSE_NO_STATE | lib.LYD_PARSE_ONLY, 0,
                             ffi.NULL)
    lib.ly_in_free(inp[0], 0)
    if ret != lib.LY_SUCCESS:
        tree.free()
        raise from_libyang(yc.errors(), "invalid body")
    child = lib.lyd_child(parent)
    new_path = parent_path
    while child:
        if int(ffi.cast("uintptr_t", child)) not in before:
            p = lib.lyd_path(child, lib.LYD_PATH_STD, ffi.NULL, 0)
            new_path = ffi.string(p).decode()
            lib.free(p)
            break
        child = child.next
    return tree, new_path
