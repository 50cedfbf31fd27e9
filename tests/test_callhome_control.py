"""The Call Home control socket answers "who is this?": owner/root only, audited, bounded."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from agent.callhome.control import call_control, serve_control

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"  # readable by nobody (the venv may live under /root)


async def _serve(path: Path, calls: list[dict[str, Any]]) -> asyncio.AbstractServer:
    async def approve(req: dict[str, Any]) -> dict[str, Any]:
        calls.append(req)
        return {"approved": req.get("mid")}

    async def pending(req: dict[str, Any]) -> dict[str, Any]:
        return {"pending": []}

    return await serve_control(path, {"approve": approve, "pending": pending})


async def test_socket_is_owner_only_and_changes_are_audited(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    calls: list[dict[str, Any]] = []
    sock = tmp_path / "ctl.sock"
    server = await _serve(sock, calls)
    try:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        with caplog.at_level(logging.INFO, logger="dots.audit"):
            assert await call_control(sock, {"op": "pending"}) == {"ok": True, "pending": []}
            assert await call_control(sock, {"op": "approve", "cuid": "c1", "mid": 7}) == {"ok": True,
                                                                                       "approved": 7}
        audit = [r.getMessage() for r in caplog.records if r.name == "dots.audit"]
        assert len(audit) == 1, audit  # the read-only 'pending' is not audited
        assert "approve" in audit[0] and f"uid {os.geteuid()}" in audit[0] and "'mid': 7" in audit[0]
        # garbage and non-objects get an error line; the socket keeps serving
        assert (await call_control(sock, [1, 2]))["ok"] is False  # type: ignore[arg-type]
        reader, writer = await asyncio.open_unix_connection(str(sock))
        writer.write(b"{not json\n")
        await writer.drain()
        answer = json.loads(await reader.readline())
        writer.close()
        assert answer["ok"] is False
        assert (await call_control(sock, {"op": "pending"}))["ok"] is True
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
async def test_other_users_are_refused_even_if_the_file_mode_is_widened():
    calls: list[dict[str, Any]] = []
    where = Path(tempfile.mkdtemp(prefix="dots-ctl-"))  # pytest's tmp_path is not traversable by nobody
    where.chmod(0o755)
    sock = where / "ctl.sock"
    server = await _serve(sock, calls)
    try:
        sock.chmod(0o666)  # an operator's mistake: the file mode alone no longer protects it
        code = ("import socket,sys\n"
                "s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
                "s.sendall(b'{\"op\": \"approve\", \"cuid\": \"c1\", \"mid\": 1}\\n')\n"
                "print(s.makefile().readline())\n")

        def as_nobody() -> None:
            os.setgid(NOBODY)
            os.setuid(NOBODY)

        proc = await asyncio.create_subprocess_exec(SYSTEM_PYTHON, "-c", code, str(sock),
                                                    stdout=subprocess.PIPE, preexec_fn=as_nobody)
        out, _ = await proc.communicate()
        assert json.loads(out) == {"ok": False, "error": "not authorised"}
        assert calls == []
    finally:
        server.close()
        await server.wait_closed()
        shutil.rmtree(where, ignore_errors=True)
