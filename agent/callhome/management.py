"""The management plane of the Call Home agents: ``/dots-agent:dots-agent/call-home`` configures and
reports ``dots call-home server`` (CPE side) and ``dots call-home client`` (provider side).

Theory of operation
-------------------
Both processes embed :class:`mgmt.Management` exactly as ``dots server`` does
(:mod:`agent.mgmt_embed`: same flags, startup datastore in ``--mgmt-dir``, NETCONF on one
address only).  When there is no startup datastore, running is seeded from the command-line
flags (:func:`cpe_bootstrap_config`, :func:`provider_bootstrap_config`); the process is then
built from *running* (:func:`cpe_options`), so flags and NETCONF configure one and the same
thing.

CPE side (:class:`CpeManagement`):

* configuration ``call-home/call-home-server``: the first enabled ``peer`` is the Call Home
  DOTS client called (its address -- an FQDN is also the reference identifier -- port and
  transport), ``internal-prefix``, ``consent``, ``approval-timeout``, ``nat44/static-mapping``
  and ``mitigator``.  :class:`CpeConfigApplier` applies a new running tree live through
  :meth:`CallHomeServer.update` (scope, consent, timeout and NAT44 for the next request; a new
  peer closes the association and calls the new one at once).  Changes that shape the
  transports or the enforcer (credentials, transport, mitigator) are refused: running rolls
  back (``operation-failed``) and the operator restarts the process instead.
* state (:class:`CpeState`): ``call-home/sessions`` (the association the CPE opened: peer,
  transport, resumption, heartbeat health, negotiated configuration),
  ``call-home-server/mitigations`` (every request, its scope with the RFC 9066 source leaves,
  status, counters, and the internal sources actually enforced after NAT44) and
  ``call-home-server/pending-approvals`` (the leafref targets of the RPCs).
* RPCs ``approve-mitigation`` / ``reject-mitigation`` call :meth:`CallHomeServer.approve` /
  :meth:`CallHomeServer.reject`; notifications ``mitigation-status-change`` (role
  ``call-home-server``) come from an observer of the mitigation service.

Provider side (:class:`ProviderManagement`):

* configuration ``call-home/call-home-client`` (listen endpoints, credential) is informative:
  the listeners are opened once, at start (a change is logged as needing a restart);
* state: ``call-home/sessions`` (the CPEs connected) and ``call-home-client/requests`` (each
  request sent, the last response code and the scope the CPE last reported).  A poller asks
  the connected CPEs for the status of the requests every ``poll_interval`` seconds while one
  is not terminated, and emits ``mitigation-status-change`` (role ``call-home-client``) on
  every change it sees.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import mgmt_embed
from agent.numbers import rfc9066
from agent.numbers.rfc9132 import Status
from agent.server.sessions import config_members
from agent.server.state import SCOPE_STATE_KEYS, StatusNotifier, heartbeat_state
from agent.transports.credentials import Credentials
from agent.transports.identity import peer_address
from agent.transports.limits import ListenerLimits
from mgmt.errors import MgmtError
from mgmt.interfaces import SessionInfo
from mgmt.manager import Management

from .nat import StaticMapping
from .service import ConsentError, PendingApproval

if TYPE_CHECKING:
    from agent.server.mitigations import Entry

    from .client import CallHomeClient, CallHomePeer, SentRequest
    from .server import CallHomeServer, CallHomeServerOptions

log = logging.getLogger("dots.callhome")
MODULE = "dots-agent"
ROOT = f"{MODULE}:dots-agent"
CH = f"{rfc9066.MODULE}:"
CREDENTIAL = "call-home"
SOURCE_KEYS = ("source-prefix", "source-port-range", "source-icmp-type-range")
TERMINAL = {Status.ATTACK_MITIGATION_TERMINATED.yang, Status.ATTACK_MITIGATION_WITHDRAWN.yang}


def iso(epoch: float) -> str:
    """yang:date-and-time of an epoch time."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def scope_state(members: dict[str, Any]) -> dict[str, Any]:
    """A status scope (RFC 7951 members, RFC 9066 leaves prefixed) in the shape of the module's
    ``mitigation-scope-state`` + ``call-home-attack-source`` groupings."""
    out: dict[str, Any] = {}
    for key, value in members.items():
        name = key[len(CH):] if key.startswith(CH) else key
        if name in SCOPE_STATE_KEYS or name in SOURCE_KEYS:
            out[name] = value
    return out


