"""The mitigation web portal (RFC 8903 §3.1.5/§3.1.6): HTTPS, login, requests, live status.

Theory of operation
-------------------
The portal is a DOTS client gateway for people: it owns one :class:`~agent.client.DotsClient`
(one cuid; the DOTS server authorises the portal, the portal authorises its users) and serves
a small asyncio HTTP/1.1 server (HTTPS when given an ``ssl.SSLContext``; no framework, no build
step, no CDN: the page, CSS and JavaScript come from ``agent/portal/static``).

*Users* come from a JSON file or dict ``{"users": [{"name", "password" (see
:func:`~agent.portal.passwords.hash_password`), "prefixes": [...]}]}``.  A user may request
mitigation only for targets inside their ``prefixes`` and sees and acts on only the requests they
made (mid -> owner, persisted in ``state_dir/portal.json`` with the DOTS client's state file).

*Parties.*  Every user is a party of the portal's DOTS client (:mod:`agent.client.parties`):
a request overlapping a live request of another party (another user, an alert, another process
with the same client certificate) is refused with 409 and a message naming it, rather than
replacing it through RFC 9132's same-client rule; withdrawals and efficacy updates are checked
against the durable owner record as well.

*Transport.*  HTTPS only, unless constructed with ``plain_http=True`` (``--plain-http``: then a
WARNING at start).  Requests are read within :class:`~agent.http_front.HttpLimits`; a malformed
one gets a 4xx with a one-line reason and the portal keeps serving.

*Sessions.*  ``POST /login`` is throttled per user name and per source address
(:mod:`agent.portal.throttle`: 429 with Retry-After once locked out), checks the scrypt hash on a
small bounded thread pool (:mod:`agent.portal.hashing`: 503 when saturated), checks unknown
user names against a dummy hash of the same cost, and sets a random session cookie
(``HttpOnly; Secure; SameSite=Strict``; 8 h).  Every state-changing API
call also needs the session's CSRF token in ``X-CSRF-Token`` (the page carries it in a meta tag).

*API* (JSON): ``GET /api/mitigations``; ``POST /api/mitigations`` ``{"target-prefix": [...],
"target-port": [...], "target-protocol": [...], "lifetime": N}``; ``POST
/api/mitigations/<mid>/efficacy`` ``{"attack-status": "under-attack" |
"attack-successfully-mitigated"}``; ``DELETE /api/mitigations/<mid>`` (withdraw).

*Live status.*  For every mid the portal runs one :meth:`DotsClient.watch` task (Observe);
each notification's scope is cached and pushed to the owner's open ``GET /events``
Server-Sent-Events streams as ``{"mid", "scope", "at"}`` (``scope`` null once the request is
gone).  A new stream first receives the cached scope of each of the user's requests.  The page
renders status, the lifetime left (counted down locally between notifications from ``lifetime``
and ``at``) and the dropped traffic, without reloading.  After a withdrawal the portal also GETs
the status once, so the page shows ``dots-client-withdrawn-mitigation`` even if the server only
notifies later.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import ipaddress
import json
import logging
import secrets
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from agent.alerts import AlertError, parse_lifetime, parse_ports, parse_prefixes, parse_protocols
from agent.client import DotsClient, DotsConnectionError, DotsError
from agent.client.parties import Party, PartyConflict, PartyGate
from agent.http_front import (
    REASONS,
    ConnectionCap,
    HttpError,
    HttpLimits,
    HttpRequest,
    Refusals,
    error_response,
    linger_close,
    parse_json,
    read_request,
    start_server,
)
from agent.portal.hashing import HashPool, PoolSaturated
from agent.portal.throttle import LoginLimits, LoginThrottle

log = logging.getLogger("dots.portal")
audit = logging.getLogger("dots.audit")
STATIC = Path(__file__).with_name("static")
CONTENT_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".svg": "image/svg+xml"}
SESSION_TTL = 8 * 3600
PARTY = "portal user"
SECURITY_HEADERS = ("Content-Security-Policy: default-src 'self'; style-src 'self'; script-src 'self'; "
                    "img-src 'self' data:; frame-ancestors 'none'\r\nX-Content-Type-Options: nosniff\r\n"
                    "Referrer-Policy: no-referrer\r\n")


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str
    prefixes: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    def may_target(self, prefix: str) -> bool:
        net = ipaddress.ip_network(prefix, strict=False)
        return any(net.version == p.version and net.subnet_of(p) for p in self.prefixes)  # type: ignore[arg-type]


def load_users(source: str | Path | Mapping[str, Any]) -> dict[str, User]:
    """Users from a JSON file path or an already parsed mapping (see the module docstring)."""
    data = json.loads(Path(source).read_text()) if isinstance(source, str | Path) else source
    users = {}
    for u in data.get("users", []):
        users[str(u["name"])] = User(str(u["name"]), str(u["password"]),
                                     tuple(ipaddress.ip_network(p, strict=False) for p in u.get("prefixes", [])))
    return users


@dataclass
class Session:
    user: User
    csrf: str
    expires: float


Request = HttpRequest


class Response:
    def __init__(self, status: int = 200, body: bytes | str = b"", content_type: str = "text/html; charset=utf-8",
                 headers: list[str] | None = None) -> None:
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.content_type = content_type
        self.headers = headers or []

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(obj), "application/json")

    @classmethod
    def redirect(cls, to: str, headers: list[str] | None = None) -> Response:
        return cls(303, b"", headers=[f"Location: {to}", *(headers or [])])


class Portal:
    """The portal application (see the module docstring)."""

    def __init__(self, client: DotsClient, users: Mapping[str, User], state_dir: str | Path, *,
                 host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None,
                 title: str = "DDoS mitigation portal", plain_http: bool = False, limits: HttpLimits | None = None,
                 login_limits: LoginLimits | None = None, hash_pool: HashPool | None = None,
                 gate: PartyGate | None = None) -> None:
        if ssl_context is None and not plain_http:
            raise ValueError("the portal serves HTTPS: give it a server certificate (or plain_http=True / "
                             "--plain-http, for loopback tests only)")
        self.client = client
        self.gate = gate or PartyGate(client)
        self.limits = limits or HttpLimits()
        self.throttle = LoginThrottle(login_limits)
        self.hashes = hash_pool or HashPool()
        self.hashes.prepare(u.password_hash for u in users.values())
        self.refusals = Refusals("portal")
        self._cap = ConnectionCap(self.limits.max_connections)
        self.users = dict(users)
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.title = title
        self.sessions: dict[str, Session] = {}
        self.owners: dict[int, str] = {}
        self.scopes: dict[int, tuple[dict[str, Any] | None, float]] = {}
        self.subscribers: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
        self._watchers: dict[int, asyncio.Task[None]] = {}
        self._server: asyncio.base_events.Server | None = None
        self._state_file = self.state_dir / "portal.json"
        if self._state_file.exists():
            self.owners = {int(k): str(v) for k, v in json.loads(self._state_file.read_text())["owners"].items()}
        if self.owners:  # owners recorded before the party book existed
            self.gate.book.adopt(self.gate.cuid, {m: Party(PARTY, u) for m, u in self.owners.items()})

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> Portal:
        self._server = await start_server(self._conn, self.host, self.port, self.limits, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        for mid in list(self.owners):
            self._watch(mid)
        if self.ssl_context is None:
            log.warning("portal serving plain HTTP on %s:%d (--plain-http): passwords and session cookies cross "
                        "the network in clear; use it on loopback for tests only", self.host, self.port)
        log.info("portal on %s://%s:%d", "https" if self.ssl_context else "http", self.host, self.port)
        return self

    async def close(self) -> None:
        for t in self._watchers.values():
            t.cancel()
        for t in self._watchers.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._server:
            self._server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        self.hashes.close()

    async def __aenter__(self) -> Portal:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _save(self) -> None:
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"owners": {str(k): v for k, v in self.owners.items()}}, indent=1))
        tmp.replace(self._state_file)

    # -- live status ---------------------------------------------------------------------------
    def _publish(self, mid: int, scope: dict[str, Any] | None) -> None:
        now = time.time()
        self.scopes[mid] = (scope, now)
        owner = self.owners.get(mid)
        for q in list(self.subscribers.get(owner or "", ())):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait({"mid": mid, "scope": scope, "at": now})

    def _watch(self, mid: int) -> None:
        if mid in self._watchers and not self._watchers[mid].done():
            return
        self._watchers[mid] = asyncio.get_running_loop().create_task(self._watch_loop(mid), name=f"portal-watch-{mid}")

    async def _watch_loop(self, mid: int) -> None:
        while True:
            try:
                async for update in self.client.watch(mid):
                    if update.final:
                        self._publish(mid, None)
                        return
                    for scope in update.scopes:
                        if int(scope.get("mid", mid)) == mid:
                            self._publish(mid, scope)
                return
            except DotsError as exc:
                if exc.code == "4.04":
                    self._publish(mid, None)
                    return
                log.warning("watch %d: %s", mid, exc)
            except DotsConnectionError as exc:
                log.warning("watch %d: %s; retrying", mid, exc)
            await asyncio.sleep(5)

    # -- HTTP plumbing ---------------------------------------------------------------------------
    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        peer = str(peername[0]) if isinstance(peername, tuple) else str(peername)
        busy = error_response(503, b"too many connections", "text/plain", "Retry-After: 1\r\n")
        await self._cap.serve(reader, writer, self.refusals, busy, self._serve, peer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        try:
            while True:
                try:
                    req = await read_request(reader, self.limits)
                except HttpError as exc:
                    self.refusals.count(exc.status, exc.reason, peer)
                    writer.write(error_response(exc.status, json.dumps({"error": exc.reason}).encode()))
                    await linger_close(reader, writer)
                    return
                if req is None:
                    return
                req.peer = peer
                if req.path == "/events" and req.method == "GET":
                    await self._events(req, writer)
                    return
                try:
                    resp = await self._route(req)
                except Exception:
                    log.exception("portal request %s %s failed", req.method, req.path)
                    resp = Response.json({"error": "internal error"}, 500)
                if 400 <= resp.status < 500 and resp.status not in (401, 404):
                    self.refusals.count(resp.status, f"{req.method} {req.path}", peer)
                head = (f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'Error')}\r\n"
                        f"Content-Type: {resp.content_type}\r\nContent-Length: {len(resp.body)}\r\n"
                        f"Cache-Control: no-store\r\n{SECURITY_HEADERS}"
                        + "".join(h + "\r\n" for h in resp.headers) + "\r\n")
                writer.write(head.encode() + resp.body)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def _session(self, req: Request) -> Session | None:
        s = self.sessions.get(req.cookies.get("dots_session", ""))
        if s is None or s.expires < time.time():
            return None
        return s

    async def _route(self, req: Request) -> Response:
        p, m = req.path, req.method
        if p.startswith("/static/") and m == "GET":
            return self._static(p[len("/static/"):])
        if p == "/login":
            return await self._login(req) if m == "POST" else Response(body=self._login_page())
        s = self._session(req)
        if p == "/" and m == "GET":
            return Response(body=self._main_page(s)) if s else Response.redirect("/login")
        if p == "/logout" and m == "POST":
            if s and req.headers.get("x-csrf-token") == s.csrf or (s and self._form(req).get("csrf") == s.csrf):
                self.sessions = {k: v for k, v in self.sessions.items() if v is not s}
            return Response.redirect("/login", ["Set-Cookie: dots_session=; Max-Age=0; Path=/; HttpOnly; Secure; "
                                                "SameSite=Strict"])
        if not p.startswith("/api/"):
            return Response(404, "not found", "text/plain")
        if s is None:
            return Response.json({"error": "not logged in"}, 401)
        if m != "GET" and not secrets.compare_digest(req.headers.get("x-csrf-token", ""), s.csrf):
            return Response.json({"error": "missing CSRF token"}, 403)
        return await self._api(req, s)

    def _static(self, name: str) -> Response:
        f = (STATIC / name).resolve()
        if f.parent != STATIC.resolve() or not f.is_file():
            return Response(404, "not found", "text/plain")
        return Response(200, f.read_bytes(), CONTENT_TYPES.get(f.suffix, "application/octet-stream"))

    @staticmethod
    def _form(req: Request) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(req.body.decode(errors="replace")).items()}

    async def _login(self, req: Request) -> Response:
        form = self._form(req)
        name, password = form.get("username", "")[:256], form.get("password", "")
        wait = self.throttle.retry_after(name, req.peer)
        if wait:
            log.warning("portal login for %r from %s refused: locked out for %d s", name, req.peer, wait)
            return Response(429, self._login_page(f"Too many failed sign-ins: try again in {wait} s."),
                            headers=[f"Retry-After: {wait}"])
        user = self.users.get(name)
        try:
            ok = await self.hashes.check(password, user.password_hash if user else None)
        except PoolSaturated:
            log.warning("portal login for %r from %s refused: password checks saturated", name, req.peer)
            return Response(503, self._login_page("The portal is busy: try again in a moment."),
                            headers=["Retry-After: 1"])
        if user is None or not ok:
            self.throttle.failed(name, req.peer)
            log.info("portal login failed for %r from %s", name, req.peer)
            return Response(401, self._login_page("Wrong user name or password."))
        self.throttle.succeeded(name, req.peer)
        token = secrets.token_urlsafe(32)
        self.sessions[token] = Session(user, secrets.token_urlsafe(24), time.time() + SESSION_TTL)
        audit.info("portal login: %s from %s", user.name, req.peer)
        return Response.redirect("/", [f"Set-Cookie: dots_session={token}; Max-Age={SESSION_TTL}; Path=/; HttpOnly; "
                                       "Secure; SameSite=Strict"])

    # -- API -----------------------------------------------------------------------------------
    async def _api(self, req: Request, s: Session) -> Response:
        parts = req.path.strip("/").split("/")  # api, mitigations, [mid], [efficacy]
        if parts[:2] != ["api", "mitigations"]:
            return Response.json({"error": "not found"}, 404)
        if len(parts) == 2 and req.method == "GET":
            return Response.json({"mitigations": [{"mid": mid, "scope": self.scopes.get(mid, (None, 0))[0]}
                                                  for mid, o in sorted(self.owners.items()) if o == s.user.name]})
        try:
            body = parse_json(req.body or b"{}", self.limits.max_json_depth)
        except ValueError as exc:
            return Response.json({"error": f"JSON body expected: {exc}"}, 400)
        if not isinstance(body, Mapping):
            return Response.json({"error": "the body must be a JSON object"}, 400)
        party = Party(PARTY, s.user.name)
        try:
            if len(parts) == 2 and req.method == "POST":
                return await self._mitigate(s.user, body)
            mid = int(parts[2]) if len(parts) >= 3 and parts[2].isascii() and parts[2].isdigit() \
                and len(parts[2]) <= 10 else -1
            if self.owners.get(mid) != s.user.name:
                return Response.json({"error": "no such mitigation"}, 404)
            if len(parts) == 4 and parts[3] == "efficacy" and req.method == "POST":
                res = await self.gate.efficacy_update(party, mid, str(body.get("attack-status", "")))
                return Response.json(res.to_json_obj())
            if len(parts) == 3 and req.method == "DELETE":
                code = await self.gate.withdraw(party, mid)
                with contextlib.suppress(DotsError, DotsConnectionError):
                    for scope in await self.client.status(mid):
                        self._publish(mid, scope)
                return Response.json({"mid": mid, "code": code})
        except PartyConflict as exc:
            return Response.json({"error": str(exc)}, 409)
        except (AlertError, ValueError) as exc:
            return Response.json({"error": str(exc)}, 400)
        except DotsError as exc:
            return Response.json({"error": f"{exc.code} {exc.diagnostic}".strip(), **exc.to_json_obj()}, 409)
        except DotsConnectionError as exc:
            return Response.json({"error": f"DOTS server unreachable: {exc}"}, 503)
        return Response.json({"error": "not found"}, 404)

    async def _mitigate(self, user: User, body: Mapping[str, Any]) -> Response:
        prefixes = parse_prefixes(body.get("target-prefix"))
        if not prefixes:
            return Response.json({"error": "at least one target prefix is needed"}, 400)
        outside = [p for p in prefixes if not user.may_target(p)]
        if outside:
            return Response.json({"error": f"not among your protected prefixes: {', '.join(outside)}"}, 403)
        lifetime = parse_lifetime(body.get("lifetime")) or 3600
        res = await self.gate.mitigate(Party(PARTY, user.name), prefixes, parse_ports(body.get("target-port")),
                                       parse_protocols(body.get("target-protocol")), lifetime=lifetime)
        self.owners[res.mid] = user.name
        self._save()
        self._watch(res.mid)
        return Response.json(res.to_json_obj())

    async def _events(self, req: Request, writer: asyncio.StreamWriter) -> None:
        s = self._session(req)
        if s is None:
            writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            return
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(256)
        self.subscribers.setdefault(s.user.name, set()).add(q)
        try:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
                         b"X-Accel-Buffering: no\r\n\r\nretry: 3000\n\n")
            for mid, owner in sorted(self.owners.items()):
                if owner == s.user.name and mid in self.scopes:
                    scope, at = self.scopes[mid]
                    q.put_nowait({"mid": mid, "scope": scope, "at": at})
            while True:
                try:
                    msg = await asyncio.wait_for(q.get(), 15)
                    writer.write(f"data: {json.dumps(msg)}\n\n".encode())
                except TimeoutError:
                    writer.write(b": keep-alive\n\n")
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            self.subscribers.get(s.user.name, set()).discard(q)

    # -- pages ---------------------------------------------------------------------------------
    def _page(self, body: str, csrf: str = "") -> str:
        t = html.escape(self.title)
        return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f'<meta name="csrf" content="{html.escape(csrf)}"><title>{t}</title>'
                f'<link rel="icon" href="/static/shield.svg"><link rel="stylesheet" href="/static/style.css">'
                f'</head><body>{body}</body></html>')

    def _login_page(self, error: str = "") -> str:
        err = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
        return self._page(f"""
