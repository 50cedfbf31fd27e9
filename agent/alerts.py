"""Detector and application alerts -> DOTS mitigation requests (RFC 8903 §3.1.1-3.1.4).

Theory of operation
-------------------
An :class:`AlertServer` is a small asyncio HTTP/1.1 endpoint (optionally HTTPS, optionally with
a bearer token) in front of a :class:`~agent.client.DotsClient`.  A DDoS detector, an
application or Prometheus Alertmanager POSTs alerts to it; the :class:`AlertBridge` turns a
*firing* alert into :meth:`DotsClient.mitigate` and a *resolved* one into
:meth:`DotsClient.withdraw`.  The alert identifier -> mid mapping is persisted (JSON file,
atomically replaced) so a resolve that arrives after a restart still withdraws the right
request.  A firing alert already mapped is sent again with the same mid (a lifetime renewal,
idempotent at the server): Alertmanager repeats firing notifications every ``repeat_interval``.

Endpoints (``POST``, ``Content-Type: application/json``, body <= 1 MiB):

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

Answers: 200 with ``{"results": [...]}`` (one entry per alert: ``id``, ``action``
(``mitigate``/``withdraw``/``ignored``), ``mid``, ``code`` or ``error``); 400 for malformed input;
401 without the right ``Authorization: Bearer <token>``; 503 when the DOTS server could not be
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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.client import DotsClient, DotsConnectionError, DotsError

log = logging.getLogger("dots.alerts")

PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "dccp": 33, "icmpv6": 58, "ipv6-icmp": 58, "sctp": 132}
MAX_BODY = 1 << 20
LABELS = {"prefix": ("dots_target", "target_prefix"), "port": ("dots_port", "target_port"),
          "protocol": ("dots_protocol", "target_protocol"), "fqdn": ("dots_fqdn", "target_fqdn"),
          "lifetime": ("dots_lifetime",)}


class AlertError(ValueError):
    """A malformed alert (answered 400)."""


def _items(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [x for x in re.split(r"[,\s]+", v) if x]
    if isinstance(v, int | float):
        return [str(int(v))]
    return [str(x).strip() for x in v if str(x).strip()]


def parse_prefixes(v: Any) -> list[str]:
    out = []
    for item in _items(v):
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError as exc:
            raise AlertError(f"bad target prefix {item!r}") from exc
    return out


def parse_ports(v: Any) -> list[int | tuple[int, int]]:
    out: list[int | tuple[int, int]] = []
    for item in _items(v):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not m:
            raise AlertError(f"bad port {item!r}")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if not 0 <= lo <= hi <= 65535:
            raise AlertError(f"bad port range {item!r}")
        out.append(lo if lo == hi else (lo, hi))
    return out


def parse_protocols(v: Any) -> list[int]:
    out = []
    for item in _items(v):
        p = PROTOCOLS.get(item.lower(), int(item) if item.isdigit() else -1)
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
        lifetime = d.get("lifetime")
        return cls(str(d.get("id") or ""), status == "firing", parse_prefixes(d.get("target-prefix")),
                   parse_ports(d.get("target-port")), parse_protocols(d.get("target-protocol")),
                   _items(d.get("target-fqdn")), int(lifetime) if lifetime is not None else None)

    @classmethod
    def from_alertmanager(cls, a: Mapping[str, Any], group_status: str = "firing") -> Alert:
        labels = a.get("labels") or {}
        ann = a.get("annotations") or {}

        def get(what: str) -> Any:
            for name in LABELS[what]:
                for src in (labels, ann):
                    if src.get(name) not in (None, ""):
                        return src[name]
            return None

        fp = a.get("fingerprint") or hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]
        status = str(a.get("status") or group_status)
        lifetime = get("lifetime")
        return cls(f"am:{fp}", status == "firing", parse_prefixes(get("prefix")), parse_ports(get("port")),
                   parse_protocols(get("protocol")), _items(get("fqdn")),
                   int(lifetime) if lifetime is not None else None)


class AlertBridge:
    """Alerts -> mitigation requests of one :class:`DotsClient`; ids -> mids in ``state_path``."""

    def __init__(self, client: DotsClient, state_path: str | Path | None = None, *,
                 default_lifetime: int = 3600) -> None:
        self.client = client
        self.state_path = Path(state_path) if state_path else None
        self.default_lifetime = default_lifetime
        self.mids: dict[str, int] = {}
        self._lock = asyncio.Lock()
        if self.state_path and self.state_path.exists():
            self.mids = {str(k): int(v) for k, v in json.loads(self.state_path.read_text()).get("alerts", {}).items()}

    def _save(self) -> None:
        if not self.state_path:
            return
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"alerts": self.mids}, indent=1, sort_keys=True))
        os.replace(tmp, self.state_path)

    async def handle(self, alert: Alert) -> dict[str, Any]:
        """Act on one alert; raises DotsConnectionError when the server is unreachable."""
        async with self._lock:
            mid = self.mids.get(alert.id)
            if alert.firing:
                if not alert.has_target:
                    return {"id": alert.id, "action": "ignored", "reason": "no target labels"}
                try:
                    res = await self.client.mitigate(alert.prefixes, alert.ports, alert.protocols, alert.fqdns,
                                                     lifetime=alert.lifetime or self.default_lifetime, mid=mid)
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
            code = await self.client.withdraw(mid)
            del self.mids[alert.id]
            self._save()
            log.info("alert %s resolved -> withdrew mid %d (%s)", alert.id, mid, code)
            return {"id": alert.id, "action": "withdraw", "mid": mid, "code": code}


def alerts_of(path: str, body: Any) -> list[Alert]:
    """The alerts of a request body posted to ``path``."""
    if path == "/alertmanager":
        if not isinstance(body, Mapping) or not isinstance(body.get("alerts"), list):
            raise AlertError("an Alertmanager notification needs an 'alerts' list")
        if str(body.get("version", "4")) != "4":
            raise AlertError(f"unsupported Alertmanager webhook version {body.get('version')!r}")
        return [Alert.from_alertmanager(a, str(body.get("status", "firing"))) for a in body["alerts"]]
    if path == "/alert":
        return [Alert.from_native(a) for a in (body if isinstance(body, list) else [body])]
    raise LookupError(path)


class AlertServer:
    """HTTP(S) endpoint feeding an :class:`AlertBridge` (see the module docstring).

    ``token``: required bearer token (None: no authentication, for loopback set-ups only);
    ``ssl_context``: serve HTTPS.
    """

    def __init__(self, bridge: AlertBridge, host: str = "127.0.0.1", port: int = 0, *, token: str | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.bridge = bridge
        self.host = host
        self.port = port
        self.token = token
        self.ssl_context = ssl_context
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> AlertServer:
        self._server = await asyncio.start_server(self._conn, self.host, self.port, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("alert endpoint on %s:%d", self.host, self.port)
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
        if self.token is None:
            return True
        got = headers.get("authorization", "")
        return hmac.compare_digest(got.encode(), f"Bearer {self.token}".encode())

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, answer = await asyncio.wait_for(self._request(reader), 120)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        body = json.dumps(answer).encode()
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
                  413: "Payload Too Large", 503: "Service Unavailable"}.get(status, "Error")
        extra = 'WWW-Authenticate: Bearer realm="dots-alerts"\r\n' if status == 401 else ""
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                     f"{extra}Connection: close\r\n\r\n".encode() + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def _request(self, reader: asyncio.StreamReader) -> tuple[int, Any]:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3:
            return 400, {"error": "bad request line"}
        method, target = parts[0], parts[1].split("?", 1)[0]
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        length = int(headers.get("content-length", "0") or 0)
        if length > MAX_BODY:
            return 413, {"error": "body too large"}
        raw = await reader.readexactly(length) if length else b""
        if target not in ("/alert", "/alertmanager"):
            return 404, {"error": "not found"}
        if method != "POST":
            return 405, {"error": "POST only"}
        if not self._authorised(headers):
            return 401, {"error": "missing or wrong bearer token"}
        try:
            alerts = alerts_of(target, json.loads(raw or b"null"))
        except (AlertError, ValueError, TypeError) as exc:
            return 400, {"error": str(exc)}
        results: list[dict[str, Any]] = []
        status = 200
        for alert in alerts:
            try:
                results.append(await self.bridge.handle(alert))
            except (TimeoutError, DotsConnectionError, OSError) as exc:
                status = 503
                results.append({"id": alert.id, "error": f"DOTS server unreachable: {exc}"})
        return status, {"results": results}


def serve_alerts(client: DotsClient, state_path: str | Path | None, host: str, port: int, *,
                 token: str | None = None, ssl_context: ssl.SSLContext | None = None,
                 default_lifetime: int = 3600) -> AlertServer:
    """Convenience: an (unstarted) AlertServer with its bridge."""
    return AlertServer(AlertBridge(client, state_path, default_lifetime=default_lifetime), host, port,
                       token=token, ssl_context=ssl_context)


__all__ = ["Alert", "AlertBridge", "AlertError", "AlertServer", "alerts_of", "parse_ports", "parse_prefixes",
           "parse_protocols", "serve_alerts"]
