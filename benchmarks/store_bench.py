"""Benchmark of the SQLite store: durable puts per second.

Prints ``store_put_per_s=N`` (sequential awaits: one fsync per put) and
``store_put_concurrent_per_s=N`` (``--concurrency`` writers: group commit).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from agent.store import MitigationRecord, SqliteStore


def _rec(i: int) -> MitigationRecord:
    return MitigationRecord(
        cuid="bench", mid=i, scope=b"\xa1\x06\x81\x6a10.0.0.0/8" * 4, status=1, lifetime=3600
    )


async def run(n: int, concurrency: int, directory: str) -> None:
    path = Path(directory) / "bench.db"
    async with SqliteStore(path) as s:
        t0 = time.perf_counter()
        for i in range(n):
            await s.put_mitigation(_rec(i))
        seq = n / (time.perf_counter() - t0)

        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                await s.put_mitigation(_rec(n + i))

        c0 = s.commits
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        conc = n / (time.perf_counter() - t0)
        commits = s.commits - c0
    print(f"store_put_per_s={seq:.0f}")
    print(f"store_put_concurrent_per_s={conc:.0f} (concurrency={concurrency}, commits={commits})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--dir", default=None, help="directory for the database (default: a temporary one)")
    a = ap.parse_args()
    if a.dir:
        asyncio.run(run(a.n, a.concurrency, a.dir))
    else:
        with tempfile.TemporaryDirectory() as d:
            asyncio.run(run(a.n, a.concurrency, d))


if __name__ == "__main__":
    main()
