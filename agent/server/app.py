"""The DOTS server process: transports, store, mitigators, service and resources wired together.

``DotsServer.start`` opens the store (SQLite by default), restores and re-enforces what it
holds, then listens for coaps+tcp (TLS) and coaps (DTLS) on the same port of every listen
address, both with mutual X.509.  ``apply_config`` swaps in new settings from a ``dots-agent``
configuration tree without a restart (the management plane calls it on commit).
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiocoap

from agent.mitigators import MITIGATOR_NAMES, make_mitigator
from agent.mitigators.interface import Mitigator
from agent.numbers import rfc9132
from agent.startup import OperatorError
from agent.store.sqlite import SqliteStore
from agent.transports.credentials import Credentials
from agent.transports.dtls import add_dtls_server
from agent.transports.limits import Admission
from agent.transports.tls import add_tls_server, tls_server

from .heartbeats import HeartbeatSender
from .mitigations import MitigationService
from .resources import DotsResource
from .settings import ServerSettings
from .state import CountingSessionRegistry

log = logging.getLogger("dots.server")
MITIGATORS = MITIGATOR_NAMES  # back-ends this build provides (see DotsServer.mitigator)


@dataclass
class ServerOptions:
    credentials: Credentials
    listen: list[str] = field(default_factory=lambda: ["::1", "127.0.0.1"])
    port: int = rfc9132.DEFAULT_PORT  # SC-001: 4646 for both UDP and TCP unless configured (SC-002)
    db: Path = Path("dots-server.db")
    mitigator: str | None = None  # overrides the configuration's mitigator type
    config: dict[str, Any] | None = None  # RFC 7951 tree of dots-agent
    transports: tuple[str, ...] = ("tls", "dtls")
    netns: str | None = None  # nftables inside this network namespace
    counter_interval: float = 5.0
    heartbeats: bool = True


def _bind_error(what: str, binds: list[tuple[str, int]], exc: OSError) -> OperatorError:
    """The listener that could not be opened, by address and port (the OS says which, if any)."""
    import re

    match = re.search(r"\('?([^',()]+)'?, (\d+)", str(exc))
    where = [(match.group(1), int(match.group(2)))] if match else binds
    places = ", ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in where)
    return OperatorError(f"cannot listen for the DOTS signal channel ({what}) on {places}: "
                         f"{os.strerror(exc.errno).lower() if exc.errno else exc}")


def _stale_after(settings: ServerSettings) -> float | None:
    """Seconds of silence after which an association no longer counts as a live peer's: the
    idle-time heartbeat interval times (missing-hb-allowed + 1), RFC 9132 §4.7; None when
    heartbeats are disabled (then no association is ever taken for a newcomer)."""
    idle = settings.defaults.idle
    if idle.heartbeat_interval <= 0:
        return None
    return float(idle.heartbeat_interval * (idle.missing_hb_allowed + 1))


class DotsServer:
    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.settings = self._settings_from(options.config)
        self.store = SqliteStore(options.db)
        self._mitigators: dict[str, Mitigator] = {}
        self.service = MitigationService(self.store, self.mitigator, self.settings,
                                         counter_interval=options.counter_interval)
        self.sessions = CountingSessionRegistry(self.store, self.settings.defaults)
        self.resource = DotsResource(self.service, self.sessions, lambda: self.settings)
        self.context: aiocoap.Context | None = None
        self.heartbeats: HeartbeatSender | None = None
        self.notifier: Any = None
        self.addresses: dict[str, list[tuple[str, int]]] = {}
        #: handshakes and associations of every signal-channel listener (TLS and DTLS together)
        self.admission = Admission(self.settings.limits, stale_after=_stale_after(self.settings),
                                   name="signal channel")

    def _settings_from(self, tree: dict[str, Any] | None) -> ServerSettings:
        settings = ServerSettings.from_config(tree)
        if self.options.mitigator:
            from dataclasses import replace

            settings = replace(settings, mitigator=self.options.mitigator)
        return settings

    def _mitigator_options(self, name: str, settings: ServerSettings) -> dict[str, Any]:
        opts = dict(settings.mitigator_options.get(name, {}))
        if name == "nftables":
            opts.setdefault("table-name", settings.nft_table)
            opts.setdefault("netns", self.options.netns)
        return opts

    async def mitigator(self, name: str) -> Mitigator:
        """The mitigator back-end called *name* (created on first use)."""
        existing = self._mitigators.get(name)
        if existing is not None:
            return existing
        m = make_mitigator(name, self._mitigator_options(name, self.settings))
        self._mitigators[name] = m
        return m

    async def _rebuild_mitigators(self, names: list[str]) -> None:
        """New parameters for a back-end in use: a new instance takes over what the old one enforced.

        The old instance is emptied first (the two may share a table or a BGP speaker, and an
        instance reconciles everything it finds there), then the new one is reconciled with the
        active requests of that back-end, so the new rate, table or speaker applies to them.
        The switch-over leaves a gap of one reconcile (milliseconds).
        """
        for name in names:
            old = self._mitigators.pop(name, None)
            try:
                if old is not None:
                    await old.reconcile([])
                    if name == "nftables":  # a BGP speaker may be shared: never stop it here
                        await old.close()
                new = await self.mitigator(name)
                await new.reconcile(self.service.actions_for(name))
                log.info("mitigator %s reconfigured", name)
            except Exception:
                log.exception("could not reconfigure mitigator %s", name)
                if old is not None:
                    self._mitigators[name] = old

    def _attach_notifier(self, tree: dict[str, Any] | None) -> None:
        """Third-party notification (RFC 8903 §3.2.3) from ``server/third-party-notification``."""
        from .notify import ThirdPartyNotifier

        server = ((tree or {}).get("dots-agent:dots-agent") or {}).get("server") or {}
        container = server.get("third-party-notification")
        if self.notifier is not None:
            self.notifier.detach()
            old, self.notifier = self.notifier, None
            asyncio.get_running_loop().create_task(old.close())
        if container and container.get("party"):
            self.notifier = ThirdPartyNotifier.from_config(container)
            self.notifier.attach(self.service)

    async def start(self) -> None:
        await self.store.open()
        await self.service.start()
        self._attach_notifier(self.options.config)
        site = self.resource
        self.context = aiocoap.Context(loop=asyncio.get_running_loop(), serversite=site,
                                       loggername="coap-server")
        creds = self.options.credentials
        binds = [(addr, self.options.port) for addr in self.options.listen]
        if "tls" in self.options.transports:
            try:
                await add_tls_server(self.context, binds, creds, admission=self.admission)
            except OSError as exc:
                raise _bind_error("TLS", binds, exc) from exc
            server = tls_server(self.context)
            self.addresses["tls"] = list(server.addresses) if server else binds
            if server is not None:
                server.on_connection_lost = lambda conn, _exc: self.sessions.closed(conn)
        if "dtls" in self.options.transports:
            self.addresses["dtls"] = []
            for host, _ in binds:
                port = self.options.port
                if port == 0 and "tls" in self.addresses:  # same port number for both (SC-001)
                    port = next((p for h, p in self.addresses["tls"] if h == host), 0)
                try:
                    t = await add_dtls_server(self.context, (host, port), creds, admission=self.admission)
                except OSError as exc:
                    raise _bind_error("DTLS", [(host, port)], exc) from exc
                t.on_closed = lambda remote, _reason: self.sessions.closed(remote)
                self.addresses["dtls"].append((host, t.port))
        if self.options.heartbeats:
            self.heartbeats = HeartbeatSender(self.context, self.sessions, self.service)
            self.heartbeats.start()
        policy = "any client certified by the CA, for any target" if self.settings.allow_unlisted and \
            not self.settings.clients else f"{len(self.settings.clients)} configured client(s)" + (
                " plus unlisted clients" if self.settings.allow_unlisted else "")
        log.info("DOTS server listening: %s; authorising %s; mitigator %s; store %s",
                 ", ".join(f"{t} {h}:{p}" for t, a in self.addresses.items() for h, p in a),
                 policy, self.settings.mitigator, self.options.db)

    def check_config(self, tree: dict[str, Any] | None) -> None:
        """Raise ValueError if this server cannot honour *tree* (schema validity is the caller's)."""
        settings = self._settings_from(tree)
        wanted = {settings.mitigator, *(c.mitigator for c in settings.clients if c.mitigator)}
        missing = sorted(wanted - set(MITIGATORS))
        if missing:
            raise ValueError(f"mitigator {', '.join(missing)} is not available in this build "
                             f"(available: {', '.join(MITIGATORS)})")
        if "rtbh" in wanted and not settings.mitigator_options.get("rtbh", {}).get("next-hop"):
            raise ValueError("mitigator rtbh needs a next-hop (the discard next hop routers black-hole to)")

    def apply_config(self, tree: dict[str, Any] | None) -> None:
        """Swap in settings from a new configuration tree (no restart)."""
        old = self.settings
        self.settings = self._settings_from(tree)
        self.service.settings = self.settings
        self.sessions.defaults = self.settings.defaults
        self.admission.limits = self.settings.limits  # new handshakes and associations only
        self.admission.stale_after = _stale_after(self.settings)
        try:
            self._attach_notifier(tree)
            changed = [name for name in self._mitigators
                       if self._mitigator_options(name, old) != self._mitigator_options(name, self.settings)]
            if changed:
                asyncio.get_running_loop().create_task(self._rebuild_mitigators(changed))
        except RuntimeError:  # no running loop (called before start): start() attaches
            pass
        log.info("configuration applied: %d client(s), allow-unlisted %s, mitigator %s",
                 len(self.settings.clients), self.settings.allow_unlisted, self.settings.mitigator)

    async def stop(self) -> None:
        if self.notifier is not None:
            self.notifier.detach()
            await self.notifier.close()
        if self.heartbeats:
            await self.heartbeats.stop()
        if self.context is not None and self.context.request_interfaces:  # none: a start that failed
            await self.context.shutdown()
        await self.service.stop()
        for m in self._mitigators.values():
            await m.close()
        await self.store.close()
        log.info("DOTS server stopped")
