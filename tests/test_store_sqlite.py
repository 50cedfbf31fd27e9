"""Tests of the SQLite store: CRUD, upsert, atomic replace, persistence, kill -9 durability."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent.numbers.rfc9132 import Status
from agent.store import MitigationRecord, SessionConfigRecord, SqliteStore, Store, StoreError, is_active

REPO = Path(__file__).resolve().parents[1]


def rec(mid: int = 1, cuid: str = "c1", **kw: object) -> MitigationRecord:
    base: dict[str, object] = dict(
        cuid=cuid,
        mid=mid,
        scope=b"\xa1\x06\x81\x6a10.0.0.0/8" + mid.to_bytes(4, "big", signed=True),
        status=Status.ATTACK_MITIGATION_IN_PROGRESS,
        lifetime=3600,
        cdid="cdid-1",
        expires_at=time.time() + 3600,
        created_at=1000.0,
        updated_at=1000.0,
        mitigation_start=1000.5,
        mitigator="log",
    )
    base.update(kw)
    return MitigationRecord(**base)  # type: ignore[arg-type]


@pytest.fixture
async def store(tmp_path: Path):
    s = SqliteStore(tmp_path / "dots.db")
    await s.open()
    yield s
    await s.close()


async def test_protocol_conformance(store: SqliteStore) -> None:
    assert isinstance(store, Store)


async def test_crud_and_upsert(store: SqliteStore) -> None:
    r = rec(5, conflict=b"\xa0", trigger_mitigation=False, terminating_until=None)
    await store.put_mitigation(r)
    assert await store.get_mitigation("c1", 5) == r
    assert await store.get_mitigation("c1", 6) is None
    r2 = r.replace(
        status=Status.ATTACK_SUCCESSFULLY_MITIGATED, lifetime=-1, expires_at=None, updated_at=2000.0
    )
    await store.put_mitigation(r2)
    assert await store.get_mitigation("c1", 5) == r2
    assert len(await store.list_mitigations()) == 1
    await store.put_mitigation(rec(1, cuid="c2"))
    await store.put_mitigation(rec(3))
    assert [(m.cuid, m.mid) for m in await store.list_mitigations()] == [("c1", 3), ("c1", 5), ("c2", 1)]
    assert [m.mid for m in await store.list_mitigations("c1")] == [3, 5]
    assert await store.delete_mitigation("c1", 5) is True
    assert await store.delete_mitigation("c1", 5) is False
    assert [m.mid for m in await store.list_mitigations("c1")] == [3]


async def test_counters(store: SqliteStore) -> None:
    await store.put_mitigation(rec(1))
    ok = await store.update_counters("c1", 1, bytes_dropped=10, pkts_dropped=2, bps_dropped=3, pps_dropped=4)
    assert ok
    got = await store.get_mitigation("c1", 1)
    assert got is not None
    assert (got.bytes_dropped, got.pkts_dropped, got.bps_dropped, got.pps_dropped) == (10, 2, 3, 4)
    assert not await store.update_counters("c1", 99, bytes_dropped=1, pkts_dropped=1)


async def test_constraints(store: SqliteStore) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        await store.put_mitigation(rec(-1))
    with pytest.raises(sqlite3.IntegrityError):
        await store.put_mitigation(rec(1, lifetime=0))
    with pytest.raises(sqlite3.IntegrityError):
        await store.put_mitigation(rec(1, status=9))
    # a failed job does not poison the store
    await store.put_mitigation(rec(1))
    assert await store.get_mitigation("c1", 1) is not None


async def test_atomic_replace(store: SqliteStore) -> None:
    await store.put_mitigations([rec(1), rec(2)])
    n = await store.replace_mitigations([("c1", 1), ("c1", 2)], [rec(7)])
    assert n == 2
    assert [m.mid for m in await store.list_mitigations()] == [7]
    # a failing put rolls the deletes back
    with pytest.raises(sqlite3.IntegrityError):
        await store.replace_mitigations([("c1", 7)], [rec(8, lifetime=0)])
    assert [m.mid for m in await store.list_mitigations()] == [7]


async def test_concurrent_puts_group_commit(store: SqliteStore) -> None:
    before = store.commits
    await asyncio.gather(*(store.put_mitigation(rec(i)) for i in range(200)))
    assert len(await store.list_mitigations()) == 200
    assert store.commits - before < 200  # batched


async def test_session_config(store: SqliteStore) -> None:
    sc = SessionConfigRecord(cuid="c1", sid=3, mitigating=b"\xa1\x01\x02", idle=b"\xa0", updated_at=5.0)
    await store.put_session_config(sc)
    assert await store.get_session_config("c1") == sc
    sc2 = SessionConfigRecord(cuid="c1", sid=4, mitigating=b"\xa0", idle=b"\xa0", updated_at=6.0)
    await store.put_session_config(sc2)
    assert await store.get_session_config("c1") == sc2
    assert await store.delete_session_config("c1")
    assert await store.get_session_config("c1") is None
    assert not await store.delete_session_config("c1")


async def test_active_and_purge(store: SqliteStore) -> None:
    now = 10_000.0
    recs = [
        rec(1, expires_at=now + 10),  # active
        rec(2, expires_at=now - 1),  # expired
        rec(3, expires_at=None, lifetime=-1),  # indefinite
        rec(4, status=Status.DOTS_CLIENT_WITHDRAWN_MITIGATION, terminating_until=now + 5),  # terminating
        rec(5, status=Status.DOTS_CLIENT_WITHDRAWN_MITIGATION, terminating_until=now - 5),  # terminated
        rec(6, status=Status.ATTACK_MITIGATION_SIGNAL_LOSS, trigger_mitigation=False),  # pre-configured
        rec(7, status=Status.ATTACK_MITIGATION_TERMINATED, expires_at=now + 10),
    ]
    await store.put_mitigations(recs)
    active = await store.active_mitigations(now)
    assert [m.mid for m in active] == [1, 3, 4]
    assert [m.mid for m in active] == [r.mid for r in recs if is_active(r, now)]
    purged = await store.purge_expired(now)
    assert sorted(m.mid for m in purged) == [2, 5]
    assert [m.mid for m in await store.list_mitigations()] == [1, 3, 4, 6, 7]


@pytest.mark.req("SC-108")
async def test_withdrawn_mitigation_leaves_active_set_after_terminating(store: SqliteStore) -> None:
    now = 1000.0
    await store.put_mitigation(rec(1, expires_at=None, lifetime=-1))
    assert [m.mid for m in await store.active_mitigations(now)] == [1]
    await store.put_mitigation(
        rec(1, status=Status.DOTS_CLIENT_WITHDRAWN_MITIGATION, terminating_until=now + 120)
    )
    assert [m.mid for m in await store.active_mitigations(now + 119)] == [1]
    assert await store.active_mitigations(now + 121) == []


async def test_reopen_persists(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    r1 = rec(1)
    async with SqliteStore(path) as s:
        await s.put_mitigation(r1)
        await s.put_session_config(SessionConfigRecord(cuid="c1", sid=1, mitigating=b"", idle=b""))
    async with SqliteStore(path) as s:
        assert await s.get_mitigation("c1", 1) == r1
        assert (await s.get_session_config("c1")) is not None
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_use_after_close(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "c.db")
    await s.open()
    await s.close()
    await s.close()
    with pytest.raises(StoreError):
        await s.get_mitigation("c1", 1)


async def test_garbage_file_is_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError, match="not an SQLite database"):
        await SqliteStore(path).open()


async def test_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="another application"):
        await SqliteStore(path).open()


async def test_corrupted_file_is_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    async with SqliteStore(path) as s:
        await s.put_mitigations([rec(i, scope=os.urandom(900)) for i in range(200)])
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(path.read_bytes())
    assert len(data) > 3 * 4096
    data[4096 + 8 : 4096 * 3] = os.urandom(4096 * 2 - 8)  # trash pages 2-3, keep the header
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="corrupt|integrity|malformed"):
        await SqliteStore(path).open()


async def test_newer_schema_is_refused_and_migration_hook_runs(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    r1 = rec(1)
    async with SqliteStore(path) as s:
        await s.put_mitigation(r1)
    ran: list[int] = []

    def to_v2(conn: sqlite3.Connection) -> None:
        ran.append(2)
        conn.execute("ALTER TABLE mitigation ADD COLUMN note TEXT")

    async with SqliteStore(path, schema_version=2, migrations={2: to_v2}) as s:
        assert await s.get_mitigation("c1", 1) is not None
    assert ran == [2]
    with pytest.raises(StoreError, match="newer"):
        await SqliteStore(path).open()
    with pytest.raises(StoreError, match="no migration"):
        await SqliteStore(path, schema_version=3, migrations={}).open()


_CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from agent.store import MitigationRecord, SqliteStore

    async def main(path, n):
        s = SqliteStore(path)
        await s.open()
        for i in range(n):
            await s.put_mitigation(MitigationRecord(
                cuid="kill", mid=i, scope=(b"scope-%d-" % i) * 20, status=1, lifetime=3600,
                expires_at=None, created_at=float(i), updated_at=float(i)))
            sys.stdout.write(f"{i}\\n")
            sys.stdout.flush()
        time.sleep(60)

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


async def test_kill_minus_9_keeps_every_acknowledged_record(tmp_path: Path) -> None:
    path = tmp_path / "kill.db"
    n_total, kill_after = 100_000, 300
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), str(n_total)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    acked: list[int] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            acked.append(int(line))
            if len(acked) >= kill_after:
                proc.send_signal(signal.SIGKILL)  # mid-way: the child keeps putting until now
                break
        # drain whatever was acknowledged before the signal landed
        rest, _ = proc.communicate(timeout=30)
        acked += [int(x) for x in rest.split()]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= kill_after
    async with SqliteStore(path) as s:
        got = {m.mid: m for m in await s.list_mitigations("kill")}
    missing = [i for i in acked if i not in got]
    assert not missing, f"{len(missing)} acknowledged records lost"
    for i in acked:
        m = got[i]
        assert m.scope == (b"scope-%d-" % i) * 20 and m.status == 1 and m.lifetime == 3600
        assert m.created_at == float(i)
    print(f"kill -9: acknowledged={len(acked)} present={len(got)}")


def test_benchmark_script_runs(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "store_bench.py"), "--n", "300", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=120,
    ).stdout
    print(out)
    line = next(x for x in out.splitlines() if x.startswith("store_put_per_s="))
    assert float(line.split("=")[1]) > 0