def _credential(creds: Credentials) -> dict[str, Any]:
    return {"name": CREDENTIAL, "certificate-file": str(Path(creds.cert).resolve()),
            "private-key-file": str(Path(creds.key).resolve()), "ca-file": str(Path(creds.cafile).resolve())}


def _session_id(transport: str, address: tuple[str, int] | None, fallback: object) -> str:
    return f"{transport}:{address[0]}:{address[1]}" if address else f"{transport}:{id(fallback)}"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


# -- CPE side ----------------------------------------------------------------------------------
def cpe_bootstrap_config(options: CallHomeServerOptions) -> dict[str, Any]:
    """Running configuration of a CPE started without a startup datastore: the command-line flags.

    ``approval-timeout`` is written only when it is within the module's range (>= 60 s); a
    shorter one (tests) stays in effect while running does not set the leaf."""
    host, port = options.client
    peer: dict[str, Any] = {"name": options.peer_name or "call-home-client", "address": host, "port": port,
                            "transport": options.transport, "credential": CREDENTIAL}
    node: dict[str, Any] = {"peer": [peer], "internal-prefix": [str(p) for p in options.internal_prefixes],
                            "consent": options.consent}
    if options.consent == "manual" and options.approval_timeout >= 60:
        node["approval-timeout"] = int(options.approval_timeout)
    if options.nat_static:
        node["nat44"] = {"static-mapping": [_mapping_yang(m) for m in options.nat_static]}
    mitigator: dict[str, Any] = {"type": f"{MODULE}:{options.mitigator}"}
    if options.mitigator == "nftables":
        mitigator["nftables"] = {"table-name": options.nft_table}
    node["mitigator"] = mitigator
    return {ROOT: {"credentials": {"credential": [_credential(options.credentials)]},
                   "call-home": {"call-home-server": node}}}


def _mapping_yang(m: StaticMapping) -> dict[str, Any]:
    out: dict[str, Any] = {"name": (m.name or f"{m.external_address}={m.internal_address}")[:64],
                           "internal-address": str(m.internal_address), "external-address": str(m.external_address)}
    if m.protocol is not None:
        out["protocol"] = m.protocol
    if m.internal_port is not None:
        out["internal-port"] = m.internal_port
    if m.external_port is not None:
        out["external-port"] = m.external_port
    return out


def cpe_options(running: dict[str, Any], base: CallHomeServerOptions) -> CallHomeServerOptions:
    """The CallHomeServerOptions that *running* describes (*base*: the flags, for what the module
    does not model).  Raises ValueError when running has no usable ``call-home-server``."""
    root = running.get(ROOT) or {}
    node = (root.get("call-home") or {}).get("call-home-server")
    if node is None:
        raise ValueError("no /dots-agent/call-home/call-home-server configuration")
    peers = [p for p in node.get("peer", []) if p.get("enabled", True)]
    if not peers:
        raise ValueError("call-home-server has no enabled peer to call")
    peer = peers[0]
    client = (str(peer["address"]), int(peer["port"]))
    # the flag's reference identifier holds as long as the peer's address is the flag's host
    client_name = base.client_name if client[0] == base.client[0] else None
    credentials = base.credentials
    cred_name = peer.get("credential")
    cred = next((c for c in (root.get("credentials") or {}).get("credential", []) if c.get("name") == cred_name),
                None)
    if cred is None:
        raise ValueError(f"peer {peer['name']}: credential {cred_name!r} is not configured")
    if "certificate-file" in cred and "private-key-file" in cred:
        credentials = Credentials(cert=Path(cred["certificate-file"]), key=Path(cred["private-key-file"]),
                                  cafile=Path(cred.get("ca-file", base.credentials.cafile)))
        if _same_files(credentials, base.credentials):
            credentials = base.credentials
    mitigator = node.get("mitigator") or {}
    mtype = str(mitigator.get("type", f"{MODULE}:log")).rpartition(":")[2]
    nft_table = str((mitigator.get("nftables") or {}).get("table-name", base.nft_table))
    consent = str(node.get("consent", "manual"))  # the module's default
    approval_timeout = float(node.get("approval-timeout", base.approval_timeout))
    mappings = [StaticMapping.from_yang(m) for m in (node.get("nat44") or {}).get("static-mapping", [])]
    reconnect = peer.get("reconnect-interval")
    return replace(base, client=client, client_name=client_name, peer_name=str(peer["name"]),
                   transport=str(peer.get("transport", "dtls")), credentials=credentials,
                   internal_prefixes=[str(p) for p in node.get("internal-prefix", [])], consent=consent,
                   approval_timeout=approval_timeout, nat_static=mappings, mitigator=mtype, nft_table=nft_table,
                   reconnect_max=max(base.reconnect_min, float(reconnect)) if reconnect is not None
                   else base.reconnect_max)


