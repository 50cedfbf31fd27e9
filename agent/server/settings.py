"""The server's effective settings, derived from the ``dots-agent`` configuration tree.

The configuration itself lives in the YANG model (RFC 7951 JSON of ``dots-agent``, from a file
or from the NETCONF running datastore).  ``ServerSettings.from_config`` reads the parts the
signal channel needs into a read-only view; applying a new configuration builds a new view and
swaps it in, so a running server picks up changes without a restart.
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from agent.numbers import rfc9132
from agent.protocol.server_rules import AcceptableRanges, ConflictPolicy, ServerPolicy
from agent.protocol.session import SessionConfig, TransmissionConfig
from agent.protocol.targets import IPNetwork
from agent.transports.limits import ListenerLimits

ROOT = "dots-agent:dots-agent"
_ATTR = {"heartbeat-interval": "heartbeat_interval", "missing-hb-allowed": "missing_hb_allowed",
         "probing-rate": "probing_rate", "max-retransmit": "max_retransmit", "ack-timeout": "ack_timeout",
         "ack-random-factor": "ack_random_factor"}


@dataclass(frozen=True)
class ClientPolicy:
    """What one authorised client may do."""

    name: str
    cuid: str | None
    prefixes: tuple[IPNetwork, ...] | None  # None: any target
    fqdns: tuple[str, ...] = ()
    mitigator: str | None = None
    enabled: bool = True
    max_mitigations: int | None = None  # overrides ServerSettings.max_mitigations_per_client


@dataclass(frozen=True)
class Redirect:
    alt_server: str
    alt_server_record: tuple[str, ...]
    ttl: int


@dataclass(frozen=True)
class ServerSettings:
    allow_unlisted: bool = True
    clients: tuple[ClientPolicy, ...] = ()
    acceptable: AcceptableRanges = field(default_factory=AcceptableRanges)
    defaults: SessionConfig = field(default_factory=SessionConfig)
    terminating_period: int = rfc9132.ACTIVE_BUT_TERMINATING
    terminating_max: int = rfc9132.ACTIVE_BUT_TERMINATING_MAX
    max_lifetime: int | None = None
    allow_indefinite: bool = True
    mitigator: str = "log"
    mitigator_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # type -> YANG container
    nft_table: str = "dots_agent"
    rate_limit_pps: int | None = None
    redirect: Redirect | None = None
    config_max_age: int = 3600
    max_mitigations_per_client: int = 64  # YANG default; bounds what one client can make the server hold
    max_targets_per_request: int = 1024  # prefixes + names in one scope (decision cost is per pair)
    max_names_per_request: int = 16  # target-fqdn + target-uri entries resolved per request
    conflict_policy: ConflictPolicy = ConflictPolicy.REJECT
    limits: ListenerLimits = field(default_factory=ListenerLimits)  # /server/limits (new connections only)

    # -- lookups -------------------------------------------------------------------------
    def client(self, cuid: str) -> ClientPolicy | None:
        """The policy of the client with this cuid; an open policy when unlisted clients are allowed."""
        for c in self.clients:
            if c.cuid == cuid:
                return c if c.enabled else None
        if self.allow_unlisted:
            return ClientPolicy(name=cuid, cuid=cuid, prefixes=None)
        return None

    def mitigation_limit(self, cuid: str) -> int:
        client = self.client(cuid)
        if client is not None and client.max_mitigations is not None:
            return client.max_mitigations
        return self.max_mitigations_per_client

    def policy(self) -> ServerPolicy:
        return ServerPolicy(conflict_policy=self.conflict_policy, max_lifetime=self.max_lifetime,
                            allow_indefinite=self.allow_indefinite)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_config(cls, tree: dict[str, Any] | None) -> ServerSettings:
        """Read ``/dots-agent/server`` of an RFC 7951 tree (absent parts keep their defaults)."""
        server = ((tree or {}).get(ROOT) or {}).get("server") or {}
        kw: dict[str, Any] = {}
        clients_node = server.get("clients") or {}
        clients = tuple(_client(c) for c in clients_node.get("client", []))
        kw["clients"] = clients
        kw["limits"] = ListenerLimits.from_yang(server.get("limits"))
        if "max-mitigations-per-client" in server:
            kw["max_mitigations_per_client"] = int(server["max-mitigations-per-client"])
        kw["allow_unlisted"] = bool(clients_node.get("allow-unlisted", not clients))
        sc = server.get("session-config") or {}
        if sc:
            kw["acceptable"], kw["defaults"] = _session_config(sc)
        abt = server.get("active-but-terminating") or {}
        if "initial-period" in abt:
            kw["terminating_period"] = int(abt["initial-period"])
        if "max-period" in abt:
            kw["terminating_max"] = int(abt["max-period"])
        life = server.get("lifetime") or {}
        if "max-lifetime" in life:
            kw["max_lifetime"] = int(life["max-lifetime"])
        if "allow-indefinite" in life:
            kw["allow_indefinite"] = bool(life["allow-indefinite"])
        mit = server.get("mitigator") or {}
        options: dict[str, dict[str, Any]] = {}
        for c in clients_node.get("client", []):  # per-client back-end parameters (use case 3.2.2)
            for kind in ("nftables", "flowspec", "rtbh"):
                if kind in (c.get("mitigator") or {}):
                    options.setdefault(kind, dict(c["mitigator"][kind]))
        for kind in ("nftables", "flowspec", "rtbh"):
            if kind in mit:
                options[kind] = dict(mit[kind])
        kw["mitigator_options"] = options
        if "type" in mit:
            kw["mitigator"] = str(mit["type"]).rpartition(":")[2]
        nft = mit.get("nftables") or {}
        if "table-name" in nft:
            kw["nft_table"] = nft["table-name"]
        if "rate-limit" in nft:
            kw["rate_limit_pps"] = int(nft["rate-limit"])
        red = server.get("redirect")
        if red and red.get("alt-server"):
            kw["redirect"] = Redirect(red["alt-server"], tuple(red.get("alt-server-record", [])),
                                      int(red.get("ttl", 2**32 - 1)))
        return cls(**kw)


def cuid_from_spki_sha256(hexdigest: str) -> str:
    """cuid of a client known by the SHA-256 of its SPKI (RFC 9132 §4.4.1.1)."""
    digest = bytes.fromhex(hexdigest.replace(":", ""))[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _client(c: dict[str, Any]) -> ClientPolicy:
    cuid = c.get("cuid")
    if cuid is None and c.get("spki-sha256"):
        cuid = cuid_from_spki_sha256(c["spki-sha256"])
    prefixes = c.get("protected-prefix")
    mit = (c.get("mitigator") or {}).get("type")
    return ClientPolicy(
        name=c["name"], cuid=cuid,
        prefixes=tuple(ipaddress.ip_network(p, strict=False) for p in prefixes) if prefixes is not None else (),
        fqdns=tuple(c.get("protected-fqdn", [])),
        mitigator=str(mit).rpartition(":")[2] if mit else None,
        enabled=bool(c.get("enabled", True)),
        max_mitigations=int(c["max-mitigations"]) if "max-mitigations" in c else None,
    )


def _session_config(sc: dict[str, Any]) -> tuple[AcceptableRanges, SessionConfig]:
    ranges: dict[str, tuple[int | Decimal, int | Decimal]] = dict(rfc9132.ACCEPTABLE_RANGES)
    sets: dict[str, dict[str, Any]] = {}
    for side in ("mitigating-config", "idle-config"):
        values: dict[str, Any] = {}
        for name, node in (sc.get(side) or {}).items():
            lo = node.get("min-value", node.get("min-value-decimal"))
            hi = node.get("max-value", node.get("max-value-decimal"))
            cur = node.get("current-value", node.get("current-value-decimal"))
            conv = Decimal if name in ("ack-timeout", "ack-random-factor") else int
            if side == "mitigating-config" and lo is not None and hi is not None:
                ranges[name] = (conv(lo), conv(hi))
            if cur is not None:
                values[_ATTR[name]] = conv(cur)
        sets[side] = values
    base = TransmissionConfig()
    defaults = SessionConfig(
        mitigating=TransmissionConfig(**{**base.__dict__, **sets["mitigating-config"]}),
        idle=TransmissionConfig(**{**base.__dict__, **sets["idle-config"]}),
    )
    return AcceptableRanges(ranges=ranges), defaults
