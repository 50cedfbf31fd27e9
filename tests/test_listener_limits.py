"""Resource limits of the signal-channel listeners (coaps+tcp and coaps/DTLS), over real sockets.

Issue 10, deliverable 5: a hostile peer on loopback must not be able to make the listener hold
unbounded memory with half-finished TLS handshakes, nor let one authenticated DTLS client evict
the associations of another.  Flood sockets come from other loopback addresses (127.0.0.x) than
the well-behaved client (127.0.0.1), as they would from another host.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import aiocoap
import pytest
from aiocoap import resource

from agent.pki import init_pki, issue_client
from agent.transports import tls
from agent.transports.credentials import Credentials
from agent.transports.dtls import add_dtls_client, add_dtls_server
from agent.transports.limits import Admission, ListenerLimits

TIMEOUT = 10.0


class Hello(resource.Resource):
    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(code=aiocoap.CONTENT, payload=b"hello")


def _site() -> resource.Site:
    site = resource.Site()
    site.add_resource(["hb"], Hello())
    return site


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    init_pki(d)
    return d


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Wait (bounded) for a condition to become true."""
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.02)


# ----------------------------------------------------------------------------- TLS handshake flood


def partial_client_hello() -> bytes:
    """A TLS record header announcing a 16 KiB ClientHello, followed by its first bytes only."""
    body = b"\x01" + (16000).to_bytes(3, "big") + b"\x03\x03" + bytes(32) + b"\x00"
    return b"\x16\x03\x01" + struct.pack("!H", 16004) + body


class Flood:
    """Blocking sockets in a thread: connect from 127.0.0.x, send a partial ClientHello, hold."""

    def __init__(self, port: int, count: int, sources: int) -> None:
        self.port, self.count, self.sources = port, count, sources
        self.socks: list[socket.socket] = []
        self.done = threading.Event()

    def run(self) -> None:
        hello = partial_client_hello()
        for i in range(self.count):
            s = socket.socket()
            s.bind((f"127.0.0.{2 + i % self.sources}", 0))
            try:
                s.connect(("127.0.0.1", self.port))
                s.sendall(hello)
            except OSError:
                pass  # refused and closed at once by the server: what we want
            self.socks.append(s)
        self.done.set()

    def close(self) -> None:
        for s in self.socks:
            s.close()


async def _flood_round(port: int, count: int, sources: int) -> Flood:
    flood = Flood(port, count, sources)
    threading.Thread(target=flood.run, daemon=True).start()
    await asyncio.wait_for(asyncio.to_thread(flood.done.wait), 60)
    return flood


async def _tls_get(ctx: aiocoap.Context, port: int) -> aiocoap.Message:
    req = aiocoap.Message(code=aiocoap.GET, uri=f"coaps+tcp://127.0.0.1:{port}/hb")
    return await asyncio.wait_for(ctx.request(req).response, TIMEOUT)


async def test_tls_handshake_flood_is_capped_and_memory_comes_back(pki: Path):
    admission = Admission(ListenerLimits(handshake_timeout=2))
    server = await tls.create_server_context(_site(), [("127.0.0.1", 0)], Credentials.from_pki_dir(pki, "server"),
                                             admission=admission)
    client = await tls.create_client_context(Credentials.from_pki_dir(pki, "client"))
    try:
        srv = tls.tls_server(server)
        assert srv is not None
        port = srv.addresses[0][1]
        assert (await _tls_get(client, port)).payload == b"hello"
        await (await _tls_get(client, port)).remote.release()
        before = rss_kib()
        peaks = []
        for _ in range(3):
            flood = await _flood_round(port, 1000, sources=12)  # 12 x 16 pending: under the total cap
            try:
                # a real client is served while the flood holds its sockets
                resp = await _tls_get(client, port)
                assert resp.payload == b"hello"
                await resp.remote.release()
                peaks.append(rss_kib())
                stats = admission.stats
                assert stats.handshakes_pending <= 12 * 16
                assert stats.handshakes_refused > 0
            finally:
                flood.close()
            await until(lambda: admission.stats.handshakes_pending == 0)
        after = rss_kib()
        print(f"RSS before {before} KiB, peaks {peaks} KiB, after {after} KiB")
        assert max(peaks) - before < 80 * 1024, (before, peaks)
        assert after - before < 40 * 1024, (before, after)
        assert (await _tls_get(client, port)).payload == b"hello"
        assert admission.stats.handshakes_pending == 0
    finally:
        await client.shutdown()
        await server.shutdown()


