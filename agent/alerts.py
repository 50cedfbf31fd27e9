"""Detector and application alerts -> DOTS mitigation requests (RFC 8903 §3.1.1-3.1.4).

Theory of operation
-------------------
An :class:`AlertServer` is a small asyncio HTTP/1.1 endpoint (optionally HTTPS, always with a
bearer token: it refuses to start without one) in front of a :class:`~agent.client.DotsClient`.  A DDoS detector, an
application or Prometheus Alertmanager POSTs alerts to it; the :class:`AlertBridge` turns a
*firing* alert into :meth:`DotsClient.mitigate` and a *resolved* one into
:meth:`DotsClient.withdraw`.  The alert identifier -> mid mapping is persisted (JSON file,
atomically replaced) so a resolve that arrives after a restart still withdraws the right
request.  A firing alert already mapped is sent again with the same mid (a lifetime renewal,
idempotent at the server): Alertmanager repeats firing notifications every ``repeat_interval``.

Each alert is a party of its own (:mod:`agent.client.parties`, kind "alert source", name the
alert id): it can renew and withdraw only the request it made, and a firing alert whose targets
overlap a live request of another party (a portal user, another alert, another process with
the same client certificate) is refused (409) instead of replacing it (RFC 9132 §4.4.1).

Requests are read within :class:`~agent.http_front.HttpLimits` (body 64 KiB, headers 8 KiB,
64 header lines, 15 s to send a request, 64 connections, JSON depth 32 by default); anything
malformed gets a 4xx with a one-line ``error`` and the endpoint keeps serving.

Endpoints (``POST``, ``Content-Type: application/json``):

* ``/alert``: the native format, one alert object or a list of them::

      {"id": "det-1/flood-42",              # required: stable identifier of the alert
       "status": "firing",                  # "firing" (default) or "resolved"
       "target-prefix": ["198.51.100.7/32", "2001:db8::7"],   # addresses become /32, /128
       "target-port": [80, "1000-2000"],    # ports or "lo-hi" ranges (optional)
       "target-protocol": [6, "udp"],       # numbers or tcp/udp/icmp/icmpv6/sctp/dccp (optional)
       "target-fqdn": ["www.example.com"],  # optional; at least one prefix or FQDN when firing
       "lifetime": 3600}                    # optional seconds (default: the bridge's)

* ``/alertmanager``: Prometheus Alertmanager webhook (``"version": "4"``): every entry of
  ``alerts`` is handled on its own, with ``alerts[].status`` (falling back to the group's
  ``status``); the id is ``fingerprint`` (or a hash of the labels when absent).  Targets come
  from the alert's ``labels``, then ``annotations``:

  ============================== =====================================================
  ``dots_target`` / ``target_prefix``    prefixes or addresses, comma/space separated
  ``dots_port`` / ``target_port``        ports and ``lo-hi`` ranges, comma separated
  ``dots_protocol`` / ``target_protocol``  protocol numbers or names, comma separated
  ``dots_fqdn`` / ``target_fqdn``        FQDNs, comma separated
  ``dots_lifetime``                      lifetime in seconds
  ============================== =====================================================

  An alert with none of the target labels is ignored (reported as such), so one Alertmanager
  receiver can be shared with alerts that are not DDoS-related.

Lifetimes (``lifetime``, ``dots_lifetime``) are -1 (indefinite) or 1..4294967295 seconds
(RFC 9132 §4.4.1, the ``mitigation-lifetime`` type of the dots-agent YANG module).

Alertmanager sends the token with the receiver's ``http_config`` (Alertmanager >= 0.22)::

    receivers:
      - name: dots
        webhook_configs:
          - url: https://127.0.0.1:9646/alertmanager
            send_resolved: true
            http_config:
              authorization:
                type: Bearer
                credentials_file: /etc/alertmanager/dots-alert-token
              tls_config:
                ca_file: /etc/alertmanager/dots-ca.crt

Answers: 200 with ``{"results": [...]}`` (one entry per alert: ``id``, ``action``
(``mitigate``/``withdraw``/``ignored``), ``mid``, ``code`` or ``error``); 400 for malformed input;
401 without the right ``Authorization: Bearer <token>`` (compared in constant time); 409 when an
alert was refused because it would replace another party's mitigation; 411/413/431/408 for
framing beyond the limits; 503 when the DOTS server could not be
reached for some alert (Alertmanager then retries the whole notification, which is safe: both
operations are idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from agent.client import DotsClient, DotsConnectionError, DotsError
from agent.client.parties import Party, PartyConflict, PartyGate
from agent.http_front import (
    ConnectionCap,
    HttpError,
    HttpLimits,
    HttpRequest,
    Refusals,
    error_response,
    linger_close,
    parse_json,
    read_request,
    start_server,
)

log = logging.getLogger("dots.alerts")

PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "dccp": 33, "icmpv6": 58, "ipv6-icmp": 58, "sctp": 132}
LIFETIME_MAX = 2**32 - 1
TOKEN_ENV = "DOTS_ALERT_TOKEN"
LABELS = {"prefix": ("dots_target", "target_prefix"), "port": ("dots_port", "target_port"),
          "protocol": ("dots_protocol", "target_protocol"), "fqdn": ("dots_fqdn", "target_fqdn"),
          "lifetime": ("dots_lifetime",)}


class AlertError(ValueError):
    """A malformed alert (answered 400)."""


def _items(v: Any, what: str = "value") -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [x for x in re.split(r"[,\s]+", v) if x]
    if isinstance(v, bool) or not isinstance(v, int | float | list | tuple):
        raise AlertError(f"{what}: expected a string, a number or a list, not {type(v).__name__}")
    if isinstance(v, float):
        if not v.is_integer():
            raise AlertError(f"{what}: expected a whole number, not {v!r}")
        v = int(v)
    if isinstance(v, int):
        return [str(v)]
    return [str(x).strip() for x in v if str(x).strip()]


def parse_lifetime(v: Any) -> int | None:
    """A request lifetime: -1 (indefinite) or 1..4294967295 s (RFC 9132 §4.4.1); None when absent."""
    if v is None or v == "":
        return None
    text = str(v).strip() if isinstance(v, str) else v
    if isinstance(text, bool) or not (isinstance(text, int) or (isinstance(text, str)
                                                               and re.fullmatch(r"-?[0-9]{1,10}", text))):
        raise AlertError(f"lifetime must be -1 or 1..{LIFETIME_MAX} seconds, not {str(v)[:40]!r}")
    n = int(text)
    if n != -1 and not 1 <= n <= LIFETIME_MAX:
        raise AlertError(f"lifetime must be -1 or 1..{LIFETIME_MAX} seconds, not {str(v)[:40]!r}")
    return n


def parse_prefixes(v: Any) -> list[str]:
    out = []
    for item in _items(v, "target prefix"):
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError as exc:
            raise AlertError(f"bad target prefix {item!r}") from exc
    return out


def parse_ports(v: Any) -> list[int | tuple[int, int]]:
    out: list[int | tuple[int, int]] = []
    for item in _items(v, "target port"):
        m = re.fullmatch(r"([0-9]{1,5})(?:-([0-9]{1,5}))?", item)
        if not m:
            raise AlertError(f"bad port {item!r}")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if not 0 <= lo <= hi <= 65535:
            raise AlertError(f"bad port range {item!r}")
        out.append(lo if lo == hi else (lo, hi))
    return out


def parse_protocols(v: Any) -> list[int]:
    out = []
    for item in _items(v, "target protocol"):
        p = PROTOCOLS.get(item.lower(), int(item) if re.fullmatch("[0-9]{1,3}", item) else -1)
        if not 0 <= p <= 255:
            raise AlertError(f"bad protocol {item!r}")
        out.append(p)
    return out


class Alert:
    """One normalised alert."""

    def __init__(self, alert_id: str, firing: bool, prefixes: list[str] | None = None,
                 ports: list[int | tuple[int, int]] | None = None, protocols: list[int] | None = None,
                 fqdns: list[str] | None = None, lifetime: int | None = None) -> None:
        if not alert_id:
            raise AlertError("an alert needs an id")
        self.id = alert_id
        self.firing = firing
        self.prefixes = prefixes or []
        self.ports = ports or []
        self.protocols = protocols or []
        self.fqdns = fqdns or []
        self.lifetime = lifetime

    @property
    def has_target(self) -> bool:
        return bool(self.prefixes or self.fqdns)

    @classmethod
    def from_native(cls, d: Mapping[str, Any]) -> Alert:
        if not isinstance(d, Mapping):
            raise AlertError("an alert must be a JSON object")
        status = str(d.get("status", "firing"))
        if status not in ("firing", "resolved"):
            raise AlertError(f"status must be firing or resolved, not {status!r}")
        return cls(str(d.get("id") or ""), status == "firing", parse_prefixes(d.get("target-prefix")),
                   parse_ports(d.get("target-port")), parse_protocols(d.get("target-protocol")),
                   _items(d.get("target-fqdn"), "target fqdn"), parse_lifetime(d.get("lifetime")))

    @classmethod
    def from_alertmanager(cls, a: Mapping[str, Any], group_status: str = "firing") -> Alert:
        if not isinstance(a, Mapping):
            raise AlertError("every entry of 'alerts' must be a JSON object")
        labels = a.get("labels") or {}
        ann = a.get("annotations") or {}
        if not isinstance(labels, Mapping) or not isinstance(ann, Mapping):
            raise AlertError("an alert's labels and annotations must be JSON objects")

        def get(what: str) -> Any:
            for name in LABELS[what]:
                for src in (labels, ann):
                    if src.get(name) not in (None, ""):
                        return src[name]
            return None

        fp = a.get("fingerprint") or hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]
        status = str(a.get("status") or group_status)
        return cls(f"am:{str(fp)[:128]}", status == "firing", parse_prefixes(get("prefix")),
                   parse_ports(get("port")), parse_protocols(get("protocol")), _items(get("fqdn"), "target fqdn"),
                   parse_lifetime(get("lifetime")))


GateSource = DotsClient | PartyGate | Callable[[], Awaitable[PartyGate]]


class AlertBridge:
    """Alerts -> mitigation requests of one :class:`DotsClient`; ids -> mids in ``state_path``.

    ``client``: the DotsClient, a :class:`PartyGate` on it (to share one with other front-ends
    of the process), or an async callable returning the gate (the client agent connects lazily).
    """

    KIND = "alert source"

    def __init__(self, client: GateSource, state_path: str | Path | None = None, *,
                 default_lifetime: int = 3600) -> None:
        self._source = client
        self._gate: PartyGate | None = None
        if isinstance(client, DotsClient):
            self._gate = PartyGate(client)
        elif isinstance(client, PartyGate):
            self._gate = client
        self.state_path = Path(state_path) if state_path else None
        self.default_lifetime = default_lifetime
        self.mids: dict[str, int] = {}
        self._lock = asyncio.Lock()
        if self.state_path and self.state_path.exists():
            self.mids = {str(k): int(v) for k, v in json.loads(self.state_path.read_text()).get("alerts", {}).items()}
        if self._gate is not None and self.mids:  # owners of mids made before the book existed
            self._gate.book.adopt(self._gate.cuid, {m: Party(self.KIND, a) for a, m in self.mids.items()})

    @property
    def client(self) -> DotsClient:
        return self._gate.client if self._gate is not None else self._source  # type: ignore[return-value]

    async def gate(self) -> PartyGate:
        if self._gate is None:
            self._gate = await self._source()  # type: ignore[operator]
        return self._gate

    def _save(self) -> None:
        if not self.state_path:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"alerts": self.mids}, indent=1, sort_keys=True))
        os.replace(tmp, self.state_path)

    async def handle(self, alert: Alert) -> dict[str, Any]:
        """Act on one alert; raises DotsConnectionError when the server is unreachable."""
        async with self._lock:
            mid = self.mids.get(alert.id)
            party = Party(self.KIND, alert.id)
            if alert.firing:
                if not alert.has_target:
                    return {"id": alert.id, "action": "ignored", "reason": "no target labels"}
                gate = await self.gate()
                try:
                    res = await gate.mitigate(party, alert.prefixes, alert.ports, alert.protocols, alert.fqdns,
                                              lifetime=alert.lifetime or self.default_lifetime, mid=mid)
                except PartyConflict as exc:
                    return {"id": alert.id, "action": "mitigate", "conflict": True, "error": str(exc)}
                except DotsError as exc:
                    log.warning("alert %s: mitigation refused: %s %s", alert.id, exc.code, exc.diagnostic)
                    return {"id": alert.id, "action": "mitigate", "error": exc.code, "diagnostic": exc.diagnostic}
                self.mids[alert.id] = res.mid
                self._save()
                log.info("alert %s firing -> mid %d (%s)", alert.id, res.mid, res.code)
                return {"id": alert.id, "action": "mitigate", "mid": res.mid, "code": res.code,
                        "lifetime": res.lifetime}
            if mid is None:
                return {"id": alert.id, "action": "ignored", "reason": "unknown alert"}
            gate = await self.gate()
            try:
                code = await gate.withdraw(party, mid)
            except PartyConflict as exc:  # the mid was taken over; this alert owns nothing any more
                del self.mids[alert.id]
                self._save()
                return {"id": alert.id, "action": "withdraw", "conflict": True, "error": str(exc)}
            del self.mids[alert.id]
            self._save()
            log.info("alert %s resolved -> withdrew mid %d (%s)", alert.id, mid, code)
            return {"id": alert.id, "action": "withdraw", "mid": mid, "code": code}


def alerts_of(path: str, body: Any) -> list[Alert]:
    """The alerts of a request body posted to ``path`` ("/alertmanager" or "/alert")."""
    if path == "/alertmanager":
        if not isinstance(body, Mapping) or not isinstance(body.get("alerts"), list):
            raise AlertError("an Alertmanager notification needs an 'alerts' list")
        if str(body.get("version", "4")) != "4":
            raise AlertError(f"unsupported Alertmanager webhook version {str(body.get('version'))[:20]!r}")
        return [Alert.from_alertmanager(a, str(body.get("status", "firing"))) for a in body["alerts"]]
    if path == "/alert":
        return [Alert.from_native(a) for a in (body if isinstance(body, list) else [body])]
    raise LookupError(path)


def read_token(token_file: str | Path | None, environ: Mapping[str, str] | None = None) -> str:
    """The bearer token from *token_file* (first line) or ``$DOTS_ALERT_TOKEN``; ValueError (one
    line naming what to fix) when there is none."""
    if token_file:
        try:
            lines = Path(token_file).read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"cannot read the alert token file {token_file}: {exc.strerror}") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise ValueError(f"the alert token file {token_file} is empty")
        return token
    token = (os.environ if environ is None else environ).get(TOKEN_ENV, "").strip()
    if not token:
        raise ValueError(f"the alert endpoint needs a bearer token: give --token-file FILE or set {TOKEN_ENV}")
    return token


class AlertServer:
    """HTTP(S) endpoint feeding an :class:`AlertBridge` (see the module docstring).

    ``token``: the bearer token alerts must carry (required: ValueError without one);
    ``ssl_context``: serve HTTPS; ``limits``: request size/time/connection bounds;
    ``path``: where native alerts are posted (Alertmanager: ``path`` + "manager" for the
    default "/alert", else ``path`` + "/alertmanager").
    """

    def __init__(self, bridge: AlertBridge, host: str = "127.0.0.1", port: int = 0, *, token: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, limits: HttpLimits | None = None,
                 path: str = "/alert") -> None:
        if not token:
            raise ValueError("the alert endpoint needs a bearer token (anyone on the host could otherwise create, "
                             "replace and withdraw mitigations)")
        self.bridge = bridge
        self.host = host
        self.port = port
        self.token = token
        self.ssl_context = ssl_context
        self.limits = limits or HttpLimits()
        base = path.rstrip("/") or "/alert"
        self.paths = {base: "/alert", (base + "manager" if base == "/alert" else base + "/alertmanager"):
                      "/alertmanager"}
        self.refusals = Refusals("alert endpoint")
        self._cap = ConnectionCap(self.limits.max_connections)
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> AlertServer:
        self._server = await start_server(self._conn, self.host, self.port, self.limits, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("alert endpoint on %s:%d (%s, bearer token required)", self.host, self.port,
                 "https" if self.ssl_context else "http")
        return self

    async def close(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> AlertServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _authorised(self, headers: Mapping[str, str]) -> bool:
        got = headers.get("authorization", "")
        return hmac.compare_digest(got.encode("latin-1", "replace"), f"Bearer {self.token}".encode())

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        busy = error_response(503, b'{"error": "too many connections"}', extra="Retry-After: 1\r\n")
        await self._cap.serve(reader, writer, self.refusals, busy, self._serve, writer.get_extra_info("peername"))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Any) -> None:
        try:
            req = await read_request(reader, self.limits)
            if req is None:
                writer.close()
                return
            status, answer = await self._handle(req, peer)
        except HttpError as exc:
            self.refusals.count(exc.status, exc.reason, peer)
            writer.write(error_response(exc.status, json.dumps({"error": exc.reason}).encode()))
            await linger_close(reader, writer)
            return
        except (ConnectionError, ssl.SSLError):
            writer.close()
            return
        extra = 'WWW-Authenticate: Bearer realm="dots-alerts"\r\n' if status == 401 else ""
        writer.write(error_response(status, json.dumps(answer).encode(), extra=extra))
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.drain()
        writer.close()

    async def _handle(self, req: HttpRequest, peer: Any) -> tuple[int, Any]:
        kind = self.paths.get(req.path)
        if kind is None:
            return 404, {"error": "not found"}
        if req.method != "POST":
            return 405, {"error": "POST only"}
        if not self._authorised(req.headers):
            self.refusals.count(401, "missing or wrong bearer token", peer)
            return 401, {"error": "missing or wrong bearer token (Authorization: Bearer <token>)"}
        try:
            alerts = alerts_of(kind, parse_json(req.body or b"null", self.limits.max_json_depth))
        except (AlertError, ValueError, TypeError, OverflowError, RecursionError) as exc:
            self.refusals.count(400, str(exc), peer)
            return 400, {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
        results: list[dict[str, Any]] = []
        status = 200
        for alert in alerts:
            try:
                result = await self.bridge.handle(alert)
            except (TimeoutError, DotsConnectionError, OSError) as exc:
                status = 503
                results.append({"id": alert.id, "error": f"DOTS server unreachable: {exc}"})
                continue
            if result.pop("conflict", False) and status == 200:
                status = 409
            results.append(result)
        return status, {"results": results}


def serve_alerts(client: GateSource, state_path: str | Path | None, host: str, port: int, *,
                 token: str | None = None, ssl_context: ssl.SSLContext | None = None,
                 default_lifetime: int = 3600, limits: HttpLimits | None = None,
                 path: str = "/alert") -> AlertServer:
    """Convenience: an (unstarted) AlertServer with its bridge."""
    return AlertServer(AlertBridge(client, state_path, default_lifetime=default_lifetime), host, port,
                       token=token, ssl_context=ssl_context, limits=limits, path=path)


__all__ = ["Alert", "AlertBridge", "AlertError", "AlertServer", "alerts_of", "parse_lifetime", "parse_ports",
           "parse_prefixes", "parse_protocols", "read_token", "serve_alerts"]
