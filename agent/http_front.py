"""Bounded HTTP/1.1 request reading for the small front-ends (alert endpoint, web portal).

Theory of operation
-------------------
A stranger who can reach a front-end can send anything.  :func:`read_request` reads one request
within :class:`HttpLimits` (request line + headers <= ``max_header`` bytes and ``max_headers``
lines, body <= ``max_body``, the whole request within ``read_timeout`` seconds) and raises
:class:`HttpError` with the status to answer (400, 408, 411, 413, 431) and a one-line reason
for anything else: a bad request line, a header line without a colon, a Content-Length that is
not a decimal number or is repeated with another value, a Transfer-Encoding (chunked bodies are
not accepted: send Content-Length).  :class:`ConnectionCap` bounds the connections served at
once (beyond it: 503 and close).  :func:`parse_json` refuses bodies nested deeper than
``max_depth`` before ``json.loads`` can recurse (100k nested brackets raise RecursionError).
:class:`Refusals` counts what was refused, by status, and logs one line each.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("dots.http")

REASONS = {200: "OK", 303: "See Other", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
           411: "Length Required", 413: "Content Too Large", 429: "Too Many Requests", 431:
           "Request Header Fields Too Large", 500: "Internal Server Error", 502: "Bad Gateway",
           503: "Service Unavailable"}
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


@dataclass(frozen=True)
class HttpLimits:
    """What one request may cost (defaults suit a loopback/management front-end)."""

    max_body: int = 64 * 1024
    max_header: int = 8 * 1024
    max_headers: int = 64
    read_timeout: float = 15.0
    max_connections: int = 64
    max_json_depth: int = 32

    def __post_init__(self) -> None:
        for name in ("max_body", "max_header", "max_headers", "max_connections", "max_json_depth"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.read_timeout <= 0:
            raise ValueError("read_timeout must be positive")


class HttpError(Exception):
    """A request refused before it reached the application: ``status`` and a one-line ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class HttpRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    cookies: dict[str, str] = field(default_factory=dict)
    peer: str = ""


@dataclass
class Refusals:
    """Refused requests by status (shown in logs; ``counts`` for tests and state)."""

    name: str
    counts: Counter[int] = field(default_factory=Counter)

    def count(self, status: int, reason: str, peer: Any = None) -> None:
        self.counts[status] += 1
        log.info("%s: refused %s request from %s: %s (%d refused so far)", self.name, status, peer, reason,
                 sum(self.counts.values()))