<main class="login"><form method="post" action="/login" class="card">
<h1><img src="/static/shield.svg" alt="" class="logo">{html.escape(self.title)}</h1>{err}
<label>User name<input name="username" id="username" autocomplete="username" required autofocus></label>
<label>Password<input name="password" id="password" type="password" autocomplete="current-password" required></label>
<button type="submit" id="login">Sign in</button></form></main>""")

    def _main_page(self, s: Session) -> str:
        u = s.user
        options = "".join(f'<option value="{html.escape(str(p))}">' for p in u.prefixes)
        example = html.escape(str(u.prefixes[0]) if u.prefixes else "192.0.2.0/24")
        prefixes = ", ".join(str(p) for p in u.prefixes) or "none"
        return self._page(f"""
<header><h1><img src="/static/shield.svg" alt="" class="logo">{html.escape(self.title)}</h1>
<form method="post" action="/logout" class="who"><span>{html.escape(u.name)}</span>
<input type="hidden" name="csrf" value="{html.escape(s.csrf)}"><button class="link" id="logout">Sign out</button>
</form></header>
<main class="grid">
<section class="card" aria-labelledby="req-h"><h2 id="req-h">Request mitigation</h2>
<form id="request">
<label>Target prefixes<input id="prefix" name="prefix" list="mine" placeholder="e.g. {example}"
 required></label>
