"""Signal channel throughput: our DOTS server against a bare aiocoap PUT handler, same transports.

Both servers run as separate processes on loopback with the same TLS/DTLS transports and
certificates.  Ours validates (codec + libyang), decides, persists to SQLite (synchronous=FULL)
and calls the ``log`` mitigator before it answers; the bare one answers 2.04 at once.

Workloads: sequential PUTs from one client, and 100 concurrent clients (one (D)TLS session
each) for a fixed time.  Each client keeps one target and sends increasing mids, so every PUT
creates a request that replaces the client's previous one (RFC 9132 §4.4.1.3): the request
count stays constant while each PUT does the full work.  Then 1,000 idle DTLS sessions that
heartbeat are opened and the server's RSS growth per session is measured.

Prints a table, then one line:
``ours_put_per_s=N bare_put_per_s=N ratio=N p50_ms=N p99_ms=N rss_kb_per_session=N``
(coaps+tcp, 100 concurrent clients).  ``--quick`` shortens every phase.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiocoap
import cbor2
from aiocoap import Message
from aiocoap import numbers as coap

from agent.pki import certificate_cuid, init_pki, issue_client
from agent.transports.credentials import Credentials
from agent.transports.dtls import add_dtls_client
from agent.transports.tls import add_tls_client

ROOT = Path(__file__).resolve().parents[1]
CONCURRENT = 100
SESSIONS = 1000

BARE_SERVER = r"""
import asyncio, json, sys
import aiocoap, aiocoap.resource as r
from aiocoap import numbers as coap
from aiocoap.resource import PathCapable
from agent.transports.credentials import Credentials
from agent.transports.tls import add_tls_server, tls_server
from agent.transports.dtls import add_dtls_server

class Put(r.Resource, PathCapable):
    async def render_put(self, request):
        return aiocoap.Message(code=coap.CHANGED)

async def main():
    creds = Credentials.from_pki_dir(sys.argv[1], "server")
    ctx = aiocoap.Context(serversite=Put())
    await add_tls_server(ctx, [("127.0.0.1", 0)], creds)
    port = tls_server(ctx).addresses[0][1]
    t = await add_dtls_server(ctx, ("127.0.0.1", port), creds)
    print(json.dumps({"tls": [["127.0.0.1", port]], "dtls": [["127.0.0.1", t.port]]}), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def body(i: int) -> bytes:
    return cbor2.dumps({1: {2: [{6: [f"10.{i // 250}.{i % 250}.0/24"], 7: [{8: 443}], 10: [6], 14: 3600}]}})


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Servers:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.pki = work / "pki"
        init_pki(self.pki)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        ready = work / "ready.json"
        self.ours = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "server", "--pki", str(self.pki), "--listen", "127.0.0.1",
             "--port", "0", "--db", str(work / "bench.db"), "--ready-file", str(ready)],
            env=env, stdout=subprocess.DEVNULL, stderr=open(work / "server.log", "wb"))
        self.bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(self.pki)], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.bare.stdout is not None
        self.bare_addr = json.loads(self.bare.stdout.readline())
        deadline = time.time() + 30
        while not (ready.exists() and ready.stat().st_size):
            if time.time() > deadline or self.ours.poll() is not None:
                raise RuntimeError((work / "server.log").read_text()[-2000:])
            time.sleep(0.05)
        self.ours_addr = json.loads(ready.read_text())

    def uri(self, which: str, transport: str, path: str) -> str:
        addr = self.ours_addr if which == "ours" else self.bare_addr
        host, port = addr[transport][0]
        scheme = "coaps+tcp" if transport == "tls" else "coaps"
        return f"{scheme}://{host}:{port}/.well-known/dots/{path}"

    def stop(self) -> None:
        for p in (self.ours, self.bare):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


async def client_context(pki: Path, stem: str, transport: str) -> aiocoap.Context:
    creds = Credentials(cert=pki / f"{stem}.crt", key=pki / f"{stem}.key", cafile=pki / "ca.crt")
    ctx = aiocoap.Context()
    if transport == "tls":
        await add_tls_client(ctx, creds)
    else:
        await add_dtls_client(ctx, creds)
    return ctx


