"""Limits of the management listeners (NETCONF over SSH, RESTCONF over HTTPS) and their counters.

Theory of operation: each listener has a :class:`SessionGate` (connections at once, in total
and per source address; thread-safe, NETCONF runs in threads).  A connection is admitted by
the gate *before* anything is spent on it (no SSH banner, no TLS state); beyond a limit it is
closed at once and counted in ``sessions-refused``.  The SSH or TLS handshake and the
authentication then run off the accept path (a worker thread per NETCONF connection, a task
per RESTCONF connection), within ``handshake-timeout``; a connection that has not finished by
then is closed and counted in ``handshakes-timed-out``.

The limits are ``/dots-agent/management/{netconf,restconf}`` leaves of the ``management-limits``
grouping.  They are read from the running datastore for every new connection, so a change
applies to new connections only.  :func:`statistics_state` renders
``/dots-agent/management/statistics`` for ``<get>`` (merged by :meth:`Management.get_tree`).
A limit that bites logs one WARNING per kind and per :data:`WARN_EVERY` seconds.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

ROOT = "dots-agent:dots-agent"
WARN_EVERY = 10.0
READ_TIMEOUT = 60.0
"""Seconds a RESTCONF connection may stay silent while a request (or the next one) is expected."""


@dataclass(frozen=True)
class ManagementLimits:
    """``management-limits`` (defaults are the YANG defaults)."""

    max_sessions: int = 16
    max_sessions_per_address: int = 8
    handshake_timeout: float = 10.0


def limits_from_running(running: dict[str, Any] | None, protocol: str,
                        override: ManagementLimits | None = None) -> ManagementLimits:
    """The limits of ``/dots-agent/management/<protocol>`` in *running*; *override* wins when given."""
    if override is not None:
        return override
    node = (((running or {}).get(ROOT) or {}).get("management") or {}).get(protocol) or {}
    base = ManagementLimits()
    return ManagementLimits(
        max_sessions=int(node.get("max-sessions", base.max_sessions)),
        max_sessions_per_address=int(node.get("max-sessions-per-address", base.max_sessions_per_address)),
        handshake_timeout=float(node.get("handshake-timeout", base.handshake_timeout)))


class RateLimitedWarning:
    """At most one WARNING per ``kind`` every ``every`` seconds, with the count since the last."""

    def __init__(self, every: float = WARN_EVERY) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, kind: str, fmt: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.every:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return
            self._last[kind] = now
            more = self._suppressed.pop(kind, 0)
        log.warning(fmt + (f" ({more} more since the last warning)" if more else ""), *args)


def _address(addr: Any) -> str:
    """What per-address limits count: the IPv4 address, or the IPv6 /64 (as the signal channel's
    ``agent.transports.limits.address_key``; mgmt does not import the agent, hence the twin)."""
    host = str(addr[0] if isinstance(addr, tuple | list) else addr)
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        if not ip.is_loopback:
            return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class ManagementStats:
    """Counters of ``/dots-agent/management/statistics`` (one per Management)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sessions_refused = 0
        self.handshakes_timed_out = 0
        self.authentication_failures = 0  # incremented by the authentication code
        self.warn = RateLimitedWarning()
        self.netconf = SessionGate("NETCONF", self)
        self.restconf = SessionGate("RESTCONF", self)

    def count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def timed_out(self, protocol: str, peer: Any, seconds: float) -> None:
        self.count("handshakes_timed_out")
        self.warn(f"{protocol}-timeout", "%s: connection from %s did not complete its handshake and "
                  "authentication in %g s: closed", protocol, _address(peer), seconds)

    def to_yang(self) -> dict[str, Any]:
        return {"netconf-sessions": self.netconf.count, "restconf-connections": self.restconf.count,
                "sessions-refused": str(self.sessions_refused),
                "handshakes-timed-out": str(self.handshakes_timed_out),
                "authentication-failures": str(self.authentication_failures)}


