"""A local control socket for the long-running Call Home processes (JSON lines over AF_UNIX).

Theory of operation
-------------------
``dots call-home server`` and ``dots call-home client`` can listen on a Unix-domain socket
(file mode 0600: only the owner may talk to it).  Each connection carries one request line,
``{"op": NAME, ...}``, and gets one answer line: ``{"ok": true, ...}`` or
``{"ok": false, "error": TEXT}``.  The operations are the handlers the process registers
(``pending``, ``approve``, ``reject``, ``list`` on the CPE; ``peers``, ``mitigate``,
``withdraw``, ``status``, ``redirect`` on the provider).  Being a file, the socket is reachable
from other network namespaces, which is how the tests drive processes running inside them.
The management plane calls the same Python methods directly instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("dots.callhome")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_LINE = 1 << 20


async def serve_control(path: str | Path, handlers: dict[str, Handler]) -> asyncio.AbstractServer:
    """Listen on ``path`` (replacing a stale socket file) and dispatch to ``handlers``."""
    p = Path(path)
    if p.exists() or p.is_symlink():
        p.unlink()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            try:
                request = json.loads(line)
                op = request.get("op")
                handler = handlers.get(op)
                if handler is None:
                    answer: dict[str, Any] = {"ok": False, "error": f"unknown operation {op!r}; "
                                              f"known: {', '.join(sorted(handlers))}"}
                else:
                    answer = {"ok": True, **await handler(request)}
            except Exception as exc:  # report, never crash the process
                log.debug("control request failed", exc_info=True)
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            writer.write(json.dumps(answer, default=str).encode() + b"\n")
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_unix_server(client, path=str(p), limit=MAX_LINE)
    os.chmod(p, 0o600)
    return server


async def call_control(path: str | Path, request: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    """Send one request to a control socket and return the answer (raises on transport errors)."""
    reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_LINE)
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.close()
    if not line:
        raise ConnectionError("the control socket closed without an answer")
    answer: dict[str, Any] = json.loads(line)
    return answer
