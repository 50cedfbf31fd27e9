"""NETCONF over SSH (RFC 6242) on the PyPI ``netconf`` package, bound to one address.

Theory of operation: the ``netconf`` package (via ``sshutil``) provides the paramiko SSH
server, the per-connection channel threads and the 1.0/1.1 framing.  We keep those and
replace three things:

* the listening socket: ``sshutil.SSHServer.__init__`` binds ``('::', port)`` itself, so
  :class:`_BoundSSHServer` re-implements that constructor and binds exactly the configured
  host (``IPV6_V6ONLY`` for v6), then reuses the package's accept thread;
* the session: :class:`_Session` installs a size-capped framing transport (an oversized RPC
  is read to its end, discarded and answered with ``too-big``), answers malformed XML with
  ``malformed-message`` instead of dropping the session, serialises writes (notifications
  interleave with replies) and hops every RPC onto the management loop
  (:class:`mgmt.netconf_ops.NetconfOps`);
* authentication: :class:`_Auth` checks passwords and public keys against
  :class:`mgmt.auth.UserDB`;
* the accept loop: the package runs each connection's SSH banner exchange and key exchange
  in its single accept thread, so one idle TCP connection delayed every login by paramiko's
  15 s banner timeout.  :meth:`_BoundSSHServer._accept_socket_thread` only accepts: a
  connection beyond ``max-sessions`` / ``max-sessions-per-address`` (:mod:`mgmt.limits`) is
  closed at once, any other gets a worker thread that runs the SSH handshake and
  authentication under a ``handshake-timeout`` watchdog, then the package's channel loop.

When a session ends for any reason its locks are released on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
import select
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import netconf.base as ncbase
import paramiko
import sshutil.server
from lxml import etree
from netconf.server import NetconfServerSession, NetconfSSHServer

from mgmt.auth import UserDB, load_or_create_host_key
from mgmt.errors import MgmtError
from mgmt.limits import ManagementLimits, limits_from_running, stats_for
from mgmt.manager import Management
from mgmt.monitoring import capabilities
from mgmt.netconf_ops import NetconfOps
from mgmt.yangctx import NC_NS

log = logging.getLogger(__name__)

_MSGID = re.compile(rb"""message-id\s*=\s*(["'])(.{0,200}?)\1""")
_HEAD = 4096
_SSH_LOG = logging.getLogger(__name__ + ".ssh")
_SSH_LOG.setLevel(logging.CRITICAL)
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, remove_blank_text=False)


@dataclass
class NetconfSettings:
    """Where and how the NETCONF server listens."""

    host_key_file: Path
    users: UserDB
    host: str = "127.0.0.1"
    port: int = 830
    max_rpc_size: int = 1 << 20
    debug: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    #: fixed limits; None: ``/dots-agent/management/netconf`` of running, read per connection
    limits: ManagementLimits | None = None


class _Oversized(str):
    """Marker: the message exceeded the limit; the value holds its first bytes."""


class _CappedFraming(ncbase.NetconfFramingTransport):
    def __init__(self, stream: Any, max_chunk: int, debug: bool, limit: int) -> None:
        super().__init__(stream, max_chunk, debug)
        self.limit = limit

    def _receive_11(self) -> str:
        total, parts, head = 0, [], b""
        for chunk in self._iter_receive_chunks():
            total += len(chunk)
            if total <= self.limit:
                parts.append(chunk)
            elif not head:
                head = b"".join(parts)[:_HEAD] + chunk[:_HEAD]
                parts = []
        if total > self.limit:
            return _Oversized(head[:_HEAD].decode("utf-8", "replace") or " ")
        return b"".join(parts).decode("utf-8", "replace")

    def _receive_10(self) -> str:
        head, dropped, searchfrom = b"", False, 0
        while True:
            eom = self.rbuffer.find(b"]]>]]>", searchfrom)
            if eom != -1:
                break
            if len(self.rbuffer) > self.limit:
                if not dropped:
                    head = self.rbuffer[:_HEAD]
                dropped = True
                self.rbuffer = self.rbuffer[-5:]
            searchfrom = max(0, len(self.rbuffer) - 5)
            buf = self.stream.recv(self.max_chunk)
            if not buf:
                raise ncbase.ChannelClosed(self)
            self.rbuffer += buf
        msg, self.rbuffer = self.rbuffer[:eom], self.rbuffer[eom + 6:]
        if dropped or len(msg) > self.limit:
            return _Oversized((head or msg[:_HEAD]).decode("utf-8", "replace") or " ")
        return msg.decode("utf-8", "replace")


