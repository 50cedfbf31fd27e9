"""The NACM enforcement point of one :class:`mgmt.manager.Management`, and the audit log.

Theory of operation: :class:`AccessControl` compiles ``/nacm`` of running into a
:class:`mgmt.nacm.Policy` whenever the running snapshot changes (the snapshot object is replaced
on every change, so an identity check is enough) and answers for a session (its NACM user name
is :attr:`SessionInfo.username`: the SSH user for NETCONF, the ``cert-to-name`` result for
RESTCONF):

* :meth:`check_exec` -- protocol operations (NETCONF base operations, get-schema,
  create-subscription, the agent's RPCs); denied -> ``access-denied`` (error-type protocol),
  ``denied-operations`` + 1;
* :meth:`check` / :meth:`applied` -- the :class:`mgmt.datastore.WriteGuard`: every node created,
  updated or deleted by the change (``lyd_diff``) must be permitted, else ``access-denied``
  (error-type application, error-path of the first denied node), ``denied-data-writes`` + 1 and
  nothing is applied; an applied change is logged on ``dots.mgmt.audit`` with user, protocol,
  session, datastore and the changed paths (never values);
* :meth:`filter` -- read access: denied nodes are removed from a result tree;
* :meth:`notification_allowed` -- per subscribed session, ``denied-notifications`` + 1.

An edit of ``/nacm`` itself is compiled before it is applied, so a rule this engine cannot
evaluate is refused with one line naming it instead of locking everybody out later.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mgmt.errors import MgmtError
from mgmt.interfaces import SessionInfo
from mgmt.nacm import EXEC, NACM_MODULE, NACM_TOP, READ, NacmConfigError, Policy, Target, default_nacm
from mgmt.nacm_data import Change, SchemaFlags, changes, filter_read
from mgmt.tree import ConfigTree

if TYPE_CHECKING:
    from mgmt.manager import Management

audit = logging.getLogger("dots.mgmt.audit")
log = logging.getLogger(__name__)
MAX_LOGGED_PATHS = 50


def who(session: SessionInfo) -> str:
    return f"user {session.username or '?'} ({session.transport} session {session.session_id}" \
           f"{' from ' + session.source_host if session.source_host else ''})"


class AccessControl:
    """NACM for every protocol front end of one Management."""

    def __init__(self, mgmt: Management, administrators: Sequence[str] = ()) -> None:
        self.mgmt = mgmt
        self.administrators = tuple(administrators)
        self.flags = SchemaFlags(mgmt.yc)
        self._snapshot: Any = None
        self._policy = Policy.compile(None)
        self._lock = threading.Lock()
        self.denied_operations = 0
        self.denied_data_writes = 0
        self.denied_notifications = 0

    # ------------------------------------------------------------ policy
    @property
    def policy(self) -> Policy:
        snap = self.mgmt.ds.running_snapshot
        if snap is not self._snapshot:
            with self._lock:
                try:
                    self._policy = Policy.compile(snap.get(NACM_TOP))
                except NacmConfigError as exc:  # only a startup file can get here
                    log.error("%s; using the default NACM (administrators only)", exc)
                    self._policy = Policy.compile(default_nacm(self.administrators)[NACM_TOP])
                self._snapshot = snap
        return self._policy

    def _session(self, session_id: int) -> SessionInfo | None:
        return self.mgmt.sessions.get(session_id)

    # ------------------------------------------------------------ exec
    def check_exec(self, session: SessionInfo, module: str, name: str) -> None:
        target = self.flags.operation("rpc", module, name)
        if self.policy.permits(session.username, EXEC, target):
            return
        self.denied_operations += 1
        audit.info("denied: %s may not invoke %s:%s", who(session), module, name)
        raise MgmtError("access-denied", f"access denied: operation {module}:{name}", type="protocol")

    # ------------------------------------------------------------ writes (WriteGuard)
    def check(self, session_id: int, target: str, old: ConfigTree, new: ConfigTree) -> list[Change] | None:
        session = self._session(session_id)
        if session is None:  # the agent itself (no protocol session): not subject to NACM
            return None
        found = changes(self.mgmt.yc, self.flags, old, new)
        policy = self.policy
        for change in found:
            if not policy.permits(session.username, change.op, change.target):
                self.denied_data_writes += 1
                audit.info("denied: %s may not %s %s in %s", who(session), change.op, change.path, target)
                raise MgmtError("access-denied", f"access denied: {change.op} of {change.path}", path=change.path)
        if target == "running" and any(c.target.module == NACM_MODULE for c in found):
            try:
                Policy.compile(new.to_dict().get(NACM_TOP))
            except NacmConfigError as exc:
                raise MgmtError("invalid-value", str(exc), path=f"/{NACM_TOP}") from exc
        return found

    def applied(self, session_id: int, target: str, token: Any) -> None:
        session = self._session(session_id)
        if session is None or token is None:
            return
        found: list[Change] = token
        if not found:
            audit.info("%s wrote %s: no change", who(session), target)
            return
        paths = [f"{c.op} {c.path}" for c in _tops(found)]
        more = f" (+{len(paths) - MAX_LOGGED_PATHS} more)" if len(paths) > MAX_LOGGED_PATHS else ""
        audit.info("%s changed %s: %s%s", who(session), target, "; ".join(paths[:MAX_LOGGED_PATHS]), more)

    # ------------------------------------------------------------ reads
    def filter(self, session: SessionInfo, tree: ConfigTree) -> None:
        policy = self.policy
        user = session.username
        if policy.reads_everything(user):
            return

        def allowed(t: Target) -> bool:
            return policy.permits(user, READ, t)

        filter_read(tree, self.flags, allowed, schema_only=not policy.needs_keys(user))

    def notification_allowed(self, session: SessionInfo, module: str, name: str) -> bool:
        if self.policy.permits(session.username, READ, self.flags.operation("notification", module, name)):
            return True
        self.denied_notifications += 1
        return False

    def state(self) -> dict[str, Any]:
        return {NACM_TOP: {"denied-operations": self.denied_operations,
                           "denied-data-writes": self.denied_data_writes,
                           "denied-notifications": self.denied_notifications}}


def _tops(found: list[Change]) -> list[Change]:
    """The changes without what lies inside a created / deleted list entry (for the log)."""
    out: list[Change] = []
    entry: Change | None = None
    for c in found:
        if entry is not None and c.op == entry.op and c.path.startswith(entry.path + "/"):
            continue
        entry = c if c.op in ("create", "delete") and c.path.endswith("]") else None
        out.append(c)
    return out
