"""Third-party notification of mitigation events (RFC 8903 §3.2.3): webhooks and syslog.

Theory of operation
-------------------
A :class:`ThirdPartyNotifier` is built from the parties of
``/dots-agent:dots-agent/server/third-party-notification/party`` (RFC 7951 JSON, see
``yang/dots-agent@2026-11-21.yang``) and :meth:`~ThirdPartyNotifier.attach`-ed to a
:class:`~agent.server.mitigations.MitigationService`: it registers on ``service.observers``
(called synchronously with an ``Entry`` on every change) and wraps the instance's ``put`` so
that rejected requests are seen too.

*Events.*  The notifier remembers the last status it saw per (cuid, mid) and derives:

* ``mitigation-created``: the first time a request is seen with a status;
* ``mitigation-status-change``: its status differs from the last one seen (counter-only
  updates produce nothing);
* ``mitigation-terminated``: once, when the request reaches status 5/6/7
  (client-withdrawn, terminated, withdrawn by the server) or leaves the server;
* ``request-rejected``: a PUT answered with a 4.xx/5.xx code (the event carries ``code`` and
  ``diagnostic``).

*Filters* (per party; an empty list matches everything): ``event``; ``status`` (applies to
created and status-change events, "only status changes to these values"); ``client`` (names of
authorised clients, resolved from the cuid through ``service.settings.client(cuid).name``).

*Fields.*  The event document always holds ``event``, ``time`` (RFC 3339 UTC) and ``party``,
plus the configured ``field`` values (empty = all): ``cuid``, ``client-name``, ``mid``,
``target`` (target-prefix/port-range/protocol/fqdn/uri and alias-name, plus RFC 9066
source-* members when present), ``status``, ``lifetime`` (remaining seconds), ``counters``
(bytes/pkts/bps/pps dropped) and ``mitigator``.  Rejections add ``code`` and ``diagnostic``.

*Delivery never blocks the service.*  The observer only builds the document and ``put_nowait``s
it on the party's bounded queue (``queue_size``); a full queue drops the event and counts it
(``stats[party].dropped``).  One worker task per party sends sequentially with a timeout:

* webhook: HTTP/1.1 ``POST`` of ``application/json`` (``https`` with the party's ``ca-file``
  or the system store), ``Connection: close``; a 2xx answer counts as ``sent``, anything else
  (status, timeout, connection error) as ``failed``; no retries (events are advisory);
* syslog: RFC 5424 messages, ``<PRI>1 TIMESTAMP HOST dots-agent PID MSGID [dots@32473 ...] JSON``
  with PRI = facility*8 + severity (notice; warning for rejections), MSGID = the event name;
  over UDP (RFC 5426, one datagram each) or TCP (RFC 6587 octet counting, one connection kept
  open and re-opened after an error).

Nothing here awaits inside the observer, and every exception in sending is caught and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("dots.notify")

EVENTS = ("mitigation-created", "mitigation-status-change", "mitigation-terminated", "request-rejected")
FIELDS = ("cuid", "client-name", "mid", "target", "status", "lifetime", "counters", "mitigator")
TARGET_MEMBERS = ("target-prefix", "target-port-range", "target-protocol", "target-fqdn", "target-uri",
                  "alias-name", "source-prefix", "source-port-range", "source-icmp-type-range")
TERMINAL_STATUSES = (5, 6, 7)
SD_ID = "dots@32473"  # RFC 5612 documentation enterprise number
SEV_NOTICE, SEV_WARNING = 5, 4


@dataclass
class PartyStats:
    queued: int = 0
    sent: int = 0
    failed: int = 0
    dropped: int = 0


@dataclass
class Party:
    """One configured party (the YANG ``party`` list entry, parsed)."""

    name: str
    kind: str  # "webhook" or "syslog"
    url: str = ""
    ca_file: str | None = None
    timeout: float = 5.0
    address: str = ""
    port: int = 514
    protocol: str = "udp"
    facility: int = 16
    events: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    clients: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    enabled: bool = True
    stats: PartyStats = field(default_factory=PartyStats)

    @classmethod
    def from_json(cls, p: Mapping[str, Any]) -> Party:
        flt = p.get("filter") or {}
        common: dict[str, Any] = {
            "name": str(p["name"]), "enabled": bool(p.get("enabled", True)),
            "events": tuple(flt.get("event") or ()), "statuses": tuple(flt.get("status") or ()),
            "clients": tuple(flt.get("client") or ()), "fields": tuple(p.get("field") or ())}
        for e in common["events"]:
            if e not in EVENTS:
                raise ValueError(f"party {common['name']}: unknown event {e!r}")
        for f in common["fields"]:
            if f not in FIELDS:
                raise ValueError(f"party {common['name']}: unknown field {f!r}")
        if "webhook" in p:
            w = p["webhook"]
            url = str(w["url"])
            if urlsplit(url).scheme not in ("http", "https"):
                raise ValueError(f"party {common['name']}: webhook url must be http(s): {url}")
            return cls(kind="webhook", url=url, ca_file=w.get("ca-file"), timeout=float(w.get("timeout", 5)),
                       **common)
        if "syslog" in p:
            s = p["syslog"]
            proto = str(s.get("protocol", "udp"))
            if proto not in ("udp", "tcp"):
                raise ValueError(f"party {common['name']}: syslog protocol must be udp or tcp")
            return cls(kind="syslog", address=str(s["address"]), port=int(s.get("port", 514)), protocol=proto,
                       facility=int(s.get("facility", 16)), **common)
        raise ValueError(f"party {common['name']}: needs webhook or syslog")

    def wants(self, event: str, status: str | None, client_name: str | None) -> bool:
        if not self.enabled or (self.events and event not in self.events):
            return False
        if self.statuses and event in ("mitigation-created", "mitigation-status-change") and \
                status not in self.statuses:
            return False
        return not (self.clients and client_name not in self.clients)


def _now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _sd_escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def syslog_message(doc: Mapping[str, Any], facility: int, *, hostname: str | None = None) -> bytes:
    """An RFC 5424 message for the event document ``doc``."""
    sev = SEV_WARNING if doc.get("event") == "request-rejected" else SEV_NOTICE
    params = " ".join(f'{k}="{_sd_escape(str(doc[k]))}"' for k in ("event", "cuid", "mid", "status", "code")
                      if k in doc)
    host = (hostname or socket.gethostname() or "-")[:255].replace(" ", "_")
    header = f"<{facility * 8 + sev}>1 {doc.get('time', _now_rfc3339())} {host} dots-agent {os.getpid()} " \
             f"{str(doc.get('event', '-'))[:32]} [{SD_ID} {params}] "
    return header.encode() + json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


class ThirdPartyNotifier:
    """Pushes mitigation events to third parties (see the module docstring).

    ``parties``: the YANG ``party`` entries (RFC 7951 dicts) or :class:`Party` objects.
    ``client_name``: cuid -> authorised client name (default: from the attached service's settings).
    """

    def __init__(self, parties: list[Mapping[str, Any]] | list[Party], *, queue_size: int = 256,
                 client_name: Callable[[str], str | None] | None = None, hostname: str | None = None) -> None:
        self.parties = [p if isinstance(p, Party) else Party.from_json(p) for p in parties]
        self.queue_size = queue_size
        self._client_name = client_name
        self.hostname = hostname
        self._queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._last: dict[tuple[str, int], str | None] = {}
        self._terminated: set[tuple[str, int]] = set()
        self._service: Any = None
        self._tcp: dict[str, asyncio.StreamWriter] = {}

    @classmethod
    def from_config(cls, container: Mapping[str, Any] | None, **kw: Any) -> ThirdPartyNotifier:
        """From the ``third-party-notification`` container (``{"party": [...]}``)."""
        return cls(list((container or {}).get("party") or []), **kw)

    @property
    def stats(self) -> dict[str, PartyStats]:
        return {p.name: p.stats for p in self.parties}

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start one worker per party (needs a running loop; :meth:`attach` calls it)."""
        if self._workers:
            return
        loop = asyncio.get_running_loop()
        for p in self.parties:
            q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self.queue_size)
            self._queues[p.name] = q
            self._workers.append(loop.create_task(self._work(p, q), name=f"notify-{p.name}"))

    def attach(self, service: Any) -> None:
        """Register on ``service.observers`` (changes) and ``service.reject_observers`` (refusals)."""
        self._service = service
        self.start()
        service.observers.append(self.observe)
        service.reject_observers.append(self.rejected)

    def detach(self) -> None:
        """Stop receiving events from the service (before ``close`` when the parties change)."""
        service = self._service
        if service is None:
            return
        for lst, fn in ((service.observers, self.observe), (service.reject_observers, self.rejected)):
            if fn in lst:
                lst.remove(fn)

    async def close(self, drain: float = 2.0) -> None:
        """Give queued events ``drain`` seconds, then stop the workers."""
        if self._queues:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(q.join() for q in self._queues.values())), drain)
        for t in self._workers:
            t.cancel()
        for t in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._workers.clear()
        for w in self._tcp.values():
            w.close()
        self._tcp.clear()

    # -- event derivation (synchronous, called by the service) -------------------------------
    def client_name(self, cuid: str) -> str | None:
        if self._client_name is not None:
            return self._client_name(cuid)
        settings = getattr(self._service, "settings", None)
        policy = settings.client(cuid) if settings is not None else None
        return getattr(policy, "name", None) if policy is not None else None

    def observe(self, entry: Any) -> None:
        """``MitigationService`` observer: turn an entry change into events."""
        key = (entry.cuid, entry.mid)
        status = entry.machine.status
        status_text = status.yang if status is not None else None
        gone = self._service is not None and self._service.entries.get(key) is not entry
        events: list[str] = []
        if key not in self._last:
            if status_text is not None:
                events.append("mitigation-created")
        elif status_text is not None and status_text != self._last[key]:
            events.append("mitigation-status-change")
        if status_text is not None:
            self._last[key] = status_text
        if (gone or (status is not None and int(status) in TERMINAL_STATUSES)) and key not in self._terminated:
            events.append("mitigation-terminated")
            self._terminated.add(key)
        if gone:
            self._last.pop(key, None)
            self._terminated.discard(key)
        for ev in events:
            self._emit(ev, entry, status_text)

    def rejected(self, cuid: str, mid: int, members: Mapping[str, Any], code: str, diagnostic: str) -> None:
        doc_all = {"cuid": cuid, "client-name": self.client_name(cuid), "mid": mid,
                   "target": {k: members[k] for k in TARGET_MEMBERS if k in members}}
        self._dispatch("request-rejected", None, doc_all["client-name"], doc_all,
                       {"code": code, "diagnostic": diagnostic})

    def _emit(self, event: str, entry: Any, status: str | None) -> None:
        r = entry.record
        now = self._service.clock() if self._service is not None else time.time()
        doc_all: dict[str, Any] = {
            "cuid": entry.cuid, "client-name": self.client_name(entry.cuid), "mid": entry.mid,
            "target": {k: entry.members[k] for k in TARGET_MEMBERS if k in entry.members},
            "status": status, "lifetime": entry.machine.remaining_lifetime(now),
            "counters": {"bytes-dropped": r.bytes_dropped, "pkts-dropped": r.pkts_dropped,
                         "bps-dropped": r.bps_dropped, "pps-dropped": r.pps_dropped},
            "mitigator": entry.mitigator_name}
        self._dispatch(event, status, doc_all["client-name"], doc_all, {})

    def _dispatch(self, event: str, status: str | None, client_name: str | None, doc_all: dict[str, Any],
                  extra: dict[str, Any]) -> None:
        stamp = _now_rfc3339()
        for p in self.parties:
            if not p.wants(event, status, client_name):
                continue
            doc: dict[str, Any] = {"event": event, "time": stamp, "party": p.name}
            for f in p.fields or FIELDS:
                if f in doc_all and doc_all[f] is not None:
                    doc[f] = doc_all[f]
            doc.update(extra)
            q = self._queues.get(p.name)
            if q is None:
                p.stats.dropped += 1  # not started
                continue
            try:
                q.put_nowait(doc)
                p.stats.queued += 1
            except asyncio.QueueFull:
                p.stats.dropped += 1
                log.warning("notification queue of %s full: event dropped", p.name)

    # -- delivery --------------------------------------------------------------------------
    async def _work(self, p: Party, q: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            doc = await q.get()
            try:
                if p.kind == "webhook":
                    await asyncio.wait_for(self._post(p, doc), p.timeout)
                else:
                    await asyncio.wait_for(self._syslog(p, doc), p.timeout)
                p.stats.sent += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is counted, never raised
                p.stats.failed += 1
                log.warning("notification to %s failed: %r", p.name, exc)
            finally:
                q.task_done()

    async def _post(self, p: Party, doc: dict[str, Any]) -> None:
        u = urlsplit(p.url)
        tls: ssl.SSLContext | None = None
        if u.scheme == "https":
            tls = ssl.create_default_context(cafile=p.ca_file)
        port = u.port or (443 if tls else 80)
        host = u.hostname or ""
        reader, writer = await asyncio.open_connection(host, port, ssl=tls,
                                                       server_hostname=host if tls else None)
        try:
            body = json.dumps(doc).encode()
            path = (u.path or "/") + (f"?{u.query}" if u.query else "")
            hosthdr = f"[{host}]" if ":" in host else host
            head = (f"POST {path} HTTP/1.1\r\nHost: {hosthdr}:{port}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\nUser-Agent: dots-agent\r\nConnection: close\r\n\r\n")
            writer.write(head.encode() + body)
            await writer.drain()
            status_line = await reader.readline()
            parts = status_line.decode(errors="replace").split()
            if len(parts) < 2 or not parts[1].startswith("2"):
                raise OSError(f"webhook answered {status_line.decode(errors='replace').strip()!r}")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _syslog(self, p: Party, doc: dict[str, Any]) -> None:
        msg = syslog_message(doc, p.facility, hostname=self.hostname)
        if p.protocol == "udp":
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                               remote_addr=(p.address, p.port))
            try:
                transport.sendto(msg)
            finally:
                transport.close()
            return
        writer = self._tcp.get(p.name)
        if writer is None or writer.is_closing():
            _r, writer = await asyncio.open_connection(p.address, p.port)
            self._tcp[p.name] = writer
        try:
            writer.write(f"{len(msg)} ".encode() + msg)  # RFC 6587 octet counting
            await writer.drain()
        except Exception:
            self._tcp.pop(p.name, None)
            writer.close()
            raise
