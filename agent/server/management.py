"""The management plane of ``dots server``: one YANG object configures and reports the server.

Theory of operation
-------------------
``dots server --netconf-port N ...`` creates a :class:`mgmt.Management` *before* the DOTS
server: its running datastore (startup file, else ``--config``, else a minimal tree derived
from ``--pki``) is the configuration the server starts with.  Then the seams are wired:

* :class:`ConfigApplier` (a ``ConfigSubscriber``) hands every new running tree to
  :meth:`DotsServer.apply_config` -- authorised clients and their prefixes, acceptable
  session-config ranges and defaults, lifetime policy and the mitigator take effect for the
  next request, without a restart.  A tree the server cannot honour (a mitigator this build
  lacks) is refused, which makes the datastore roll back (``operation-failed``).
  Schema errors (a bad prefix ...) never get here: libyang rejects them with an error-path.
* :class:`agent.server.state.ServerState` answers ``<get>`` with sessions, mitigations and
  statistics; :class:`agent.server.state.StatusNotifier` observes the mitigation service and
  emits ``mitigation-status-change`` to NETCONF subscribers.

Only then are NETCONF/RESTCONF started, on the first ``--listen`` address only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import mgmt_embed
from agent.transports.credentials import Credentials
from mgmt.manager import Management

from .state import ServerState, StatusNotifier

if TYPE_CHECKING:
    from .app import DotsServer
    from .mitigations import Entry

log = logging.getLogger("dots.server")
ROOT = "dots-agent:dots-agent"


def bootstrap_config(creds: Credentials, listen: list[str], port: int,
                     transports: tuple[str, ...]) -> dict[str, Any]:
    """The running configuration of a server started without ``--config``: its credentials and
    listen endpoints from the flags, no authorised client listed (so every client certified by
    the CA is accepted, as without a management plane).  Endpoints are informative: changing
    them needs a restart."""
    endpoints = []
    for address in listen:
        for transport in transports:
            ep: dict[str, Any] = {"name": f"{transport}-{address}", "address": address, "transport": transport}
            if port:
                ep["port"] = port
            endpoints.append(ep)
    return {ROOT: {
        "credentials": {"credential": [{"name": "server", "certificate-file": str(Path(creds.cert).resolve()),
                                        "private-key-file": str(Path(creds.key).resolve()),
                                        "ca-file": str(Path(creds.cafile).resolve())}]},
        "server": {"listen": {"endpoint": endpoints}, "credential": "server"},
    }}


class ConfigApplier:
    """ConfigSubscriber: running changed -> ``DotsServer.apply_config``."""

    def __init__(self, server: DotsServer) -> None:
        self.server = server

    async def apply(self, new_running: dict[str, Any], old: dict[str, Any]) -> None:
        self.server.check_config(new_running)  # raises ValueError: refused, running rolls back
        self.server.apply_config(new_running)


class ServerManagement:
    """Management plane of one DotsServer process."""

    def __init__(self, opts: mgmt_embed.MgmtOptions, creds: Credentials, initial: dict[str, Any]) -> None:
        self.opts = opts
        self.creds = creds
        self.mgmt: Management = mgmt_embed.create(opts, initial)
        self.addresses: dict[str, list[tuple[str, int]]] = {}

    def running(self) -> dict[str, Any]:
        return self.mgmt.running_dict()

    async def start(self, server: DotsServer) -> dict[str, list[tuple[str, int]]]:
        """Wire the seams to a started *server*, then open the management ports."""
        self.mgmt.add_subscriber(ConfigApplier(server))
        self.mgmt.set_state_provider(ServerState(server))
        def client_name(entry: Entry) -> str:
            policy = next((c for c in server.settings.clients if c.cuid == entry.cuid), None)
            return policy.name if policy is not None else entry.cuid

        server.service.observers.append(StatusNotifier(server.service, self.mgmt.notify, peer_of=client_name))
        self.addresses = await mgmt_embed.start_servers(
            self.mgmt, self.opts, (Path(self.creds.cert), Path(self.creds.key), Path(self.creds.cafile)))
        return self.addresses

    async def close(self) -> None:
        await self.mgmt.close()