def _same_files(a: Credentials, b: Credentials) -> bool:
    return all(Path(x).resolve() == Path(y).resolve() for x, y in ((a.cert, b.cert), (a.key, b.key),
                                                                    (a.cafile, b.cafile)))


class CpeConfigApplier:
    """ConfigSubscriber: running changed -> :meth:`CallHomeServer.update` (or refused)."""

    def __init__(self, server: CallHomeServer) -> None:
        self.server = server

    async def apply(self, new_running: dict[str, Any], old: dict[str, Any]) -> None:
        options = cpe_options(new_running, self.server.options)  # ValueError: refused, running rolls back
        self.server.check_update(options)
        self.server.update(options)


class CpeState:
    """StateProvider of the CPE: sessions, mitigations, pending approvals."""

    def __init__(self, server: CallHomeServer) -> None:
        self.server = server

    def peer_name(self, cuid: str) -> str | None:
        """Configured name of the peer whose Call Home DOTS client has *cuid* (the one called now)."""
        a = self.server.association
        return self.server.options.peer_name or None if a is not None and a.cuid == cuid else None

    async def state(self) -> dict[str, Any]:
        server = self.server
        node: dict[str, Any] = {}
        pending = [self._pending(p) for p in server.service.pending_approvals()]
        if pending:
            node["pending-approvals"] = {"pending-approval": pending}
        mitigations = [self._mitigation(e) for _k, e in sorted(server.service.entries.items())
                       if e.committed]  # nothing reported before the store committed it
        if mitigations:
            node["mitigations"] = {"mitigation": mitigations}
        out: dict[str, Any] = {}
        if node:
            out["call-home-server"] = node
        session = await self._session()
        if session is not None:
            out["sessions"] = {"session": [session]}
        return {ROOT: {"call-home": out}} if out else {}

    def _pending(self, p: PendingApproval) -> dict[str, Any]:
        out: dict[str, Any] = {"cuid": p.cuid, "mid": p.mid}
        if (name := self.peer_name(p.cuid)) is not None:
            out["peer"] = name
        out["received"] = iso(p.received)
        out["expires"] = iso(p.expires)
        entry = self.server.service.get(p.cuid, p.mid)
        out["scope"] = scope_state(self.server.service.status_members(entry) if entry is not None
                                   else {"mid": p.mid, **p.scope})
        return out

    def _mitigation(self, e: Entry) -> dict[str, Any]:
        service = self.server.service
        out: dict[str, Any] = {"cuid": e.cuid, "mid": e.mid}
        if (name := self.peer_name(e.cuid)) is not None:
            out["peer"] = name
        out["created"] = iso(e.record.created_at)
        out["last-updated"] = iso(e.record.updated_at)
        out["pending-consent"] = (e.cuid, e.mid) in service.pending
        enforced = service.translations.get((e.cuid, e.mid))
        if enforced is not None and enforced.source_prefixes:
            out["enforced-source-prefix"] = sorted(map(str, enforced.source_prefixes))
        out["scope"] = scope_state(service.status_members(e))
        return out

    async def _session(self) -> dict[str, Any] | None:
        server = self.server
        a = server.association
        if a is None:
            return None
        now = time.time()
        address = peer_address(a.remote) or (a.host, a.port)
        out: dict[str, Any] = {"session-id": _session_id(a.transport, address, a.remote), "role": "call-home-server"}
        if _is_ip(address[0]):
            out["peer-address"], out["peer-port"] = address[0].split("%", 1)[0], address[1]
        out["transport"] = a.transport
        out["peer-identity"] = a.name
        out["cuid"] = a.cuid
        out["established"] = iso(a.established)
        out["active-config"] = "mitigating" if server.service.any_active(a.cuid) else "idle"
        sid, cfg = await server.sessions.config_of(a.cuid)
        if sid is not None:
            out["sid"] = sid
        out["negotiated-config"] = {"mitigating-config": config_members(cfg.mitigating),
                                    "idle-config": config_members(cfg.idle)}
        session = server.sessions.sessions.get(server.sessions.key_of(a.remote))
        if session is not None:
            out["heartbeat"] = heartbeat_state(session.liveness, now, session.liveness.last_rx)
        if server.options.peer_name:
            out["peer"] = server.options.peer_name
        out["resumed"] = a.resumed
        return out


