"""The long-running DOTS client agent (``dots client agent``), configured through NETCONF/RESTCONF.

:mod:`agent.client_agent.config` reads ``/dots-agent:dots-agent/client``;
:mod:`agent.client_agent.agent` turns its ``mitigation-request`` entries into DOTS signals
(and the server's answers into ``<get>`` state); :mod:`agent.client_agent.main` is the process.
"""

from .agent import ClientAgent, RequestSlot, ServerLink
from .config import ClientConfig, RequestSpec, ServerSpec, parse

__all__ = ["ClientAgent", "ClientConfig", "RequestSlot", "RequestSpec", "ServerLink", "ServerSpec", "parse"]
