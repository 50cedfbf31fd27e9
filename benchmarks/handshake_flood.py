"""RSS of a coaps+tcp listener under a flood of partial TLS ClientHellos: unlimited vs. capped.

Each mode runs in its own child process (so RSS figures do not mix): a server with mutual
X.509 on 127.0.0.1, and a flood thread that opens COUNT connections from SOURCES loopback
addresses (127.0.0.2...), sends a partial ClientHello on each and holds them; ROUNDS times.
After each round a real client must get an answer.  Modes:

* ``unlimited``: what the listener did before issue 10 -- ``loop.create_server(ssl=...)``
  with asyncio's SSL protocol (256 KiB read buffer per connection), no admission;
* ``capped``: :class:`agent.transports.tls.DotsTLSServer` with the YANG default limits
  (256 pending, 16 per address) and 32 KiB read buffers.

The flood sockets live in the same process, so part of the residual growth is theirs.

Usage: ``python benchmarks/handshake_flood.py [--count 4000] [--rounds 4] [--sources 12]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


async def run(mode: str, count: int, rounds: int, sources: int) -> dict[str, object]:
    import aiocoap
    from aiocoap.transports.tcp import TcpConnection

    from agent.pki import init_pki
    from agent.transports import tls
    from agent.transports.credentials import Credentials
    from tests.test_listener_limits import _flood_round, _site, _tls_get

    pki = Path(tempfile.mkdtemp()) / "pki"
    init_pki(pki)
    server = await tls.create_server_context(_site(), [("127.0.0.1", 0)], Credentials.from_pki_dir(pki, "server"))
    srv = tls.tls_server(server)
    assert srv is not None
    port = srv.addresses[0][1]
    loop = asyncio.get_running_loop()
    if mode == "unlimited":  # a second, old-style listener next to it
        ctx = tls.server_ssl_context(Credentials.from_pki_dir(pki, "server"))

        def new_connection() -> TcpConnection:
            conn = TcpConnection(srv, srv.log, loop, is_server=True)
            srv._pool.add(conn)
            return conn

        old = await loop.create_server(new_connection, "127.0.0.1", 0, ssl=ctx, ssl_handshake_timeout=10)
        port = old.sockets[0].getsockname()[1]
    client = await tls.create_client_context(Credentials.from_pki_dir(pki, "client"))
    await (await _tls_get(client, port)).remote.release()
    before = rss_kib()
    peaks, afters = [], []
    for _ in range(rounds):
        flood = await _flood_round(port, count, sources)
        resp = await asyncio.wait_for(client.request(aiocoap.Message(
            code=aiocoap.GET, uri=f"coaps+tcp://127.0.0.1:{port}/hb")).response, 30)
        await resp.remote.release()
        peaks.append(rss_kib())
        flood.close()
        for _ in range(300):  # the server sees the closes (bounded)
            if mode == "unlimited" or srv.admission.stats.handshakes_pending == 0:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        afters.append(rss_kib())
    await client.shutdown()
    await server.shutdown()
    return {"mode": mode, "before_kib": before, "peak_kib": peaks, "after_kib": afters,
            "stats": vars(srv.admission.stats) if mode != "unlimited" else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=4000)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--sources", type=int, default=12)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        print(json.dumps(asyncio.run(run(args.mode, args.count, args.rounds, args.sources))))
        return
    rows = []
    for mode in ("unlimited", "capped"):
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--count", str(args.count),
                              "--rounds", str(args.rounds), "--sources", str(args.sources)],
                             capture_output=True, text=True, check=True, cwd=ROOT)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{args.rounds} rounds of {args.count} partial ClientHellos from {args.sources} addresses (RSS, MiB)")
    print(f"{'mode':<15}{'before':>8}  {'peak per round':<32}{'after per round':<32}")
    for r in rows:
        peak = " ".join(f"{k / 1024:.0f}" for k in r["peak_kib"])  # type: ignore[union-attr]
        after = " ".join(f"{k / 1024:.0f}" for k in r["after_kib"])  # type: ignore[union-attr]
        print(f"{r['mode']:<15}{r['before_kib'] / 1024:>8.0f}  {peak:<32}{after:<32}")  # type: ignore[operator]


if __name__ == "__main__":
    main()
