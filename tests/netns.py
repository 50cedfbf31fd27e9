"""Network-namespace test topologies: N namespaces joined by veth pairs, cleaned up even on failure.

Theory of operation: :class:`Topology` is a context manager.  On entry it creates one namespace
per node (``ip netns add``, names made unique with the pid and a random suffix, ``lo`` up), then
one veth pair per :class:`Link` with its ends moved into the two namespaces, addresses assigned
(IPv6 with ``nodad`` so they are usable at once) and links up.  On exit (or if set-up fails half
way) every namespace it created is deleted, which also destroys the veths inside.  Nothing is
configured outside the namespaces; the host's own interfaces and routes are never touched.

Traffic helpers run small Python programs inside a namespace (``ip netns exec``): a UDP
receiver that counts datagrams per port, a UDP sender, and an ICMP echo "ping" on raw sockets
(no ``ping`` binary needed).

    with Topology(["attacker", "target"],
                  [Link("attacker", "target", ["10.99.0.1/24"], ["10.99.0.2/24"])]) as topo:
        topo["target"].run("nft", "list", "ruleset")
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

__all__ = ["Link", "Netns", "Topology", "UdpReceiver", "skip_reason"]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def skip_reason(*tools: str) -> str | None:
    """Why namespace tests cannot run here (None when they can): needs root, ``ip`` and ``tools``."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for t in ("ip", *tools):
        if shutil.which(t) is None:
            return f"needs the {t!r} command"
    name = f"dtprobe{os.getpid()}{secrets.token_hex(2)}"
    r = _ip("netns", "add", name, check=False)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


@dataclass
class Link:
    """A veth pair between nodes ``a`` and ``b`` with the addresses (CIDR) of each end."""

    a: str
    b: str
    a_addrs: Sequence[str] = ()
    b_addrs: Sequence[str] = ()
    a_ifname: str | None = None  # default: generated
    b_ifname: str | None = None


@dataclass
class Netns:
    """One namespace of a topology."""

    role: str
    name: str
    ifnames: list[str] = field(default_factory=list)

    def argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, *argv: str, check: bool = True, input: str | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace and wait for it."""
        r = subprocess.run(self.argv(*argv), capture_output=True, text=True, input=input, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"[{self.role}] {' '.join(argv)} -> {r.returncode}: {r.stderr.strip()}")
        return r

    def popen(self, *argv: str, **kw: object) -> subprocess.Popen[str]:
        """Start a command inside the namespace (text mode)."""
        return subprocess.Popen(self.argv(*argv), text=True, **kw)  # type: ignore[call-overload, no-any-return]

    def python(self, code: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``python -c code args...`` inside the namespace."""
        return self.run(sys.executable, "-c", code, *args, timeout=timeout)

    # --- traffic ----------------------------------------------------------------------
    def udp_send(
        self, dst: str, port: int, count: int, *, src: str | None = None, size: int = 64, gap: float = 0.001
    ) -> None:
        """Send ``count`` UDP datagrams of ``size`` bytes to ``dst``:``port`` (optionally from ``src``)."""
        self.python(_UDP_SEND, dst, str(port), str(count), src or "", str(size), str(gap))

    def icmp_echo(self, dst: str, count: int = 3, *, timeout: float = 0.5, src: str | None = None) -> int:
        """Send ``count`` ICMP(v6) echo requests to ``dst``; return how many replies came back."""
        r = self.python(_PING, dst, str(count), str(timeout), src or "")
        return int(r.stdout.strip())

    def udp_receiver(self, ports: Sequence[int], family: int = 4) -> UdpReceiver:
        """Start a UDP receiver counting datagrams per port (stop it to read the counts)."""
        return UdpReceiver(self, ports, family)


