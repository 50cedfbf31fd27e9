"""Test helpers for the HTTP front-ends (alert endpoint, portal): raw HTTP/1.1 over loopback.

``exchange`` writes raw bytes and reads one answer (status, headers, body); a connection the
server closed without answering gives status 0, so a crash shows up as a failed assertion.
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
from pathlib import Path
from typing import Any

from agent.client import DotsClient
from agent.pki import issue_server
from agent.transports.credentials import Credentials
from tests.servers import ServerProcess

TOKEN = "s3cret-token-for-the-tests"


@functools.lru_cache(maxsize=1)
def insecure_tls() -> ssl.SSLContext:
    """One context for all (building one loads the system CA store: ~50 ms on the test's loop)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def portal_tls(server: ServerProcess) -> ssl.SSLContext:
    cert, key = issue_server(server.pki, "portal", ("localhost", "127.0.0.1"))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def dots_client(server: ServerProcess, state: Path) -> DotsClient:
    return DotsClient(("127.0.0.1", server.port_of("tls")), Credentials.from_pki_dir(server.pki, "client"), "tls",
                      state=state, request_timeout=15)


async def exchange(port: int, data: bytes, *, tls: bool = False, timeout: float = 20
                   ) -> tuple[int, dict[str, str], bytes]:
    """Send *data* as is; (status, headers, body) of the answer, (0, {}, b"") if closed unanswered."""
    async def go() -> tuple[int, dict[str, str], bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=insecure_tls() if tls else None)
        try:
            writer.write(data)
            await writer.drain()
            try:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                return 0, {}, b""
            lines = head.split("\r\n")
            h = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
            body = await reader.readexactly(int(h.get("content-length", "0")))
            return int(lines[0].split()[1]), h, body
        finally:
            writer.close()

    return await asyncio.wait_for(go(), timeout)


def request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    hdrs = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{hdrs}\r\n".encode() + body


async def post_json(port: int, path: str, body: Any, token: str | None = TOKEN, *, tls: bool = False,
                    headers: dict[str, str] | None = None) -> tuple[int, Any]:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, _, data = await exchange(port, request("POST", path, raw, {"Content-Type": "application/json",
                                                                       **auth, **(headers or {})}), tls=tls)
    return status, json.loads(data) if data else None


class PortalSession:
    """A logged-in portal user speaking the page's JSON API."""

    def __init__(self, port: int, cookie: str, csrf: str) -> None:
        self.port, self.cookie, self.csrf = port, cookie, csrf

    @classmethod
    async def login(cls, port: int, user: str, password: str, sessions: dict[str, Any]) -> PortalSession:
        form = f"username={user}&password={password.replace(' ', '+')}".encode()
        status, h, _ = await exchange(port, request("POST", "/login", form, {
            "Content-Type": "application/x-www-form-urlencoded"}), tls=True)
        assert status == 303, status
        token = h["set-cookie"].split(";")[0].split("=", 1)[1]
        return cls(port, f"dots_session={token}", sessions[token].csrf)

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        raw = json.dumps(body).encode() if body is not None else b""
        status, _, data = await exchange(self.port, request(method, path, raw, {
            "Cookie": self.cookie, "X-CSRF-Token": self.csrf, "Content-Type": "application/json"}), tls=True)
        return status, json.loads(data) if data else None
