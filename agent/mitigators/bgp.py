"""A BGP speaker for the BGP mitigators (Flowspec, RTBH): GoBGP's ``gobgpd``, driven by its CLI.

Theory of operation
-------------------
The Flowspec (:mod:`agent.mitigators.flowspec`) and RTBH (:mod:`agent.mitigators.rtbh`)
mitigators do not speak BGP themselves: they hand routes to a :class:`GoBgpSpeaker`, a
``gobgpd`` (Debian package ``gobgpd``) whose gRPC API is reached with the ``gobgp`` command
(one short process per operation; ~10-30 ms each).  Routes are added to the speaker's
*global* RIB, from which gobgpd advertises them to its configured neighbours (the routers).

Two ways to get a speaker:

* **configured** (``api`` only): an operator-run gobgpd; the agent only adds and deletes routes.
* **owned** (``api`` plus ``config``): the agent writes a gobgpd configuration (local AS,
  router-id, listen address/port, neighbours with the unicast and Flowspec families) and starts
  gobgpd in its own session, with a pid file, unless one already answers on ``api``.  It is left
  running on :meth:`close` by default so that announced mitigations survive a restart of the
  DOTS server (the server reconciles on start); ``stop_on_close=True`` stops it.

Route ownership: every locally originated path (a path without ``neighbor-ip``) of the address
families a mitigator uses belongs to that mitigator.  Paths learnt from neighbours are never
touched.  :class:`RouteSyncMitigator` turns the set of installed actions into the set of routes
that must be announced and applies the difference (adds, replaces, deletes); what is announced
is read back from the speaker on first use and after any failure, so a restart of the DOTS
server (or of gobgpd) converges on the next operation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

from agent.mitigators.interface import Counters, MitigationAction, MitigatorError

log = logging.getLogger("dots.mitigator")

AFI_SAFIS = ("ipv4-unicast", "ipv6-unicast", "ipv4-flowspec", "ipv6-flowspec")


def _split_api(api: str) -> tuple[str, int]:
    host, _, port = api.rpartition(":")
    if not host or not (port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) <= 65535):
        raise ValueError(f"speaker api must be HOST:PORT, not {api!r}")
    return host.strip("[]"), int(port)


def gobgpd_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The gobgpd JSON configuration for the ``config`` options of an owned speaker.

    ``config`` keys: ``as`` (local AS), ``router-id``, ``listen-address`` (default 127.0.0.1),
    ``listen-port`` (default 179; -1 = do not listen, connect only), ``neighbors``: a list of
    ``{"address", "as", "port" (default 179), "local-address" (default listen-address),
    "passive" (default false)}``.  Every neighbour gets the IPv4/IPv6 unicast and Flowspec families.
    """
    listen = str(config.get("listen-address", "127.0.0.1"))
    glob: dict[str, Any] = {"as": int(config["as"]), "router-id": str(config["router-id"]),
                            "port": int(config.get("listen-port", 179)), "local-address-list": [listen]}
    neighbors = []
    for n in config.get("neighbors", []):
        neighbors.append({
            "config": {"neighbor-address": str(n["address"]), "peer-as": int(n["as"])},
            "transport": {"config": {"local-address": str(n.get("local-address", listen)),
                                     "remote-port": int(n.get("port", 179)),
                                     "passive-mode": bool(n.get("passive", False))}},
            "timers": {"config": {"connect-retry": int(n.get("connect-retry", 5))}},
            "afi-safis": [{"config": {"afi-safi-name": f}} for f in AFI_SAFIS],
        })
    return {"global": {"config": glob}, "neighbors": neighbors}


