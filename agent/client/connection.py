"""Establishing the signal channel: Happy Eyeballs over (D)TLS, one aiocoap Context per session.

Theory of operation
-------------------
This module is the seam between the DOTS client logic and how the (D)TLS session is chosen.
:class:`Connector` makes a :class:`Connection` -- an aiocoap Context that can send to the
server over one transport and serves the client's own resources (the heartbeats the server
sends, RFC 9132 §4.7) -- and checks that the server answers by sending a Confirmable
``GET /.well-known/dots/config`` (§4.5.1), whose answer the client needs anyway.  A
connection attempt "completes" when that answer arrives (whatever its code: a 5.03 carrying
a redirection, §4.6, is handed to the caller like a 2.05).

**Happy Eyeballs (§4.3, RFC 8305).**  A server is one or more *endpoints* (a name or an IP
address, and a port).  Names are resolved (A and AAAA) unless the addresses are given (e.g.
the ``alt-server-record`` of a redirection, used without DNS).  Every address is combined
with every allowed transport into :class:`Candidate` paths ordered as §4.3 prescribes --
UDP/IPv6, UDP/IPv4, TCP/IPv6, TCP/IPv4 (several addresses of a family are interleaved with
the other family, RFC 8305 §4).  Attempts start one "Connection Attempt Delay" apart (100 ms
when an attack is being mitigated, SC-011; 250 ms, RFC 8305's recommended value, otherwise),
the next one starts at once when an attempt fails, the first attempt that completes wins and
every other attempt is cancelled (its Context shut down).

**Outcome cache (SC-009).**  Every attempt's outcome is remembered for
:data:`HE_CACHE_TTL` (10 min, §4.3's example).  While the cache is fresh the winning path is
tried first and paths that failed are tried last, so reconnecting shortly after a race does
not thrash the network; an expired cache runs the full race again.

**Re-probing (SC-010).**  :meth:`Connector.better_candidates` lists the paths §4.3 prefers to
the one in use (e.g. DTLS while TLS is in use because UDP was blocked); the client probes
them in idle time, no more often than every 5 minutes (``DotsClient(probe_interval=...)``).

**Session reuse (SC-012, SC-143).**  The TLS ``SSLContext`` (which remembers the last session
per server name) and the DTLS session cache are kept by the Connector and handed to every new
Context, so a reconnection resumes the (D)TLS session when the server allows it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import aiocoap
from aiocoap import error as coap_error
from aiocoap import numbers as coap

from agent.client.diagnose import certificate_problem, reset_hint
from agent.numbers import rfc9132
from agent.protocol.session import TransmissionConfig
from agent.transports import tls
from agent.transports.credentials import Credentials
from agent.transports.dtls import DTLSClientTransport, add_dtls_client
from agent.tuning import tuning

log = logging.getLogger("dots.client")

TRANSPORTS = ("tls", "dtls", "auto")
SCHEMES = {"tls": "coaps+tcp", "dtls": "coaps"}
AUTO_DTLS_TIMEOUT = 3.0  # kept for API compatibility (the race replaced the sequential fallback)
ATTEMPT_DELAY = 0.250  # RFC 8305 §5: recommended Connection Attempt Delay outside an attack
HE_CACHE_TTL = 600.0  # §4.3: outcomes are flushed after "a few minutes (e.g., 10 min)"
PREFERENCE = (("dtls", 6), ("dtls", 4), ("tls", 6), ("tls", 4))  # §4.3, most preferred first

Endpoint = tuple[str, int]


@dataclass(frozen=True)
class Candidate:
    """One path to a server: transport, IP address (literal) and port."""

    transport: str  # "dtls" or "tls"
    address: str
    port: int

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4

    @property
    def rank(self) -> int:
        """Position in the §4.3 preference order (0 = most preferred)."""
        return PREFERENCE.index((self.transport, self.family))

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.family == 6 else self.address
        return f"{self.transport}/v{self.family} {host}:{self.port}"


@dataclass
class Outcome:
    """The cached result of one connection attempt (SC-009)."""

    ok: bool
    at: float  # time.monotonic()
    seconds: float  # how long the attempt took (until success or failure)
    error: str = ""


class DotsConnectionError(Exception):
    """The DOTS server could not be reached (no (D)TLS session, or no answer in time)."""


class DotsCertificateError(DotsConnectionError):
    """Every path failed, and at least one because a certificate was refused (ours or the
    server's): a file or a name needs fixing, retrying will not help."""


@dataclass
class Connection:
    """One signal channel session: an aiocoap Context bound to one transport and address."""

    context: aiocoap.Context
    transport: str  # "tls" or "dtls"
    host: str  # the IP address (literal) the session runs to
    port: int
    probe: aiocoap.Message  # the answer to the connect-time GET /config
    probe_rtt: float
    established_at: float = field(default_factory=time.monotonic)
    dtls: DTLSClientTransport | None = None
    server_name: str | None = None  # the name the server was known by (None: an address)

    @property
    def reliable(self) -> bool:
        return self.transport == "tls"

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.transport, self.host, self.port)

    @property
    def uri_base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{SCHEMES[self.transport]}://{host}:{self.port}"

    def uri(self, *segments: str) -> str:
        return self.uri_base + "/" + "/".join((*rfc9132.WELL_KNOWN, *segments))

    @property
    def resumed(self) -> bool | None:
        """Whether the (D)TLS handshake resumed an earlier session (None: unknown)."""
        remote = self.probe.remote
        if self.transport == "dtls":
            return getattr(remote, "session_reused", None)
        transport = getattr(remote, "_transport", None)
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        return bool(ssl_object.session_reused) if ssl_object is not None else None

    async def close(self) -> None:
        try:
            await self.context.shutdown()
        except Exception as exc:  # shutting down a broken session must not fail
            log.debug("closing %s session: %s", self.transport, exc)