async def put(ctx: aiocoap.Context, uri: str, payload: bytes) -> float:
    msg = Message(code=coap.PUT, uri=uri, payload=payload, content_format=271)
    t0 = time.perf_counter()
    resp = await ctx.request(msg).response
    if not resp.code.is_successful():
        raise RuntimeError(f"{uri}: {resp.code} {resp.payload[:100]!r}")
    return time.perf_counter() - t0


_next_mid: dict[str, int] = {}


async def run_load(servers: Servers, which: str, transport: str, clients: list[tuple[str, aiocoap.Context]],
                   duration: float) -> tuple[float, list[float]]:
    """Each client PUTs in a loop for *duration*; returns (requests/s, latencies).

    mids increase per client across phases (RFC 9132 §4.4.1.1: a lower overlapping mid is refused).
    """
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration

    async def worker(idx: int, cuid: str, ctx: aiocoap.Context) -> None:
        while time.perf_counter() < stop_at:
            mid = _next_mid[cuid] = _next_mid.get(cuid, 0) + 1
            uri = servers.uri(which, transport, f"mitigate/cuid={cuid}/mid={mid}")
            latencies.append(await put(ctx, uri, body(idx)))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i, c, ctx) for i, (c, ctx) in enumerate(clients)))
    return len(latencies) / (time.perf_counter() - t0), latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def sessions_rss(servers: Servers, n: int) -> float:
    """Open *n* idle DTLS sessions (each says hello with a heartbeat); server RSS growth per session."""
    hb = cbor2.dumps({49: {51: True}})
    before = rss_kb(servers.ours.pid)
    contexts = []
    for i in range(n):
        ctx = await client_context(servers.pki, "client", "dtls")
        contexts.append(ctx)
        msg = Message(code=coap.PUT, uri=servers.uri("ours", "dtls", "hb"), payload=hb, content_format=271)
        await ctx.request(msg).response
        if i % 100 == 99:
            await asyncio.sleep(0)
    await asyncio.sleep(1.0)
    after = rss_kb(servers.ours.pid)
    for ctx in contexts:
        await ctx.shutdown()
    return (after - before) / n


async def main() -> None:
    quick = "--quick" in sys.argv
    duration = 2.0 if quick else 4.0
    n_sessions = 200 if quick else SESSIONS
    work = Path(tempfile.mkdtemp(prefix="dots-bench-"))
    servers = Servers(work)
    results: dict[tuple[str, str, str], tuple[float, list[float]]] = {}
    try:
        stems = []
        for i in range(CONCURRENT):
            stem = f"c{i}"
            issue_client(servers.pki, stem)
            stems.append((stem, certificate_cuid(servers.pki / f"{stem}.crt")))
        for transport in ("tls", "dtls"):
            for which in ("bare", "ours"):
                single = [(stems[0][1], await client_context(servers.pki, stems[0][0], transport))]
                results[(which, transport, "sequential")] = await run_load(servers, which, transport, single,
                                                                           duration / 2)
                await single[0][1].shutdown()
                many = [(cuid, await client_context(servers.pki, stem, transport)) for stem, cuid in stems]
                await run_load(servers, which, transport, many, 0.3)  # handshakes, warm-up
                results[(which, transport, "concurrent")] = await run_load(servers, which, transport, many,
                                                                           duration)
                for _c, ctx in many:
                    await ctx.shutdown()
        per_session = await sessions_rss(servers, n_sessions)
    finally:
        servers.stop()

    print(f"{'transport':10}{'load':12}{'server':7}{'PUT/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
    for (which, transport, load), (rate, lat) in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        print(f"{transport:10}{load:12}{which:7}{rate:9.0f}{pct(lat, .5):9.2f}{pct(lat, .99):9.2f}")
    ours, bare = results[("ours", "tls", "concurrent")], results[("bare", "tls", "concurrent")]
    print(f"idle DTLS sessions: {n_sessions}, server RSS growth {per_session:.1f} KB per session")
    print(f"ours_put_per_s={ours[0]:.0f} bare_put_per_s={bare[0]:.0f} ratio={ours[0] / bare[0]:.2f} "
          f"p50_ms={pct(ours[1], .5):.2f} p99_ms={pct(ours[1], .99):.2f} rss_kb_per_session={per_session:.1f}")


if __name__ == "__main__":
    asyncio.run(main())
