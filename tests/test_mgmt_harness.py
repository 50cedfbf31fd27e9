"""Shared harness of the management-plane tests: a Management on its own loop thread.

The protocol clients (ncclient, ansible, urllib) are synchronous, so the management plane runs
on an asyncio loop in a background thread, as it would inside the agent process.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mgmt.auth import User, UserDB, hash_password
from mgmt.manager import Management
from mgmt.netconf_server import NetconfSettings

DATA = Path(__file__).resolve().parent / "data"
SERVER_EXAMPLE = DATA / "dots-agent-server-example.json"
NS = "urn:dots-agent:params:xml:ns:yang:dots-agent"
USER, PASSWORD = "admin", "s3cret-pw"


class Harness:
    """Management + NETCONF server on a private event loop thread."""

    def __init__(self, tmp: Path, startup: Path | None = None, initial: dict | None = None,
                 max_rpc_size: int = 1 << 20, **mgmt_kwargs: Any) -> None:
        self.tmp = tmp
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.mgmt: Management = self.run(lambda: _make(startup, initial, mgmt_kwargs))
        self.settings = NetconfSettings(host_key_file=tmp / "ssh_host_key",
                                        users=UserDB([User(USER, hash_password(PASSWORD))],
                                                     running=self.mgmt.running_dict),
                                        host="127.0.0.1", port=0, max_rpc_size=max_rpc_size)
        self.netconf = self.run(lambda: self.mgmt.start_netconf(self.settings))
        self.port: int = self.netconf.port

    def run(self, factory: Callable[[], Any], timeout: float = 60) -> Any:
        async def runner() -> Any:
            return await factory()
        return asyncio.run_coroutine_threadsafe(runner(), self.loop).result(timeout)

    def connect(self, **kw: Any) -> Any:
        from ncclient import manager
        args = dict(host="127.0.0.1", port=self.port, username=USER, password=PASSWORD,
                    hostkey_verify=False, allow_agent=False, look_for_keys=False, timeout=20)
        args.update(kw)
        return manager.connect(**args)

    def close(self) -> None:
        if not self.loop.is_running():
            return
        try:
            self.run(self.mgmt.close)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


async def _make(startup: Path | None, initial: dict | None, kw: dict[str, Any]) -> Management:
    kw.setdefault("administrators", (USER,))  # the bootstrap user, as agent.mgmt_embed does
    return Management(startup_file=startup, initial_config=initial, **kw)


def server_example() -> dict:
    return json.loads(SERVER_EXAMPLE.read_text())