class _Methods:
    """What the package's hello code asks for: our capabilities."""

    def __init__(self, caps: list[str]) -> None:
        self.caps = caps

    def nc_append_capabilities(self, elem: etree._Element) -> None:
        for cap in self.caps:
            if cap not in (ncbase.NC_BASE_10, ncbase.NC_BASE_11):
                etree.SubElement(elem, "capability").text = cap


class _Session(NetconfServerSession):
    """One NETCONF session; RPCs are executed on the management loop."""

    def __init__(self, channel: paramiko.Channel, server: _BoundSSHServer, extra: Any, debug: bool) -> None:
        self.server = server
        self.mgmt: Management = server.mgmt
        self._closed = False
        self._send_lock = threading.Lock()
        transport = channel.get_transport()
        peer = transport.getpeername()[0] if transport is not None else ""
        user = (transport.get_username() if transport is not None else None) or "?"
        self.info = self.mgmt.call_from_thread(lambda: _async(self.mgmt.open_session, user, "netconf-ssh",
                                                              peer))
        self.info.notification_sink = self.send_message  # type: ignore[attr-defined]
        self.methods = server.server_methods
        ncbase.NetconfSession.__init__(self, channel, debug, self.info.session_id)
        self.pkt_stream.stream = None  # the replaced transport would close the channel when collected
        self.pkt_stream = _CappedFraming(channel, ncbase.MAXSSHBUF, debug, server.settings.max_rpc_size)
        server.register(self)
        try:
            self._open_session(True)
        except Exception:
            self.close()
            raise

    def __str__(self) -> str:
        return f"NetconfSession({self.info.session_id})"

    def send_message(self, msg: str) -> None:
        with self._send_lock:
            ncbase.NetconfSession.send_message(self, msg)

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        sid = self.info.session_id
        loop = self.mgmt.loop
        if loop is not None and not loop.is_closed():
            asyncio.run_coroutine_threadsafe(self.mgmt.close_session(sid), loop)
        self.server.unregister(sid)
        try:
            ncbase.NetconfSession.close(self)
        except (EOFError, OSError):
            pass

    def _reader_exits(self) -> None:
        self.close()

    def _reader_handle_message(self, msg: str) -> None:
        if not self.session_open:
            return
        ops: NetconfOps = self.server.ops
        if isinstance(msg, _Oversized):
            self.info.counters["in-bad-rpcs"] += 1
            err = MgmtError("too-big", f"rpc larger than {self.server.settings.max_rpc_size} bytes",
                            type="rpc")
            self.send_message(ops.reply(None, ops.error_xml(err), _message_id(msg)))
            return
        try:
            root = etree.fromstring(msg.lstrip().encode("utf-8"), _PARSER)
        except etree.XMLSyntaxError as exc:
            self.info.counters["in-bad-rpcs"] += 1
            err = MgmtError("malformed-message", f"malformed XML: {exc}", type="rpc")
            self.send_message(ops.reply(None, ops.error_xml(err), _message_id(msg)))
            return
        if root.tag != f"{{{NC_NS}}}rpc":
            self.info.counters["in-bad-rpcs"] += 1
            err = MgmtError("malformed-message", f"expected <rpc>, got {root.tag}", type="rpc")
            self.send_message(ops.reply(None, ops.error_xml(err), root.get("message-id")))
            return
        outcome = self.mgmt.call_from_thread(lambda: ops.handle(self.info, root))
        self.send_message(outcome.reply)
        if outcome.kill is not None:
            self.server.kill(outcome.kill)
        if outcome.close:
            self.close()


