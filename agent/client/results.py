"""Values the DOTS client API returns and raises: results, status updates, errors.

Everything carries RFC 7951 members (the JSON notation of RFC 9132's examples) decoded by the
codec, plus a few typed conveniences; ``to_json_obj`` gives what ``dots client --json`` prints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from agent.protocol.session import SessionConfig, TransmissionConfig

CONFIG_NAMES = {"heartbeat-interval": "heartbeat_interval", "missing-hb-allowed": "missing_hb_allowed",
                "probing-rate": "probing_rate", "max-retransmit": "max_retransmit",
                "ack-timeout": "ack_timeout", "ack-random-factor": "ack_random_factor"}
DECIMAL_ATTRS = ("ack_timeout", "ack_random_factor")


@dataclass(frozen=True)
class ConflictInformation:
    """'conflict-information' of a 2.01 or 4.09 answer (RFC 9132 §4.4.1.3)."""

    conflict_status: str | None = None  # e.g. "request-inactive-other-active"
    conflict_cause: str | None = None  # e.g. "overlapping-targets", "cuid-collision"
    retry_timer: int | None = None
    conflict_scope: dict[str, Any] = field(default_factory=dict)  # targets and/or mid of the other request

    @classmethod
    def from_members(cls, members: dict[str, Any] | None) -> ConflictInformation | None:
        if not members:
            return None
        retry = members.get("retry-timer")
        return cls(members.get("conflict-status"), members.get("conflict-cause"),
                   int(retry) if retry is not None else None, dict(members.get("conflict-scope") or {}))

    def describe(self) -> str:
        parts = [p for p in (self.conflict_cause, self.conflict_status) if p]
        if self.retry_timer is not None:
            parts.append(f"retry in {self.retry_timer} s")
        if self.conflict_scope:
            parts.append("with " + ", ".join(f"{k}={v}" for k, v in self.conflict_scope.items()))
        return "; ".join(parts)


class DotsError(Exception):
    """A DOTS error response (4.xx/5.xx) with its diagnostic payload (SC-005)."""

    def __init__(self, code: str, diagnostic: str, *, conflict: ConflictInformation | None = None,
                 max_age: int | None = None, details: dict[str, Any] | None = None) -> None:
        text = f"{code} {diagnostic}".strip()
        if conflict is not None:
            text += f" [conflict: {conflict.describe()}]"
        super().__init__(text)
        self.code = code
        self.diagnostic = diagnostic
        self.conflict = conflict
        self.max_age = max_age
        self.details = details or {}

    def to_json_obj(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "diagnostic": self.diagnostic}
        if self.conflict is not None:
            out["conflict-information"] = _compact(asdict(self.conflict))
        if self.max_age is not None:
            out["max-age"] = self.max_age
        out.update(self.details)
        return out


@dataclass(frozen=True)
class MitigationResult:
    """The answer to a mitigation PUT (create, lifetime renewal, efficacy update)."""

    mid: int
    code: str  # "2.01" Created or "2.04" Changed
    lifetime: int | None = None  # granted lifetime (seconds, -1 indefinite) when the server said
    conflict: ConflictInformation | None = None  # e.g. accepted but inactive (2.01 + conflict-status 1)
    diagnostic: str = ""

    @property
    def created(self) -> bool:
        return self.code == "2.01"

    def to_json_obj(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mid": self.mid, "code": self.code}
        if self.lifetime is not None:
            out["lifetime"] = self.lifetime
        if self.conflict is not None:
            out["conflict-information"] = _compact(asdict(self.conflict))
        if self.diagnostic:
            out["diagnostic"] = self.diagnostic
        return out


@dataclass(frozen=True)
class StatusUpdate:
    """One status answer or Observe notification: the scopes the server reported."""

    code: str
    scopes: list[dict[str, Any]]
    observe: int | None = None
    diagnostic: str = ""

    @property
    def final(self) -> bool:
        """The observation ended (e.g. 4.04 once the request is gone)."""
        return not self.code.startswith("2.")

    def to_json_obj(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "scope": self.scopes}
        if self.diagnostic:
            out["diagnostic"] = self.diagnostic
        return out


@dataclass(frozen=True)
class ConfigResult:
    """Session configuration as the server reported it (§4.5.1), with min/max when sid was absent."""

    members: dict[str, Any]  # mitigating-config / idle-config RFC 7951 members
    sid: int | None = None
    max_age: int | None = None
    code: str = "2.05"

    @property
    def config(self) -> SessionConfig:
        return session_config_from(self.members)

    def to_json_obj(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "ietf-dots-signal-channel:signal-config": self.members}
        if self.sid is not None:
            out["sid"] = self.sid
        if self.max_age is not None:
            out["max-age"] = self.max_age
        return out


def transmission_from(members: dict[str, Any] | None, base: TransmissionConfig | None = None) -> TransmissionConfig:
    """Current values of one config set (RFC 7951 members) over *base* (defaults)."""
    values = dict((base or TransmissionConfig()).__dict__)
    for name, attr in CONFIG_NAMES.items():
        node = (members or {}).get(name) or {}
        if attr in DECIMAL_ATTRS:
            if "current-value-decimal" in node:
                values[attr] = Decimal(str(node["current-value-decimal"]))
        elif "current-value" in node:
            values[attr] = int(node["current-value"])
    return TransmissionConfig(**values)


def session_config_from(members: dict[str, Any]) -> SessionConfig:
    return SessionConfig(mitigating=transmission_from(members.get("mitigating-config")),
                         idle=transmission_from(members.get("idle-config")))


def _compact(d: dict[str, Any]) -> dict[str, Any]:
    return {k.replace("_", "-"): v for k, v in d.items() if v not in (None, {}, [])}
