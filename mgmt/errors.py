"""Protocol-neutral management errors (RFC 6241 Appendix A / RFC 8040 Section 7).

Theory of operation: the datastore and edit engine raise :class:`MgmtError` carrying the
``error-type``, ``error-tag``, an optional ``error-app-tag``, ``error-path`` and message.  The
NETCONF layer renders it as ``<rpc-error>``, RESTCONF as ``ietf-restconf:errors`` with the
HTTP status of RFC 8040 Section 7.  :func:`from_libyang` maps libyang's stored validation
records to the tags of RFC 7950 Section 15 (must -> operation-failed/must-violation, leafref ->
data-missing/instance-required, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mgmt.yangctx import LyError

# libyang LY_VECODE values (libyang 2.1 log.h)
_LYVE_SYNTAX_XML = 3
_LYVE_REFERENCE = 4
_LYVE_DATA = 9

HTTP_STATUS = {
    "in-use": 409, "invalid-value": 400, "too-big": 413, "missing-attribute": 400,
    "bad-attribute": 400, "unknown-attribute": 400, "missing-element": 400, "bad-element": 400,
    "unknown-element": 400, "unknown-namespace": 400, "access-denied": 403, "lock-denied": 409,
    "resource-denied": 409, "rollback-failed": 500, "data-exists": 409, "data-missing": 409,
    "operation-not-supported": 501, "operation-failed": 500, "partial-operation": 500,
    "malformed-message": 400,
}


@dataclass
class MgmtError(Exception):
    """One rpc-error."""

    tag: str
    message: str
    type: str = "application"
    path: str | None = None
    app_tag: str | None = None
    info: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        return f"{self.type}/{self.tag}{where}: {self.message}"

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.tag, 400)


def _tag_for(err: LyError) -> str:
    app = err.app_tag or ""
    if app in ("must-violation", "data-not-unique", "too-many-elements", "too-few-elements"):
        return "operation-failed"
    if app in ("instance-required", "missing-choice"):
        return "data-missing"
    if err.message.startswith("Mandatory node") or "does not exist" in err.message:
        return "data-missing"
    if err.vecode == _LYVE_REFERENCE and "not found as a child" in err.message:
        return "unknown-element"
    if "No module with namespace" in err.message or "No module named" in err.message:
        return "unknown-namespace"
    if "Duplicate instance" in err.message:
        return "data-exists"
    return "invalid-value"


def from_libyang(errors: list[LyError], fallback: str = "validation failed") -> MgmtError:
    """The first libyang error record as a :class:`MgmtError` (later records go to error-info)."""
    if not errors:
        return MgmtError("operation-failed", fallback)
    first = errors[0]
    err = MgmtError(_tag_for(first), first.message, path=first.path, app_tag=first.app_tag)
    for i, more in enumerate(errors[1:4], start=1):
        err.info[f"more-{i}"] = f"{more.message} ({more.path})" if more.path else more.message
    return err
