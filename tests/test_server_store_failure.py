"""Disk full: nothing is enforced, notified or reported that the store did not commit.

A real server (in process, real TLS and DTLS sockets, real SQLite) keeps its database on a small
tmpfs the test mounts; a filler file takes the last free page, so the next COMMIT fails with
ENOSPC.  Every change that cannot be stored is answered 5.03 with Max-Age (a retry hint) and a
one-line diagnostic, reaches neither the mitigator nor any observer, and leaves the state the
clients can see exactly as it was.  Freed space makes the same request succeed; a restart shows
exactly what was committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
from aiocoap import Message
from aiocoap import numbers as coap

from agent.codec import Direction, decode_cbor
from agent.mitigators.log import LogMitigator
from agent.numbers import rfc9132
from agent.pki import certificate_cuid, init_pki
from agent.server.app import DotsServer, ServerOptions
from agent.server.mitigations import Entry
from agent.transports.credentials import Credentials
from tests.servers import raw_client

CF = rfc9132.CONTENT_FORMAT_DOTS_CBOR
TIMEOUT = 15.0


@contextlib.contextmanager
def small_disk(path: Path, size: str = "2m") -> Iterator[Path]:
    """A tmpfs of *size* mounted on *path* (skips when this process may not mount)."""
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Write a filler file until the filesystem refuses another byte (ENOSPC)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (b"\0" * 65536, b"\0" * 4096, b"\0"):
            while True:
                try:
                    if os.write(fd, chunk) == 0:
                        break
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return filler


def scope_body(prefix: str, lifetime: int = 3600, extra: dict[int, Any] | None = None) -> bytes:
    return cbor2.dumps({1: {2: [{6: [prefix], 14: lifetime, **(extra or {})}]}})


class Peer:
    """A raw aiocoap client of one in-process server."""

    def __init__(self, server: DotsServer, ctx: Any, cuid: str) -> None:
        self.server, self.ctx, self.cuid = server, ctx, cuid

    def uri(self, path: str, transport: str = "tls") -> str:
        host, port = next(a for a in self.server.addresses[transport] if a[0] == "127.0.0.1")
        scheme = "coaps+tcp" if transport == "tls" else "coaps"
        return f"{scheme}://{host}:{port}/.well-known/dots/{path}"

    async def send(self, code: coap.Code, path: str, payload: bytes = b"", transport: str = "tls",
                   if_match: bool = False) -> Message:
        msg = Message(code=code, uri=self.uri(path, transport), payload=payload)
        if payload:
            msg.opt.content_format = CF
        if if_match:  # an efficacy update (RFC 9132 §4.4.3)
            msg.opt.if_match = [b""]
        return await asyncio.wait_for(self.ctx.request(msg).response, TIMEOUT)

    async def statuses(self) -> dict[int, dict[str, Any]]:
        resp = await self.send(coap.GET, f"mitigate/cuid={self.cuid}")
        if resp.code == coap.NOT_FOUND:
            return {}
        assert resp.code == coap.CONTENT, (resp.code, resp.payload)
        return {s["mid"]: s for s in decode_cbor(resp.payload, Direction.RESPONSE).members()["scope"]}


def assert_unavailable(resp: Message) -> None:
    """5.03 + Max-Age (the retry hint) + a one-line text diagnostic, and no redirection body."""
    assert resp.code == coap.SERVICE_UNAVAILABLE, (resp.code, resp.payload)
    assert resp.opt.max_age == rfc9132.STORE_UNAVAILABLE_RETRY_AFTER
    assert resp.opt.content_format == 0
    text = resp.payload.decode()
    assert text and "\n" not in text and "retry" in text.lower(), text
    assert "Traceback" not in text


@contextlib.asynccontextmanager
async def running(pki: Path, db: Path) -> AsyncIterator[DotsServer]:
    server = DotsServer(ServerOptions(credentials=Credentials.from_pki_dir(pki, "server"), listen=["127.0.0.1"],
                                      port=0, db=db, heartbeats=False))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def installed(server: DotsServer) -> set[str]:
    mitigator = await server.mitigator("log")
    assert isinstance(mitigator, LogMitigator)
    return set(mitigator.installed)


@pytest.mark.req("SC-005")  # the 5.03 carries a diagnostic; Max-Age and "nothing changed" are RFC 7252/ours
async def test_disk_full_changes_nothing_and_answers_503(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    init_pki(pki)
    cuid = certificate_cuid(pki / "client.crt")
    with small_disk(tmp_path / "disk") as disk:
        db = disk / "server.db"
        async with running(pki, db) as server:
            ctx = await raw_client(pki)
            peer = Peer(server, ctx, cuid)
            seen: list[tuple[int, str]] = []  # every observer call (Observe, management, third party)

            def observer(entry: Entry) -> None:
                seen.append((entry.mid, entry.machine.state.name))

            server.service.observers.append(observer)
            notes: list[dict[int, dict[str, Any]]] = []
            mid2_notified = asyncio.Event()
            obs_msg = Message(code=coap.GET, uri=peer.uri(f"mitigate/cuid={cuid}"), observe=0)
            try:
                assert (await peer.send(coap.PUT, f"mitigate/cuid={cuid}/mid=1",
                                        scope_body("198.51.100.1/32"))).code == coap.CREATED
                assert await installed(server) == {f"{cuid}/1"}
                before = await peer.statuses()
                observation = ctx.request(obs_msg)
                assert (await asyncio.wait_for(observation.response, TIMEOUT)).code == coap.CONTENT

                async def collect() -> None:
                    async for note in observation.observation:
                        scopes = decode_cbor(note.payload, Direction.RESPONSE).members()["scope"]
                        notes.append({s["mid"]: s for s in scopes})
                        if 2 in notes[-1]:
                            mid2_notified.set()

                collector = asyncio.get_running_loop().create_task(collect())
                seen.clear()

                filler = fill(disk)
                # a new request, over both transports
                for transport in ("tls", "dtls"):
                    assert_unavailable(await peer.send(coap.PUT, f"mitigate/cuid={cuid}/mid=2",
                                                       scope_body("198.51.100.2/32"), transport))
                # a higher mid that would replace mid 1 (SC-065): mid 1 stays active and enforced
                assert_unavailable(await peer.send(coap.PUT, f"mitigate/cuid={cuid}/mid=3",
                                                   scope_body("198.51.100.1/32")))
                # a refresh with a new lifetime and an efficacy update of mid 1
                assert_unavailable(await peer.send(coap.PUT, f"mitigate/cuid={cuid}/mid=1",
                                                   scope_body("198.51.100.1/32", lifetime=7200)))
                assert_unavailable(await peer.send(coap.PUT, f"mitigate/cuid={cuid}/mid=1",
                                                   scope_body("198.51.100.1/32", extra={29: 2}), if_match=True))
                # a withdrawal: mid 1 stays active (not active-but-terminating)
                assert_unavailable(await peer.send(coap.DELETE, f"mitigate/cuid={cuid}/mid=1"))
                # a session configuration change
                config = cbor2.dumps({30: {32: {33: {36: 91}}, 44: {33: {36: 91}}}})
                assert_unavailable(await peer.send(coap.PUT, "config/sid=5", config))

                # concurrent changes share one failing commit (group commit): each is undone
                burst = await asyncio.gather(*(
                    peer.send(coap.PUT, f"mitigate/cuid={cuid}/mid={10 + i}",
                              scope_body("198.51.100.1/32" if i % 4 == 0 else f"198.51.100.{20 + i}/32"),
                              "tls" if i % 2 else "dtls") for i in range(16)))
                for resp in burst:
                    assert_unavailable(resp)

                assert await installed(server) == {f"{cuid}/1"}, "no rule for an uncommitted change"
                assert seen == [], "no observer heard of an uncommitted change"
                after = await peer.statuses()
                assert sorted(after) == [1]
                for s in (before[1], after[1]):
                    s.pop("lifetime")
                assert after[1] == before[1]
                assert (await peer.send(coap.GET, f"mitigate/cuid={cuid}/mid=2")).code == coap.NOT_FOUND
                cfg = await peer.send(coap.GET, "config")
                hb = decode_cbor(cfg.payload, Direction.RESPONSE).members()["mitigating-config"]
                assert hb["heartbeat-interval"]["current-value"] != 91

                filler.unlink()  # space again: the same request succeeds
                assert (await peer.send(coap.PUT, f"mitigate/cuid={cuid}/mid=2",
                                        scope_body("198.51.100.2/32"), "dtls")).code == coap.CREATED
                assert await installed(server) == {f"{cuid}/1", f"{cuid}/2"}
                await asyncio.wait_for(mid2_notified.wait(), TIMEOUT)
                assert all(sorted(n) in ([1], [1, 2]) for n in notes), notes
                assert all(n[1]["status"] == "attack-mitigation-in-progress" for n in notes), notes
                collector.cancel()
                committed = await peer.statuses()
            finally:
                await ctx.shutdown()
        async with running(pki, db) as server:  # restart: exactly the committed state
            ctx = await raw_client(pki)
            try:
                peer = Peer(server, ctx, cuid)
                restored = await peer.statuses()
                assert sorted(restored) == [1, 2]
                for a, b in zip((committed[1], committed[2]), (restored[1], restored[2]), strict=True):
                    a.pop("lifetime"), b.pop("lifetime")
                    assert a == b
                assert await installed(server) == {f"{cuid}/1", f"{cuid}/2"}
            finally:
                await ctx.shutdown()


@pytest.mark.req("SC-005")
async def test_call_home_disk_full_changes_nothing(tmp_path: Path) -> None:
    """The CPE side (RFC 9066 Call Home DOTS server) follows the same rule over the reversed roles."""
    from agent.callhome.client import CallHomeClient, CallHomeError
    from agent.callhome.server import CallHomeServer, CallHomeServerOptions

    pki = tmp_path / "pki"
    init_pki(pki, server_sans=("127.0.0.1", "localhost"))
    with small_disk(tmp_path / "disk") as disk:
        provider = CallHomeClient(Credentials.from_pki_dir(pki, "server"), [("127.0.0.1", 0)], transports=("dtls",))
        await provider.start()
        port = provider.addresses["dtls"][0][1]
        cpe = CallHomeServer(CallHomeServerOptions(
            Credentials.from_pki_dir(pki, "client"), ("127.0.0.1", port), ["10.98.1.0/24"], transport="dtls",
            db=disk / "cpe.db", reconnect_min=0.2, reconnect_max=1.0, counter_interval=3600))
        await cpe.start()
        try:
            peer = await provider.wait_for_peer(10)
            service = cpe.service
            mitigated = asyncio.Event()
            seen: list[int] = []

            def observer(entry: Entry) -> None:
                seen.append(entry.mid)
                if entry.mid == 1 and entry.machine.state is rfc9132.Status.ATTACK_SUCCESSFULLY_MITIGATED:
                    mitigated.set()

            service.observers.append(observer)
            _, answer = await peer.mitigate(["10.98.3.2/32"], ["10.98.1.2/32"], mid=1)
            assert answer.code == "2.01"
            await asyncio.wait_for(mitigated.wait(), TIMEOUT)
            log_mitigator = await cpe.mitigator("log")
            assert set(log_mitigator.installed) == {f"{provider.cuid}/1"}  # type: ignore[attr-defined]
            before = await peer.status()
            seen.clear()

            filler = fill(disk)
            with pytest.raises(CallHomeError) as exc:
                await peer.mitigate(["10.98.3.9/32"], ["10.98.1.3/32"], source_ports=[(5000, 5001)], mid=2)
            assert exc.value.code == "5.03" and "retry" in exc.value.diagnostic
            with pytest.raises(CallHomeError) as exc:  # the withdrawal is not stored: still mitigated
                await peer.withdraw(1)
            assert exc.value.code == "5.03"
            assert set(log_mitigator.installed) == {f"{provider.cuid}/1"}  # type: ignore[attr-defined]
            assert seen == []
            assert (provider.cuid, 2) not in service.translations
            after = await peer.status()
            for s in (*before, *after):
                s.pop("lifetime")
            assert after == before and after[0]["status"] == "attack-successfully-mitigated"

            filler.unlink()
            _, answer = await peer.mitigate(["10.98.3.9/32"], ["10.98.1.3/32"], source_ports=[(5000, 5001)], mid=2)
            assert answer.code == "2.01"
            stored = await service.store.list_mitigations()
            assert [r.mid for r in stored] == [1, 2]
        finally:
            await cpe.stop()
            await provider.stop()
