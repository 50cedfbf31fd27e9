"""NETCONF management-plane numbers with ncclient on loopback.

Measures sequential ``get-config`` RPC/s of one session (with ncclient's default 0.1 s
``TICK`` and with it lowered to 1 ms), the latency of ``edit-config`` to running (validated,
one ConfigSubscriber that does nothing) and of candidate edit + commit, and the same for 4
concurrent sessions.  Prints ``key=value`` lines.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_mgmt_harness import NS, Harness, server_example  # noqa: E402


class Nop:
    async def apply(self, new_running, old):
        return None


def edit(i: int) -> str:
    return (f'<config><dots-agent xmlns="{NS}"><server><clients><client><name>bench-{i % 50}</name>'
            f'<cuid>bench{i % 50:017d}</cuid><protected-prefix>203.0.113.{i % 250}/32</protected-prefix>'
            '</client></clients></server></dots-agent></config>')


def rate(m, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        m.get_config("running")
    return n / (time.perf_counter() - t0)


def main() -> None:
    import ncclient.transport.session as ncs

    with tempfile.TemporaryDirectory() as tmp:
        h = Harness(Path(tmp), initial=server_example())
        h.mgmt.add_subscriber(Nop())
        try:
            with h.connect() as m:
                print(f"get_config_per_s_default_tick={rate(m, 20):.1f}")
            ncs.TICK = 0.001
            with h.connect() as m:
                print(f"get_config_per_s_tick_1ms={rate(m, 300):.1f}")
                lat = []
                for i in range(200):
                    t0 = time.perf_counter()
                    m.edit_config(target="running", config=edit(i))
                    lat.append((time.perf_counter() - t0) * 1000)
                print(f"edit_running_ms_p50={statistics.median(lat):.2f} "
                      f"p99={sorted(lat)[int(len(lat) * 0.99) - 1]:.2f}")
                lat = []
                for i in range(100):
                    t0 = time.perf_counter()
                    m.edit_config(target="candidate", config=edit(i + 7))
                    m.commit()
                    lat.append((time.perf_counter() - t0) * 1000)
                print(f"edit_candidate_commit_ms_p50={statistics.median(lat):.2f}")
            sessions = [h.connect() for _ in range(4)]
            counts = [0] * 4
            stop = time.perf_counter() + 3

            def worker(k: int) -> None:
                while time.perf_counter() < stop:
                    sessions[k].get_config("running")
                    counts[k] += 1

            threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            print(f"get_config_per_s_4_sessions={sum(counts) / 3:.1f}")
            for s in sessions:
                s.close_session()
        finally:
            h.close()


if __name__ == "__main__":
    main()
