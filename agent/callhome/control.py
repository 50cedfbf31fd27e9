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

Who may talk to it: the socket file is born with mode 0600 (no window in which it is open
to others) and every connection's peer credentials (``SO_PEERCRED``) are checked: only root and
the process's own user are served; anyone else gets ``{"ok": false}`` and a WARNING.  Every
operation that changes something (:data:`READ_ONLY` lists the others) is logged on
``dots.audit`` with the peer's uid and pid.  One request line of at most :data:`MAX_LINE`
bytes within :data:`READ_TIMEOUT` seconds, at most :data:`MAX_CONNECTIONS` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("dots.callhome")
audit = logging.getLogger("dots.audit")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_LINE = 1 << 20
READ_TIMEOUT = 30.0
MAX_CONNECTIONS = 32
READ_ONLY = frozenset({"pending", "list", "peers", "status"})


def peer_credentials(writer: asyncio.StreamWriter) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of the process at the other end of a Unix stream socket."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def peer_allowed(uid: int) -> bool:
    """Root and the user this process runs as."""
    return uid in (0, os.geteuid())


async def serve_control(path: str | Path, handlers: dict[str, Handler]) -> asyncio.AbstractServer:
    """Listen on ``path`` (replacing a stale socket file) and dispatch to ``handlers``."""
    p = Path(path)
    if p.exists() or p.is_symlink():
        p.unlink()
    slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def answer_for(line: bytes, who: str) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                return {"ok": False, "error": "a request is one JSON object per line"}
            op = request.get("op")
            handler = handlers.get(op) if isinstance(op, str) else None
            if handler is None:
                return {"ok": False, "error": f"unknown operation {op!r}; known: {', '.join(sorted(handlers))}"}
            answer = {"ok": True, **await handler(request)}
            if op not in READ_ONLY:
                audit.info("control %s by %s: %s", op, who,
                           {k: v for k, v in request.items() if k != "op"})
            return answer
        except Exception as exc:  # report, never crash the process
            log.debug("control request failed", exc_info=True)
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if slots.locked():
                return
            async with slots:
                cred = peer_credentials(writer)
                if cred is None or not peer_allowed(cred[1]):
                    log.warning("control socket %s: refused peer %s", p,
                                "without credentials" if cred is None else f"uid {cred[1]} pid {cred[0]}")
                    writer.write(b'{"ok": false, "error": "not authorised"}\n')
                    await writer.drain()
                    return
                who = f"uid {cred[1]} pid {cred[0]}"
                try:
                    line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
                except (TimeoutError, ValueError):  # ValueError: line over MAX_LINE
                    answer: dict[str, Any] = {"ok": False, "error": "no complete request line"}
                else:
                    answer = await answer_for(line, who)
                writer.write(json.dumps(answer, default=str).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    # Linux gives the socket file the mode of the socket's inode (less the umask): set it to
    # 0600 before bind, so the file is never open to others (no process-wide umask change).
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.fchmod(sock.fileno(), 0o600)
        sock.bind(str(p))
    except BaseException:
        sock.close()
        raise
    server = await asyncio.start_unix_server(client, sock=sock, limit=MAX_LINE)
    with contextlib.suppress(OSError):
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
