"""Parties sharing one DOTS client identity: who owns which mid, and what each may do to it.

Theory of operation
-------------------
The front-ends (portal users, alert sources, the client agent's configured requests) all speak
through one :class:`~agent.client.DotsClient`, hence one cuid.  To the DOTS server they are
one client, and RFC 9132 §4.4.1 lets a client's new request that overlaps its own active one
replace it -- so, unchecked, one party could end, shorten or replace another's mitigation.

:class:`OwnerBook` is a durable record ``mid -> Party`` per cuid, in a JSON file next to the
client's state file (``<state>.parties.json``; re-read before each decision and replaced
atomically under an ``fcntl`` lock, so processes sharing the state file share the book).
:class:`PartyGate` wraps the client; every PUT, DELETE and efficacy update goes through it:

* withdraw / refresh / efficacy update of a mid: only by its owner (a mid nobody owns may be
  withdrawn only when the server does not hold it active);
* a new request (or a re-sent one): the server's list of this cuid's requests is fetched
  (GET without mid) and the request is refused (:class:`PartyConflict`, "overlaps mitigation 12
  of portal user alice") if it overlaps (the server's overlap notion,
  :func:`agent.protocol.targets.overlaps`) a live request of another party, or a live request
  no party in the book owns ("of another process using this client identity").  The mid it
  targets, when given, must not belong to another party either.

Decisions of one gate are serialised (an asyncio lock: check then PUT).  Two processes with
separate books can still race between one's GET and its PUT; the window is one round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.protocol.targets import overlaps
from agent.server.scope import targets_of

from .results import MitigationResult
from .session import DotsClient, Port, build_scope
from .state import locked_update

log = logging.getLogger("dots.client.parties")
audit = logging.getLogger("dots.audit")

# Server statuses in which a request no longer protects anyone (§4.4.2): overlapping is harmless.
ENDED = frozenset({"dots-client-withdrawn-mitigation", "attack-mitigation-terminated",
                   "attack-mitigation-withdrawn", 5, 6, 7})


@dataclass(frozen=True)
class Party:
    """One party behind a front-end: ``kind`` ("portal user", "alert source", "configured
    request") and ``name``."""

    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"

    def as_json(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name}


class PartyConflict(Exception):
    """Refused to protect another party's mitigation (answered 409 by the front-ends)."""


class OwnerBook:
    """Durable ``(cuid, mid) -> Party`` records (see the module docstring); in memory without a path."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._data: dict[str, dict[str, dict[str, str]]] = {}
        self._reload()

    @classmethod
    def beside(cls, state_path: Path | None) -> OwnerBook:
        return cls(state_path.with_name(state_path.name + ".parties.json") if state_path else None)

    def _reload(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text())
            self._data = {str(c): {str(m): dict(p) for m, p in mids.items()} for c, mids in data["owners"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"unreadable party owner file {self.path}: {exc}") from None

    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict[str, dict[str, dict[str, str]]]]:
        if self.path is None:
            yield self._data
            return
        with locked_update(self.path) as write:
            self._reload()
            yield self._data
            write({"owners": self._data})

    def owner(self, cuid: str, mid: int) -> Party | None:
        self._reload()
        raw = self._data.get(cuid, {}).get(str(mid))
        return Party(raw["kind"], raw["name"]) if raw else None

    def owners(self, cuid: str) -> dict[int, Party]:
        self._reload()
        return {int(m): Party(p["kind"], p["name"]) for m, p in self._data.get(cuid, {}).items()}

    def claim(self, cuid: str, mid: int, party: Party) -> None:
        with self._changing() as data:
            data.setdefault(cuid, {})[str(mid)] = party.as_json()

    def adopt(self, cuid: str, mids: dict[int, Party]) -> None:
        """Record owners known from an older front-end state file, where no owner is recorded yet."""
        with self._changing() as data:
            mine = data.setdefault(cuid, {})
            for mid, party in mids.items():
                mine.setdefault(str(mid), party.as_json())

    def release(self, cuid: str, *mids: int) -> None:
        with self._changing() as data:
            for mid in mids:
                data.get(cuid, {}).pop(str(mid), None)


class PartyGate:
    """A :class:`DotsClient` as seen by its parties: the checks of the module docstring."""

    def __init__(self, client: DotsClient, book: OwnerBook | None = None) -> None:
        self.client = client
        self.book = book if book is not None else OwnerBook.beside(client.state.path)
        self._lock = asyncio.Lock()

    @property
    def cuid(self) -> str:
        return self.client.cuid

    def owner(self, mid: int) -> Party | None:
        return self.book.owner(self.cuid, mid)

    def mids_of(self, party: Party) -> list[int]:
        return sorted(m for m, p in self.book.owners(self.cuid).items() if p == party)

    async def _live(self) -> list[dict[str, Any]]:
        """The server's live requests of this cuid (GET without mid); forgets owners of gone mids."""
        scopes = [s for s in await self.client.status() if "mid" in s]
        held = {int(s["mid"]) for s in scopes}
        gone = [m for m in self.book.owners(self.cuid) if m not in held]
        if gone:
            self.book.release(self.cuid, *gone)
        return [s for s in scopes if s.get("status") not in ENDED]

    def _whose(self, mid: int) -> str:
        owner = self.owner(mid)
        return str(owner) if owner else "another process using this client identity"

    async def _check_new(self, party: Party, scope: dict[str, Any], mid: int | None) -> None:
        live = await self._live()
        if mid is not None:
            owner = self.owner(mid)
            if owner is not None and owner != party:
                raise PartyConflict(f"mitigation {mid} belongs to {owner}")
            if owner is None and any(int(s["mid"]) == mid for s in live):
                raise PartyConflict(f"mitigation {mid} belongs to another process using this client identity")
        wanted = targets_of(scope)
        for s in live:
            other = int(s["mid"])
            if other == mid or self.owner(other) == party:
                continue
            if overlaps(targets_of(s), wanted):
                raise PartyConflict(f"the request overlaps mitigation {other} of {self._whose(other)}; "
                                    "it would replace it (RFC 9132 §4.4.1), so it was not sent")

    async def _check_owned(self, party: Party, mid: int, what: str) -> None:
        owner = self.owner(mid)
        if owner == party:
            return
        if owner is not None:
            raise PartyConflict(f"{what} of mitigation {mid} refused: it belongs to {owner}")
        if any(int(s["mid"]) == mid for s in await self._live()):
            raise PartyConflict(f"{what} of mitigation {mid} refused: it belongs to another process using this "
                                "client identity")

    async def mitigate(self, party: Party, target_prefixes: Iterable[str] = (), ports: Iterable[Port] = (),
                       protocols: Iterable[int] = (), fqdns: Iterable[str] = (), uris: Iterable[str] = (),
                       lifetime: int = 3600, trigger_mitigation: bool = True, *, aliases: Iterable[str] = (),
                       mid: int | None = None) -> MitigationResult:
        """:meth:`DotsClient.mitigate` for *party*; raises :class:`PartyConflict`."""
        prefixes, ports, protocols, fqdns, uris, aliases = (list(x) for x in (target_prefixes, ports, protocols,
                                                                               fqdns, uris, aliases))
        scope = build_scope(prefixes, ports, protocols, fqdns, uris, aliases, lifetime, trigger_mitigation)
        async with self._lock:
            try:
                await self._check_new(party, scope, mid)
            except PartyConflict as exc:
                log.warning("%s: request for %s refused: %s", party, prefixes or fqdns or uris or aliases, exc)
                raise
            result = await self.client.mitigate(prefixes, ports, protocols, fqdns, uris, lifetime,
                                                trigger_mitigation, aliases=aliases, mid=mid)
            self.book.claim(self.cuid, result.mid, party)
        audit.info("%s: mitigation %d %s for %s (lifetime %s, %s)", party, result.mid,
                   "renewed" if mid is not None else "requested", prefixes or fqdns or uris or aliases,
                   result.lifetime, result.code)
        return result

    async def refresh(self, party: Party, mid: int, lifetime: int | None = None) -> MitigationResult:
        async with self._lock:
            await self._check_owned(party, mid, "renewal")
            result = await self.client.refresh(mid, lifetime)
            self.book.claim(self.cuid, mid, party)
        audit.info("%s: mitigation %d renewed (lifetime %s, %s)", party, mid, result.lifetime, result.code)
        return result

    async def efficacy_update(self, party: Party, mid: int, attack_status: str) -> MitigationResult:
        async with self._lock:
            await self._check_owned(party, mid, "efficacy update")
            result = await self.client.efficacy_update(mid, attack_status)
        audit.info("%s: mitigation %d efficacy update %s (%s)", party, mid, attack_status, result.code)
        return result

    async def withdraw(self, party: Party, mid: int) -> str:
        async with self._lock:
            await self._check_owned(party, mid, "withdrawal")
            code = await self.client.withdraw(mid)
            self.book.release(self.cuid, mid)
        audit.info("%s: mitigation %d withdrawn (%s)", party, mid, code)
        return code


__all__ = ["OwnerBook", "Party", "PartyConflict", "PartyGate"]
