"""DOTS client (RFC 9132): an async API for applications and the ``dots client`` CLI's engine.

``DotsClient`` (in :mod:`agent.client.session`, whose docstring explains the theory of
operation and shows an example) connects over TLS or DTLS, sends mitigation requests, follows
their status with Observe, negotiates the session configuration and keeps the session alive
with heartbeats.  ``ClientState`` remembers mids, sids and request parameters between runs.
"""

from .connection import Connection, Connector, DotsConnectionError, parse_server
from .results import ConfigResult, ConflictInformation, DotsError, MitigationResult, StatusUpdate
from .session import DotsClient, build_scope
from .state import ClientState, default_state_path

__all__ = ["ClientState", "ConfigResult", "ConflictInformation", "Connection", "Connector", "DotsClient",
           "DotsConnectionError", "DotsError", "MitigationResult", "StatusUpdate", "build_scope",
           "default_state_path", "parse_server"]
