"""SQLite back-end of the :class:`~agent.store.interface.Store` seam (stdlib ``sqlite3``).

Theory of operation
-------------------
*One connection, one thread.*  A dedicated daemon thread owns the only connection; coroutines
post jobs (plain functions of the connection) on a queue and await an asyncio future that the
thread resolves with ``loop.call_soon_threadsafe``.  The event loop never blocks on disk I/O and
every statement is serialised, so no locking is needed above SQLite.

*Durable before return (group commit).*  The database runs in WAL mode with
``synchronous=FULL``: every COMMIT fsyncs the write-ahead log, so a committed transaction survives
``kill -9`` and, as far as the OS and disk honour fsync, power loss.  A write coroutine resolves
only after its COMMIT returned.  When several jobs are waiting, the thread runs them all in one
transaction (each inside its own SAVEPOINT, so one failing job does not undo the others) and pays
one fsync for the batch: concurrent writers get group commit for free, a lone writer still gets
one transaction per call.

*Failures.*  A failure of the storage (disk full, I/O error, read-only or corrupted file) reaches
the caller as :class:`~agent.store.interface.StoreError`; a record that violates a constraint
raises its ``sqlite3.IntegrityError``.  Either way a write that raised was not committed.  A read never
shares a transaction with writes, so it sees committed data only (a write that fails at COMMIT
cannot have been observed).

*Integrity.*  ``(cuid, mid)`` is the primary key; CHECK constraints reject impossible values
(negative mid, lifetime 0, unknown status, negative counters).  The file carries an
``application_id`` and a ``schema_version`` table.  On open: a file that is not SQLite, belongs
to another application, has a newer schema or fails ``PRAGMA quick_check`` raises
:class:`~agent.store.interface.StoreError` with the path; an older schema is upgraded by the
functions in :data:`MIGRATIONS` (``MIGRATIONS[n]`` moves version ``n-1`` to ``n``) in one
transaction.

A job cannot be cancelled once queued: if the awaiting task is cancelled the write still happens.
Counters are stored as SQLite INTEGER (signed 64-bit).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from agent.store.interface import (
    ACTIVE_STATUSES,
    MitigationRecord,
    SessionConfigRecord,
    StoreError,
)

log = logging.getLogger("dots.store")

T = TypeVar("T")

APPLICATION_ID = 0x444F5453  # "DOTS"
SCHEMA_VERSION = 1
SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA_V1 = """
CREATE TABLE schema_version (
    version INTEGER NOT NULL CHECK (version >= 1),
    migrated_at REAL NOT NULL
);
CREATE TABLE mitigation (
    cuid TEXT NOT NULL CHECK (length(cuid) > 0),
    mid INTEGER NOT NULL CHECK (mid >= 0 AND mid <= 4294967295),
    cdid TEXT,
    scope BLOB NOT NULL,
    trigger_mitigation INTEGER NOT NULL CHECK (trigger_mitigation IN (0, 1)),
    status INTEGER NOT NULL CHECK (status BETWEEN 1 AND 8),
    lifetime INTEGER NOT NULL CHECK (lifetime = -1 OR lifetime > 0),
    expires_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    mitigation_start REAL,
    terminating_until REAL,
    bytes_dropped INTEGER NOT NULL DEFAULT 0 CHECK (bytes_dropped >= 0),
    pkts_dropped INTEGER NOT NULL DEFAULT 0 CHECK (pkts_dropped >= 0),
    bps_dropped INTEGER NOT NULL DEFAULT 0 CHECK (bps_dropped >= 0),
    pps_dropped INTEGER NOT NULL DEFAULT 0 CHECK (pps_dropped >= 0),
    mitigator TEXT NOT NULL DEFAULT '',
    conflict BLOB,
    PRIMARY KEY (cuid, mid)
) WITHOUT ROWID;
CREATE INDEX mitigation_status ON mitigation (status);
CREATE TABLE session_config (
    cuid TEXT PRIMARY KEY CHECK (length(cuid) > 0),
    sid INTEGER NOT NULL CHECK (sid >= 0),
    mitigating BLOB NOT NULL,
    idle BLOB NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
"""

Migration = Callable[[sqlite3.Connection], None]

MIGRATIONS: dict[int, Migration] = {}
"""``MIGRATIONS[n](conn)`` upgrades schema version ``n - 1`` to ``n`` (inside a transaction)."""

_MIT_COLUMNS = (
    "cuid",
    "mid",
    "cdid",
    "scope",
    "trigger_mitigation",
    "status",
    "lifetime",
    "expires_at",
    "created_at",
    "updated_at",
    "mitigation_start",
    "terminating_until",
    "bytes_dropped",
    "pkts_dropped",
    "bps_dropped",
    "pps_dropped",
    "mitigator",
    "conflict",
)
_MIT_SELECT = f"SELECT {', '.join(_MIT_COLUMNS)} FROM mitigation"
_MIT_UPSERT = (
    f"INSERT OR REPLACE INTO mitigation ({', '.join(_MIT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_MIT_COLUMNS))})"
)
_ACTIVE_SQL = ", ".join(str(int(s)) for s in sorted(ACTIVE_STATUSES))


def _rec_to_row(rec: MitigationRecord) -> tuple[Any, ...]:
    return (
        rec.cuid,
        int(rec.mid),
        rec.cdid,
        bytes(rec.scope),
        1 if rec.trigger_mitigation else 0,
        int(rec.status),
        int(rec.lifetime),
        rec.expires_at,
        rec.created_at,
        rec.updated_at,
        rec.mitigation_start,
        rec.terminating_until,
        int(rec.bytes_dropped),
        int(rec.pkts_dropped),
        int(rec.bps_dropped),
        int(rec.pps_dropped),
        rec.mitigator,
        None if rec.conflict is None else bytes(rec.conflict),
    )


def _row_to_rec(row: Sequence[Any]) -> MitigationRecord:
    (cuid, mid, cdid, scope, trig, status, lifetime, expires_at, created_at, updated_at, start,
     term, bd, pd, bpsd, ppsd, mitigator, conflict) = row  # fmt: skip
    return MitigationRecord(
        cuid=cuid,
        mid=mid,
        cdid=cdid,
        scope=bytes(scope),
        trigger_mitigation=bool(trig),
        status=status,
        lifetime=lifetime,
        expires_at=expires_at,
        created_at=created_at,
        updated_at=updated_at,
        mitigation_start=start,
        terminating_until=term,
        bytes_dropped=bd,
        pkts_dropped=pd,
        bps_dropped=bpsd,
        pps_dropped=ppsd,
        mitigator=mitigator,
        conflict=None if conflict is None else bytes(conflict),
    )


@dataclass(slots=True)
class _Job:
    fn: Callable[[sqlite3.Connection], Any]
    write: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    is_open: bool = False


_CALLER_ERRORS = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.DataError, sqlite3.InterfaceError)


def _store_error(path: Path, exc: BaseException) -> BaseException:
    """Failures of the storage (disk full, I/O, corruption) become :class:`StoreError` with the
    path; a caller's bad record (constraint violation) keeps its ``sqlite3`` class."""
    if isinstance(exc, sqlite3.Error) and not isinstance(exc, _CALLER_ERRORS):
        err = StoreError(f"{path}: {exc}")
        err.__cause__ = exc
        return err
    return exc


def _resolve(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class SqliteStore:
    """:class:`~agent.store.interface.Store` on one SQLite file (see the module docstring).

    ``batch_max`` bounds how many queued jobs share one transaction; ``quick_check`` runs
    ``PRAGMA quick_check`` on open (cost grows with the file); ``migrations`` overrides
    :data:`MIGRATIONS` and ``schema_version`` the target version (both for tests).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        batch_max: int = 512,
        quick_check: bool = True,
        migrations: Mapping[int, Migration] | None = None,
        schema_version: int = SCHEMA_VERSION,
    ) -> None:
        self.path = Path(path)
        self.batch_max = max(1, batch_max)
        self.quick_check = quick_check
        self.migrations: Mapping[int, Migration] = MIGRATIONS if migrations is None else migrations
        self.schema_version = schema_version
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._closing = False
        self._carry: _Job | None = None  # a read that ended the previous batch of writes
        self.commits = 0  # number of COMMITs (group-commit statistics)

    # --- lifecycle ----------------------------------------------------------------------
    async def open(self) -> None:
        if self._thread is not None:
            return
        self._closing = False
        name = f"sqlite-store:{self.path.name}"
        self._thread = threading.Thread(target=self._worker, name=name, daemon=True)
        self._thread.start()
        try:
            await self._submit(self._open_sync, write=False, is_open=True)
        except BaseException:
            await self._stop()
            raise

    async def close(self) -> None:
        if self._thread is None:
            return
        self._closing = True
        await self._stop()

    async def _stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self._queue.put(None)
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
        self._thread = None

    async def __aenter__(self) -> SqliteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- worker thread ------------------------------------------------------------------
    def _submit(
        self, fn: Callable[[sqlite3.Connection], T], *, write: bool, is_open: bool = False
    ) -> asyncio.Future[T]:
        if self._thread is None or self._closing:
            raise StoreError(f"store {self.path} is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(fn, write, loop, fut, is_open))
        return fut

    def _worker(self) -> None:
        stop = False
        while not stop:
            job, self._carry = (self._carry, None) if self._carry is not None else (self._queue.get(), None)
            if job is None:
                break
            batch = [job]
            while len(batch) < self.batch_max:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                if nxt.write != job.write:  # reads and writes never share a transaction
                    self._carry = nxt
                    break
                batch.append(nxt)
            try:
                self._run_batch(batch)
            except BaseException as e:  # noqa: BLE001 - keep the worker alive, fail the batch
                if isinstance(e, sqlite3.Error):  # disk full, I/O error...: one line, no traceback
                    log.error("store %s: batch of %d failed: %s", self.path, len(batch), e)
                else:
                    log.exception("store %s: batch failed", self.path)
                if self._conn is not None and self._conn.in_transaction:
                    try:
                        self._conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                err = StoreError(f"{self.path}: {type(e).__name__}: {e}")
                for j in batch:
                    try:
                        j.loop.call_soon_threadsafe(_resolve, j.future, None, err)
                    except RuntimeError:  # the caller's loop is closed
                        pass
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:  # pragma: no cover - nothing left to do
                log.exception("closing %s", self.path)
            self._conn = None

    def _run_batch(self, batch: list[_Job]) -> None:
        results: list[tuple[Any, BaseException | None]] = []
        conn = self._conn
        in_txn = conn is not None and any(j.write for j in batch)
        if in_txn:
            assert conn is not None
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                err = StoreError(f"{self.path}: cannot begin transaction: {e}")
                for j in batch:
                    j.loop.call_soon_threadsafe(_resolve, j.future, None, err)
                return
        for i, j in enumerate(batch):
            if conn is None and not j.is_open:
                results.append((None, StoreError(f"store {self.path} is not open")))
                continue
            if j.write and in_txn:
                assert conn is not None
                sp = f"j{i}"
                conn.execute(f"SAVEPOINT {sp}")
                try:
                    res = j.fn(conn)
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    if not conn.in_transaction:  # SQLite rolled everything back (disk full): fail the batch
                        raise
                    conn.execute(f"ROLLBACK TO {sp}")
                    conn.execute(f"RELEASE {sp}")
                    results.append((None, _store_error(self.path, e)))
                else:
                    conn.execute(f"RELEASE {sp}")
                    results.append((res, None))
            else:
                try:
                    results.append((j.fn(conn), None))  # type: ignore[arg-type]  # open job: conn None
                except BaseException as e:  # noqa: BLE001
                    results.append((None, _store_error(self.path, e)))
                conn = self._conn  # _open_sync may have created it
        if in_txn:
            assert conn is not None
            try:
                conn.execute("COMMIT")
                self.commits += 1
            except sqlite3.Error as e:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                err = StoreError(f"{self.path}: commit failed: {e}")
                results = [(None, err) if j.write else r for j, r in zip(batch, results, strict=True)]
        for j, (res, exc) in zip(batch, results, strict=True):
            j.loop.call_soon_threadsafe(_resolve, j.future, res, exc)

    # --- open / schema (worker thread) ------------------------------------------------
    def _open_sync(self, _conn: sqlite3.Connection) -> None:
        path = self.path
        if path.exists() and path.stat().st_size > 0:
            with open(path, "rb") as f:
                head = f.read(16)
            if head != SQLITE_MAGIC:
                raise StoreError(f"{path}: not an SQLite database (bad header); refusing to use it")
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
        except sqlite3.Error as e:
            raise StoreError(f"{path}: cannot open: {e}") from e
        try:
            self._setup(conn)
        except sqlite3.DatabaseError as e:
            conn.close()
            raise StoreError(f"{path}: database is corrupted or unreadable: {e}") from e
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _setup(self, conn: sqlite3.Connection) -> None:
        path = self.path
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and app_id != APPLICATION_ID:
            raise StoreError(
                f"{path}: SQLite file of another application (application_id={app_id:#x}, "
                f"tables={sorted(tables)}); refusing to use it"
            )
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{path}: cannot enable WAL journal mode (got {mode!r})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        if self.quick_check and tables:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check")]
            if rows != ["ok"]:
                raise StoreError(f"{path}: integrity check failed: {'; '.join(map(str, rows[:5]))}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not tables:
                # not executescript(): it would COMMIT the transaction opened above
                for stmt in _SCHEMA_V1.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                conn.execute("INSERT INTO schema_version VALUES (1, ?)", (time.time(),))
                version = 1
            else:
                row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
                version = int(row[0]) if row and row[0] is not None else 0
                if version < 1:
                    raise StoreError(f"{path}: schema_version table is empty")
            if version > self.schema_version:
                raise StoreError(
                    f"{path}: schema version {version} is newer than this program's "
                    f"({self.schema_version}); upgrade the program"
                )
            while version < self.schema_version:
                step = self.migrations.get(version + 1)
                if step is None:
                    raise StoreError(f"{path}: no migration from schema {version} to {version + 1}")
                log.info("migrating %s: schema %d -> %d", path, version, version + 1)
                step(conn)
                version += 1
                conn.execute("INSERT INTO schema_version VALUES (?, ?)", (version, time.time()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # --- mitigation records -------------------------------------------------------------
    async def put_mitigation(self, rec: MitigationRecord) -> None:
        row = _rec_to_row(rec)
        await self._submit(lambda c: c.execute(_MIT_UPSERT, row), write=True)

    async def put_mitigations(self, recs: Iterable[MitigationRecord]) -> None:
        rows = [_rec_to_row(r) for r in recs]
        await self._submit(lambda c: c.executemany(_MIT_UPSERT, rows), write=True)

    async def get_mitigation(self, cuid: str, mid: int) -> MitigationRecord | None:
        def fn(c: sqlite3.Connection) -> MitigationRecord | None:
            row = c.execute(f"{_MIT_SELECT} WHERE cuid = ? AND mid = ?", (cuid, mid)).fetchone()
            return None if row is None else _row_to_rec(row)

        return await self._submit(fn, write=False)

    async def list_mitigations(self, cuid: str | None = None) -> list[MitigationRecord]:
        def fn(c: sqlite3.Connection) -> list[MitigationRecord]:
            if cuid is None:
                cur = c.execute(f"{_MIT_SELECT} ORDER BY cuid, mid")
            else:
                cur = c.execute(f"{_MIT_SELECT} WHERE cuid = ? ORDER BY mid", (cuid,))
            return [_row_to_rec(r) for r in cur]

        return await self._submit(fn, write=False)

    async def delete_mitigation(self, cuid: str, mid: int) -> bool:
        def fn(c: sqlite3.Connection) -> bool:
            return c.execute("DELETE FROM mitigation WHERE cuid = ? AND mid = ?", (cuid, mid)).rowcount > 0

        return await self._submit(fn, write=True)

    async def replace_mitigations(
        self, delete: Sequence[tuple[str, int]], put: Sequence[MitigationRecord]
    ) -> int:
        keys = [(c, int(m)) for c, m in delete]
        rows = [_rec_to_row(r) for r in put]

        def fn(c: sqlite3.Connection) -> int:
            n = 0
            for k in keys:
                n += c.execute("DELETE FROM mitigation WHERE cuid = ? AND mid = ?", k).rowcount
            c.executemany(_MIT_UPSERT, rows)
            return n

        return await self._submit(fn, write=True)

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
        args = (bytes_dropped, pkts_dropped, bps_dropped, pps_dropped,
                time.time() if updated_at is None else updated_at, cuid, mid)  # fmt: skip

        def fn(c: sqlite3.Connection) -> bool:
            return (
                c.execute(
                    "UPDATE mitigation SET bytes_dropped = ?, pkts_dropped = ?, bps_dropped = ?, "
                    "pps_dropped = ?, updated_at = ? WHERE cuid = ? AND mid = ?",
                    args,
                ).rowcount
                > 0
            )

        return await self._submit(fn, write=True)

    async def active_mitigations(self, now: float | None = None) -> list[MitigationRecord]:
        t = time.time() if now is None else now

        def fn(c: sqlite3.Connection) -> list[MitigationRecord]:
            cur = c.execute(
                f"{_MIT_SELECT} WHERE status IN ({_ACTIVE_SQL}) "
                "AND (expires_at IS NULL OR expires_at > ?) "
                "AND (terminating_until IS NULL OR terminating_until > ?) ORDER BY cuid, mid",
                (t, t),
            )
            return [_row_to_rec(r) for r in cur]

        return await self._submit(fn, write=False)

    async def purge_expired(self, now: float) -> list[MitigationRecord]:
        where = (
            "(expires_at IS NOT NULL AND expires_at <= ?) "
            "OR (terminating_until IS NOT NULL AND terminating_until <= ?)"
        )

        def fn(c: sqlite3.Connection) -> list[MitigationRecord]:
            recs = [_row_to_rec(r) for r in c.execute(f"{_MIT_SELECT} WHERE {where}", (now, now))]
            c.execute(f"DELETE FROM mitigation WHERE {where}", (now, now))
            return recs

        return await self._submit(fn, write=True)

    # --- session configuration ---------------------------------------------------------
    async def put_session_config(self, rec: SessionConfigRecord) -> None:
        row = (rec.cuid, int(rec.sid), bytes(rec.mitigating), bytes(rec.idle), rec.updated_at)
        await self._submit(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO session_config (cuid, sid, mitigating, idle, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                row,
            ),
            write=True,
        )

    async def get_session_config(self, cuid: str) -> SessionConfigRecord | None:
        def fn(c: sqlite3.Connection) -> SessionConfigRecord | None:
            row = c.execute(
                "SELECT cuid, sid, mitigating, idle, updated_at FROM session_config WHERE cuid = ?", (cuid,)
            ).fetchone()
            if row is None:
                return None
            return SessionConfigRecord(
                cuid=row[0], sid=row[1], mitigating=bytes(row[2]), idle=bytes(row[3]), updated_at=row[4]
            )

        return await self._submit(fn, write=False)

    async def delete_session_config(self, cuid: str) -> bool:
        def fn(c: sqlite3.Connection) -> bool:
            return c.execute("DELETE FROM session_config WHERE cuid = ?", (cuid,)).rowcount > 0

        return await self._submit(fn, write=True)