def parse_server(server: str | tuple[str, int]) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or ``(host, port)``; default port 4646 (SC-001).

    Raises ValueError naming the problem for an empty host or a port outside 1-65535.
    """
    if isinstance(server, tuple):
        host, port_text = server[0], str(server[1])
    else:
        text = server.strip()
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            if rest and not rest.startswith(":"):
                raise ValueError(f"invalid DOTS server {server!r}: expected [IPv6]:PORT")
            port_text = rest[1:] if rest else str(rfc9132.DEFAULT_PORT)
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
        else:
            host, port_text = text, str(rfc9132.DEFAULT_PORT)  # a name, IPv4 or bare IPv6 address
    if not host:
        raise ValueError(f"invalid DOTS server {server!r}: no host")
    if not (port_text.isascii() and port_text.isdigit() and 1 <= int(port_text) <= 65535):
        raise ValueError(f"invalid port {port_text!r} in DOTS server {server!r}: expected 1-65535")
    return host, int(port_text)


ServerSpec = str | tuple[str, int] | Sequence[str | tuple[str, int]]


def parse_servers(server: ServerSpec) -> list[Endpoint]:
    """One server's endpoints: what :func:`parse_server` takes, a comma-separated list of
    those (``"[2001:db8::1]:4646,192.0.2.1:4646"``: the addresses of one server, raced by
    Happy Eyeballs) or a sequence of them."""
    if isinstance(server, tuple) and len(server) == 2 and isinstance(server[1], int):
        return [parse_server(server)]
    items = [s for s in server.split(",") if s.strip()] if isinstance(server, str) else list(server)
    if not items:
        raise ValueError("no DOTS server given")
    return [parse_server(s) for s in items]


def is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def interleave(addresses: Sequence[str]) -> list[str]:
    """RFC 8305 §4: IPv6 first, then alternate families (v6, v4, v6, v4...)."""
    v6 = [a for a in addresses if ":" in a]
    v4 = [a for a in addresses if ":" not in a]
    out: list[str] = []
    for i in range(max(len(v6), len(v4))):
        out += ([v6[i]] if i < len(v6) else []) + ([v4[i]] if i < len(v4) else [])
    return out


class Connector:
    """Makes :class:`Connection` objects to one server by Happy Eyeballs (module docstring).

    ``host``/``port`` (the first endpoint) and ``endpoints`` (all of them, default just that one)
    describe the server; a name is resolved unless it is an address.  ``transport`` restricts
    the race to "tls" or "dtls"; "auto" races both.  ``attempt_delay`` and ``attack_delay``
    are the Connection Attempt Delays outside and during an attack (SC-011).
    """

    def __init__(self, host: str, port: int, credentials: Credentials, transport: str = "auto", *,
                 connect_timeout: float = 10.0, auto_dtls_timeout: float = AUTO_DTLS_TIMEOUT,
                 endpoints: Sequence[Endpoint] | None = None, attempt_delay: float = ATTEMPT_DELAY,
                 attack_delay: float = rfc9132.HAPPY_EYEBALLS_DELAY, cache_ttl: float = HE_CACHE_TTL) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}")
        self.host, self.port = host, port
        self.endpoints: list[Endpoint] = list(endpoints) if endpoints else [(host, port)]
        name = next((h for h, _ in self.endpoints if not is_address(h)), None)
        if credentials.server_hostname is None and name is not None:
            # a resolved name: the certificate must match the name, not the address (RFC 6125)
            credentials = replace(credentials, server_hostname=name)
        self.credentials = credentials
        self.transport = transport
        self.connect_timeout = connect_timeout
        self.auto_dtls_timeout = auto_dtls_timeout
        self.attempt_delay = attempt_delay
        self.attack_delay = attack_delay
        self.cache_ttl = cache_ttl
        self._tls_ssl = tls.client_ssl_context(credentials)
        self._dtls_sessions: dict[Any, Any] = {}
        self._dtls_ssl: tuple[Any, Any] | None = None  # (SSL.Context, what keeps its callbacks alive)
        self.outcomes: dict[Candidate, Outcome] = {}  # SC-009: per-path outcome of the last attempt
        self.preferred: Candidate | None = None  # the last winner
        self.preferred_at = 0.0
        self.last_transport: str | None = None
        self.candidates: list[Candidate] = []  # every path of the last full race
        self.last_race: list[tuple[Candidate, float, str]] = []  # (path, started after s, result)

    @property
    def name(self) -> str:
        """How the server is known (its first endpoint)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def transports(self) -> tuple[str, ...]:
        return ("dtls", "tls") if self.transport == "auto" else (self.transport,)

    async def resolve(self) -> list[Candidate]:
        """Every path in §4.3 order (names resolved now; addresses used as they are)."""
        loop = asyncio.get_running_loop()
        per_port: dict[int, list[str]] = {}
        errors: list[str] = []
        for host, port in self.endpoints:
            if is_address(host):
                addrs = [host]
            else:
                try:
                    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                except OSError as exc:
                    errors.append(f"{host}: {exc}")
                    continue
                addrs = [str(i[4][0]) for i in infos if i[0] in (socket.AF_INET, socket.AF_INET6)]
            bucket = per_port.setdefault(port, [])
            bucket += [a.split("%")[0] for a in addrs if a.split("%")[0] not in bucket]
        out: list[Candidate] = []
        for transport in self.transports():
            for port, addrs in per_port.items():
                out += [Candidate(transport, a, port) for a in interleave(addrs)]
        if not out:
            raise DotsConnectionError(f"cannot resolve the DOTS server {self.name}: " + "; ".join(errors))
        return out

    def order(self, candidates: Sequence[Candidate], now: float | None = None) -> list[Candidate]:
        """*candidates* with the cached outcomes applied (SC-009): the last winner first,
        recent failures last; an expired cache is flushed."""
        now = time.monotonic() if now is None else now
        for cand, outcome in list(self.outcomes.items()):
            if now - outcome.at > self.cache_ttl:
                del self.outcomes[cand]
        if self.preferred is not None and now - self.preferred_at > self.cache_ttl:
            self.preferred = None

        def key(c: Candidate) -> int:
            if c == self.preferred:
                return 0
            outcome = self.outcomes.get(c)
            return 2 if outcome is not None and not outcome.ok else 1

        return sorted(candidates, key=key)  # stable: §4.3 order within each group

    async def better_candidates(self, current: Candidate) -> list[Candidate]:
        """Paths §4.3 prefers to *current* (what periodic probing tries, SC-010)."""
        try:
            return [c for c in await self.resolve() if c.rank < current.rank]
        except DotsConnectionError:
            return []

    async def connect(self, site: Any, config: TransmissionConfig, *, under_attack: bool = False,
                      candidates: Sequence[Candidate] | None = None, timeout: float | None = None) -> Connection:
        """Race the paths (module docstring); the first session that answers, or DotsConnectionError."""
        if candidates is None:
            self.candidates = await self.resolve()
        cands = self.order(candidates if candidates is not None else self.candidates)
        if not cands:
            raise DotsConnectionError(f"no path to try to {self.name}")
        delay = self.attack_delay if under_attack else self.attempt_delay
        started = time.monotonic()
        deadline = started + (self.connect_timeout if timeout is None else timeout)
        attempts: dict[asyncio.Task[Connection], tuple[Candidate, float]] = {}
        errors: list[str] = []
        refused: list[str] = []  # certificate problems (diagnose.certificate_problem)
        self.last_race = []
        pending = list(cands)
        next_start = started
        winner: Connection | None = None
        try:
            while winner is None:
                now = time.monotonic()
                if pending and now >= next_start:
                    cand = pending.pop(0)
                    task = asyncio.get_running_loop().create_task(
                        self._attempt(cand, site, config, max(0.1, deadline - now)), name=f"DOTS HE {cand}")
                    attempts[task] = (cand, now)
                    next_start = now + delay
                    continue
                if not attempts and not pending:
                    break
                if now >= deadline:
                    errors.append(f"no answer within {deadline - started:.1f} s")
                    break
                wait = min(deadline, next_start if pending else deadline) - now
                done, _ = await asyncio.wait(attempts, timeout=max(0.0, wait), return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    cand, t0 = attempts.pop(task)
                    end = time.monotonic()
                    exc = task.exception()
                    if exc is None and winner is None:
                        winner = task.result()
                        self._record(cand, True, end - t0)
                        self.last_race.append((cand, t0 - started, f"won in {1000 * (end - t0):.0f} ms"))
                    elif exc is None:  # a second one completed in the same instant
                        await task.result().close()
                    else:
                        self._record(cand, False, end - t0, str(exc))
                        if cand.transport == "dtls":  # a failed resumption must not fail the next try
                            for key in [k for k in self._dtls_sessions if k[:2] == (cand.address, cand.port)]:
                                del self._dtls_sessions[key]
                        self.last_race.append((cand, t0 - started, f"failed: {exc}"))
                        hint = reset_hint(exc) if cand.transport == "tls" else None
                        errors.append(f"{cand}: {hint or exc}")
                        problem = certificate_problem(exc)
                        if problem is not None and all(p.split(" (")[0] != problem.split(" (")[0] for p in refused):
                            refused.append(problem)  # once per kind of problem, not once per path
                        next_start = end  # RFC 8305 §5: start the next attempt at once
        finally:
            for task, (cand, t0) in attempts.items():
                task.cancel()
                self.last_race.append((cand, t0 - started, "cancelled"))
            for task in list(attempts):
                try:
                    conn = await task
                except BaseException:  # noqa: BLE001 - cancelled or failed: nothing to keep
                    continue
                await conn.close()
        if winner is None and refused:
            raise DotsCertificateError(f"cannot authenticate the DOTS server at {self.name}: " + "; ".join(refused))
        if winner is None:
            raise DotsConnectionError(f"cannot reach the DOTS server at {self.name} (" + "; ".join(errors) + ")")
        self.preferred, self.preferred_at = winner.candidate, time.monotonic()
        self.last_transport = winner.transport
        log.info("signal channel to %s over %s (Happy Eyeballs: %s)", self.name, winner.candidate,
                 ", ".join(f"{c}@{1000 * t:.0f}ms {r}" for c, t, r in self.last_race))
        return winner

    def _record(self, cand: Candidate, ok: bool, seconds: float, error: str = "") -> None:
        self.outcomes[cand] = Outcome(ok, time.monotonic(), seconds, error)

    def report(self) -> dict[str, Any]:
        """The Happy Eyeballs cache as plain data (for status output)."""
        now = time.monotonic()
        return {
            "preferred": str(self.preferred) if self.preferred else None,
            "outcomes": [{"path": str(c), "ok": o.ok, "age": round(now - o.at, 1),
                          "ms": round(1000 * o.seconds), **({"error": o.error} if o.error else {})}
                         for c, o in sorted(self.outcomes.items(), key=lambda kv: kv[0].rank)],
        }

    async def _attempt(self, cand: Candidate, site: Any, config: TransmissionConfig, timeout: float) -> Connection:
        context = aiocoap.Context(loop=asyncio.get_running_loop(), serversite=site, loggername="coap-client")
        dtls: DTLSClientTransport | None = None
        try:
            if cand.transport == "tls":
                ssl_context = self._tls_ssl

                async def make(tman: Any) -> tls.DotsTLSClient:
                    t = await tls.DotsTLSClient.create_client_transport(tman, context.log, context.loop)
                    t.ssl_context = ssl_context
                    return t

                await tls.append_token_transport(context, make)
            else:
                dtls = await add_dtls_client(context, self.credentials, handshake_timeout=timeout)
                # shared session cache *and* SSL context: OpenSSL resumes a session only with the
                # context that created it (SC-012)
                if self._dtls_ssl is None:
                    self._dtls_ssl = (dtls.ssl_context, getattr(dtls, "_keepalive", None))
                dtls.ssl_context = self._dtls_ssl[0]
                dtls.sessions = self._dtls_sessions
            name = next((h for h, _ in self.endpoints if not is_address(h)), None)
            conn = Connection(context, cand.transport, cand.address, cand.port, probe=aiocoap.Message(),
                              probe_rtt=0.0, dtls=dtls, server_name=name)
            msg = aiocoap.Message(code=coap.GET, uri=conn.uri(rfc9132.PATH_CONFIG),
                                  transport_tuning=tuning(config, True))
            started = time.monotonic()
            try:
                response = await asyncio.wait_for(context.request(msg).response, timeout)
            except TimeoutError:
                raise DotsConnectionError(f"no answer within {timeout:.1f} s") from None
            except (coap_error.Error, OSError) as exc:
                raise DotsConnectionError(str(exc) or type(exc).__name__) from exc
            conn.probe, conn.probe_rtt = response, time.monotonic() - started
            log.debug("signal channel over %s established (%.0f ms)", cand, conn.probe_rtt * 1000)
            return conn
        except BaseException:
            try:
                await context.shutdown()
            except Exception:
                pass
            raise