async def test_tls_pending_handshake_timeout_closes(pki: Path):
    admission = Admission(ListenerLimits(handshake_timeout=1, max_pending_handshakes_per_address=2))
    server = await tls.create_server_context(_site(), [("127.0.0.1", 0)], Credentials.from_pki_dir(pki, "server"),
                                             admission=admission)
    try:
        port = tls.tls_server(server).addresses[0][1]  # type: ignore[union-attr]
        readers = []
        for _ in range(3):
            r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.9", 0))
            w.write(partial_client_hello())
            readers.append((r, w))
        # the third is over the per-address cap: closed at once; the first two after the timeout
        started = time.monotonic()
        eofs = await asyncio.wait_for(asyncio.gather(*(r.read() for r, _ in readers)), TIMEOUT)
        assert eofs == [b"", b"", b""]
        assert time.monotonic() - started < 5
        await until(lambda: admission.stats.handshakes_timed_out == 2)
        assert admission.stats.handshakes_refused == 1
        assert admission.stats.handshakes_pending == 0
        for _, w in readers:
            w.close()
    finally:
        await server.shutdown()


async def test_tls_connections_per_client_evict_only_own_oldest(pki: Path):
    issue_client(pki, "client2")
    admission = Admission(ListenerLimits(max_associations_per_client=2))
    server = await tls.create_server_context(_site(), [("127.0.0.1", 0)], Credentials.from_pki_dir(pki, "server"),
                                             admission=admission)
    a = await tls.create_client_context(Credentials.from_pki_dir(pki, "client"))
    b_creds = Credentials(cert=pki / "client2.crt", key=pki / "client2.key", cafile=pki / "ca.crt")
    bs = [await tls.create_client_context(b_creds) for _ in range(4)]
    try:
        port = tls.tls_server(server).addresses[0][1]  # type: ignore[union-attr]
        first = await _tls_get(a, port)
        for b in bs:
            assert (await _tls_get(b, port)).payload == b"hello"
        await until(lambda: admission.stats.associations_evicted == 2)
        assert admission.stats.associations == 3
        again = await _tls_get(a, port)
        assert again.remote is first.remote  # A's connection was never touched
    finally:
        for ctx in (a, *bs):
            await ctx.shutdown()
        await server.shutdown()


# ----------------------------------------------------------------------------- DTLS associations


async def _dtls_client(creds: Credentials) -> aiocoap.Context:
    ctx = aiocoap.Context()
    await add_dtls_client(ctx, creds, handshake_timeout=3.0)
    return ctx


async def _dtls_get(ctx: aiocoap.Context, port: int, timeout: float = TIMEOUT) -> aiocoap.Message:
    req = aiocoap.Message(code=aiocoap.GET, uri=f"coaps://127.0.0.1:{port}/hb")
    return await asyncio.wait_for(ctx.request(req).response, timeout)


async def test_dtls_client_cannot_evict_another_clients_association(pki: Path):
    issue_client(pki, "client2")
    admission = Admission(ListenerLimits(max_associations=6, max_associations_per_client=3))
    server = aiocoap.Context(serversite=_site())
    transport = await add_dtls_server(server, ("127.0.0.1", 0), Credentials.from_pki_dir(pki, "server"),
                                      admission=admission)
    a = await _dtls_client(Credentials.from_pki_dir(pki, "client"))
    b_creds = Credentials(cert=pki / "client2.crt", key=pki / "client2.key", cafile=pki / "ca.crt")
    bs: list[aiocoap.Context] = []
    try:
        first = await _dtls_get(a, transport.port)
        a_remote = next(iter(transport.peers.values()))
        for _ in range(10):  # far more than B's cap, and more than the total cap
            b = await _dtls_client(b_creds)
            bs.append(b)
            assert (await _dtls_get(b, transport.port)).payload == b"hello"
        # A's association is the same one and still answers a real request
        again = await _dtls_get(a, transport.port, timeout=5.0)
        assert again.payload == b"hello" and again.remote is first.remote
        assert a_remote.sockaddr in transport.peers and transport.peers[a_remote.sockaddr] is a_remote
        assert not a_remote.channel.closed
        # B holds at most its cap; its excess was taken from B's own oldest
        established = [p for p in transport.peers.values() if p.channel.established]
        assert len(established) == 1 + 3
        assert admission.stats.associations == 4
        assert admission.stats.associations_evicted == 10 - 3
    finally:
        for ctx in (a, *bs):
            await ctx.shutdown()
        await server.shutdown()


async def test_dtls_total_cap_refuses_newcomer_and_keeps_live_peers(pki: Path):
    issue_client(pki, "client2")
    issue_client(pki, "client3")
    admission = Admission(ListenerLimits(max_associations=2, max_associations_per_client=8))
    server = aiocoap.Context(serversite=_site())
    transport = await add_dtls_server(server, ("127.0.0.1", 0), Credentials.from_pki_dir(pki, "server"),
                                      admission=admission)
    ctxs: list[aiocoap.Context] = []
    try:
        for stem in ("client", "client2"):
            ctx = await _dtls_client(Credentials(cert=pki / f"{stem}.crt", key=pki / f"{stem}.key",
                                                 cafile=pki / "ca.crt"))
            ctxs.append(ctx)
            assert (await _dtls_get(ctx, transport.port)).payload == b"hello"
        c = await _dtls_client(Credentials(cert=pki / "client3.crt", key=pki / "client3.key",
                                           cafile=pki / "ca.crt"))
        ctxs.append(c)
        with pytest.raises((aiocoap.error.NetworkError, asyncio.TimeoutError)):
            await _dtls_get(c, transport.port, timeout=6.0)
        assert admission.stats.associations_refused >= 1
        for ctx in ctxs[:2]:
            assert (await _dtls_get(ctx, transport.port)).payload == b"hello"
        assert admission.stats.associations == 2 and admission.stats.associations_evicted == 0
    finally:
        for ctx in ctxs:
            await ctx.shutdown()
        await server.shutdown()


