"""What the client agent reads from ``/dots-agent:dots-agent/client`` (RFC 7951 JSON).

The running configuration is turned into small frozen values, so that the agent can compare
what is wanted with what it last signalled: :class:`ServerSpec` (how to reach one DOTS server)
and :class:`RequestSpec` (one ``mitigation-request`` entry).  YANG defaults are applied here
(printed trees omit them): port 4646, lifetime 3600, trigger-mitigation true, enabled true.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.numbers import rfc9132
from agent.transports.credentials import Credentials

ROOT = "dots-agent:dots-agent"


@dataclass(frozen=True)
class ServerSpec:
    """One entry of ``client/server``."""

    name: str
    addresses: tuple[str, ...]
    port: int
    transports: tuple[str, ...]
    server_name: str | None
    cert: str
    key: str
    cafile: str

    @property
    def transport(self) -> str:
        """DotsClient transport: one configured transport, or "auto" (DTLS, then TLS)."""
        return self.transports[0] if len(self.transports) == 1 else "auto"

    def credentials(self) -> Credentials:
        return Credentials(cert=Path(self.cert), key=Path(self.key), cafile=Path(self.cafile),
                           server_hostname=self.server_name)

    def state_file(self, directory: Path) -> Path:
        return directory / f"state-{re.sub(r'[^A-Za-z0-9_.-]', '_', self.name)}.json"


@dataclass(frozen=True)
class RequestSpec:
    """One entry of ``client/mitigation-request`` (defaults applied)."""

    name: str
    enabled: bool
    server: str | None
    target_prefixes: tuple[str, ...] = ()
    ports: tuple[tuple[int, int], ...] = ()
    protocols: tuple[int, ...] = ()
    fqdns: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    lifetime: int = rfc9132.DEFAULT_LIFETIME
    trigger_mitigation: bool = True

    def same_request(self, other: RequestSpec) -> bool:
        """Everything but the lifetime is equal (a lifetime change is a renewal, not a new request)."""
        return (self.server, self.target_prefixes, self.ports, self.protocols, self.fqdns, self.uris,
                self.aliases, self.trigger_mitigation) == (other.server, other.target_prefixes, other.ports,
                                                           other.protocols, other.fqdns, other.uris,
                                                           other.aliases, other.trigger_mitigation)

    def mitigate_kwargs(self) -> dict[str, Any]:
        return {"target_prefixes": list(self.target_prefixes),
                "ports": [lo if lo == hi else (lo, hi) for lo, hi in self.ports],
                "protocols": list(self.protocols), "fqdns": list(self.fqdns), "uris": list(self.uris),
                "aliases": list(self.aliases), "lifetime": self.lifetime,
                "trigger_mitigation": self.trigger_mitigation}


@dataclass(frozen=True)
class AlertEndpointSpec:
    """``client/alert-endpoint``: the token is required (read from ``token-file`` at parse time)."""

    token: str
    address: str = "127.0.0.1"
    port: int = 8080
    path: str = "/alerts"
    max_body: int = 65536
    max_header: int = 8192
    max_connections: int = 64
    default_lifetime: int = rfc9132.DEFAULT_LIFETIME

    def __repr__(self) -> str:  # never log the token
        return f"AlertEndpointSpec({self.address}:{self.port}{self.path})"


@dataclass(frozen=True)
class ClientConfig:
    enabled: bool = False
    servers: dict[str, ServerSpec] = field(default_factory=dict)
    requests: dict[str, RequestSpec] = field(default_factory=dict)
    reconnect_interval: int = 300
    alert_endpoint: AlertEndpointSpec | None = None

    def server_for(self, request: RequestSpec) -> ServerSpec | None:
        """The request's server, or the first configured one."""
        if request.server is not None:
            return self.servers.get(request.server)
        return next(iter(self.servers.values()), None)


def parse(tree: dict[str, Any] | None) -> ClientConfig:
    """Read ``/dots-agent/client``; raises ValueError for what the agent cannot use."""
    root = (tree or {}).get(ROOT) or {}
    client = root.get("client")
    if client is None:
        return ClientConfig()
    creds = {c["name"]: c for c in (root.get("credentials") or {}).get("credential", [])}
    servers: dict[str, ServerSpec] = {}
    for s in client.get("server", []):
        cred = creds.get(s["credential"]) or {}
        if not cred.get("certificate-file") or not cred.get("private-key-file") or not cred.get("ca-file"):
            raise ValueError(f"server {s['name']}: credential {s['credential']!r} needs certificate-file, "
                             "private-key-file and ca-file (the client agent uses X.509)")
        servers[s["name"]] = ServerSpec(
            name=s["name"], addresses=tuple(s.get("address", [])), port=int(s.get("port", rfc9132.DEFAULT_PORT)),
            transports=tuple(s.get("transport", [])) or ("dtls", "tls"), server_name=s.get("server-name"),
            cert=cred["certificate-file"], key=cred["private-key-file"], cafile=cred["ca-file"])
    requests = {r["name"]: _request(r) for r in client.get("mitigation-request", [])}
    return ClientConfig(enabled=bool(client.get("enabled", True)), servers=servers, requests=requests,
                        reconnect_interval=int(client.get("reconnect-interval", 300)),
                        alert_endpoint=_alert_endpoint(client.get("alert-endpoint")))


def _alert_endpoint(node: dict[str, Any] | None) -> AlertEndpointSpec | None:
    """The alert endpoint, or None; ValueError (one line) without a usable token."""
    if node is None:
        return None
    token = str(node.get("token") or "").strip()
    if not token and node.get("token-file"):
        path = Path(node["token-file"])
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"client/alert-endpoint/token-file {path}: {exc.strerror}") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise ValueError(f"client/alert-endpoint/token-file {path} is empty")
    if not token:
        raise ValueError("client/alert-endpoint needs a bearer token: set 'token' or 'token-file' "
                         "(without one anyone on the host could create and withdraw mitigations)")
    return AlertEndpointSpec(
        token=token, address=str(node.get("address", "127.0.0.1")), port=int(node.get("port", 8080)),
        path=str(node.get("path", "/alerts")), max_body=int(node.get("max-body-size", 65536)),
        max_header=int(node.get("max-header-size", 8192)), max_connections=int(node.get("max-connections", 64)),
        default_lifetime=int(node.get("default-lifetime", rfc9132.DEFAULT_LIFETIME)))


def _request(r: dict[str, Any]) -> RequestSpec:
    scope = r.get("scope") or {}
    ports = tuple((int(p["lower-port"]), int(p.get("upper-port", p["lower-port"])))
                  for p in scope.get("target-port-range", []))
    return RequestSpec(
        name=r["name"], enabled=bool(r.get("enabled", True)), server=r.get("server"),
        target_prefixes=tuple(scope.get("target-prefix", [])), ports=ports,
        protocols=tuple(int(p) for p in scope.get("target-protocol", [])),
        fqdns=tuple(scope.get("target-fqdn", [])), uris=tuple(scope.get("target-uri", [])),
        aliases=tuple(scope.get("alias-name", [])),
        lifetime=int(scope.get("lifetime", rfc9132.DEFAULT_LIFETIME)),
        trigger_mitigation=bool(scope.get("trigger-mitigation", True)))
