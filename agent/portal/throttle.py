"""Login throttling for the portal: failures per user name and per source address.

Each key (``user:NAME``, ``addr:ADDRESS``) may fail ``user_failures`` / ``address_failures``
times; the failure that reaches the allowance, and every one after it, locks the key out for
``base_lockout * 2**k`` seconds (k = 0, 1, 2, ... for each of those failures), at most
``max_lockout``: 5 failures, then 1 s, 2 s, 4 s, ... of 429 answers with Retry-After.
A success clears the user's and the address's record; a
record is forgotten ``forget_after`` seconds after its last failure.  At most ``max_keys``
records are kept (the oldest are dropped), so random user names cannot exhaust memory.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class LoginLimits:
    user_failures: int = 5
    address_failures: int = 20
    base_lockout: float = 1.0
    max_lockout: float = 900.0
    forget_after: float = 3600.0
    max_keys: int = 10000

    def __post_init__(self) -> None:
        if self.user_failures < 1 or self.address_failures < 1:
            raise ValueError("login failures allowed must be at least 1")
        if self.base_lockout <= 0 or self.max_lockout < self.base_lockout:
            raise ValueError("login lock-out: 0 < base <= max expected")


@dataclass
class _Record:
    failures: int = 0
    last: float = 0.0
    locked_until: float = 0.0


class LoginThrottle:
    """Decides whether a login attempt may be checked at all (see the module docstring)."""

    def __init__(self, limits: LoginLimits | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits or LoginLimits()
        self.clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self.refused = 0

    def _keys(self, user: str, address: str) -> tuple[tuple[str, int], tuple[str, int]]:
        return ((f"user:{user}", self.limits.user_failures), (f"addr:{address}", self.limits.address_failures))

    def _get(self, key: str, now: float) -> _Record | None:
        rec = self._records.get(key)
        if rec is not None and now - rec.last > self.limits.forget_after and rec.locked_until <= now:
            del self._records[key]
            return None
        return rec

    def retry_after(self, user: str, address: str) -> int:
        """Seconds to wait before this attempt may be checked (0: go ahead)."""
        now = self.clock()
        wait = 0.0
        for key, _ in self._keys(user, address):
            rec = self._get(key, now)
            if rec is not None and rec.locked_until > now:
                wait = max(wait, rec.locked_until - now)
        if wait:
            self.refused += 1
        return math.ceil(wait)

    def failed(self, user: str, address: str) -> None:
        now = self.clock()
        for key, allowed in self._keys(user, address):
            rec = self._get(key, now) or _Record()
            rec.failures += 1
            rec.last = now
            extra = rec.failures - allowed + 1
            if extra > 0:
                rec.locked_until = now + min(self.limits.max_lockout, self.limits.base_lockout * 2 ** (extra - 1))
            self._records[key] = rec
            self._records.move_to_end(key)
        while len(self._records) > self.limits.max_keys:
            self._records.popitem(last=False)

    def succeeded(self, user: str, address: str) -> None:
        for key, _ in self._keys(user, address):
            self._records.pop(key, None)
