"""The ``running``, ``candidate`` and ``startup`` datastores of dots-agent (RFC 6241).

Theory of operation: each datastore is a :class:`mgmt.tree.ConfigTree` (config only).  Every
operation that changes a datastore builds a *working copy*, edits it, validates it with
libyang against the full module set and only then swaps it in; a failure leaves the target
untouched.  ``candidate`` is ``None`` while it equals ``running`` (so direct edits of running
show through) and becomes its own tree once edited.  ``startup`` is persisted as RFC 7951
JSON to a file (atomic rename) and loaded at start.

A change of ``running`` is handed to the registered :class:`ConfigSubscriber` s; if one
raises, running is restored, the subscribers that already accepted are given the old config
back, and the operation fails with ``operation-failed``.  All of this runs on one asyncio loop
(protocol threads hop onto it), and ``_running_lock`` serialises changes of running.

Every write (edit-config, copy-config, delete-config, commit, RESTCONF) first passes the
:class:`WriteGuard` when one is set (NACM, :mod:`mgmt.access`): it sees the current and the
validated new tree, may refuse (nothing is applied), and is told once the change is in place
(the audit log).

Locks are per datastore and owned by a session id; :meth:`Datastores.session_closed` releases
them, discards an uncommitted locked candidate and rolls back a confirmed commit the session
issued without ``persist`` (RFC 6241 Section 8.4).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lxml import etree

from mgmt.edit import EditEngine
from mgmt.errors import MgmtError
from mgmt.interfaces import ConfigSubscriber, JsonTree
from mgmt.tree import ConfigTree
from mgmt.yangctx import YangContext

log = logging.getLogger(__name__)

DATASTORES = ("running", "candidate", "startup")


class WriteGuard(Protocol):
    """Authorises a change of a datastore and hears about it once applied."""

    def check(self, session_id: int, target: str, old: ConfigTree, new: ConfigTree) -> Any:
        """Raise MgmtError to refuse; the result is handed to :meth:`applied`."""
        ...

    def applied(self, session_id: int, target: str, token: Any) -> None:
        ...


@dataclass
class _Confirmed:
    rollback: ConfigTree
    session_id: int
    persist: str | None
    handle: asyncio.TimerHandle | None


class Datastores:
    """running / candidate / startup with locks, validation and confirmed commit."""

    def __init__(self, yc: YangContext, startup_file: Path | None = None,
                 initial: JsonTree | None = None) -> None:
        self.yc = yc
        self.engine = EditEngine(yc)
        self.startup_file = Path(startup_file) if startup_file else None
        self.subscribers: list[ConfigSubscriber] = []
        self.locks: dict[str, int] = {}
        self._candidate: ConfigTree | None = None
        self._confirmed: _Confirmed | None = None
        self._running_lock = asyncio.Lock()
        self.guard: WriteGuard | None = None
        if self.startup_file is not None and self.startup_file.exists():
            self.startup = ConfigTree.parse(yc, self.startup_file.read_text(), "json")
        elif initial:
            import json

            self.startup = ConfigTree.parse(yc, json.dumps(initial), "json")
        else:
            self.startup = ConfigTree.empty(yc)
        self.running = self.startup.copy()
        self.running_snapshot: JsonTree = self.running.to_dict()  # safe to read from any thread

    # ------------------------------------------------------------ access
    @property
    def candidate(self) -> ConfigTree:
        return self._candidate if self._candidate is not None else self.running

    def tree(self, name: str) -> ConfigTree:
        if name == "running":
            return self.running
        if name == "candidate":
            return self.candidate
        if name == "startup":
            return self.startup
        raise MgmtError("invalid-value", f"unknown datastore {name}", type="protocol")

    def _check_writable(self, name: str, session_id: int) -> None:
        holder = self.locks.get(name)
        if holder and holder != session_id:
            raise MgmtError("in-use", f"{name} is locked by session {holder}", type="protocol",
                            info={"session-id": str(holder)})

    # ------------------------------------------------------------ edits
    async def edit_config(self, session_id: int, target: str, config: etree._Element,
                          default_op: str = "merge", test_option: str = "test-then-set") -> None:
        """RFC 6241 edit-config on running or candidate; all-or-nothing (rollback-on-error)."""
        if target not in ("running", "candidate"):
            raise MgmtError("invalid-value", f"edit-config target {target} not supported",
                            type="protocol")
        await self.change(session_id, target, lambda work: self.engine.apply(work, config, default_op),
                          test_only=test_option == "test-only")

    async def change(self, session_id: int, target: str, mutate: Callable[[ConfigTree], None],
                     test_only: bool = False) -> None:
        """Mutate a copy of *target*, validate it, then swap it in (running: via subscribers)."""
        self._check_writable(target, session_id)
        work = self.tree(target).copy()
        try:
            mutate(work)
            work.validate()
        except BaseException:
            work.free()
            raise
        await self._guarded_install(session_id, target, work, test_only)

    async def replace(self, session_id: int, target: str, new: ConfigTree) -> None:
        """Replace *target* by a copy of *new* (copy-config); validated first."""
        self._check_writable(target, session_id)
        work = new.copy()
        try:
            work.validate()
        except BaseException:
            work.free()
            raise
        await self._guarded_install(session_id, target, work)

    async def _guarded_install(self, session_id: int, target: str, work: ConfigTree,
                               test_only: bool = False) -> None:
        token = None
        if self.guard is not None:
            try:
                token = self.guard.check(session_id, target, self.tree(target), work)
            except BaseException:
                work.free()
                raise
        if test_only:
            work.free()
            return
        await self._install(target, work)
        if self.guard is not None:
            self.guard.applied(session_id, target, token)

    def seed_running(self, add: Callable[[JsonTree], bool]) -> None:
        """Let *add* complete the running configuration (JSON) before any session; validated."""
        doc = self.running.to_dict()
        if not add(doc):
            return
        import json

        new = ConfigTree.parse(self.yc, json.dumps(doc), "json")
        self.running.free()
        self.running = new
        self.running_snapshot = new.to_dict()

    async def _install(self, target: str, work: ConfigTree) -> None:
        if target == "running":
            await self._set_running(work)
        elif target == "candidate":
            if self._candidate is not None:
                self._candidate.free()
            self._candidate = work
        elif target == "startup":
            self._persist(work)
            self.startup.free()
            self.startup = work

    async def _set_running(self, new: ConfigTree) -> None:
        async with self._running_lock:
            old = self.running
            new_json, old_json = new.to_dict(), old.to_dict()
            self.running = new
            accepted: list[ConfigSubscriber] = []
            for sub in list(self.subscribers):
                try:
                    await sub.apply(new_json, old_json)
                    accepted.append(sub)
                except Exception as exc:  # the agent refused: roll back
                    self.running = old
                    for done in reversed(accepted):
                        try:
                            await done.apply(old_json, new_json)
                        except Exception:  # pragma: no cover - best effort
                            log.exception("subscriber failed while rolling back")
                    new.free()
                    raise MgmtError("operation-failed",
                                    f"configuration refused by the agent: {exc}") from exc
            self.running_snapshot = new_json
            if self._candidate is not None and self._candidate.same_as(new):
                self._candidate.free()
                self._candidate = None
            old.free()

    def _persist(self, tree: ConfigTree) -> None:
        if self.startup_file is None:
            return
        tmp = self.startup_file.with_suffix(self.startup_file.suffix + ".tmp")
        tmp.write_text(tree.to_json(pretty=True))
        os.replace(tmp, self.startup_file)

    # ------------------------------------------------------------ other operations
    async def copy_config(self, session_id: int, source: str | ConfigTree, target: str) -> None:
        src = source if isinstance(source, ConfigTree) else self.tree(source)
        await self.replace(session_id, target, src)

    async def delete_config(self, session_id: int, target: str) -> None:
        if target == "running":
            raise MgmtError("operation-not-supported", "running cannot be deleted", type="protocol")
        await self.replace(session_id, target, ConfigTree.empty(self.yc))

    def validate(self, source: str | ConfigTree) -> None:
        work = (source if isinstance(source, ConfigTree) else self.tree(source)).copy()
        try:
            work.validate()
        finally:
            work.free()

    def discard_changes(self) -> None:
        if self._candidate is not None:
            self._candidate.free()
            self._candidate = None

    async def commit(self, session_id: int, confirmed: bool = False, timeout: float = 600.0,
                     persist: str | None = None, persist_id: str | None = None) -> None:
        """Commit candidate to running; confirmed-commit with timeout / persist (RFC 6241 8.4)."""
        self._check_writable("running", session_id)
        self._check_writable("candidate", session_id)
        pending = self._confirmed
        if pending is not None:
            if pending.persist is not None and persist_id != pending.persist:
                raise MgmtError("invalid-value", "persist-id does not match the confirmed commit",
                                type="protocol")
            if pending.persist is None and pending.session_id != session_id:
                raise MgmtError("in-use", "another session has a confirmed commit pending",
                                type="protocol", info={"session-id": str(pending.session_id)})
        rollback = pending.rollback if pending is not None else self.running.copy()
        if self._candidate is not None:
            await self.replace(session_id, "running", self._candidate)
        if pending is not None and pending.handle is not None:
            pending.handle.cancel()
        self._confirmed = None
        if confirmed:
            loop = asyncio.get_running_loop()
            handle = loop.call_later(timeout, lambda: loop.create_task(self._expire()))
            self._confirmed = _Confirmed(rollback, session_id, persist, handle)
        else:
            rollback.free()

    async def cancel_commit(self, session_id: int, persist_id: str | None = None) -> None:
        pending = self._confirmed
        if pending is None:
            raise MgmtError("operation-failed", "no confirmed commit is pending", type="protocol")
        if pending.persist is not None and persist_id != pending.persist:
            raise MgmtError("invalid-value", "persist-id does not match", type="protocol")
        if pending.persist is None and pending.session_id != session_id:
            raise MgmtError("invalid-value", "confirmed commit belongs to another session",
                            type="protocol")
        await self._rollback_confirmed()

    @property
    def confirmed_pending(self) -> bool:
        return self._confirmed is not None

    async def _expire(self) -> None:
        with contextlib.suppress(MgmtError):
            await self._rollback_confirmed()

    async def _rollback_confirmed(self) -> None:
        pending, self._confirmed = self._confirmed, None
        if pending is None:
            return
        if pending.handle is not None:
            pending.handle.cancel()
        log.info("confirmed commit rolled back")
        self.discard_changes()
        try:
            await self._set_running(pending.rollback)
        except MgmtError:
            log.exception("rollback of confirmed commit refused by the agent")
            raise

    # ------------------------------------------------------------ locks
    def lock(self, session_id: int, target: str) -> None:
        self.tree(target)
        holder = self.locks.get(target)
        if holder:
            raise MgmtError("lock-denied", f"{target} is locked by session {holder}", type="protocol",
                            info={"session-id": str(holder)})
        if target == "candidate" and self._candidate is not None:
            raise MgmtError("lock-denied", "candidate has uncommitted changes", type="protocol",
                            info={"session-id": "0"})
        if target == "running" and self._confirmed is not None \
                and self._confirmed.session_id != session_id:
            raise MgmtError("lock-denied", "a confirmed commit is pending", type="protocol",
                            info={"session-id": str(self._confirmed.session_id)})
        self.locks[target] = session_id

    def unlock(self, session_id: int, target: str) -> None:
        self.tree(target)
        holder = self.locks.get(target)
        if holder != session_id:
            raise MgmtError("operation-failed", f"{target} is not locked by this session",
                            type="protocol", info={"session-id": str(holder or 0)})
        del self.locks[target]
        if target == "candidate":
            self.discard_changes()

    async def session_closed(self, session_id: int) -> None:
        for target, holder in list(self.locks.items()):
            if holder == session_id:
                del self.locks[target]
                if target == "candidate":
                    self.discard_changes()
        pending = self._confirmed
        if pending is not None and pending.session_id == session_id and pending.persist is None:
            with contextlib.suppress(MgmtError):
                await self._rollback_confirmed()

    def close(self) -> None:
        if self._confirmed is not None and self._confirmed.handle is not None:
            self._confirmed.handle.cancel()

    def lock_holders(self) -> dict[str, Any]:
        return dict(self.locks)