def _spawn_notification(mgmt: Management, tasks: set[asyncio.Task[Any]], event: dict[str, Any]) -> None:
    async def send() -> None:
        try:
            await mgmt.notify({f"{MODULE}:mitigation-status-change": event})
        except Exception:  # a notification must never break the service
            log.exception("mitigation-status-change notification failed")

    task = asyncio.get_running_loop().create_task(send())
    tasks.add(task)
    task.add_done_callback(tasks.discard)


def _rpc_key(rpc_input: dict[str, Any], name: str) -> dict[str, Any]:
    body = rpc_input.get(f"{MODULE}:{name}")
    if not isinstance(body, dict):
        body = next((v for v in rpc_input.values() if isinstance(v, dict)), {})
    return body


class ConsentRpcs:
    """Handlers of ``approve-mitigation`` / ``reject-mitigation``."""

    def __init__(self, server: CallHomeServer) -> None:
        self.server = server

    async def approve(self, rpc_input: dict[str, Any], session: SessionInfo) -> dict[str, Any] | None:
        body = _rpc_key(rpc_input, "approve-mitigation")
        cuid, mid = str(body["cuid"]), int(body["mid"])
        comment = str(body.get("comment", ""))
        try:
            status = await self.server.approve(cuid, mid, f"{comment} (by {session.username})".strip())
        except ConsentError as exc:
            raise MgmtError("data-missing", str(exc)) from exc
        log.info("approve-mitigation %s/%s by %s: %s", cuid, mid, session.username, status)
        return None

    async def reject(self, rpc_input: dict[str, Any], session: SessionInfo) -> dict[str, Any] | None:
        body = _rpc_key(rpc_input, "reject-mitigation")
        cuid, mid = str(body["cuid"]), int(body["mid"])
        reason = str(body.get("reason", ""))
        try:
            status = await self.server.reject(cuid, mid, reason or f"rejected by {session.username}")
        except ConsentError as exc:
            raise MgmtError("data-missing", str(exc)) from exc
        log.info("reject-mitigation %s/%s by %s: %s", cuid, mid, session.username, status)
        return None


