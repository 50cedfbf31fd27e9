"""A server namespace joined to the root namespace by a veth, with nftables impairments.

Theory of operation: :class:`ServerNet` creates one namespace (through :class:`tests.netns.Topology`,
so it is deleted even on failure) and one veth pair whose one end stays in the root namespace --
where an in-process DOTS client runs -- and whose other end is ``eth0`` of the namespace.  Only
test addresses are used: ``10.97.N.1/24`` and ``fd00:97:N::1/64`` on the root end, ``.2``, ``.3``
(``::2``, ``::3``) on the namespace end, so two DOTS servers can listen on the same port.  Deleting
the namespace deletes the veth and its root end with it.

Impairments are nftables rules inside the server namespace only (the ``netem`` qdisc is not
available everywhere): :meth:`ServerNet.block_udp`, :meth:`ServerNet.blackhole_ipv6` (drops every
IPv6 packet, neighbour discovery included) and :meth:`ServerNet.loss` (``numgen random mod 100 <
P drop`` on input and output).
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
from pathlib import Path

from agent.pki import init_pki

from .netns import Netns, Topology

_subnets = itertools.count(random.Random(os.getpid()).randrange(1, 200))
TABLE = "dots_test_impair"


class ServerNet:
    """Root namespace <-veth-> namespace ``srv`` (see the module docstring)."""

    def __init__(self) -> None:
        self.n = next(_subnets) % 250 + 1
        self.topo = Topology(["srv"], prefix="dr")
        self.root_if = f"dr{os.getpid() % 100000}{self.n}"[:15]

    @property
    def ns(self) -> Netns:
        return self.topo["srv"]

    def v4(self, host: int) -> str:
        return f"10.97.{self.n}.{host}"

    def v6(self, host: int) -> str:
        return f"fd00:97:{self.n}::{host}"

    def __enter__(self) -> ServerNet:
        self.topo.__enter__()
        try:
            ns = self.ns
            subprocess.run(["ip", "link", "del", self.root_if], capture_output=True, check=False)
            subprocess.run(["ip", "link", "add", self.root_if, "type", "veth", "peer", "name", "eth0", "netns",
                            ns.name], check=True, capture_output=True)
            for cmd in (["ip", "addr", "add", f"{self.v4(1)}/24", "dev", self.root_if],
                        ["ip", "addr", "add", f"{self.v6(1)}/64", "dev", self.root_if, "nodad"],
                        ["ip", "link", "set", self.root_if, "up"]):
                subprocess.run(cmd, check=True, capture_output=True)
            for host in (2, 3):
                ns.run("ip", "addr", "add", f"{self.v4(host)}/24", "dev", "eth0")
                ns.run("ip", "addr", "add", f"{self.v6(host)}/64", "dev", "eth0", "nodad")
            ns.run("ip", "link", "set", "eth0", "up")
            ns.ifnames.append("eth0")
            self.topo._wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.topo.__exit__(None, None, None)
        subprocess.run(["ip", "link", "del", self.root_if], capture_output=True, check=False)

    def pki(self, directory: Path) -> Path:
        """A dev PKI whose server certificate names both servers of this net."""
        sans = ("a.dots.test", "b.dots.test", self.v4(2), self.v4(3), self.v6(2), self.v6(3))
        init_pki(directory, server_sans=sans)
        return directory

    def server(self, host: int) -> str:
        """``[v6]:4646,v4:4646`` of server ``host`` (2 or 3)."""
        return f"[{self.v6(host)}]:4646,{self.v4(host)}:4646"

    # -- impairments ------------------------------------------------------------------------
    def nft(self, *rules: str, hook: str = "input") -> None:
        chain = f"imp_{hook}"
        body = "\n".join(f"    {r}" for r in rules)
        script = (f"table inet {TABLE} {{\n  chain {chain} {{\n    type filter hook {hook} priority -10;\n"
                  f"{body}\n  }}\n}}\n")
        self.ns.run("nft", "-f", "-", input=script)

    def clear(self) -> None:
        self.ns.run("nft", "delete", "table", "inet", TABLE, check=False)

    def block_udp(self) -> None:
        self.nft("meta l4proto udp drop")

    def blackhole_ipv6(self) -> None:
        self.nft("meta nfproto ipv6 drop")

    def loss(self, percent: int) -> None:
        self.nft(f"numgen random mod 100 < {percent} drop", hook="input")
        self.nft(f"numgen random mod 100 < {percent} drop", hook="output")