class UdpReceiver:
    """A UDP receiver inside a namespace; :meth:`stop` returns ``{port: (datagrams, bytes)}``."""

    def __init__(self, ns: Netns, ports: Sequence[int], family: int) -> None:
        self.proc = ns.popen(
            sys.executable,
            "-c",
            _UDP_RECV,
            str(family),
            *map(str, ports),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.proc.kill()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"udp receiver failed: {line!r} {err}")

    def stop(self) -> dict[int, tuple[int, int]]:
        out, err = self.proc.communicate("stop\n", timeout=30)
        if self.proc.returncode != 0:
            raise RuntimeError(f"udp receiver failed: {err}")
        return {int(k): (v[0], v[1]) for k, v in json.loads(out).items()}

    def __enter__(self) -> UdpReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Topology:
    """Context manager creating the namespaces ``nodes`` joined by ``links`` (see module docstring)."""

    def __init__(self, nodes: Sequence[str], links: Sequence[Link] = (), *, prefix: str = "dt") -> None:
        self.nodes = list(nodes)
        self.links = list(links)
        self.tag = f"{prefix}{os.getpid()}{secrets.token_hex(2)}"
        self.ns: dict[str, Netns] = {}

    def __getitem__(self, role: str) -> Netns:
        return self.ns[role]

    def __enter__(self) -> Topology:
        try:
            self._create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.destroy()

    def _create(self) -> None:
        for role in self.nodes:
            ns = Netns(role, f"{self.tag}-{role}")
            _ip("netns", "add", ns.name)
            self.ns[role] = ns
            ns.run("ip", "link", "set", "lo", "up")
            # no duplicate address detection: link-local and global addresses usable at once
            for conf in ("all", "default"):
                ns.run("sh", "-c", f"echo 0 > /proc/sys/net/ipv6/conf/{conf}/accept_dad")
        for i, link in enumerate(self.links):
            a, b = self.ns[link.a], self.ns[link.b]
            suffix = secrets.token_hex(3)
            # create inside namespace a directly: the host never holds the interface
            tmp_a, tmp_b = f"va{i}{suffix}", f"vb{i}{suffix}"
            a.run("ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b, "netns", b.name)
            ifa, ifb = link.a_ifname or f"veth{i}", link.b_ifname or f"veth{i}"
            a.run("ip", "link", "set", tmp_a, "name", ifa)
            b.run("ip", "link", "set", tmp_b, "name", ifb)
            for ns, ifn, addrs in ((a, ifa, link.a_addrs), (b, ifb, link.b_addrs)):
                ns.ifnames.append(ifn)
                for addr in addrs:
                    extra = ["nodad"] if ":" in addr else []
                    ns.run("ip", "addr", "add", addr, "dev", ifn, *extra)
                ns.run("ip", "link", "set", ifn, "up")
        self._wait_ready()

    def _wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until every veth is operationally up with no tentative (DAD) address."""
        deadline = time.monotonic() + timeout
        pending = [(ns, ifn) for ns in self.ns.values() for ifn in ns.ifnames]
        while pending:
            ns, ifn = pending[0]
            info = json.loads(ns.run("ip", "-j", "addr", "show", "dev", ifn).stdout)[0]
            tentative = any(a.get("tentative") for a in info.get("addr_info", []))
            has_ll = any(
                a.get("scope") == "link" and a.get("family") == "inet6" for a in info.get("addr_info", [])
            )
            if info.get("operstate") == "UP" and has_ll and not tentative:
                pending.pop(0)
            elif time.monotonic() > deadline:
                raise RuntimeError(f"[{ns.role}] {ifn} not ready after {timeout}s: {info}")
            else:
                time.sleep(0.02)

    def destroy(self) -> None:
        """Delete every namespace this topology created (idempotent, never raises)."""
        for ns in self.ns.values():
            try:
                _ip("netns", "del", ns.name, check=False)
            except Exception:  # noqa: BLE001 - best effort cleanup
                pass
        self.ns.clear()


_UDP_SEND = """
import socket, sys, time
dst, port, count, src = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
size, gap = int(sys.argv[5]), float(sys.argv[6])
s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
if src:
    s.bind((src, 0))
payload = b"x" * size
for _ in range(count):
    s.sendto(payload, (dst, port))
    if gap:
        time.sleep(gap)
"""

_UDP_RECV = """
import json, select, socket, sys
fam = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
socks = {}
for p in map(int, sys.argv[2:]):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", p))
    socks[s.fileno()] = (s, p)
counts = {p: [0, 0] for _, p in socks.values()}
print("ready", flush=True)
fds = [*socks, sys.stdin.fileno()]
while True:
    r, _, _ = select.select(fds, [], [])
    if sys.stdin.fileno() in r:
        for s, p in socks.values():  # drain what is queued
            s.setblocking(False)
            try:
                while True:
                    n = len(s.recv(65535)); counts[p][0] += 1; counts[p][1] += n
            except BlockingIOError:
                pass
        break
    for fd in r:
        s, p = socks[fd]
        counts[p][0] += 1; counts[p][1] += len(s.recv(65535))
print(json.dumps(counts), flush=True)
"""

_PING = """
import os, socket, struct, sys, time
dst, count, timeout, src = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
v6 = ":" in dst
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW,
                  socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
if src:
    s.bind((src, 0))
ident = os.getpid() & 0xFFFF
def csum(b):
    if len(b) % 2: b += b"\\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b)); t = (t >> 16) + (t & 0xFFFF); t += t >> 16
    return ~t & 0xFFFF
replies = 0
for seq in range(count):
    typ = 128 if v6 else 8
    hdr = struct.pack("!BBHHH", typ, 0, 0, ident, seq) + b"dots-test"
    if not v6:
        hdr = hdr[:2] + struct.pack("!H", csum(hdr)) + hdr[4:]
    s.sendto(hdr, (dst, 0))
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            data = s.recv(2048)
        except TimeoutError:
            break
        icmp = data if v6 else data[(data[0] & 0x0F) * 4:]
        rtype, _, _, rid, rseq = struct.unpack("!BBHHH", icmp[:8])
        if rtype == (129 if v6 else 0) and rid == ident and rseq == seq:
            replies += 1
            break
print(replies)
"""