class SessionGate:
    """Connections at once of one listener, in total and per source address."""

    def __init__(self, protocol: str, stats: ManagementStats) -> None:
        self.protocol = protocol
        self.stats = stats
        self._lock = threading.Lock()
        self._by_address: dict[str, int] = {}
        self.count = 0

    def acquire(self, peer: Any, limits: ManagementLimits) -> bool:
        """Admit a new connection from *peer*; False (counted, warned): close it at once."""
        key = _address(peer)
        with self._lock:
            if self.count >= limits.max_sessions:
                reason = f"{limits.max_sessions} sessions (max-sessions)"
            elif self._by_address.get(key, 0) >= limits.max_sessions_per_address:
                reason = f"{limits.max_sessions_per_address} sessions from {key} (max-sessions-per-address)"
            else:
                self.count += 1
                self._by_address[key] = self._by_address.get(key, 0) + 1
                return True
        self.stats.count("sessions_refused")
        self.stats.warn(f"{self.protocol}-refused", "%s: %s: refusing a connection from %s",
                        self.protocol, reason, key)
        return False

    def release(self, peer: Any) -> None:
        key = _address(peer)
        with self._lock:
            self.count = max(0, self.count - 1)
            left = self._by_address.get(key, 0) - 1
            if left > 0:
                self._by_address[key] = left
            else:
                self._by_address.pop(key, None)


_STATS: weakref.WeakKeyDictionary[Any, ManagementStats] = weakref.WeakKeyDictionary()
_STATS_LOCK = threading.Lock()


def stats_for(mgmt: Any) -> ManagementStats:
    """The counters of one Management (created on first use)."""
    with _STATS_LOCK:
        stats = _STATS.get(mgmt)
        if stats is None:
            stats = _STATS[mgmt] = ManagementStats()
        return stats


def statistics_state(mgmt: Any) -> dict[str, Any]:
    """``/dots-agent/management/statistics`` as RFC 7951 JSON (empty before any listener ran)."""
    with _STATS_LOCK:
        stats = _STATS.get(mgmt)
    if stats is None:
        return {}
    return {ROOT: {"management": {"statistics": stats.to_yang()}}}


# ------------------------------------------------------------------ RESTCONF connections


class ReadTimeout(ConnectionError):
    """Nothing (or not enough) arrived within the read timeout: the connection is dropped."""


class TimedReader:
    """A StreamReader whose reads fail with :class:`ReadTimeout` after ``timeout`` seconds."""

    def __init__(self, reader: asyncio.StreamReader, timeout: float) -> None:
        self._reader = reader
        self.timeout = timeout

    async def _timed(self, op: Awaitable[bytes]) -> bytes:
        try:
            return await asyncio.wait_for(op, self.timeout)
        except TimeoutError:
            raise ReadTimeout(f"nothing read for {self.timeout:g} s") from None

    async def readline(self) -> bytes:
        return await self._timed(self._reader.readline())

    async def readexactly(self, n: int) -> bytes:
        return await self._timed(self._reader.readexactly(n))

    async def read(self, n: int = -1) -> bytes:
        return await self._timed(self._reader.read(n))

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        return await self._timed(self._reader.readuntil(separator))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


Handler = Callable[[Any, asyncio.StreamWriter], Awaitable[None]]


def restconf_admission(mgmt: Any, ssl_context: ssl.SSLContext, handler: Handler, *,
                       limits: ManagementLimits | None = None, read_timeout: float | None = None
                       ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """The ``client_connected_cb`` of a plain-TCP ``asyncio.start_server`` serving *handler* over TLS.

    The gate admits the connection first, then TLS is started on it (``StreamWriter.start_tls``)
    within ``handshake-timeout``; the handler gets a reader whose reads time out after
    *read_timeout* (default :data:`READ_TIMEOUT`) seconds.
    """
    stats = stats_for(mgmt)
    gate = stats.restconf
    timeout = READ_TIMEOUT if read_timeout is None else read_timeout

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        current = limits_from_running(mgmt.running_dict(), "restconf", limits)
        if not gate.acquire(peer, current):
            writer.transport.abort()
            return
        try:
            try:
                await writer.start_tls(ssl_context, ssl_handshake_timeout=current.handshake_timeout)
            except (ConnectionError, TimeoutError) as exc:
                if "taking longer" in str(exc) or isinstance(exc, TimeoutError):
                    stats.timed_out("RESTCONF", peer, current.handshake_timeout)
                writer.transport.abort()
                return
            except (ssl.SSLError, OSError):
                writer.transport.abort()
                return
            try:
                await handler(TimedReader(reader, timeout), writer)
            except (ConnectionError, TimeoutError, OSError):
                writer.transport.abort()
        finally:
            gate.release(peer)

    return connected
