"""SC-145..SC-149: link saturation -- the silent session is kept and a parallel one carries requests.

A UDP relay between the DTLS client and the server (loopback) plays the saturated inbound
link: :meth:`Relay.silence` drops the server-to-client datagrams of the flows that exist at
that moment (the current session), while datagrams of new flows (a parallel session, which
uses a new socket) and every client-to-server datagram still pass.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.client import DotsClient
from agent.protocol.session import Phase
from agent.transports.credentials import Credentials
from tests.test_client_session import TIMEOUT, hb_config, pki, start_server  # noqa: F401 - fixture

Address = tuple[str, int]


class _Flow:
    """One client address <-> its own upstream socket."""

    def __init__(self, relay: Relay, client: Address) -> None:
        self.relay, self.client = relay, client
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.connect(relay.upstream)
        self.silent = False
        self.up = self.down = self.dropped = 0
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                data = self.sock.recv(65535)
            except (BlockingIOError, ConnectionRefusedError):
                return
            if self.silent:
                self.dropped += 1
            elif self.relay.transport is not None:
                self.down += 1
                self.relay.transport.sendto(data, self.client)

    def send_up(self, data: bytes) -> None:
        self.up += 1
        try:
            self.sock.send(data)
        except OSError:
            pass

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


class Relay(asyncio.DatagramProtocol):
    """A loopback UDP relay to *upstream* whose inbound direction can be silenced per flow."""

    def __init__(self, upstream: Address) -> None:
        self.upstream = upstream
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: dict[Address, _Flow] = {}

    async def start(self) -> Address:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[:2]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        flow = self.flows.get(addr)
        if flow is None:
            flow = self.flows[addr] = _Flow(self, addr)
        flow.send_up(data)

    def silence(self) -> list[_Flow]:
        """Drop server-to-client datagrams of every existing flow (a saturated inbound link)."""
        for flow in self.flows.values():
            flow.silent = True
        return list(self.flows.values())

    def restore(self) -> None:
        for flow in self.flows.values():
            flow.silent = False

    def close(self) -> None:
        for flow in self.flows.values():
            flow.close()
        if self.transport is not None:
            self.transport.close()


async def until(cond: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


@pytest.fixture
async def setup(pki: Path, tmp_path: Path) -> Any:  # noqa: F811
    server = await start_server(pki, tmp_path, hb_config(current=1, missing=2))
    relay = Relay(server.addresses["dtls"][0])
    address = await relay.start()

    def make(**kw: Any) -> DotsClient:
        return DotsClient(address, Credentials.from_pki_dir(pki, "client"), "dtls", request_timeout=TIMEOUT,
                          reconnect_min_interval=0.5, **kw)  # < 60 s: tests only

    yield server, relay, make
    relay.close()
    await server.stop()


@pytest.mark.req("SC-145", "SC-146", "SC-147", "SC-148", "SC-149")
async def test_saturated_session_kept_parallel_session_carries_requests(setup: Any) -> None:
    server, relay, make = setup
    c = make(parallel_promote_after=1000)  # never promote here: the old session must recover
    try:
        await c.connect()
        first = await c.mitigate(target_prefixes=["192.0.2.0/24"])  # mitigating: saturation rules apply
        old, generation = c._conn, c.generation
        [old_flow] = relay.silence()
        await until(lambda: c._parallel is not None)
        # SC-146: the threshold was reached but the session is not terminated
        assert c._conn is old and c.generation == generation and c.connected
        assert c.liveness is not None and c.liveness.phase is Phase.DEGRADED
        assert c.parallel_opened == 1 and len(relay.flows) == 2  # SC-148: a new session, its own flow
        # SC-147: heartbeats keep going over the silent session (their answers are lost)
        up, dropped = old_flow.up, old_flow.dropped
        await asyncio.sleep(2.5)
        assert old_flow.up > up and old_flow.dropped > dropped
        assert c._conn is old and c.generation == generation  # still not torn down
        # SC-149: a mitigation request goes over both sessions; the parallel one gets the answer
        created = server.service.stats.created
        up = old_flow.up
        second = await c.mitigate(target_prefixes=["198.51.100.0/24"])
        # the copy over the silent session usually creates it, so the answer that comes back (to
        # the parallel copy) is a 2.04 refresh
        assert second.code in ("2.01", "2.04") and second.mid > first.mid
        assert server.service.stats.created == created + 1
        assert old_flow.up > up  # the copy over the silent session was sent too
        assert sorted(s["mid"] for s in await c.status()) == [first.mid, second.mid]
        # the silent session recovers: the parallel session is dropped, the old one stays
        relay.restore()
        await until(lambda: c._parallel is None)
        assert c.parallel_dropped == 1 and c.parallel_promoted == 0
        assert c._conn is old and c.generation == generation
        await until(lambda: c.liveness is not None and c.liveness.phase is Phase.UP)
        assert c.report()["parallel"]["path"] is None
        assert (await c.refresh(second.mid)).code == "2.04"
    finally:
        await c.close()


@pytest.mark.req("SC-146", "SC-148")
async def test_parallel_session_promoted_when_the_old_stays_silent(setup: Any) -> None:
    server, relay, make = setup
    c = make()  # promote after missing-hb-allowed (2) more unanswered heartbeats
    try:
        await c.connect()
        first = await c.mitigate(target_prefixes=["192.0.2.0/24"])
        old, generation = c._conn, c.generation
        relay.silence()
        await until(lambda: c._parallel is not None)
        assert c._conn is old and c.generation == generation  # not torn down when the threshold is reached
        await until(lambda: c.parallel_promoted == 1)
        assert c._conn is not old and c.generation == generation + 1 and c._parallel is None
        assert c.connected and c.liveness is not None and c.liveness.phase is Phase.UP
        r = await c.refresh(first.mid)  # over the promoted session alone
        assert r.code == "2.04"
        await asyncio.sleep(2.5)  # the promoted session is heartbeated and stays up
        assert c.liveness.phase is Phase.UP and c.generation == generation + 1
    finally:
        await c.close()