class CpeManagement:
    """Management plane of one ``dots call-home server`` process."""

    def __init__(self, opts: mgmt_embed.MgmtOptions, options: CallHomeServerOptions, seed: bool = True) -> None:
        self.opts = opts
        self.mgmt: Management = mgmt_embed.create(opts, cpe_bootstrap_config(options) if seed else None)
        self.addresses: dict[str, list[tuple[str, int]]] = {}
        self._notifier: StatusNotifier | None = None

    def options(self, base: CallHomeServerOptions) -> CallHomeServerOptions:
        """The options running describes (raises ValueError when it cannot be honoured)."""
        return cpe_options(self.mgmt.running_dict(), base)

    async def start(self, server: CallHomeServer) -> dict[str, list[tuple[str, int]]]:
        """Wire the seams to a started *server*, then open the management ports."""
        self.mgmt.add_subscriber(CpeConfigApplier(server))
        self.mgmt.set_state_provider(CpeState(server))
        rpcs = ConsentRpcs(server)
        self.mgmt.register_rpc("approve-mitigation", rpcs.approve)
        self.mgmt.register_rpc("reject-mitigation", rpcs.reject)
        def peer_name(entry: Entry) -> str:
            a = server.association
            named = a is not None and a.cuid == entry.cuid and server.options.peer_name
            return server.options.peer_name if named else entry.cuid

        self._notifier = StatusNotifier(server.service, self.mgmt.notify, role="call-home-server", peer_of=peer_name)
        server.service.observers.append(self._notifier)
        creds = server.options.credentials
        self.addresses = await mgmt_embed.start_servers(
            self.mgmt, self.opts, (Path(creds.cert), Path(creds.key), Path(creds.cafile)))
        return self.addresses

    async def close(self) -> None:
        await self.mgmt.close()


# -- provider side -----------------------------------------------------------------------------
def provider_bootstrap_config(creds: Credentials, listen: list[tuple[str, int]],
                              transports: tuple[str, ...]) -> dict[str, Any]:
    """Running configuration of a provider started without a startup datastore (its flags)."""
    endpoints = [{"name": f"{t}-{host}", "address": host, "transport": t, "port": port}
                 for host, port in listen for t in transports]
    return {ROOT: {"credentials": {"credential": [_credential(creds)]},
                   "call-home": {"call-home-client": {"listen": {"endpoint": endpoints}, "credential": CREDENTIAL}}}}


def provider_listen(running: dict[str, Any]) -> tuple[list[tuple[str, int]], tuple[str, ...]]:
    """Listen addresses and transports of the enabled endpoints of *running*."""
    node = (((running.get(ROOT) or {}).get("call-home") or {}).get("call-home-client") or {})
    eps = [e for e in (node.get("listen") or {}).get("endpoint", []) if e.get("enabled", True)]
    listen: list[tuple[str, int]] = []
    transports: list[str] = []
    for e in eps:
        if (str(e["address"]), int(e["port"])) not in listen:
            listen.append((str(e["address"]), int(e["port"])))
        t = str(e.get("transport", "dtls"))
        if t not in transports:
            transports.append(t)
    if not listen:
        raise ValueError("call-home-client has no enabled listen endpoint")
    return listen, tuple(sorted(transports, key=("tls", "dtls").index))


def provider_limits(running: dict[str, Any] | None) -> ListenerLimits:
    """``/dots-agent/call-home/call-home-client/limits`` (YANG defaults when absent)."""
    chc = ((((running or {}).get(ROOT) or {}).get("call-home") or {}).get("call-home-client")) or {}
    return ListenerLimits.from_yang(chc.get("limits"))


class ProviderConfigApplier:
    """ConfigSubscriber of the provider: listeners are opened once, so changes are logged only."""

    def __init__(self, client: CallHomeClient) -> None:
        self.client = client

    async def apply(self, new_running: dict[str, Any], old: dict[str, Any]) -> None:
        listen, transports = provider_listen(new_running)  # ValueError: refused
        self.client.admission.limits = provider_limits(new_running)  # new connections only
        if sorted(listen) != sorted(self.client.listen) or set(transports) != set(self.client.transports):
            log.warning("call-home-client listen endpoints changed: effective after a restart")


