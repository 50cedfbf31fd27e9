"""One change of the mitigation service, and how to undo it (see ``mitigations``' docstring).

:class:`Work` is what a change decided under the service lock leaves to await outside it: its
store writes, its mitigator operations, the entries whose observers to call.  A *gated* change
(client PUT/DELETE, Call Home consent) also carries a gate the enforcer awaits before running its
operations (True once every write committed) and :class:`Snapshot` s of the requests it touched,
taken before it first touched them, to put them back when a write failed.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.protocol.mitigation import Mitigation
from agent.protocol.targets import Targets
from agent.store.interface import MitigationRecord

if TYPE_CHECKING:
    from .mitigations import Entry


@dataclass
class Snapshot:
    """A request as it was before a change (``entry`` None: there was none), to undo that change."""

    entry: Entry | None
    machine: Mitigation | None = None
    members: dict[str, Any] = field(default_factory=dict)
    targets: Targets | None = None
    record: MitigationRecord | None = None
    resolved: tuple[str, ...] = ()

    @classmethod
    def of(cls, entry: Entry | None) -> Snapshot:
        if entry is None:
            return cls(None)
        return cls(entry, copy.copy(entry.machine), entry.members, entry.targets, entry.record, entry.resolved)

    def restore(self) -> Entry | None:
        e = self.entry
        if e is not None:
            assert self.machine is not None and self.targets is not None and self.record is not None
            e.machine, e.members, e.targets, e.record, e.resolved = (
                copy.copy(self.machine), self.members, self.targets, self.record, self.resolved)
        return e


@dataclass
class Work:
    """What one change left to await outside the lock.

    A gated change (``Work.gated()``) has its mitigator operations wait for ``gate`` (True once
    every write committed, False when one failed) and keeps ``snapshots`` to undo itself.
    """

    writes: list[asyncio.Future[Any]] = field(default_factory=list)
    enforce: list[asyncio.Future[Any]] = field(default_factory=list)
    notify: list[Entry] = field(default_factory=list)
    gate: asyncio.Future[bool] | None = None
    created: list[Entry] = field(default_factory=list)  # reported once committed
    snapshots: dict[tuple[str, int], Snapshot] = field(default_factory=dict)
    _settled: asyncio.Future[Any] | None = None

    @classmethod
    def gated(cls) -> Work:
        return cls(gate=asyncio.get_running_loop().create_future())

    def keep(self, key: tuple[str, int], entry: Entry | None) -> None:
        """Remember *entry* (the request at *key*) before this change first touches it."""
        if self.gate is not None and key not in self.snapshots:
            self.snapshots[key] = Snapshot.of(entry)

    def seal(self) -> None:
        """No more writes (called under the lock): the gate opens once they have all settled."""
        gate = self.gate
        self._settled = asyncio.gather(*self.writes, return_exceptions=True)

        def settled(f: asyncio.Future[Any]) -> None:
            if gate is not None and not gate.done():
                gate.set_result(not f.cancelled() and not any(isinstance(r, BaseException) for r in f.result()))

        self._settled.add_done_callback(settled)

    async def failure(self) -> BaseException | None:
        """Wait for the writes (even if the caller is cancelled, they run on); the first error."""
        if self._settled is None:
            self.seal()
        assert self._settled is not None
        results = await asyncio.shield(self._settled)
        return next((r for r in results if isinstance(r, BaseException)), None)
