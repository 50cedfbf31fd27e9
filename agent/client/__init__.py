"""DOTS client (RFC 9132): an async API for applications and the ``dots client`` CLI's engine.

``DotsClient`` (in :mod:`agent.client.session`, whose docstring explains the theory of
operation and shows an example) connects over TLS or DTLS, sends mitigation requests, follows
their status with Observe, negotiates the session configuration and keeps the session alive
with heartbeats.  ``ClientState`` remembers mids, sids and request parameters between runs.
``Connector`` (:mod:`agent.client.connection`) picks the path by Happy Eyeballs (§4.3);
:mod:`agent.client.redirect` handles redirected signaling (§4.6); ``FallbackClient``
(:mod:`agent.client.fallback`) signals an ordered list of servers in turn (use case 3.1.7).
"""

from .connection import (
    Candidate,
    Connection,
    Connector,
    DotsCertificateError,
    DotsConnectionError,
    parse_server,
    parse_servers,
)
from .fallback import FallbackClient, FallbackServer
from .redirect import Redirection, RedirectMemory
from .results import ConfigResult, ConflictInformation, DotsError, MitigationResult, StatusUpdate
from .session import DotsClient, build_scope
from .split import MessageLimit, RequestTooLargeError
from .state import ClientState, default_state_path

__all__ = ["Candidate", "ClientState", "ConfigResult", "ConflictInformation", "Connection", "Connector",
           "DotsCertificateError", "DotsClient", "DotsConnectionError", "DotsError", "FallbackClient",
           "FallbackServer", "MessageLimit",
           "MitigationResult", "RedirectMemory", "Redirection", "RequestTooLargeError", "StatusUpdate", "build_scope",
           "default_state_path", "parse_server", "parse_servers"]
