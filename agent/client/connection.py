"""Establishing the signal channel: (D)TLS to the DOTS server, one aiocoap Context per session.

Theory of operation
-------------------
This module is the seam between the DOTS client logic and how the (D)TLS session is chosen.
:class:`Connector` makes a :class:`Connection` -- an aiocoap Context that can send to the
server over one transport and serves the client's own resources (the heartbeats the server
sends, RFC 9132 §4.7) -- and checks that the server answers by sending a Confirmable
``GET /.well-known/dots/config`` (§4.5.1), whose answer the client needs anyway.

``transport="auto"`` tries DTLS first with a short deadline and then TLS.  RFC 9132 §4.3 asks
for Happy Eyeballs between the transports and address families; that will replace
:meth:`Connector.connect` without touching the callers.

TLS/DTLS session resumption across reconnections (SC-012, SC-143): the TLS ``SSLContext``
(which remembers the last session per server name) and the DTLS session cache are kept by the
Connector and handed to every new Context.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiocoap
from aiocoap import error as coap_error
from aiocoap import numbers as coap

from agent.numbers import rfc9132
from agent.protocol.session import TransmissionConfig
from agent.transports import tls
from agent.transports.credentials import Credentials
from agent.transports.dtls import DTLSClientTransport, add_dtls_client
from agent.tuning import tuning

log = logging.getLogger("dots.client")

TRANSPORTS = ("tls", "dtls", "auto")
SCHEMES = {"tls": "coaps+tcp", "dtls": "coaps"}
AUTO_DTLS_TIMEOUT = 3.0  # seconds "auto" gives DTLS before trying TLS


class DotsConnectionError(Exception):
    """The DOTS server could not be reached (no (D)TLS session, or no answer in time)."""


@dataclass
class Connection:
    """One signal channel session: an aiocoap Context bound to one transport."""

    context: aiocoap.Context
    transport: str  # "tls" or "dtls"
    host: str
    port: int
    probe: aiocoap.Message  # the answer to the connect-time GET /config
    probe_rtt: float
    established_at: float = field(default_factory=time.monotonic)
    dtls: DTLSClientTransport | None = None

    @property
    def reliable(self) -> bool:
        return self.transport == "tls"

    @property
    def uri_base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{SCHEMES[self.transport]}://{host}:{self.port}"

    def uri(self, *segments: str) -> str:
        return self.uri_base + "/" + "/".join((*rfc9132.WELL_KNOWN, *segments))

    async def close(self) -> None:
        try:
            await self.context.shutdown()
        except Exception as exc:  # shutting down a broken session must not fail
            log.debug("closing %s session: %s", self.transport, exc)


def parse_server(server: str | tuple[str, int]) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or ``(host, port)``; default port 4646 (SC-001)."""
    if isinstance(server, tuple):
        return server[0], int(server[1])
    text = server.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else rfc9132.DEFAULT_PORT
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port)
    return text, rfc9132.DEFAULT_PORT  # a name, IPv4 address or bare IPv6 address


class Connector:
    """Makes :class:`Connection` objects to one server; keeps (D)TLS sessions for resumption."""

    def __init__(self, host: str, port: int, credentials: Credentials, transport: str = "auto", *,
                 connect_timeout: float = 10.0, auto_dtls_timeout: float = AUTO_DTLS_TIMEOUT) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}")
        self.host, self.port = host, port
        self.credentials = credentials
        self.transport = transport
        self.connect_timeout = connect_timeout
        self.auto_dtls_timeout = auto_dtls_timeout
        self._tls_ssl = tls.client_ssl_context(credentials)
        self._dtls_sessions: dict[Any, Any] = {}
        self.last_transport: str | None = None

    def order(self) -> tuple[str, ...]:
        if self.transport != "auto":
            return (self.transport,)
        # after a success, try the transport that worked first (SC-009: remember outcomes)
        if self.last_transport == "tls":
            return ("tls", "dtls")
        return ("dtls", "tls")

    async def connect(self, site: Any, config: TransmissionConfig) -> Connection:
        """A session over the first transport that answers; raises DotsConnectionError."""
        errors: list[str] = []
        candidates = self.order()
        for name in candidates:
            timeout = self.connect_timeout
            if self.transport == "auto" and name != candidates[-1]:
                timeout = min(timeout, self.auto_dtls_timeout)
            try:
                conn = await self._attempt(name, site, config, timeout)
            except DotsConnectionError as exc:
                errors.append(f"{name}: {exc}")
                continue
            self.last_transport = name
            return conn
        raise DotsConnectionError(f"cannot reach the DOTS server at {self.host}:{self.port} ("
                                  + "; ".join(errors) + ")")

    async def _attempt(self, name: str, site: Any, config: TransmissionConfig, timeout: float) -> Connection:
        context = aiocoap.Context(loop=asyncio.get_running_loop(), serversite=site, loggername="coap-client")
        dtls: DTLSClientTransport | None = None
        try:
            if name == "tls":
                ssl_context = self._tls_ssl

                async def make(tman: Any) -> tls.DotsTLSClient:
                    t = await tls.DotsTLSClient.create_client_transport(tman, context.log, context.loop)
                    t.ssl_context = ssl_context
                    return t

                await tls.append_token_transport(context, make)
            else:
                dtls = await add_dtls_client(context, self.credentials, handshake_timeout=timeout)
                dtls.sessions = self._dtls_sessions  # shared cache: resume on reconnect
            conn = Connection(context, name, self.host, self.port, probe=aiocoap.Message(), probe_rtt=0.0,
                              dtls=dtls)
            msg = aiocoap.Message(code=coap.GET, uri=conn.uri(rfc9132.PATH_CONFIG),
                                  transport_tuning=tuning(config, True))
            started = time.monotonic()
            try:
                response = await asyncio.wait_for(context.request(msg).response, timeout)
            except TimeoutError:
                raise DotsConnectionError(f"no answer within {timeout:.1f} s") from None
            except (coap_error.Error, OSError) as exc:
                raise DotsConnectionError(str(exc) or type(exc).__name__) from None
            conn.probe, conn.probe_rtt = response, time.monotonic() - started
            log.debug("signal channel over %s to %s:%s established (%.0f ms)", name, self.host, self.port,
                     conn.probe_rtt * 1000)
            return conn
        except BaseException:
            try:
                await context.shutdown()
            except Exception:
                pass
            raise