def test_limits_from_configuration_and_counters_in_yang():
    from agent.callhome.management import provider_limits
    from agent.server.settings import ServerSettings

    tree = {"dots-agent:dots-agent": {
        "server": {"limits": {"max-associations-per-client": 2, "handshake-timeout": 5}},
        "call-home": {"call-home-client": {"limits": {"max-pending-handshakes": 7}}}}}
    limits = ServerSettings.from_config(tree).limits
    assert limits.max_associations_per_client == 2 and limits.handshake_timeout == 5.0
    assert limits.max_associations == 10000  # YANG default
    assert ServerSettings.from_config(None).limits == ListenerLimits()
    assert provider_limits(tree).max_pending_handshakes == 7
    stats = Admission().stats.to_yang()
    assert stats["handshakes-pending"] == 0 and stats["associations-refused"] == "0"


def test_ipv6_sources_are_counted_per_64():
    from agent.transports.limits import Admission, ListenerLimits

    adm = Admission(ListenerLimits(max_pending_handshakes_per_address=2))
    # one host hopping through its /64 is still one source
    assert adm.begin_handshake(("2001:db8:1:2::1", 4646)) and adm.begin_handshake(("2001:db8:1:2::ffff", 4646))
    assert not adm.begin_handshake(("2001:db8:1:2:dead:beef::1", 4646))
    assert adm.begin_handshake(("2001:db8:1:3::1", 4646))  # the next /64 is someone else
    assert adm.begin_handshake(("::ffff:192.0.2.1", 4646)) and adm.begin_handshake(("192.0.2.1", 4646))
    assert not adm.begin_handshake(("192.0.2.1", 4646))  # IPv4-mapped counts as the IPv4 address


def test_full_pending_table_gives_a_newcomer_the_biggest_groups_oldest_slot():
    adm = Admission(ListenerLimits(max_pending_handshakes=6, max_pending_handshakes_per_address=3))
    aborted: list[str] = []
    tokens = {}
    for host in ("192.0.2.1", "192.0.2.2"):
        for i in range(3):
            tokens[host, i] = adm.begin_handshake((host, 1000 + i),
                                                  abort=lambda h=host, i=i: aborted.append(f"{h}/{i}"))
            assert tokens[host, i] is not None
    assert adm.stats.handshakes_pending == 6
    newcomer = adm.begin_handshake(("198.51.100.7", 1))  # holds nothing: takes the oldest of a 3-slot group
    assert newcomer is not None and aborted == ["192.0.2.1/0"]
    assert adm.stats.handshakes_pending == 6 and adm.stats.handshakes_evicted == 1
    adm.end_handshake(tokens["192.0.2.1", 0], "failed")  # the aborted handshake's own close: not counted again
    assert adm.stats.handshakes_pending == 6 and adm.stats.handshakes_failed == 0
    # fair share: a group holding 2 does not evict from groups of 3 and 2 (only "more than one more")
    assert adm.begin_handshake(("192.0.2.1", 9)) is None
    assert aborted == ["192.0.2.1/0"] and adm.stats.handshakes_refused == 1
    adm.end_handshake(newcomer, "completed")
    adm.end_handshake(newcomer, "completed")  # idempotent
    assert adm.stats.handshakes_completed == 1 and adm.stats.handshakes_pending == 5


async def test_tls_flood_from_many_addresses_does_not_lock_a_newcomer_out(pki: Path):
    # 20 sources x 16 pending = 320 > 256: the table is full, yet a peer from a fresh address is served
    admission = Admission(ListenerLimits(handshake_timeout=30))
    server = await tls.create_server_context(_site(), [("127.0.0.1", 0)], Credentials.from_pki_dir(pki, "server"),
                                             admission=admission)
    client = await tls.create_client_context(Credentials.from_pki_dir(pki, "client"))
    try:
        port = tls.tls_server(server).addresses[0][1]  # type: ignore[union-attr]
        flood = await _flood_round(port, 20 * 16, sources=20)
        try:
            await until(lambda: admission.stats.handshakes_pending >= 256)
            resp = await _tls_get(client, port)  # from 127.0.0.1, which holds no slot
            assert resp.payload == b"hello"
            await resp.remote.release()
            assert admission.stats.handshakes_evicted >= 1
        finally:
            flood.close()
        await until(lambda: admission.stats.handshakes_pending == 0)
    finally:
        await client.shutdown()
        await server.shutdown()