class ConnectionCap:
    """At most ``limit`` connections served at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def enter(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def leave(self) -> None:
        self.open -= 1

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, refusals: Refusals,
                    busy: bytes, serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter, Any], Awaitable[None]],
                    peer: Any) -> None:
        """Run ``serve(reader, writer, peer)`` within the cap; beyond it answer 503 with *busy*
        (a whole response, see :func:`error_response`) and close."""
        if not self.enter():
            refusals.count(503, "too many connections", peer)
            writer.write(busy)
            await linger_close(reader, writer, seconds=0.2)
            return
        try:
            await serve(reader, writer, peer)
        finally:
            self.leave()


def _content_length(values: list[str], limits: HttpLimits) -> int:
    if len(set(values)) > 1:
        raise HttpError(400, "conflicting Content-Length headers")
    text = values[0]
    if not text.isascii() or not text.isdigit():
        raise HttpError(400, f"Content-Length must be a decimal number of bytes, not {text[:40]!r}")
    if len(text) > 12 or int(text) > limits.max_body:
        raise HttpError(413, f"body larger than {limits.max_body} bytes")
    return int(text)


async def _read(reader: asyncio.StreamReader, limits: HttpLimits) -> HttpRequest | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise HttpError(431, f"request line and headers larger than {limits.max_header} bytes") from None
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None  # the peer closed between requests
        raise HttpError(400, "connection closed in the middle of the request headers") from None
    if len(head) > limits.max_header:
        raise HttpError(431, f"request line and headers larger than {limits.max_header} bytes")
    lines = head.decode("latin-1").split("\r\n")[:-2]
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1].startswith("/") \
            or not re.fullmatch(r"HTTP/1\.[01]", parts[2]):
        raise HttpError(400, "malformed request line (METHOD /path HTTP/1.1 expected)")
    if len(lines) - 1 > limits.max_headers:
        raise HttpError(431, f"more than {limits.max_headers} header lines")
    headers: dict[str, str] = {}
    lengths: list[str] = []
    for ln in lines[1:]:
        name, colon, value = ln.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise HttpError(400, f"malformed header line {ln[:40]!r}")
        key = name.lower()
        if key == "content-length":
            lengths.append(value.strip())
        headers.setdefault(key, value.strip())
    if "transfer-encoding" in headers:
        raise HttpError(411, "Transfer-Encoding is not accepted: send the body with a Content-Length")
    length = _content_length(lengths, limits) if lengths else 0
    try:
        body = await reader.readexactly(length) if length else b""
    except asyncio.IncompleteReadError:
        raise HttpError(400, f"body shorter than its Content-Length ({length} bytes)") from None
    cookies = {}
    for c in headers.get("cookie", "").split(";"):
        k, _, v = c.strip().partition("=")
        if k:
            cookies[k] = v
    return HttpRequest(parts[0], parts[1].split("?", 1)[0], headers, body, cookies)


async def read_request(reader: asyncio.StreamReader, limits: HttpLimits) -> HttpRequest | None:
    """One request within *limits*; None when the peer closed cleanly; raises :class:`HttpError`.

    The reader must have been created with ``limit=limits.max_header`` (see :func:`start_server`).
    """
    try:
        return await asyncio.wait_for(_read(reader, limits), limits.read_timeout)
    except TimeoutError:
        raise HttpError(408, f"request not received within {limits.read_timeout:g} s") from None


async def start_server(handler: Any, host: str, port: int, limits: HttpLimits, **kw: Any
                       ) -> asyncio.base_events.Server:
    """``asyncio.start_server`` with the stream buffer bounded by the header limit."""
    return await asyncio.start_server(handler, host, port, limit=limits.max_header, **kw)


def error_response(status: int, body: bytes, content_type: str = "application/json",
                   extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n").encode() + body


def json_depth(raw: bytes) -> int:
    """The nesting depth of a JSON text (strings skipped; malformed text gives some number)."""
    depth = deepest = 0
    for m in _BRACKETS.finditer(_STRINGS.sub(b"", raw)):
        if m.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def parse_json(raw: bytes, max_depth: int = 32) -> Any:
    """``json.loads`` with a depth bound; ValueError with a one-line reason."""
    if json_depth(raw) > max_depth:
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(raw)
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise ValueError(f"JSON nested deeper than {max_depth} levels") from None
    except UnicodeDecodeError:
        raise ValueError("the body is not UTF-8 JSON") from None
    except ValueError as exc:
        raise ValueError(f"malformed JSON: {str(exc).splitlines()[0]}") from None


__all__ = ["REASONS", "ConnectionCap", "HttpError", "HttpLimits", "HttpRequest", "Refusals", "error_response",
           "json_depth", "linger_close", "parse_json", "read_request", "start_server"]


async def linger_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, budget: int = 1 << 20,
                       seconds: float = 1.0) -> None:
    """Close after an early answer without resetting it away: discard what the peer still sends
    (at most *budget* bytes within *seconds*), so the kernel does not answer unread data with RST."""
    import contextlib

    with contextlib.suppress(Exception):
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while budget > 0:
            left = deadline - loop.time()
            if left <= 0:
                break
            chunk = await asyncio.wait_for(reader.read(65536), left)
            if not chunk:
                break
            budget -= len(chunk)
    writer.close()