class ProviderState:
    """StateProvider of the provider: CPEs connected and requests sent."""

    def __init__(self, client: CallHomeClient) -> None:
        self.client = client

    async def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        requests = [self._request(r) for _k, r in sorted(self.client.requests.items())]
        chc: dict[str, Any] = {"listener-statistics": self.client.admission.stats.to_yang()}
        if requests:
            chc["requests"] = {"request": requests}
        out["call-home-client"] = chc
        sessions = [self._session(p) for p in self.client.ready_peers()]
        if sessions:
            out["sessions"] = {"session": sessions}
        return {ROOT: {"call-home": out}} if out else {}

    @staticmethod
    def _request(r: SentRequest) -> dict[str, Any]:
        out: dict[str, Any] = {"peer-cuid": r.peer_cuid, "mid": r.mid, "sent": iso(r.sent),
                               "last-response-code": r.code}
        if r.last_update is not None:
            out["last-update"] = iso(r.last_update)
        out["scope"] = scope_state({**r.scope, **(r.reported or {}), "mid": r.mid})
        return out

    def _session(self, p: CallHomePeer) -> dict[str, Any]:
        now = time.time()
        out: dict[str, Any] = {"session-id": _session_id(p.transport, p.address, p.remote), "role": "call-home-client"}
        if p.address is not None and _is_ip(p.address[0]):
            out["peer-address"], out["peer-port"] = p.address[0].split("%", 1)[0], p.address[1]
        out["transport"] = p.transport
        out["cuid"] = p.cuid
        out["established"] = iso(p.connected_at)
        reporting = any(c == p.cuid and r.status not in TERMINAL for (c, _m), r in self.client.requests.items())
        out["active-config"] = "mitigating" if reporting else "idle"
        out["negotiated-config"] = {"mitigating-config": config_members(p.config.mitigating),
                                    "idle-config": config_members(p.config.idle)}
        if p.liveness is not None:
            out["heartbeat"] = heartbeat_state(p.liveness, now, p.liveness.last_rx)
        return out


class ProviderManagement:
    """Management plane of one long-running ``dots call-home client`` process."""

    def __init__(self, opts: mgmt_embed.MgmtOptions, initial: dict[str, Any] | None,
                 poll_interval: float = 2.0) -> None:
        self.opts = opts
        self.mgmt: Management = mgmt_embed.create(opts, initial)
        self.poll_interval = poll_interval
        self.addresses: dict[str, list[tuple[str, int]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._poller: asyncio.Task[None] | None = None

    def listen(self) -> tuple[list[tuple[str, int]], tuple[str, ...]]:
        """Listen addresses and transports from running (the flags, or the startup datastore)."""
        return provider_listen(self.mgmt.running_dict())

    async def start(self, client: CallHomeClient) -> dict[str, list[tuple[str, int]]]:
        """Wire the seams to a started *client*, then open the management ports."""
        self.mgmt.add_subscriber(ProviderConfigApplier(client))
        self.mgmt.set_state_provider(ProviderState(client))
        client.admission.limits = provider_limits(self.mgmt.running_dict())
        client.status_observers.append(lambda r, previous: self._changed(client, r, previous))
        self._poller = asyncio.get_running_loop().create_task(self._poll(client), name="Call Home status poller")
        creds = client.credentials
        self.addresses = await mgmt_embed.start_servers(
            self.mgmt, self.opts, (Path(creds.cert), Path(creds.key), Path(creds.cafile)))
        return self.addresses

    def _changed(self, client: CallHomeClient, r: SentRequest, previous: str | None) -> None:
        event: dict[str, Any] = {"role": "call-home-client", "cuid": client.cuid, "mid": r.mid,
                                 "status": r.status}
        if previous is not None:
            event["previous-status"] = previous
        event["peer"] = r.peer_cuid
        _spawn_notification(self.mgmt, self._tasks, event)

    async def _poll(self, client: CallHomeClient) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            if any(r.code.startswith("2") and r.status not in TERMINAL for r in client.requests.values()):
                try:
                    await client.refresh(timeout=max(1.0, self.poll_interval))
                except Exception:  # keep polling
                    log.exception("Call Home status poll failed")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except asyncio.CancelledError:
                pass
        await self.mgmt.close()
