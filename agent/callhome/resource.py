"""CoAP face of the Call Home DOTS server: the base resources plus ``/.well-known/dots/redirect``.

Theory of operation
-------------------
The Call Home DOTS server answers the Call Home DOTS client exactly like a base DOTS server
(RFC 9066 §5.1: only the (D)TLS roles are reversed), so :class:`CallHomeResource` *is* the base
:class:`~agent.server.resources.DotsResource` (mitigate, config, hb, Observe) with:

* ``PUT /.well-known/dots/redirect`` (§5.2.2, CH-007): a ``redirected-signal`` body with the
  mandatory ``alt-ch-client`` (FQDN, also the reference identifier for the alternate client's
  certificate), optional ``alt-ch-client-record`` addresses and ``ttl``.  The answer is 2.01;
  shortly after it has left, ``on_redirect`` is called and the server closes this session and
  calls the alternate client.  A body it cannot service is answered 4.00.
* never a base 5.03 redirect (CH-005): :class:`~agent.callhome.service.CallHomeSettings`
  carries no redirect.

:class:`CallHomeSessions` is the base session registry whose sessions use the *dialer's*
:class:`~agent.protocol.session.Liveness` (role ``CALL_HOME_SERVER``) for the association it
opened, so the heartbeats and requests the client sends feed the machine that decides when
the Call Home DOTS server must re-establish the session (CH-003/CH-004).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiocoap import Message
from aiocoap import numbers as coap

from agent.codec import MessageType
from agent.numbers import rfc9066
from agent.protocol.session import Liveness, Role
from agent.server.resources import DotsResource, Refused
from agent.server.sessions import Session, SessionRegistry

log = logging.getLogger("dots.callhome")
CH = f"{rfc9066.MODULE}:"
REDIRECT_DELAY = 0.2  # seconds between the 2.01 and closing the session (lets the answer leave)


@dataclass(frozen=True)
class Redirect:
    """An alternate Call Home DOTS client (§5.2.2)."""

    name: str
    records: tuple[str, ...]
    ttl: int | None


class CallHomeSessions(SessionRegistry):
    """Sessions whose liveness is the dialer's machine for the association it opened."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._bound: dict[int, Liveness] = {}

    def bind(self, remote: Any, liveness: Liveness) -> None:
        self._bound[id(remote)] = liveness

    def unbind(self, remote: Any) -> None:
        self._bound.pop(id(remote), None)
        self.sessions.pop(self.key_of(remote), None)

    async def touch(self, remote: Any, cuid: str, now: float) -> Session:
        key = self.key_of(remote)
        s = self.sessions.get(key)
        if s is None or s.cuid != cuid:
            liveness = self._bound.get(id(remote))
            if liveness is None:
                _sid, cfg = await self.config_of(cuid)
                liveness = Liveness(Role.CALL_HOME_SERVER, cfg, now, reliable=self.transport_of(remote) == "tls")
            s = Session(key, cuid, self.transport_of(remote), remote, liveness, started=now)
            self.sessions[key] = s
        else:
            s.remote = remote
        s.requests += 1
        s.liveness.any_traffic(now)
        return s


class CallHomeResource(DotsResource):
    """Base DOTS resources plus the Call Home redirect (see the module docstring)."""

    def __init__(self, *args: Any, on_redirect: Callable[[Redirect], Awaitable[None]] | None = None,
                 **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.on_redirect = on_redirect

    async def _dispatch(self, request: Message) -> Message:
        name, params = self._route(request)
        if name == rfc9066.PATH_REDIRECT:
            if request.code != coap.PUT:
                raise Refused(coap.METHOD_NOT_ALLOWED, f"{request.code} not allowed on redirect")
            return await self._redirect(request, params)
        return await super()._dispatch(request)

    async def _redirect(self, request: Message, params: tuple[str, ...]) -> Message:
        cuid = await self._identify(request)
        p = self._params(params, ("cuid", "mid", "cdid"))
        if p.cuid is not None:
            self._check_owner(cuid, p)
        members = self._body(request, MessageType.REDIRECTED_SIGNAL).members()
        name = members.get(f"{CH}alt-ch-client")
        if not name:
            raise Refused(coap.BAD_REQUEST, "alt-ch-client is mandatory (RFC 9066 §5.2.2)")
        if any(k in members for k in ("alt-server", "alt-server-record")):
            raise Refused(coap.BAD_REQUEST, "alt-server/alt-server-record are base DOTS attributes, not "
                          "Call Home ones")
        records = tuple(members.get(f"{CH}alt-ch-client-record", []))
        try:
            for r in records:
                ipaddress.ip_address(r)
        except ValueError as exc:
            raise Refused(coap.BAD_REQUEST, f"alt-ch-client-record: {exc}") from None
        ttl = members.get(f"{CH}ttl")
        target = Redirect(str(name), records, int(ttl) if ttl is not None else None)
        if self.on_redirect is None:
            raise Refused(coap.BAD_REQUEST, "this Call Home DOTS server cannot be redirected")
        log.warning("redirected by %s to alternate Call Home DOTS client %s %s (ttl %s)", cuid, target.name,
                    list(target.records), target.ttl)
        loop = asyncio.get_running_loop()
        callback = self.on_redirect
        loop.call_later(REDIRECT_DELAY, lambda: loop.create_task(callback(target)))
        self.redirected_at = time.time()
        return Message(code=coap.CREATED)