class GoBgpSpeaker:
    """A gobgpd reached at ``api`` (``HOST:PORT`` of its gRPC API); owned when ``config`` is given.

    ``workdir`` holds the owned speaker's configuration, log and pid file.
    """

    def __init__(self, api: str = "127.0.0.1:50051", *, config: Mapping[str, Any] | None = None,
                 workdir: str | Path | None = None, gobgp: str = "gobgp", gobgpd: str = "gobgpd",
                 stop_on_close: bool = False, timeout: float = 10.0) -> None:
        self.api = api
        self.host, self.port = _split_api(api)
        self.config = dict(config) if config is not None else None
        self.workdir = Path(workdir) if workdir else Path(os.environ.get("TMPDIR", "/tmp")) / f"dots-gobgpd-{self.port}"
        self.gobgp = gobgp
        self.gobgpd = gobgpd
        self.stop_on_close = stop_on_close
        self.timeout = timeout
        self.proc: asyncio.subprocess.Process | None = None
        self._started = False
        self._start_lock = asyncio.Lock()

    @property
    def pid_file(self) -> Path:
        return self.workdir / "gobgpd.pid"

    async def cli(self, *args: str, check: bool = True) -> str:
        """Run ``gobgp -u HOST -p PORT ARGS``; its stdout.  Raises MitigatorError on failure."""
        argv = [self.gobgp, "-u", self.host, "-p", str(self.port), *args]
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout)
        except (TimeoutError, OSError) as exc:
            raise MitigatorError(f"gobgp {' '.join(args)}: {exc!r}") from exc
        if check and proc.returncode != 0:
            raise MitigatorError(f"gobgp {' '.join(args)}: {(err or out).decode(errors='replace').strip()[:500]}")
        return out.decode()

    async def alive(self) -> bool:
        try:
            await self.cli("global")
            return True
        except MitigatorError:
            return False

    async def start(self) -> None:
        """Make sure the speaker answers (starting the owned gobgpd when needed)."""
        async with self._start_lock:
            if self._started:
                return
            if not await self.alive():
                if self.config is None:
                    raise MitigatorError(f"no BGP speaker answers at {self.api}")
                await self._spawn()
            self._started = True

    async def _spawn(self) -> None:
        assert self.config is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "gobgpd.json"
        conf.write_text(json.dumps(gobgpd_config(self.config), indent=1))
        logf = open(self.workdir / "gobgpd.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = await asyncio.create_subprocess_exec(
                self.gobgpd, "-f", str(conf), "-t", "json", "--api-hosts", f"{self.host}:{self.port}",
                "--pprof-disable", "-p", stdout=logf, stderr=logf, stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True)
        except OSError as exc:
            raise MitigatorError(f"cannot start {self.gobgpd}: {exc}") from exc
        finally:
            logf.close()
        self.pid_file.write_text(str(self.proc.pid))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while loop.time() < deadline:
            if self.proc.returncode is not None:
                raise MitigatorError(f"gobgpd exited: {(self.workdir / 'gobgpd.log').read_text()[-1000:]}")
            if await self.alive():
                log.info("started gobgpd (pid %d, api %s)", self.proc.pid, self.api)
                return
            await asyncio.sleep(0.1)
        raise MitigatorError(f"gobgpd did not answer at {self.api} within {self.timeout} s")

    async def stop(self) -> None:
        """Stop the owned gobgpd (the one this object started, or the one in the pid file)."""
        pid = self.proc.pid if self.proc else None
        if pid is None and self.config is not None and self.pid_file.exists():
            pid = int(self.pid_file.read_text().strip() or 0) or None
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if self.proc is not None:
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.pid_file.unlink(missing_ok=True)
        self._started = False
        self.proc = None

    async def close(self) -> None:
        if self.stop_on_close:
            await self.stop()

    async def local_paths(self, family: str) -> dict[str, list[dict[str, Any]]]:
        """Locally originated paths of the global RIB for ``family`` (e.g. ``ipv4-flowspec``)."""
        out = await self.cli("global", "rib", "-a", family, "-j")
        table = json.loads(out or "{}") or {}
        mine: dict[str, list[dict[str, Any]]] = {}
        for dest, paths in table.items():
            local = [p for p in paths if not p.get("neighbor-ip")]
            if local:
                mine[dest] = local
        return mine


_SPEAKERS: dict[str, GoBgpSpeaker] = {}


def speaker_from_options(options: Mapping[str, Any] | None) -> GoBgpSpeaker:
    """The (shared, one per API address) speaker described by a mitigator's ``speaker`` option.

    ``options``: ``{"api": "127.0.0.1:50051", "config": {...}, "workdir": ..., "stop-on-close": bool}``
    (see :func:`gobgpd_config` for ``config``).  Absent: a configured speaker at 127.0.0.1:50051.
    """
    options = dict(options or {})
    api = str(options.get("api", "127.0.0.1:50051"))
    existing = _SPEAKERS.get(api)
    if existing is not None:
        return existing
    sp = GoBgpSpeaker(api, config=options.get("config"), workdir=options.get("workdir"),
                      gobgp=str(options.get("gobgp", "gobgp")), gobgpd=str(options.get("gobgpd", "gobgpd")),
                      stop_on_close=bool(options.get("stop-on-close", False)))
    _SPEAKERS[api] = sp
    return sp


