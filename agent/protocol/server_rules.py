"""Decisions a DOTS server takes on incoming PUTs, as pure functions of small inputs.

Theory of operation
-------------------
``decide_mitigation_put`` looks at one PUT (cuid, mid, scope, lifetime, trigger type,
attack-status, If-Match) against every request the server holds (all clients) and returns
one decision.  The rules are applied in this order -- the first that fires wins:

====  =========================================================  ==========================
 #    condition                                                    decision
====  =========================================================  ==========================
 1    cuid held by another client identity (SC-026)                4.09, cause 3 (no status,
                                                                   scope or retry-timer: SC-071)
 2    mid out of uint32, lifetime 0 or < -1 (SC-062)               4.00
 3    Call Home server and trigger-mitigation=false (CH-018)       4.00
 4    invalid scope (SC-046, SC-036, ranges), outside domain       4.00
      (SC-037), outside Call Home domain (CH-019)
 5    mid already exists for this cuid:
      5a  scope or trigger type differ (SC-073/075, SC-098/099)    4.00
      5b  mid is active-but-terminating (deleted by the client):
          If-Match / attack-status -> Ignore (§4.4.3 reordering);
          plain re-request -> 2.01, ``resumes_terminating`` (SC-107)
      5c  otherwise: lifetime refresh / efficacy update            2.04 Changed
 6    If-Match and unknown mid (§4.4.3)                            Ignore (silently)
 7    new mid without lifetime (SC-041) / with attack-status       4.00
 8    same client, same trigger type, overlapping, higher mid      4.09, cause 1, scope = mid
 9    another client's active request overlaps                     by ``ConflictPolicy``:
                                                                   REJECT 4.09 / ACCEPT_INACTIVE
                                                                   2.01 + conflict-status 1 /
                                                                   ACCEPT_ACTIVE 2.01 + status 2
10    otherwise                                                    2.01 Created, replacing the
                                                                   same-client lower overlapping
                                                                   mids (SC-065) and deactivating
                                                                   overlapped active preconfigured
                                                                   ones (SC-068)
====  =========================================================  ==========================

Granted lifetime: capped at ``max_lifetime``; an indefinite request is granted a finite
lifetime when the policy refuses indefinite ones (SC-042).  ``decide_config_put`` does the
same for session configuration (sid rules SC-119..SC-125), ``signal_loss_plan`` lists what
to activate/withdraw when a session is lost (§4.4.1.3, SC-069), and the client-side
helpers ``next_mid``/``next_sid`` implement the monotonic identifiers (SC-031, SC-032).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Literal

from agent.numbers.rfc9132 import (
    ACCEPTABLE_RANGES,
    DEFAULT_LIFETIME,
    INDEFINITE_LIFETIME,
    MID_ROLLOVER,
    AttackStatus,
    ConflictCause,
    ConflictStatus,
    Status,
)

from .mitigation import CONFLICT_LIFETIME_MARGIN
from .session import SessionConfig, TransmissionConfig
from .targets import (
    IPNetwork,
    Targets,
    conflict_scope,
    overlaps,
    sources_within,
    validate_request_targets,
    within,
)

UINT32_MAX = 2**32 - 1
ACTIVE_STATUSES = frozenset({Status(1), Status(2), Status(3), Status(4)})
# A request from another client "is active" (conflicts) while it holds mitigation resources.
CONFLICTING_STATUSES = ACTIVE_STATUSES | {Status.DOTS_CLIENT_WITHDRAWN_MITIGATION}
# Same-client requests that still exist (can be overlapped / replaced).
EXISTING_STATUSES = frozenset(Status) - {Status.ATTACK_MITIGATION_TERMINATED}


# --- inputs -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PutRequest:
    """One decoded mitigation PUT.  ``client_id`` is the authenticated identity (SC-026)."""

    cuid: str
    mid: int
    targets: Targets
    lifetime: int | None
    trigger_mitigation: bool = True
    attack_status: AttackStatus | None = None
    if_match: bool = False
    client_id: str | None = None


@dataclass(frozen=True)
class ExistingRequest:
    """What the server knows about one stored request (its own or another client's)."""

    cuid: str
    mid: int
    targets: Targets
    trigger_mitigation: bool
    status: Status
    lifetime: int  # remaining lifetime, -1 indefinite
    client_id: str | None = None
    granted_lifetime: int | None = None


class ConflictPolicy(enum.Enum):
    REJECT = "reject"  # 4.09, conflict-status 1
    ACCEPT_INACTIVE = "accept-inactive"  # 2.01, stored deactivated (conflict-status 1)
    ACCEPT_ACTIVE = "accept-active"  # 2.01, both active (conflict-status 2)


@dataclass(frozen=True)
class ServerPolicy:
    conflict_policy: ConflictPolicy = ConflictPolicy.REJECT
    max_lifetime: int | None = None  # None: no cap
    allow_indefinite: bool = True
    granted_instead_of_indefinite: int = DEFAULT_LIFETIME  # SC-042
    retry_timer_for_indefinite: int = DEFAULT_LIFETIME  # retry-timer when the other is indefinite
    deactivate_preconfigured_on_overlap: bool = True  # SC-068 "absent explicit policy"
    call_home: bool = False  # RFC 9066 Call Home DOTS server rules


# --- outputs ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConflictScope:
    targets: Targets | None = None
    mid: int | None = None


@dataclass(frozen=True)
class ConflictInfo:
    """'conflict-information' (17).  For a cuid collision only the cause is set (SC-071)."""

    conflict_cause: ConflictCause
    conflict_status: ConflictStatus | None = None
    retry_timer: int | None = None
    conflict_scope: ConflictScope | None = None


@dataclass(frozen=True)
class Accept:
    code: Literal["2.01", "2.04"]
    lifetime: int  # granted lifetime, to return in the response (SC-044)
    replaces: tuple[int, ...] = ()  # same-client lower mids to delete (SC-065)
    deactivates: tuple[int, ...] = ()  # same-client active preconfigured mids -> 7 then 8 (SC-068)
    inactive: bool = False  # stored but not enforced (conflict policy)
    conflict: ConflictInfo | None = None
    conflicts_with: tuple[tuple[str, int], ...] = ()  # other clients' (cuid, mid) to notify
    attack_status: AttackStatus | None = None  # efficacy update
    resumes_terminating: bool = False  # same mid re-requested while active-but-terminating (SC-107)

    @property
    def created(self) -> bool:
        return self.code == "2.01"


@dataclass(frozen=True)
class Reject:
    code: Literal["4.00", "4.09", "4.22"]
    diagnostic: str
    conflict: ConflictInfo | None = None


@dataclass(frozen=True)
class Ignore:
    """Drop without applying (If-Match on an unknown mid; a stale sid)."""

    reason: str


Decision = Accept | Reject | Ignore


# --- mitigation PUT -----------------------------------------------------------------------
def grant_lifetime(requested: int, policy: ServerPolicy) -> int:
    """Lifetime the server grants (SC-042, SC-043): cap, and finite instead of indefinite."""
    if requested == INDEFINITE_LIFETIME:
        if policy.allow_indefinite:
            return INDEFINITE_LIFETIME
        requested = policy.granted_instead_of_indefinite
    if policy.max_lifetime is not None:
        return min(requested, policy.max_lifetime)
    return requested


def _retry_timer(other: ExistingRequest, policy: ServerPolicy) -> int:
    """SC-072: equal to the lifetime of the active request that causes the deactivation."""
    if other.lifetime == INDEFINITE_LIFETIME:
        return policy.retry_timer_for_indefinite
    return max(0, other.lifetime)


def decide_mitigation_put(
    req: PutRequest,
    existing: Iterable[ExistingRequest],
    *,
    policy: ServerPolicy | None = None,
    allowed_prefixes: Iterable[IPNetwork] | None = None,
    call_home_source_prefixes: Iterable[IPNetwork] | None = None,
) -> Decision:
    """Decide a mitigation PUT (see the module table for the rule order)."""
    policy = policy or ServerPolicy()
    pool = list(existing)

    # 1. cuid collision (SC-026, SC-071)
    if req.client_id is not None and any(
        e.cuid == req.cuid and e.client_id is not None and e.client_id != req.client_id for e in pool
    ):
        return Reject("4.09", f"cuid {req.cuid} is already in use by another DOTS client",
                      ConflictInfo(ConflictCause.CUID_COLLISION))

    # 2. identifiers and lifetime
    if not 0 <= req.mid <= UINT32_MAX:
        return Reject("4.00", f"mid {req.mid} outside uint32")
    if req.lifetime is not None and (req.lifetime == 0 or req.lifetime < INDEFINITE_LIFETIME):
        return Reject("4.00", f"invalid lifetime {req.lifetime}")

    # 3. Call Home accepts immediate requests only
    if policy.call_home and not req.trigger_mitigation:
        return Reject("4.00", "trigger-mitigation=false is not allowed in Call Home")

    # 4. scope validation
    errors = validate_request_targets(req.targets, call_home=policy.call_home)
    if allowed_prefixes is not None and not within(req.targets, allowed_prefixes):
        errors.append("target-prefix outside the DOTS client domain")
    if call_home_source_prefixes is not None and not sources_within(req.targets, call_home_source_prefixes):
        errors.append("source-prefix outside the Call Home DOTS server domain")
    if errors:
        return Reject("4.00", "; ".join(errors))

    mine = [e for e in pool if e.cuid == req.cuid and e.status in EXISTING_STATUSES]
    same = next((e for e in mine if e.mid == req.mid), None)

    # 5. refresh / efficacy update of an existing mid
    if same is not None:
        if same.targets != req.targets or same.trigger_mitigation != req.trigger_mitigation:
            return Reject("4.00", "a refresh must repeat all parameters unchanged apart from lifetime")
        if same.status is Status.DOTS_CLIENT_WITHDRAWN_MITIGATION:
            # The client deleted this mid; the server only keeps mitigating (§4.4.4).
            if req.if_match or req.attack_status is not None:
                return Ignore(f"mid {req.mid} was withdrawn (update arrived after the DELETE, §4.4.3)")
            if req.lifetime is None:
                return Reject("4.00", "lifetime is mandatory")
            return Accept("2.01", grant_lifetime(req.lifetime, policy), resumes_terminating=True)
        if req.lifetime is None:
            base = same.granted_lifetime if same.granted_lifetime is not None else same.lifetime
            lifetime = base
        else:
            lifetime = grant_lifetime(req.lifetime, policy)
        return Accept("2.04", lifetime, attack_status=req.attack_status)

    # 6./7. new mid
    if req.if_match:
        return Ignore(f"If-Match on unknown mid {req.mid}")
    if req.attack_status is not None:
        return Reject("4.00", "attack-status is only allowed in an efficacy update of an existing mid")
    if req.lifetime is None:
        return Reject("4.00", "lifetime is mandatory")
    lifetime = grant_lifetime(req.lifetime, policy)

    replaces: list[int] = []
    deactivates: list[int] = []
    for e in mine:
        if not overlaps(e.targets, req.targets):
            continue
        if e.trigger_mitigation == req.trigger_mitigation:
            if e.mid > req.mid:  # 8. a newer request already covers this scope
                return Reject(
                    "4.09", f"overlaps mid {e.mid}, which is higher",
                    ConflictInfo(ConflictCause.OVERLAPPING_TARGETS,
                                 conflict_scope=ConflictScope(conflict_scope(e.targets, req.targets), e.mid)),
                )
            replaces.append(e.mid)
        elif (req.trigger_mitigation and not e.trigger_mitigation and e.status in ACTIVE_STATUSES
              and policy.deactivate_preconfigured_on_overlap):
            deactivates.append(e.mid)  # SC-068

    # 9. other clients
    others = [e for e in pool if e.cuid != req.cuid and e.status in CONFLICTING_STATUSES
              and overlaps(e.targets, req.targets)]
    if others:
        other = max(others, key=lambda e: (e.lifetime == INDEFINITE_LIFETIME, e.lifetime))
        scope = conflict_scope(other.targets, req.targets)
        retry = _retry_timer(other, policy)
        with_ = tuple((e.cuid, e.mid) for e in others)
        if policy.conflict_policy is ConflictPolicy.REJECT:
            return Reject("4.09", "overlaps an active mitigation of another DOTS client", ConflictInfo(
                ConflictCause.OVERLAPPING_TARGETS, ConflictStatus.REQUEST_INACTIVE_OTHER_ACTIVE, retry,
                ConflictScope(scope)))
        if policy.conflict_policy is ConflictPolicy.ACCEPT_INACTIVE:
            return Accept("2.01", retry + CONFLICT_LIFETIME_MARGIN, tuple(replaces), tuple(deactivates),
                          inactive=True, conflicts_with=with_, conflict=ConflictInfo(
                              ConflictCause.OVERLAPPING_TARGETS, ConflictStatus.REQUEST_INACTIVE_OTHER_ACTIVE,
                              retry, ConflictScope(scope)))
        return Accept("2.01", lifetime, tuple(replaces), tuple(deactivates), conflicts_with=with_,
                      conflict=ConflictInfo(ConflictCause.OVERLAPPING_TARGETS, ConflictStatus.REQUEST_ACTIVE,
                                            conflict_scope=ConflictScope(scope)))

    # 10.
    return Accept("2.01", lifetime, tuple(sorted(replaces)), tuple(sorted(deactivates)))


@dataclass(frozen=True)
class SignalLossPlan:
    activate: tuple[int, ...]  # preconfigured mids (status 8) to activate (§4.4.1.1)
    withdraw: tuple[int, ...]  # immediate active mids overlapping them (SC-069)


def signal_loss_plan(client_requests: Iterable[ExistingRequest], *, withdraw_overlapping: bool = True
                     ) -> SignalLossPlan:
    """What the server does with ONE client's requests when its signal session is lost."""
    reqs = list(client_requests)
    armed = [e for e in reqs if not e.trigger_mitigation and e.status is Status.ATTACK_MITIGATION_SIGNAL_LOSS]
    withdraw = [e.mid for e in reqs if withdraw_overlapping and e.trigger_mitigation
                and e.status in ACTIVE_STATUSES and any(overlaps(e.targets, a.targets) for a in armed)]
    return SignalLossPlan(tuple(sorted(e.mid for e in armed)), tuple(sorted(withdraw)))


# --- client-side identifiers --------------------------------------------------------------
def next_mid(current: int | None, any_active: bool) -> int:
    """Next 'mid' (SC-031 monotonic; SC-032 reset to 0 past 3221225471 when no attack)."""
    if current is None:
        return 0
    if current >= MID_ROLLOVER and not any_active:
        return 0
    if current >= UINT32_MAX:
        raise OverflowError("mid space exhausted while mitigations are active")
    return current + 1


def next_sid(current: int | None) -> int:
    """Next 'sid' (SC-119: monotonically increasing)."""
    if current is not None and current >= UINT32_MAX:
        raise OverflowError("sid space exhausted")
    return 0 if current is None else current + 1


# --- session configuration PUT ------------------------------------------------------------
CONFIG_ATTRS = ("heartbeat_interval", "missing_hb_allowed", "probing_rate", "max_retransmit",
                "ack_timeout", "ack_random_factor")


@dataclass(frozen=True)
class ConfigValues:
    """'current-value' attributes of one set in a config PUT; None = absent."""

    heartbeat_interval: int | None = None
    missing_hb_allowed: int | None = None
    probing_rate: int | None = None
    max_retransmit: int | None = None
    ack_timeout: Decimal | None = None
    ack_random_factor: Decimal | None = None

    def present(self) -> dict[str, int | Decimal]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def apply_to(self, base: TransmissionConfig) -> TransmissionConfig:
        """SC-117: negotiated values where given, defaults (``base``) elsewhere."""
        return TransmissionConfig(**{**base.__dict__, **self.present()})


@dataclass(frozen=True)
class ConfigAccept:
    code: Literal["2.01", "2.04"]
    config: SessionConfig
    deletes: tuple[int, ...] = ()  # lower sids to delete (SC-121)

    @property
    def created(self) -> bool:
        return self.code == "2.01"


@dataclass(frozen=True)
class AcceptableRanges:
    ranges: Mapping[str, tuple[int | Decimal, int | Decimal]] = field(
        default_factory=lambda: dict(ACCEPTABLE_RANGES))
    allow_heartbeat_disable: bool = True  # heartbeat-interval 0 (Figure 23 idle-config)

    def check(self, attr: str, value: int | Decimal) -> str | None:
        name = attr.replace("_", "-")
        if attr == "heartbeat_interval" and value == 0 and self.allow_heartbeat_disable:
            return None
        lo, hi = self.ranges[name]
        if not lo <= value <= hi:
            return f"{name} {value} outside {lo}-{hi}"
        return None


def decide_config_put(
    sid: int | None,
    mitigating: ConfigValues | None,
    idle: ConfigValues | None,
    *,
    current_sid: int | None = None,
    current: SessionConfig | None = None,
    acceptable: AcceptableRanges | None = None,
    reliable: bool = False,
) -> ConfigAccept | Reject | Ignore:
    """Decide a 'config' PUT (RFC 9132 §4.5.2).

    ``current_sid``/``current``: what this session has installed.  Over a reliable
    transport only heartbeat-interval is negotiated (§4.5): the loss parameters are
    refused with 4.00 as unknown/invalid there.
    """
    acceptable = acceptable or AcceptableRanges()
    if sid is None:
        return Reject("4.00", "sid Uri-Path is mandatory")  # SC-122
    if not 0 <= sid <= UINT32_MAX:
        return Reject("4.00", f"sid {sid} outside uint32")
    sets = [s for s in (mitigating, idle) if s is not None]
    if not any(s.present() for s in sets):
        return Reject("4.00", "at least one configuration attribute is required")  # SC-120
    if reliable:
        extra = sorted({a for s in sets for a in s.present() if a != "heartbeat_interval"})
        if extra:
            return Reject("4.00", f"not negotiable over a reliable transport: {', '.join(extra)}")
    problems = list(dict.fromkeys(p for s in sets for a, v in s.present().items() if (p := acceptable.check(a, v))))
    if problems:
        return Reject("4.22", "; ".join(problems))  # SC-125
    if current_sid is not None and sid < current_sid:
        return Ignore(f"sid {sid} lower than the installed sid {current_sid}")  # SC-119/SC-121
    base = current if (current is not None and current_sid == sid) else SessionConfig()
    new = SessionConfig(
        mitigating=(mitigating or ConfigValues()).apply_to(base.mitigating),
        idle=(idle or ConfigValues()).apply_to(base.idle),
    )
    if current_sid is not None and sid == current_sid:
        return ConfigAccept("2.04", new)  # SC-124
    deletes = (current_sid,) if current_sid is not None else ()
    return ConfigAccept("2.01", new, deletes)  # SC-123, SC-121


def parse_prefixes(prefixes: Iterable[str]) -> list[IPNetwork]:
    """Convenience for policies configured as text."""
    return [ipaddress.ip_network(p, strict=False) for p in prefixes]
