"""CoAP face of the DOTS server: ``/.well-known/dots/{mitigate,config,hb}`` (RFC 9132 §4.2).

One aiocoap resource takes every request under ``/.well-known/dots``, authenticates the peer
(cuid from its certificate, §4.4.1.1), decodes the body with the codec and hands plain values
to ``MitigationService`` / ``SessionRegistry``.  Every 4.xx/5.xx answer carries a diagnostic
payload (SC-005); 2.xx payloads are application/dots+cbor (SC-004).  A failure inside a
handler becomes 5.00 with a diagnostic and never reaches aiocoap as an exception; a change the
store could not commit (:class:`StoreError`) is 5.03 with Max-Age
``STORE_UNAVAILABLE_RETRY_AFTER`` and nothing of it was enforced, notified or reported.  A
request with an unrecognised critical option is 4.02 before anything reads it (``options``).

Observe (§4.4.2.1): a GET with Observe=0 on ``mitigate`` (one mid or all of a client) or on
``config`` registers the pipe; changes are pushed as Non-confirmable notifications (SC-090),
at most one every 3 s per observation over DTLS when no RTT estimate exists (SC-091).

Redirected signaling (§4.6): while ``ServerSettings.redirect`` is set, every ``mitigate`` and
``config`` request (Observe registrations included) is answered 5.03 with a
'redirected-signal' body ('alt-server', 'alt-server-record') and Max-Age = the TTL; the
client learns the redirection from its connect-time ``GET /config`` or its next request.
Heartbeats are still answered 2.04: they only say the session is alive, and a 5.03 there
would make a client that follows the redirection tear down the session it is moving anyway.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiocoap
from aiocoap import Message
from aiocoap import numbers as coap
from aiocoap.resource import PathCapable, Resource

from agent.codec import CodecError, Direction, MessageType, decode_cbor
from agent.codec.messages import encode_members
from agent.numbers import rfc9132
from agent.protocol.server_rules import ConflictInfo, Reject, decide_config_put
from agent.store.interface import StoreError
from agent.transports.identity import peer_cuid

from .mitigations import Entry, MitigationService, PutOutcome
from .options import refuse_options
from .sessions import SessionRegistry, config_members, values_from_members
from .settings import ServerSettings
from .uri import Params, UriError, content_filter, parse_params

log = logging.getLogger("dots.server")
audit = logging.getLogger("dots.audit")  # accepted changes, with the cuid that made them
CF = rfc9132.CONTENT_FORMAT_DOTS_CBOR
TEXT = 0  # text/plain;charset=utf-8, for diagnostics
NOTIFY_MIN_INTERVAL_UNRELIABLE = rfc9132.NON_INTERVAL_WITHOUT_RTT
MAX_OBSERVATIONS_PER_CLIENT = 64
# CoAP payload that fits one datagram with the 1280-byte path MTU after IP/UDP/DTLS/CoAP headers.
DATAGRAM_PAYLOAD = 1024


class Refused(Exception):
    def __init__(self, code: coap.Code, diagnostic: str, payload: bytes | None = None) -> None:
        super().__init__(diagnostic)
        self.code = code
        self.diagnostic = diagnostic
        self.payload = payload


def error(code: coap.Code, diagnostic: str) -> Message:
    return Message(code=code, payload=diagnostic.encode("utf-8")[:512], content_format=TEXT)


def unavailable(exc: StoreError) -> Message:
    """A change the store could not commit: 5.03 with Max-Age as the retry hint; nothing changed."""
    log.error("storage failure, answering 5.03: %s", exc)
    msg = error(coap.SERVICE_UNAVAILABLE, "the server could not store this change (storage unavailable); "
                f"nothing was changed: retry in {rfc9132.STORE_UNAVAILABLE_RETRY_AFTER} s")
    msg.opt.max_age = rfc9132.STORE_UNAVAILABLE_RETRY_AFTER
    return msg


def dots(code: coap.Code, body: bytes, **opts: Any) -> Message:
    msg = Message(code=code, payload=body, content_format=CF)
    for k, v in opts.items():
        setattr(msg.opt, k, v)
    return msg


def scopes_body(scopes: list[dict[str, Any]]) -> bytes:
    """A mitigation-scope response from validated request data and server state."""
    return encode_members(MessageType.MITIGATION, {"scope": scopes})


def conflict_members(info: ConflictInfo) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if info.conflict_status is not None:
        out["conflict-status"] = info.conflict_status.yang
    out["conflict-cause"] = info.conflict_cause.yang
    if info.retry_timer is not None:
        out["retry-timer"] = info.retry_timer
    sc = info.conflict_scope
    if sc is not None:
        scope: dict[str, Any] = {}
        t = sc.targets
        if t is not None:
            if t.prefixes:
                scope["target-prefix"] = sorted(str(p) for p in t.prefixes)
            if t.port_ranges:
                scope["target-port-range"] = [
                    {"lower-port": lo} if lo == hi else {"lower-port": lo, "upper-port": hi}
                    for lo, hi in t.port_ranges]
            if t.protocols:
                scope["target-protocol"] = sorted(t.protocols)
            if t.fqdns:
                scope["target-fqdn"] = sorted(t.fqdns)
            if t.uris:
                scope["target-uri"] = sorted(t.uris)
        if sc.mid is not None:
            scope["mid"] = sc.mid
        if scope:
            out["conflict-scope"] = scope
    return out


@dataclass
class Observation:
    """One registered Observe pipe."""

    pipe: Any
    cuid: str
    kind: str  # "mitigate" or "config"
    mid: int | None
    content: str
    reliable: bool
    last_sent: float = 0.0
    pending: asyncio.TimerHandle | None = None
    last_payload: bytes = b""
    final: Entry | None = None  # the observed request ended: send its last status and stop
    seq: int = 0  # Observe option value of the last notification (the registration answer is 0)


@dataclass
class Counters:
    requests: int = 0
    by_code: dict[str, int] = field(default_factory=dict)

    def count(self, code: coap.Code) -> None:
        self.requests += 1
        key = code.dotted
        self.by_code[key] = self.by_code.get(key, 0) + 1


class DotsResource(Resource, PathCapable):
    """Everything under ``/.well-known/dots``."""

    def __init__(self, service: MitigationService, sessions: SessionRegistry,
                 settings: Callable[[], ServerSettings]) -> None:
        super().__init__()
        self.service = service
        self.sessions = sessions
        self._settings = settings
        self.observations: list[Observation] = []
        self.counters = Counters()
        self._config_locks: dict[str, asyncio.Lock] = {}
        service.observers.append(self._mitigation_changed)
        service.observers.append(self._activity_changed)

    @property
    def settings(self) -> ServerSettings:
        return self._settings()

    # -- dispatch ----------------------------------------------------------------------
    async def needs_blockwise_assembly(self, request: Message) -> bool:
        return True

    async def render_to_pipe(self, pipe: Any) -> None:
        request = pipe.request
        refused = refuse_options(request)  # before anything acts on the request (RFC 7252 §5.4.1)
        if refused is not None:
            answer = error(*refused)
            self.counters.count(answer.code)
            log.info("%s %s -> %s %s", request.code, "/".join(request.opt.uri_path), answer.code, refused[1])
            pipe.add_response(answer, is_last=True)
            return
        b2 = request.opt.block2
        if request.code == coap.GET and b2 is not None and b2.block_number > 0 and request.opt.etags:
            # SC-083: a client repeats the ETag of block 0 when it asks for the next blocks.  The
            # blocks come from the representation cached at block 0 (aiocoap's Block2 cache, whose
            # key covers every option, ETag included), so the ETag is not part of the lookup; the
            # client compares it with the ETag each block carries.
            request.opt.etags = []
        if request.code == coap.GET and request.opt.observe == 0:
            try:
                first = await self._observe(pipe)
            except Refused as exc:
                first = self._refusal(exc)
            except StoreError as exc:
                first = unavailable(exc)
            except Exception as exc:  # keep serving whatever happens in a handler
                log.exception("observe failed")
                first = error(coap.INTERNAL_SERVER_ERROR, f"internal error: {type(exc).__name__}")
            if first is not None:
                self.counters.count(first.code)
                pipe.add_response(first, is_last=not first.code.is_successful())
            return
        await super().render_to_pipe(pipe)

    async def render(self, request: Message) -> Message:
        try:
            response = await self._dispatch(request)
        except Refused as exc:
            response = self._refusal(exc)
        except StoreError as exc:
            response = unavailable(exc)
        except Exception as exc:
            log.exception("request failed")
            response = error(coap.INTERNAL_SERVER_ERROR, f"internal error: {type(exc).__name__}")
        self.counters.count(response.code)
        if not response.code.is_successful():
            log.info("%s %s -> %s %s", request.code, "/".join(request.opt.uri_path), response.code,
                     response.payload[:120].decode("utf-8", "replace") if response.opt.content_format == TEXT
                     else "")
        return response

    @staticmethod
    def _refusal(exc: Refused) -> Message:
        if exc.payload is not None:
            return dots(exc.code, exc.payload)
        return error(exc.code, exc.diagnostic)

    def _route(self, request: Message) -> tuple[str, tuple[str, ...]]:
        path = tuple(request.opt.uri_path)
        if path[:2] != rfc9132.WELL_KNOWN or len(path) < 3:
            raise Refused(coap.NOT_FOUND, "unknown resource (DOTS lives under /.well-known/dots)")
        return path[2], path[3:]

    def _redirected(self, name: str) -> Message | None:
        """§4.6: 5.03 + 'redirected-signal', Max-Age = TTL, while a redirection is configured."""
        red = self.settings.redirect
        if red is None or name == rfc9132.PATH_HEARTBEAT:
            return None
        members: dict[str, Any] = {"alt-server": red.alt_server}
        if red.alt_server_record:
            members["alt-server-record"] = list(red.alt_server_record)
        return dots(coap.SERVICE_UNAVAILABLE, encode_members(MessageType.REDIRECTED_SIGNAL, members),
                    max_age=max(0, min(red.ttl, 2**32 - 1)))

    async def _dispatch(self, request: Message) -> Message:
        name, params = self._route(request)
        redirected = self._redirected(name)
        if redirected is not None:
            await self._identify(request)  # only authenticated clients learn the alternate server
            return redirected
        if name == rfc9132.PATH_MITIGATE:
            handlers = {coap.PUT: self._mitigate_put, coap.GET: self._mitigate_get,
                        coap.DELETE: self._mitigate_delete}
        elif name == rfc9132.PATH_CONFIG:
            handlers = {coap.PUT: self._config_put, coap.GET: self._config_get,
                        coap.DELETE: self._config_delete}
        elif name == rfc9132.PATH_HEARTBEAT:
            handlers = {coap.PUT: self._heartbeat}
        else:
            raise Refused(coap.NOT_FOUND, f"unknown DOTS resource {name!r}")
        handler = handlers.get(request.code)
        if handler is None:
            raise Refused(coap.METHOD_NOT_ALLOWED, f"{request.code} not allowed on {name}")
        return await handler(request, params)

    # -- common checks -----------------------------------------------------------------
    async def _identify(self, request: Message) -> str:
        """The authenticated cuid (SC-016); traffic also feeds session liveness."""
        cuid = peer_cuid(request.remote)
        if cuid is None:
            raise Refused(coap.UNAUTHORIZED, "no authenticated client identity (mutual X.509 required)")
        await self.sessions.touch(request.remote, cuid, time.time())
        return cuid

    def _params(self, params: tuple[str, ...], allowed: tuple[str, ...]) -> Params:
        try:
            return parse_params(params, allowed)
        except UriError as exc:
            raise Refused(coap.BAD_REQUEST, str(exc)) from None

    @staticmethod
    def _check_owner(cuid: str, p: Params) -> None:
        if p.cuid is None:
            raise Refused(coap.BAD_REQUEST, "missing 'cuid' Uri-Path parameter")
        if p.cuid != cuid:
            raise Refused(coap.FORBIDDEN, f"cuid {p.cuid} does not belong to this client (its certificate "
                          f"gives {cuid}); requests for another client's mitigations are refused")

    @staticmethod
    def _body(request: Message, expect: MessageType) -> Any:
        if request.opt.content_format != CF:
            raise Refused(coap.UNSUPPORTED_CONTENT_FORMAT,
                          f"Content-Format must be application/dots+cbor ({CF})")
        try:
            return decode_cbor(request.payload, Direction.REQUEST, expect=expect)
        except CodecError as exc:
            raise Refused(coap.BAD_REQUEST, str(exc)) from None

    # -- mitigate ----------------------------------------------------------------------
    async def _mitigate_put(self, request: Message, params: tuple[str, ...]) -> Message:
        cuid = await self._identify(request)
        p = self._params(params, ("cdid", "cuid", "mid"))
        self._check_owner(cuid, p)
        if p.mid is None:
            raise Refused(coap.BAD_REQUEST, "missing 'mid' Uri-Path parameter")
        msg = self._body(request, MessageType.MITIGATION)
        scopes = msg.members().get("scope", [])
        if len(scopes) != 1:
            raise Refused(coap.BAD_REQUEST, "a mitigation request carries exactly one scope")
        if_match = request.opt.if_match is not None and len(request.opt.if_match) > 0
        outcome = await self.service.put(cuid, p.mid, scopes[0], if_match=if_match)
        return self._put_reply(outcome, p.mid)

    def _put_reply(self, outcome: PutOutcome, mid: int) -> Message:
        code = {"2.01": coap.CREATED, "2.04": coap.CHANGED, "4.00": coap.BAD_REQUEST,
                "4.03": coap.FORBIDDEN, "4.09": coap.CONFLICT, "4.22": coap.UNPROCESSABLE_ENTITY}[outcome.code]
        if outcome.code.startswith("4"):
            if outcome.conflict is not None:
                body = scopes_body([{"conflict-information": conflict_members(outcome.conflict)}])
                raise Refused(code, outcome.diagnostic, body)
            raise Refused(code, outcome.diagnostic)
        if outcome.ignored:
            return Message(code=code)
        scope: dict[str, Any] = {"mid": mid, "lifetime": outcome.lifetime}
        if outcome.conflict is not None:
            scope["conflict-information"] = conflict_members(outcome.conflict)
        return dots(code, scopes_body([scope]))

    async def _mitigate_get(self, request: Message, params: tuple[str, ...]) -> Message:
        cuid, mid, content = await self._mitigate_target(request, params)
        body = self._status_body(cuid, mid, content)
        if body is None:
            raise Refused(coap.NOT_FOUND, f"no mitigation request {mid}" if mid is not None
                          else "no mitigation request for this client")
        return dots(coap.CONTENT, body, etag=hashlib.sha256(body).digest()[:8])

    async def _mitigate_target(self, request: Message, params: tuple[str, ...]) -> tuple[str, int | None, str]:
        cuid = await self._identify(request)
        p = self._params(params, ("cdid", "cuid", "mid"))
        self._check_owner(cuid, p)
        try:
            content = content_filter(tuple(request.opt.uri_query))
        except UriError as exc:
            raise Refused(coap.BAD_REQUEST, str(exc)) from None
        return cuid, p.mid, content

    def _status_body(self, cuid: str, mid: int | None, content: str) -> bytes | None:
        entries = self.service.reported(cuid, mid)  # committed requests only
        if not entries:
            return None
        return scopes_body([self.service.status_members(e, content) for e in entries])

    async def _mitigate_delete(self, request: Message, params: tuple[str, ...]) -> Message:
        cuid = await self._identify(request)
        p = self._params(params, ("cdid", "cuid", "mid"))
        self._check_owner(cuid, p)
        if p.mid is None:
            raise Refused(coap.BAD_REQUEST, "missing 'mid' Uri-Path parameter (SC-102)")
        await self.service.delete(cuid, p.mid)
        return Message(code=coap.DELETED)

    # -- config ------------------------------------------------------------------------
    async def _config_get(self, request: Message, params: tuple[str, ...]) -> Message:
        cuid = await self._identify(request)
        p = self._params(params, ("sid",))
        body = await self._config_body(cuid, p.sid)
        return dots(coap.CONTENT, body, max_age=self.settings.config_max_age)

    async def _config_body(self, cuid: str, sid: int | None) -> bytes:
        current_sid, cfg = await self.sessions.config_of(cuid)
        if sid is not None and sid != current_sid:
            raise Refused(coap.NOT_FOUND, f"no session configuration with sid {sid}")
        ranges = dict(self.settings.acceptable.ranges) if sid is None else None
        members = {"mitigating-config": config_members(cfg.mitigating, ranges),
                   "idle-config": config_members(cfg.idle, ranges)}
        return encode_members(MessageType.SIGNAL_CONFIG, members)

    async def _config_put(self, request: Message, params: tuple[str, ...]) -> Message:
        cuid = await self._identify(request)
        p = self._params(params, ("sid",))
        msg = self._body(request, MessageType.SIGNAL_CONFIG)
        lock = self._config_locks.setdefault(cuid, asyncio.Lock())
        async with lock:  # read, decide and store one sid at a time per client (sids only increase)
            return await self._config_put_locked(cuid, p, msg.members())

    async def _config_put_locked(self, cuid: str, p: Params, members: dict[str, Any]) -> Message:
        current_sid, current = await self.sessions.config_of(cuid)
        decision = decide_config_put(
            p.sid, values_from_members(members.get("mitigating-config")),
            values_from_members(members.get("idle-config")), current_sid=current_sid, current=current,
            acceptable=self.settings.acceptable)
        if isinstance(decision, Reject):
            code = coap.UNPROCESSABLE_ENTITY if decision.code == "4.22" else coap.BAD_REQUEST
            raise Refused(code, decision.diagnostic)
        if not hasattr(decision, "config"):  # a stale (lower) sid: say so rather than pretend
            raise Refused(coap.BAD_REQUEST, f"sid {p.sid} is lower than the current sid {current_sid} "
                          "(sid must increase, RFC 9132 §4.5.2); DELETE /config to start over")
        assert p.sid is not None
        await self.sessions.set_config(cuid, p.sid, decision.config)
        self._config_changed(cuid)
        audit.info("signal channel: PUT config %s sid %s -> %s", cuid, p.sid, "2.01" if decision.created else "2.04")
        return Message(code=coap.CREATED if decision.created else coap.CHANGED)

    async def _config_delete(self, request: Message, params: tuple[str, ...]) -> Message:
        cuid = await self._identify(request)
        self._params(params, ("sid",))
        await self.sessions.reset_config(cuid)
        self._config_changed(cuid)
        audit.info("signal channel: DELETE config %s -> 2.02", cuid)
        return Message(code=coap.DELETED)

    # -- heartbeat ---------------------------------------------------------------------
    async def _heartbeat(self, request: Message, params: tuple[str, ...]) -> Message:
        if params:
            raise Refused(coap.BAD_REQUEST, "a heartbeat carries no cuid, cdid or mid (SC-141)")
        cuid = await self._identify(request)
        msg = self._body(request, MessageType.HEARTBEAT)
        status = bool(msg.members().get("peer-hb-status"))
        session = self.sessions.sessions.get(self.sessions.key_of(request.remote))
        if session is not None:
            session.liveness.heartbeat_received(status, time.time())
        log.debug("heartbeat from %s (peer-hb-status %s)", cuid, status)
        return Message(code=coap.CHANGED)

    # -- observe -----------------------------------------------------------------------
    async def _observe(self, pipe: Any) -> Message | None:
        request = pipe.request
        name, params = self._route(request)
        if self._redirected(name) is not None:
            return await self.render(request)  # the 5.03 redirection, no registration
        if name == rfc9132.PATH_MITIGATE:
            cuid, mid, content = await self._mitigate_target(request, params)
            body = self._status_body(cuid, mid, content)
            if body is None:
                raise Refused(coap.NOT_FOUND, "no such mitigation request to observe")
            obs = Observation(pipe, cuid, "mitigate", mid, content, reliable=self._reliable(request))
        elif name == rfc9132.PATH_CONFIG:
            cuid = await self._identify(request)
            p = self._params(params, ("sid",))
            body = await self._config_body(cuid, p.sid)
            obs = Observation(pipe, cuid, "config", p.sid, "a", reliable=self._reliable(request))
        else:
            return await self.render(request)
        if not obs.reliable and len(body) > DATAGRAM_PAYLOAD:
            # Notifications are single NON messages: a status that needs Block2 is served as a
            # plain (block-wise) answer instead, without registering (RFC 7641 §4.1 allows that).
            log.info("observe of %s declined: %d bytes do not fit one datagram", cuid, len(body))
            return await self.render(request)
        if sum(1 for o in self.observations if o.cuid == cuid) >= MAX_OBSERVATIONS_PER_CLIENT:
            log.warning("observe of %s declined: %d observations already", cuid, MAX_OBSERVATIONS_PER_CLIENT)
            return await self.render(request)
        obs.last_sent, obs.last_payload = time.time(), body
        self.observations.append(obs)
        pipe.on_interest_end(lambda: self._drop(obs))
        first = dots(coap.CONTENT, body, observe=0)
        return first

    @staticmethod
    def _reliable(request: Message) -> bool:
        return "tcp" in (getattr(request.remote, "scheme", "") or "")

    def _drop(self, obs: Observation) -> None:
        if obs.pending:
            obs.pending.cancel()
        if obs in self.observations:
            self.observations.remove(obs)

    def _mitigation_changed(self, entry: Entry) -> None:
        gone = self.service.get(entry.cuid, entry.mid) is not entry
        for obs in list(self.observations):
            if obs.kind == "mitigate" and obs.cuid == entry.cuid and obs.mid in (None, entry.mid):
                if gone and obs.mid is not None:
                    obs.final = entry
                self._schedule(obs)

    def _activity_changed(self, entry: Entry) -> None:
        """SC-111: the client's sessions follow mitigating-config while it has an active request."""
        self.sessions.set_activity(entry.cuid, self.service.any_active(entry.cuid))

    def _config_changed(self, cuid: str) -> None:
        for obs in list(self.observations):
            if obs.kind == "config" and obs.cuid == cuid:
                self._schedule(obs)

    def _schedule(self, obs: Observation) -> None:
        if obs.pending is not None:
            return
        loop = asyncio.get_running_loop()
        wait = 0.0 if obs.reliable else max(0.0, obs.last_sent + NOTIFY_MIN_INTERVAL_UNRELIABLE - time.time())
        obs.pending = loop.call_later(wait, lambda: loop.create_task(self._send(obs)))

    async def _send(self, obs: Observation) -> None:
        obs.pending = None
        if obs not in self.observations:
            return
        try:
            if obs.kind == "mitigate":
                if obs.final is not None:  # the request is gone: its last status ends the observation
                    last = dots(coap.CONTENT, scopes_body([self.service.status_members(obs.final, obs.content)]))
                    last.mtype = aiocoap.NON
                    obs.pipe.add_response(last, is_last=True)
                    self._drop(obs)
                    return
                body = self._status_body(obs.cuid, obs.mid, obs.content)
                if body is None:
                    return
            else:
                body = await self._config_body(obs.cuid, obs.mid)
        except Refused as exc:
            obs.pipe.add_response(self._refusal(exc), is_last=True)
            self._drop(obs)
            return
        if body == obs.last_payload:
            return
        obs.last_payload, obs.last_sent = body, time.time()
        # RFC 7641 §4.4: every notification carries an increasing Observe value (24 bits); one
        # without the option would end the observation at the client
        obs.seq = (obs.seq + 1) % (1 << 24)
        note = dots(coap.CONTENT, body, observe=obs.seq)
        note.mtype = aiocoap.NON  # SC-090: notifications are always Non-confirmable
        obs.pipe.add_response(note, is_last=False)
