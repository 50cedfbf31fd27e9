"""The durable store seam: records the DOTS server keeps across restarts, and the ``Store`` protocol.

Theory of operation
-------------------
The signal-channel server is the only writer.  It builds a :class:`MitigationRecord` (or a
:class:`SessionConfigRecord`) from a validated request, awaits :meth:`Store.put_mitigation`, and
only then answers the DOTS client: a ``put_*`` coroutine returns once the change is durable
(committed and synced), so an acknowledged request survives a crash of the process.

The store treats the CBOR parts (``scope``, ``conflict``, the session-configuration blobs) as
opaque bytes: the codec owns their format; the store owns identity (``(cuid, mid)``), lifecycle
times and counters, which it can query (:meth:`Store.active_mitigations`, :meth:`Store.purge_expired`).

Lifecycle vocabulary (RFC 9132 §4.4.1, Table 3 status values):

* *active*: status 1-4 (mitigation in progress / successfully mitigated / attack stopped /
  capability exceeded) or 5 (client withdrew, *active-but-terminating* until
  ``terminating_until``).  Status 8 is a pre-configured (``trigger-mitigation`` false) request
  that waits for signal loss: not active.  6 and 7 are final.
* *expired*: ``expires_at`` (lifetime end, ``None`` when indefinite) or ``terminating_until``
  lies in the past.

:func:`is_active` is the single definition of that rule; back-ends implement it in their own
query language and tests compare against it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from agent.numbers.rfc9132 import Status

ACTIVE_STATUSES: frozenset[int] = frozenset(
    {
        Status.ATTACK_MITIGATION_IN_PROGRESS,
        Status.ATTACK_SUCCESSFULLY_MITIGATED,
        Status.ATTACK_STOPPED,
        Status.ATTACK_EXCEEDED_CAPABILITY,
        Status.DOTS_CLIENT_WITHDRAWN_MITIGATION,
    }
)
"""Statuses under which a mitigation is installed on the mitigator."""


class StoreError(Exception):
    """The store cannot be used: unreadable, corrupted, foreign or too-new file, or closed."""


@dataclass(kw_only=True)
class MitigationRecord:
    """One mitigation request as the server granted it (RFC 9132 §4.4.1), keyed by ``(cuid, mid)``."""

    cuid: str
    mid: int
    scope: bytes  # CBOR of the scope entry (opaque: the codec owns the format)
    status: int  # RFC 9132 Status
    lifetime: int  # as granted: seconds, or -1 (indefinite)
    cdid: str | None = None
    trigger_mitigation: bool = True
    expires_at: float | None = None  # epoch seconds; None = indefinite
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    mitigation_start: float | None = None
    terminating_until: float | None = None  # active-but-terminating deadline
    bytes_dropped: int = 0
    pkts_dropped: int = 0
    bps_dropped: int = 0
    pps_dropped: int = 0
    mitigator: str = ""
    conflict: bytes | None = None  # CBOR of conflict-information, opaque

    def replace(self, **changes: object) -> MitigationRecord:
        """A copy with ``changes`` applied (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass(kw_only=True)
class SessionConfigRecord:
    """The session configuration a client set with PUT /config (RFC 9132 §4.5), one per cuid."""

    cuid: str
    sid: int
    mitigating: bytes  # CBOR of mitigating-config, opaque
    idle: bytes  # CBOR of idle-config, opaque
    updated_at: float = field(default_factory=time.time)


def is_active(rec: MitigationRecord, now: float) -> bool:
    """True when ``rec`` should be installed on the mitigator at time ``now``."""
    if rec.status not in ACTIVE_STATUSES:
        return False
    if rec.expires_at is not None and rec.expires_at <= now:
        return False
    return rec.terminating_until is None or rec.terminating_until > now


def is_expired(rec: MitigationRecord, now: float) -> bool:
    """True when the lifetime or the active-but-terminating period of ``rec`` is over at ``now``."""
    return (rec.expires_at is not None and rec.expires_at <= now) or (
        rec.terminating_until is not None and rec.terminating_until <= now
    )


@runtime_checkable
class Store(Protocol):
    """Durable storage of mitigation requests and session configurations.

    Every mutating coroutine returns only once its effect is durable.  Methods may be called
    concurrently from one event loop; implementations serialise them.
    """

    async def open(self) -> None:
        """Open (creating or migrating when needed); raises :class:`StoreError` on a bad file."""

    async def close(self) -> None:
        """Flush and release resources; idempotent."""

    async def put_mitigation(self, rec: MitigationRecord) -> None:
        """Insert or replace the record with key ``(rec.cuid, rec.mid)``."""

    async def put_mitigations(self, recs: Iterable[MitigationRecord]) -> None:
        """Upsert several records in one transaction (all or none)."""

    async def get_mitigation(self, cuid: str, mid: int) -> MitigationRecord | None:
        """The record, or ``None``."""

    async def list_mitigations(self, cuid: str | None = None) -> list[MitigationRecord]:
        """All records (of one client when ``cuid`` is given), ordered by ``(cuid, mid)``."""

    async def delete_mitigation(self, cuid: str, mid: int) -> bool:
        """Delete; True when a record was there."""

    async def replace_mitigations(
        self, delete: Sequence[tuple[str, int]], put: Sequence[MitigationRecord]
    ) -> int:
        """Delete ``delete`` keys and upsert ``put`` records in one transaction.

        Used when a request with a higher mid replaces lower ones (RFC 9132 §4.4.1): no reader
        or crash can observe both or neither.  Returns the number of records deleted.
        """

    async def update_counters(
        self,
        cuid: str,
        mid: int,
        *,
        bytes_dropped: int,
        pkts_dropped: int,
        bps_dropped: int = 0,
        pps_dropped: int = 0,
        updated_at: float | None = None,
    ) -> bool:
        """Store mitigator counters; True when the record exists."""

    async def put_session_config(self, rec: SessionConfigRecord) -> None:
        """Insert or replace the session configuration of ``rec.cuid``."""

    async def get_session_config(self, cuid: str) -> SessionConfigRecord | None:
        """The session configuration of ``cuid``, or ``None``."""

    async def delete_session_config(self, cuid: str) -> bool:
        """Delete; True when a record was there."""

    async def active_mitigations(self, now: float | None = None) -> list[MitigationRecord]:
        """Records for which :func:`is_active` holds at ``now`` (default: current time)."""

    async def purge_expired(self, now: float) -> list[MitigationRecord]:
        """Delete every record for which :func:`is_expired` holds and return them."""
