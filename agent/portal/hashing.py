"""Password checks off the event loop: a small bounded pool, and the same cost for unknown users.

scrypt takes tens of milliseconds and 16 MiB; run on the event loop it stalls the portal's
pages and its DOTS session.  :class:`HashPool` runs checks on ``workers`` threads and accepts at
most ``max_pending`` checks at once (running + queued): beyond that :class:`PoolSaturated`
(answered 503 with Retry-After) instead of an unbounded queue and unbounded latency.

An unknown user name is checked against :attr:`HashPool.dummy`, a hash with the same
parameters as the users' own (:func:`dummy_hash_like`), so both paths cost one scrypt.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterable

from agent.portal.passwords import hash_password, verify_password


class PoolSaturated(Exception):
    """Too many password checks in progress."""


def dummy_hash_like(hashes: Iterable[str]) -> str:
    """A hash of a random password with the scrypt parameters of the first well-formed *hashes*."""
    import secrets

    for h in hashes:
        parts = h.split("$")
        if len(parts) == 6 and parts[0] == "scrypt" and all(p.isdigit() for p in parts[1:4]):
            return hash_password(secrets.token_urlsafe(16), n=int(parts[1]), r=int(parts[2]), p=int(parts[3]))
    return hash_password(secrets.token_urlsafe(16))


class HashPool:
    def __init__(self, workers: int = 2, max_pending: int = 8,
                 verify: Callable[[str, str], bool] = verify_password) -> None:
        if workers < 1 or max_pending < 1:
            raise ValueError("the password pool needs at least one worker and one slot")
        self.max_pending = max_pending
        self.verify = verify
        self.pending = 0
        self.saturated = 0
        self.dummy = ""
        self._executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="portal-scrypt")

    def prepare(self, hashes: Iterable[str]) -> None:
        self.dummy = dummy_hash_like(hashes)

    async def check(self, password: str, stored: str | None) -> bool:
        """Whether *password* matches *stored* (None: an unknown user, checked against the dummy)."""
        if self.pending >= self.max_pending:
            self.saturated += 1
            raise PoolSaturated(f"{self.pending} password checks in progress")
        self.pending += 1
        try:
            loop = asyncio.get_running_loop()
            ok = await loop.run_in_executor(self._executor, self.verify, password, stored or self.dummy)
        finally:
            self.pending -= 1
        return ok and stored is not None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