<datalist id="mine">{options}</datalist>
<p class="hint">Your protected prefixes: {html.escape(prefixes)}</p>
<div class="row"><label>Ports<input id="ports" name="ports" placeholder="80, 443, 1000-2000"
 inputmode="numeric"></label>
<label>Lifetime<select id="lifetime" name="lifetime"><option value="900">15 min</option>
<option value="3600" selected>1 hour</option><option value="14400">4 hours</option>
<option value="86400">1 day</option></select></label></div>
<fieldset><legend>Protocols</legend><label class="check"><input type="checkbox" name="proto" value="6"> TCP</label>
<label class="check"><input type="checkbox" name="proto" value="17"> UDP</label>
<label class="check"><input type="checkbox" name="proto" value="1"> ICMP</label></fieldset>
<button type="submit" id="submit">Request mitigation</button>
<p id="message" class="message" role="status"></p>
</form></section>
<section aria-labelledby="list-h" class="list">
<h2 id="list-h">Your mitigations <span id="live" class="live">connecting…</span></h2>
<p id="empty" class="hint">No mitigation requested yet.</p>
<div id="mitigations"></div></section>
</main>
<script src="/static/app.js"></script>""", s.csrf)


async def run_portal(client: DotsClient, users: Mapping[str, User], state_dir: str | Path, host: str, port: int,
                     ssl_context: ssl.SSLContext | None, *, plain_http: bool = False) -> None:
    """Run the portal until cancelled (the caller has connected ``client``)."""
    async with Portal(client, users, state_dir, host=host, port=port, ssl_context=ssl_context,
                      plain_http=plain_http):
        await asyncio.Event().wait()