# A route as the mitigators see it: a hashable identity (family, NLRI) -> hashable attributes.
RouteId = tuple[str, Hashable]
Routes = dict[RouteId, Hashable]


class RouteSyncMitigator:
    """Base of the BGP mitigators: desired routes from installed actions, applied as a diff.

    Subclasses define ``name``, ``families``, :meth:`routes_of` (the routes of one action),
    :meth:`merge` (attributes when several keys want the same NLRI), :meth:`parse` (a RIB path
    back into a route, None when foreign) and :meth:`add_args` / :meth:`del_args` (gobgp CLI).
    """

    name = "bgp"
    families: tuple[str, ...] = ()

    def __init__(self, speaker: GoBgpSpeaker) -> None:
        self.speaker = speaker
        self._installed: dict[str, MitigationAction] = {}
        self._announced: Routes | None = None  # None: read it from the speaker first
        self._lock = asyncio.Lock()

    # -- to be provided by subclasses ----------------------------------------------------
    def routes_of(self, action: MitigationAction) -> Routes:  # pragma: no cover - abstract
        raise NotImplementedError

    def merge(self, a: Hashable, b: Hashable) -> Hashable:  # pragma: no cover - abstract
        raise NotImplementedError

    def parse(self, family: str, path: dict[str, Any]) -> tuple[RouteId, Hashable] | None:  # pragma: no cover
        raise NotImplementedError

    def add_args(self, rid: RouteId, attrs: Hashable) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def del_args(self, rid: RouteId) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- the diff engine -----------------------------------------------------------------------
    @property
    def installed(self) -> dict[str, MitigationAction]:
        return dict(self._installed)

    def desired(self, installed: Mapping[str, MitigationAction]) -> Routes:
        out: Routes = {}
        for key in sorted(installed):
            for rid, attrs in self.routes_of(installed[key]).items():
                out[rid] = self.merge(out[rid], attrs) if rid in out else attrs
        return out

    async def announced(self) -> Routes:
        """What the speaker announces for us now (read from its RIB)."""
        await self.speaker.start()
        routes: Routes = {}
        for family in self.families:
            for _dest, paths in (await self.speaker.local_paths(family)).items():
                for p in paths:
                    parsed = self.parse(family, p)
                    if parsed is None:
                        log.warning("%s: leaving a route it cannot interpret: %s", self.name, p.get("nlri"))
                        continue
                    routes[parsed[0]] = parsed[1]
        return routes

    async def _sync(self, installed: dict[str, MitigationAction]) -> None:
        wanted = self.desired(installed)  # may raise MitigatorError before anything changes
        async with self._lock:
            try:
                if self._announced is None:
                    self._announced = await self.announced()
                have = self._announced
                for rid in [r for r in have if r not in wanted]:
                    await self.speaker.cli("global", "rib", "-a", rid[0], "del", *self.del_args(rid))
                    del have[rid]
                for rid, attrs in wanted.items():
                    if have.get(rid) != attrs:
                        await self.speaker.cli("global", "rib", "-a", rid[0], "add", *self.add_args(rid, attrs))
                        have[rid] = attrs
            except MitigatorError:
                self._announced = None
                raise
            self._installed = installed

    async def apply(self, action: MitigationAction) -> None:
        new = dict(self._installed)
        new[action.key] = action
        await self._sync(new)

    async def remove(self, key: str) -> None:
        if key not in self._installed and self._announced is not None:
            return
        new = dict(self._installed)
        new.pop(key, None)
        await self._sync(new)

    async def reconcile(self, actions: list[MitigationAction]) -> None:
        self._announced = None  # re-read: anything stale goes
        await self._sync({a.key: a for a in actions})

    async def counters(self, key: str) -> Counters:
        """BGP carries no counters back: always zeros (the routers' own telemetry has them)."""
        return Counters()

    async def close(self) -> None:
        await self.speaker.close()