def _shut(sock: socket.socket) -> None:
    """Close a connection now, waking any thread blocked on it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _message_id(msg: str) -> str | None:
    found = _MSGID.search(msg.encode("utf-8", "replace")[:_HEAD])
    return found.group(2).decode("utf-8", "replace") if found else None


async def _async(fn: Any, *args: Any) -> Any:
    return fn(*args)


class _Auth(paramiko.ServerInterface):
    def __init__(self, users: UserDB) -> None:
        self.users = users

    def get_allowed_auths(self, username: str) -> str:
        return "publickey,password"

    def check_auth_none(self, username: str) -> int:
        return paramiko.AUTH_FAILED

    def check_auth_password(self, username: str, password: str) -> int:
        ok = bool(username and password) and self.users.check_password(username, password)
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return paramiko.AUTH_SUCCESSFUL if self.users.check_key(username, key) else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "session" else \
            paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
        return name == "netconf"


class _ServerSocket(sshutil.server.SSHServerSocket):
    """One SSH connection, set up by its own worker thread (the package does it in the accept thread)."""

    def __init__(self, server: _BoundSSHServer, client: socket.socket, addr: Any,  # noqa: D107
                 timeout: float) -> None:
        self.session_class = server.server_session_class
        self.extra_args = server.extra_args
        self.server = server
        self.client_socket = client
        self.client_addr = addr
        self.debug = server.debug
        self.server_ctl = server.server_ctl
        self.sessions: list[Any] = []
        self.lock = threading.Lock()
        self.running = True
        self.thread = threading.current_thread()
        self.ssh = paramiko.Transport(client)
        self.ssh.banner_timeout = self.ssh.handshake_timeout = self.ssh.auth_timeout = timeout
        # paramiko logs every aborted handshake at ERROR: ours are counted and warned about, rate-limited
        self.ssh.set_log_channel(_SSH_LOG.name)
        self.ssh.add_server_key(server.host_key)

    def handshake(self) -> None:
        """SSH banner and key exchange (authentication follows in paramiko's thread)."""
        self.ssh.start_server(server=self.server_ctl)

    def serve(self) -> None:
        """The package's channel loop, in this worker thread; returns when the connection ends."""
        self._accept_chan_thread()

    def close(self) -> None:
        if self.thread is threading.current_thread():
            self.thread = threading.Thread()  # nothing to join: we are the worker
            self.thread.start()
        super().close()


class _BoundSSHServer(NetconfSSHServer):
    """NetconfSSHServer whose listening socket is bound to the configured host only."""

    def __init__(self, mgmt: Management, settings: NetconfSettings) -> None:  # noqa: D107
        # Attributes NetconfSSHServer / sshutil.SSHServer set up, without their '::' bind.
        self.mgmt = mgmt
        self.settings = settings
        self.ops = NetconfOps(mgmt)
        self.server_methods = _Methods(capabilities(mgmt.yc))
        self.session_id = 1
        self.session_locks_lock = threading.Lock()
        self.session_locks = {"running": 0, "candidate": 0}
        self.server_ctl = _Auth(settings.users)
        self.server_socket_class = sshutil.server.SSHServerSocket
        self.server_session_class = _Session
        self.extra_args = None
        self.debug = settings.debug
        self.host_key = load_or_create_host_key(settings.host_key_file)
        self.lock = threading.Lock()
        self.sockets: list[Any] = []
        self.active: dict[int, _Session] = {}
        self._active_lock = threading.Lock()
        family, _, _, _, addr = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM,
                                                   flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(100)
        self.listen_socket = sock
        self.port = sock.getsockname()[1]
        self.ports = {family: self.port}
        self.close_wsocket, self.close_rsocket = socket.socketpair()
        self.stats = stats_for(mgmt)
        self.handshaking: set[socket.socket] = set()
        self.thread = threading.Thread(None, self._accept_socket_thread, name="NetconfAccept",
                                       args=[sock], daemon=True)
        self.thread.start()

    def limits(self) -> ManagementLimits:
        return limits_from_running(self.mgmt.running_dict(), "netconf", self.settings.limits)

    def _accept_socket_thread(self, proto_sock: socket.socket) -> None:
        """Accept only: the SSH handshake of each connection runs in its own worker."""
        try:
            while True:
                ready, _, _ = select.select([proto_sock, self.close_rsocket], [], [])
                if self.close_rsocket in ready:
                    break
                try:
                    client, addr = proto_sock.accept()
                except OSError:
                    continue
                limits = self.limits()
                if not self.stats.netconf.acquire(addr, limits):
                    client.close()
                    continue
                threading.Thread(target=self._connection, args=(client, addr, limits),
                                 name=f"NetconfConn {addr[0]}", daemon=True).start()
        finally:
            with self.lock:
                sockets = list(self.sockets)
            for server_socket in sockets:
                server_socket.close()
            with self.lock:
                pending = list(self.handshaking)
            for client in pending:
                _shut(client)
            proto_sock.close()
            self.close_rsocket.close()

    def _connection(self, client: socket.socket, addr: Any, limits: ManagementLimits) -> None:
        """Worker: handshake + authentication within the timeout, then the NETCONF channel loop."""
        conn: _ServerSocket | None = None
        with self.lock:
            self.handshaking.add(client)
        timer = threading.Timer(limits.handshake_timeout, self._handshake_expired, args=(client, addr, limits))
        timer.daemon = True
        timer.start()
        try:
            conn = _ServerSocket(self, client, addr, limits.handshake_timeout)
            conn.handshake()
            with self.lock:
                self.sockets.append(conn)
            conn.serve()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            log.debug("NETCONF connection from %s ended during the handshake: %s", addr[0], exc)
        except Exception:
            log.exception("NETCONF connection from %s failed", addr[0])
        finally:
            timer.cancel()
            with self.lock:
                self.handshaking.discard(client)
                if conn is not None and conn in self.sockets:
                    self.sockets.remove(conn)
            if conn is not None and conn.ssh is not None:
                conn.ssh.close()
            _shut(client)
            self.stats.netconf.release(addr)

    def _handshake_expired(self, client: socket.socket, addr: Any, limits: ManagementLimits) -> None:
        with self.lock:
            pending = client in self.handshaking and not any(
                s.client_socket is client and s.ssh is not None and s.ssh.is_authenticated() for s in self.sockets)
        if pending:
            self.stats.timed_out("NETCONF", addr, limits.handshake_timeout)
            try:  # the worker's paramiko thread sees EOF and the worker closes the socket
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def remove_socket(self, serversocket: Any) -> None:
        with self.lock:
            if serversocket in self.sockets:
                self.sockets.remove(serversocket)

    def __del__(self) -> None:  # the package logs an error here
        pass

    def __str__(self) -> str:
        return f"NetconfServer({self.settings.host}:{self.port})"

    def register(self, session: _Session) -> None:
        with self._active_lock:
            self.active[session.info.session_id] = session

    def unregister(self, session_id: int) -> None:
        with self._active_lock:
            self.active.pop(session_id, None)

    def kill(self, session_id: int) -> None:
        with self._active_lock:
            victim = self.active.get(session_id)
        if victim is not None:
            victim.close()

    def shutdown(self) -> None:
        with self._active_lock:
            sessions = list(self.active.values())
        for s in sessions:
            s.close()
        self.close()
        self.join()


class NetconfServer:
    """Handle returned by :meth:`Management.start_netconf`."""

    def __init__(self, mgmt: Management, settings: NetconfSettings) -> None:
        self.mgmt = mgmt
        self.settings = settings
        self._server: _BoundSSHServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.to_thread(_BoundSSHServer, self.mgmt, self.settings)
        log.info("NETCONF listening on %s port %d", self.settings.host, self._server.port)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.port

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        return self._server.listen_socket.getsockname()[:2]

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await asyncio.to_thread(server.shutdown)
