"""Sans-I/O DOTS protocol core (RFC 9132 signal channel, RFC 9066 Call Home).

Pure logic in the style of h11: no sockets, no asyncio, no clock reads -- time enters as
``now`` (float seconds).  Each module holds one state machine or rule set with a short
theory of operation at its top:

* :mod:`.targets` -- mitigation scopes, overlap and validation;
* :mod:`.mitigation` -- the server-side lifecycle of one mitigation request;
* :mod:`.server_rules` -- decisions on incoming mitigation/config PUTs, mid/sid helpers;
* :mod:`.session` -- session configuration, heartbeat liveness, reconnect back-off;
* :mod:`.client_pacing` -- NON/CON pacing, RTT estimate, probing rate.
"""

from .client_pacing import ConRequest, GiveUp, NonPacer, NonRequest, ProbingLimiter, RttEstimator, SendAt
from .mitigation import IllegalTransition, Mitigation, NotYetDue
from .server_rules import (
    Accept,
    ConfigAccept,
    ConfigValues,
    ConflictPolicy,
    ExistingRequest,
    Ignore,
    PutRequest,
    Reject,
    ServerPolicy,
    decide_config_put,
    decide_mitigation_put,
    next_mid,
    next_sid,
    signal_loss_plan,
)
from .session import Liveness, ReconnectBackoff, Role, SessionConfig, TransmissionConfig
from .targets import Targets, conflict_scope, overlaps, validate_request_targets, within

__all__ = [
    "Accept", "ConRequest", "ConfigAccept", "ConfigValues", "ConflictPolicy", "ExistingRequest", "GiveUp",
    "IllegalTransition", "Liveness", "Mitigation", "NonPacer", "NonRequest", "NotYetDue", "ProbingLimiter",
    "PutRequest", "ReconnectBackoff", "Reject", "Ignore", "Role", "RttEstimator", "SendAt", "ServerPolicy",
    "SessionConfig", "Targets", "TransmissionConfig", "conflict_scope", "decide_config_put",
    "decide_mitigation_put", "next_mid", "next_sid", "overlaps", "signal_loss_plan",
    "validate_request_targets", "within",
]
