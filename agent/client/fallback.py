"""Fallback DOTS servers: signal the next one when the current one cannot help (use case 3.1.7).

Theory of operation
-------------------
The use case "unsuccessful CPE or PE mitigators request upstream DDoS mitigation services"
(draft-ietf-dots-use-cases §3.1.7) is a DOTS client provisioned with an ordered list of DOTS
servers (each with its own credentials): the first is, say, the on-premises mitigator, the
next ones upstream providers.  :class:`FallbackClient` runs one :class:`DotsClient` per server
on top of the single-server API and *escalates*: server ``i + 1`` is signalled as soon as
server ``i``

* is unreachable (no (D)TLS session within ``connect_timeout``, a request unanswered within
  ``request_timeout``, or a session lost for ``unreachable_after`` seconds),
* answers 5.03 without an alternate server, or with one that cannot be followed (a redirect
  loop, SC-138, or an unreachable alternate) -- a followed redirection (§4.6) is handled
  inside :class:`DotsClient` and is not a failure, or
* reports status 4, 'attack-exceeded-capability'.

Escalation never withdraws anything: every server that was signalled keeps its worker task.
A worker whose server failed keeps trying at ``retry_interval`` (>= 60 s in production, like
SC-144), re-sends the request when the server is back (same mid, so a server that kept its
state just refreshes it), and observes its status again -- "keep the first informed when it
comes back".  This goes on until :meth:`FallbackClient.close` (or :meth:`withdraw`).
:meth:`wait_mitigated` returns once a server reports the attack being mitigated (status 1 or
2).  :meth:`state` reports every server (role, informed, connected, path, mid, status, last
error) for status output.

Example::

    servers = [FallbackServer("cpe.example.net", creds_cpe, name="cpe"),
               FallbackServer("dots.isp.example", creds_isp, name="isp")]
    async with FallbackClient(servers) as fb:
        await fb.protect(target_prefixes=["192.0.2.0/24"], lifetime=3600)
        index = await fb.wait_mitigated(timeout=60)
        print(fb.state())
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.aio import cancel_and_wait
from agent.transports.credentials import Credentials

from .connection import DotsConnectionError, ServerSpec
from .redirect import RedirectMemory
from .results import DotsError
from .session import DotsClient
from .state import ClientState

log = logging.getLogger("dots.client.fallback")

EXCEEDED = "attack-exceeded-capability"
MITIGATING = ("attack-mitigation-in-progress", "attack-successfully-mitigated")


@dataclass
class FallbackServer:
    """One provisioned server: where it is, the credentials it wants, its display name."""

    server: ServerSpec
    credentials: Credentials
    name: str | None = None
    transport: str = "auto"


@dataclass
class ServerReport:
    """What the fallback logic knows about one server."""

    name: str
    index: int
    started: bool = False  # a worker signals it
    informed: bool = False  # its latest PUT was accepted
    mid: int | None = None
    status: str | None = None
    failed: str | None = None  # why it cannot help right now (None: it can)
    failed_at: float | None = None
    events: list[str] = field(default_factory=list)

    def event(self, text: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')} {text}")
        del self.events[:-20]


class FallbackClient:
    """An ordered list of DOTS servers signalled in turn (see the module docstring)."""

    def __init__(self, servers: Sequence[FallbackServer], *, state: ClientState | str | Path | None = None,
                 retry_interval: float = 60.0, unreachable_after: float = 30.0, **client_kw: Any) -> None:
        if not servers:
            raise ValueError("FallbackClient needs at least one server")
        self.servers = list(servers)
        self.state_store = state if isinstance(state, ClientState) else ClientState(state)
        self.retry_interval = retry_interval
        self.unreachable_after = unreachable_after
        self.client_kw = client_kw
        self.redirects = RedirectMemory()  # shared: a loop across servers is still a loop
        self.clients: list[DotsClient | None] = [None] * len(self.servers)
        self.reports = [ServerReport(s.name or str(s.server), i) for i, s in enumerate(self.servers)]
        self.level = 0  # the deepest server signalled so far
        self.scope: dict[str, Any] | None = None
        self.mitigated = asyncio.Event()
        self._workers: dict[int, asyncio.Task[None]] = {}
        self._monitor: asyncio.Task[None] | None = None
        self._closing = False

    async def __aenter__(self) -> FallbackClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- API ---------------------------------------------------------------------------
    async def protect(self, **scope: Any) -> None:
        """Start signalling *scope* (the keyword arguments of :meth:`DotsClient.mitigate`) to the
        first server; escalation then happens in the background."""
        if self.scope is not None:
            raise RuntimeError("protect() was already called")
        self.scope = dict(scope)
        self._start(0)
        self._monitor = asyncio.get_running_loop().create_task(self._watch_sessions(), name="DOTS fallback monitor")

    async def wait_mitigated(self, timeout: float | None = None) -> int:
        """Index of a server that reports the attack being mitigated (status 1 or 2)."""
        await asyncio.wait_for(self.mitigated.wait(), timeout)
        return next(r.index for r in self.reports if r.status in MITIGATING)

    async def wait_informed(self, index: int, timeout: float | None = None) -> ServerReport:
        """Wait until server *index* accepted the request."""
        deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
        while not self.reports[index].informed:
            if time.monotonic() > deadline:
                raise TimeoutError(f"server {self.reports[index].name} not informed")
            await asyncio.sleep(0.05)
        return self.reports[index]

    def state(self) -> dict[str, Any]:
        """Every server as plain data (use case 3.1.7 status output)."""
        out = []
        for i, (r, c) in enumerate(zip(self.reports, self.clients, strict=True)):
            item: dict[str, Any] = {"name": r.name, "role": "primary" if i == 0 else f"fallback {i}",
                                    "signalled": r.started, "informed": r.informed, "mid": r.mid, "status": r.status,
                                    "failed": r.failed, "events": list(r.events)}
            if c is not None:
                cs = c.report()
                item.update({"server": cs["server"], "connected": cs["connected"], "path": cs["path"],
                             "redirect": cs["redirect"]})
            out.append(item)
        return {"level": self.level, "mitigated": self.mitigated.is_set(), "servers": out}

    async def withdraw(self) -> None:
        """Withdraw the request from every server that holds it, then stop."""
        for i, c in enumerate(self.clients):
            mid = self.reports[i].mid
            if c is not None and c.connected and mid is not None:
                try:
                    await c.withdraw(mid)
                except (DotsError, DotsConnectionError) as exc:
                    log.warning("withdrawing from %s: %s", self.reports[i].name, exc)
        await self.close()

    async def close(self) -> None:
        self._closing = True
        await cancel_and_wait([*self._workers.values(), self._monitor])
        for c in self.clients:
            if c is not None:
                await c.close()

    # -- escalation ----------------------------------------------------------------------
    def _start(self, index: int) -> None:
        if index in self._workers or index >= len(self.servers) or self._closing:
            return
        self.reports[index].started = True
        self.reports[index].event("signalled")
        self._workers[index] = asyncio.get_running_loop().create_task(self._work(index),
                                                                      name=f"DOTS fallback {index}")

    def _failed(self, index: int, why: str) -> None:
        report = self.reports[index]
        if report.failed is None:
            log.warning("DOTS server %s cannot help: %s", report.name, why)
            report.failed_at = time.monotonic()
        report.failed = why
        report.event(f"failed: {why}")
        if index + 1 < len(self.servers):
            if index + 1 > self.level:
                log.warning("escalating to DOTS server %s", self.reports[index + 1].name)
                self.level = index + 1
            self._start(index + 1)
        else:
            log.error("no DOTS server left to signal after %s", report.name)

    def _recovered(self, index: int) -> None:
        report = self.reports[index]
        if report.failed is not None:
            report.event("back")
        report.failed = report.failed_at = None

    async def _work(self, index: int) -> None:
        """Signal server *index* and follow its status; retry forever on failure."""
        report = self.reports[index]
        spec = self.servers[index]
        assert self.scope is not None
        while not self._closing:
            try:
                client = self.clients[index]
                if client is None:
                    client = DotsClient(spec.server, spec.credentials, spec.transport, state=self.state_store,
                                        redirect_memory=self.redirects, **self.client_kw)
                    try:
                        await client.connect()
                    except BaseException:
                        await client.close()
                        raise
                    self.clients[index] = client
                result = await client.mitigate(**self.scope, mid=report.mid)
                report.mid, report.informed = result.mid, True
                report.event(f"informed (mid {result.mid}, {result.code})")
                async for update in client.watch(result.mid):
                    if not update.scopes:
                        report.event(f"status gone ({update.code})")
                        report.informed = False
                        break
                    status = update.scopes[0].get("status")
                    if status != report.status:
                        report.event(f"status {status}")
                    report.status = status
                    if status == EXCEEDED:
                        self._failed(index, "attack exceeded its capability (status 4)")
                    elif status in MITIGATING:
                        self._recovered(index)
                        self.mitigated.set()
                    if update.final:
                        report.informed = False
                        break
                continue  # the request ended at the server: signal it again
            except DotsError as exc:
                self._failed(index, str(exc))
            except DotsConnectionError as exc:
                self._failed(index, f"unreachable: {exc}")
                client = self.clients[index]
                self.clients[index] = None
                if client is not None:
                    await client.close()
            report.informed = False
            await asyncio.sleep(self.retry_interval)

    async def _watch_sessions(self) -> None:
        """A session lost for ``unreachable_after`` seconds counts as an unreachable server."""
        down_since: dict[int, float] = {}
        while not self._closing:
            await asyncio.sleep(min(1.0, self.unreachable_after / 4))
            now = time.monotonic()
            for i, c in enumerate(self.clients):
                if c is None or c.report()["connected"]:
                    down_since.pop(i, None)
                    continue
                since = down_since.setdefault(i, now)
                if now - since >= self.unreachable_after and self.reports[i].failed is None:
                    self._failed(i, f"session lost for {now - since:.0f} s")
