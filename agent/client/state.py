"""What a DOTS client must remember between runs: its last 'mid' and 'sid', and each request.

Theory of operation
-------------------
RFC 9132 wants 'mid' to increase monotonically per cuid (SC-031) and be reset to 0 only past
3221225471 when no attack is active (SC-032); 'sid' increases monotonically too (SC-119).  A
CLI that runs once per detector event would reuse identifiers unless they are stored, so
:class:`ClientState` keeps, per cuid, the last mid and sid and the parameters (RFC 7951 scope
members) of every request still believed alive, so that a lifetime renewal or an efficacy
update can repeat them unchanged (SC-073, SC-098).

The state is one small JSON file.  Every change re-reads the file under an exclusive
``flock`` on ``<file>.lock`` and rewrites it atomically (temporary file + rename), so two CLI
processes started by the same detector do not hand out the same mid.  Without a path the state
lives in memory only (an embedded client that keeps running).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.protocol.server_rules import next_mid, next_sid

STATE_VERSION = 1


@contextlib.contextmanager
def locked_update(path: Path) -> Iterator[Callable[[Any], None]]:
    """Hold ``PATH.lock`` exclusively (``flock``, so other processes wait) while the caller
    re-reads *path* and changes it; the yielded ``write(obj)`` replaces *path* atomically with
    *obj* as JSON.  Shared by the client state and the party owner file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            def write(obj: Any) -> None:
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
                os.replace(tmp, path)

            yield write
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass(frozen=True)
class StoredRequest:
    """A mitigation request as sent: its scope members and when it stops being active."""

    mid: int
    scope: dict[str, Any]  # request members (target-*, lifetime, trigger-mitigation)
    expires_at: float | None  # wall clock; None for an indefinite lifetime

    def alive(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at

    @property
    def preconfigured(self) -> bool:
        """A request with a preconfigured scope ('trigger-mitigation' false, §4.4.1): stored at
        the server, mitigated only when the signal channel is lost -- not an attack."""
        return self.scope.get("trigger-mitigation") is False


class ClientState:
    """Per-cuid identifiers and requests, optionally persisted in ``path`` (JSON)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else None
        self._data: dict[str, Any] = {"version": STATE_VERSION, "clients": {}}
        if self.path is not None:
            self._data = self._read()

    # -- file handling ----------------------------------------------------------------
    def _read(self) -> dict[str, Any]:
        assert self.path is not None
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"version": STATE_VERSION, "clients": {}}
        except (ValueError, OSError) as exc:
            raise ValueError(f"unreadable client state file {self.path}: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("clients"), dict):
            raise ValueError(f"client state file {self.path} has an unexpected shape")
        return data

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Re-read, let the caller change, write back -- all under the lock."""
        if self.path is None:
            yield self._data
            return
        with locked_update(self.path) as write:
            self._data = self._read()
            yield self._data
            write(self._data)

    @staticmethod
    def _client(data: dict[str, Any], cuid: str) -> dict[str, Any]:
        return data["clients"].setdefault(cuid, {"last-mid": None, "last-sid": None, "requests": {}})

    def _refresh(self) -> None:
        if self.path is not None:
            self._data = self._read()

    # -- mids -------------------------------------------------------------------------
    def allocate_mid(self, cuid: str, now: float | None = None) -> int:
        """The next mid for *cuid* (SC-031; SC-032 rollover when no attack is being mitigated).

        Preconfigured requests (``trigger-mitigation`` false) do not prevent the rollover: they
        are not an attack, and the caller recreates them with the mids restarting at 0
        (SC-033, ``DotsClient``).  A return value lower than :meth:`last_mid` was before the
        call is a rollover.
        """
        return self.allocate_mid_checked(cuid, now)[0]

    def allocate_mid_checked(self, cuid: str, now: float | None = None) -> tuple[int, bool]:
        """:meth:`allocate_mid`, and whether this allocation rolled 'mid' over to 0 (SC-032)."""
        now = time.time() if now is None else now
        with self._locked() as data:
            c = self._client(data, cuid)
            active = any(s.alive(now) and not s.preconfigured
                         for s in (self._stored(mid, r) for mid, r in c["requests"].items()))
            last = c["last-mid"]
            mid = next_mid(last, active)
            c["last-mid"] = mid
            return mid, last is not None and mid < last

    def raise_mid_floor(self, cuid: str, mid: int) -> None:
        """Never hand out *mid* or lower again (e.g. the server still holds it: state was lost)."""
        with self._locked() as data:
            c = self._client(data, cuid)
            if c["last-mid"] is None or c["last-mid"] < mid:
                c["last-mid"] = mid

    def last_mid(self, cuid: str) -> int | None:
        self._refresh()
        return self._client(self._data, cuid)["last-mid"]

    def remember(self, cuid: str, mid: int, scope: dict[str, Any], lifetime: int | None,
                 now: float | None = None) -> None:
        """Keep the parameters of an accepted request (*lifetime*: granted seconds, -1 = indefinite)."""
        now = time.time() if now is None else now
        expires = None if lifetime is None or lifetime < 0 else now + lifetime
        with self._locked() as data:
            self._client(data, cuid)["requests"][str(mid)] = {"scope": scope, "expires-at": expires}

    def forget(self, cuid: str, *mids: int) -> None:
        with self._locked() as data:
            reqs = self._client(data, cuid)["requests"]
            for mid in mids:
                reqs.pop(str(mid), None)

    def request(self, cuid: str, mid: int) -> StoredRequest | None:
        self._refresh()
        raw = self._client(self._data, cuid)["requests"].get(str(mid))
        return self._stored(str(mid), raw) if raw is not None else None

    def requests(self, cuid: str) -> list[StoredRequest]:
        self._refresh()
        reqs = self._client(self._data, cuid)["requests"]
        return sorted((self._stored(m, r) for m, r in reqs.items()), key=lambda r: r.mid)

    def preconfigured(self, cuid: str, now: float | None = None) -> list[StoredRequest]:
        """The alive requests with a preconfigured scope (SC-033), by mid."""
        now = time.time() if now is None else now
        return [r for r in self.requests(cuid) if r.alive(now) and r.preconfigured]

    def active(self, cuid: str, now: float | None = None) -> list[StoredRequest]:
        now = time.time() if now is None else now
        return [r for r in self.requests(cuid) if r.alive(now)]

    @staticmethod
    def _stored(mid: str, raw: dict[str, Any]) -> StoredRequest:
        return StoredRequest(int(mid), raw["scope"], raw.get("expires-at"))

    # -- sids -------------------------------------------------------------------------
    def allocate_sid(self, cuid: str) -> int:
        """The next sid for *cuid* (SC-119: monotonically increasing)."""
        with self._locked() as data:
            c = self._client(data, cuid)
            sid = next_sid(c["last-sid"])
            c["last-sid"] = sid
            return sid

    def last_sid(self, cuid: str) -> int | None:
        self._refresh()
        return self._client(self._data, cuid)["last-sid"]


def default_state_path() -> Path:
    """``$XDG_STATE_HOME/dots/client.json`` (``~/.local/state/dots/client.json``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "dots" / "client.json"
