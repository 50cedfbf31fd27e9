"""Signal channel sessions at the server: who is connected, their configuration, liveness.

A session is one (D)TLS association (its aiocoap ``remote``); several may belong to one client
(cuid).  Session configuration (RFC 9132 §4.5) is negotiated per client with a ``sid`` and kept
in the store, so it survives reconnections and restarts; the values apply to every session of
that client.  Liveness (§4.7) is the sans-I/O ``Liveness`` machine fed with the traffic the
resources see; the server's own heartbeats are sent by ``agent.server.heartbeats``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from agent.codec import cbor
from agent.protocol.server_rules import ConfigValues
from agent.protocol.session import Liveness, Role, SessionConfig, TransmissionConfig
from agent.store.interface import SessionConfigRecord, Store
from agent.transports.identity import peer_address

_NAMES = {"heartbeat_interval": "heartbeat-interval", "missing_hb_allowed": "missing-hb-allowed",
          "probing_rate": "probing-rate", "max_retransmit": "max-retransmit", "ack_timeout": "ack-timeout",
          "ack_random_factor": "ack-random-factor"}
_DECIMALS = ("ack_timeout", "ack_random_factor")


def values_from_members(members: dict[str, Any] | None) -> ConfigValues | None:
    """'current-value(-decimal)' attributes of one config set (RFC 7951 members)."""
    if members is None:
        return None
    kw: dict[str, Any] = {}
    for attr, name in _NAMES.items():
        node = members.get(name)
        if not node:
            continue
        if attr in _DECIMALS:
            if "current-value-decimal" in node:
                kw[attr] = Decimal(node["current-value-decimal"])
        elif "current-value" in node:
            kw[attr] = int(node["current-value"])
    return ConfigValues(**kw)


def config_members(cfg: TransmissionConfig, ranges: dict[str, tuple[Any, Any]] | None = None
                   ) -> dict[str, Any]:
    """One config set as RFC 7951 members, with min/max when *ranges* is given (§4.5.1)."""
    out: dict[str, Any] = {}
    for attr, name in _NAMES.items():
        value = getattr(cfg, attr)
        suffix = "-decimal" if attr in _DECIMALS else ""
        node: dict[str, Any] = {}
        if ranges is not None and name in ranges:
            lo, hi = ranges[name]
            node[f"max-value{suffix}"] = str(hi) if suffix else int(hi)
            node[f"min-value{suffix}"] = str(lo) if suffix else int(lo)
        node[f"current-value{suffix}"] = f"{Decimal(value):.2f}" if suffix else int(value)
        out[name] = node
    return out


def _config_from_record(rec: SessionConfigRecord, base: SessionConfig) -> SessionConfig:
    mit = values_from_members(cbor.map_to_json(cbor.loads(rec.mitigating))) if rec.mitigating else None
    idle = values_from_members(cbor.map_to_json(cbor.loads(rec.idle))) if rec.idle else None
    return SessionConfig(mitigating=(mit or ConfigValues()).apply_to(base.mitigating),
                         idle=(idle or ConfigValues()).apply_to(base.idle))


@dataclass
class Session:
    key: tuple[str, Any]
    cuid: str
    transport: str  # "dtls" or "tls"
    remote: Any
    liveness: Liveness
    started: float = field(default_factory=time.time)
    requests: int = 0

    @property
    def peer(self) -> tuple[str, int] | None:
        return peer_address(self.remote)


class SessionRegistry:
    def __init__(self, store: Store, defaults: SessionConfig) -> None:
        self.store = store
        self.defaults = defaults
        self.sessions: dict[tuple[str, Any], Session] = {}
        self._configs: dict[str, tuple[int, SessionConfig]] = {}

    @staticmethod
    def transport_of(remote: Any) -> str:
        scheme = getattr(remote, "scheme", "") or ""
        return "tls" if "tcp" in scheme else "dtls"

    @staticmethod
    def key_of(remote: Any) -> tuple[str, Any]:
        addr = peer_address(remote)
        return (SessionRegistry.transport_of(remote), addr if addr is not None else id(remote))

    async def config_of(self, cuid: str) -> tuple[int | None, SessionConfig]:
        """The (sid, negotiated configuration) of a client; defaults when none was negotiated."""
        if cuid not in self._configs:
            rec = await self.store.get_session_config(cuid)
            if rec is None:
                return None, self.defaults
            self._configs[cuid] = (rec.sid, _config_from_record(rec, self.defaults))
        sid, cfg = self._configs[cuid]
        return sid, cfg

    async def set_config(self, cuid: str, sid: int, config: SessionConfig) -> None:
        mit = cbor.dumps(cbor.json_to_map(config_members(config.mitigating)))
        idle = cbor.dumps(cbor.json_to_map(config_members(config.idle)))
        await self.store.put_session_config(SessionConfigRecord(cuid=cuid, sid=sid, mitigating=mit, idle=idle))
        self._configs[cuid] = (sid, config)
        for s in self.sessions.values():
            if s.cuid == cuid:
                s.liveness.set_config(config, time.time())

    async def reset_config(self, cuid: str) -> None:
        await self.store.delete_session_config(cuid)
        self._configs.pop(cuid, None)
        for s in self.sessions.values():
            if s.cuid == cuid:
                s.liveness.set_config(self.defaults, time.time())

    async def touch(self, remote: Any, cuid: str, now: float) -> Session:
        """Record traffic from *remote*; creates the session on first contact."""
        key = self.key_of(remote)
        s = self.sessions.get(key)
        if s is None or s.cuid != cuid:
            _sid, cfg = await self.config_of(cuid)
            transport = self.transport_of(remote)
            s = Session(key, cuid, transport, remote,
                        Liveness(Role.SERVER, cfg, now, reliable=transport == "tls"), started=now)
            self.sessions[key] = s
        else:
            s.remote = remote
        s.requests += 1
        s.liveness.any_traffic(now)
        return s

    def drop(self, key: tuple[str, Any]) -> Session | None:
        return self.sessions.pop(key, None)

    def set_activity(self, cuid: str, mitigating: bool) -> None:
        """Switch the client's sessions between idle-config and mitigating-config (SC-110/111)."""
        now = time.time()
        for s in self.sessions.values():
            if s.cuid == cuid:
                try:
                    s.liveness.set_activity(now, mitigating=mitigating)
                except Exception:  # a session in its final phase keeps what it had
                    pass

    def closed(self, remote: Any) -> Session | None:
        """The (D)TLS association of *remote* is gone.

        A session with heartbeats is left to the liveness machine, which declares it lost (and
        starts the requests armed for signal loss); one without heartbeats (interval 0) could
        never be declared lost, so it is dropped at once.
        """
        key = self.key_of(remote)
        s = self.sessions.get(key)
        if s is not None and s.liveness.config.heartbeat_interval <= 0:
            return self.sessions.pop(key)
        return None

    def of_client(self, cuid: str) -> list[Session]:
        return [s for s in self.sessions.values() if s.cuid == cuid]
