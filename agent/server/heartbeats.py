"""The server's side of heartbeats (RFC 9132 §4.7): sending them, and declaring sessions lost.

A once-a-second tick drives every session's ``Liveness`` machine.  ``SendHeartbeat`` effects
become Non-confirmable PUTs to ``/.well-known/dots/hb`` sent back over the client's own
(D)TLS association; a 2.04 answer is fed back.  ``SessionLost`` drops the session and, when the
client has no other live session, tells the mitigation service, which activates the requests
armed for signal loss (trigger-mitigation=false, status 8).  Traffic from the client keeps a
session alive even when heartbeats go unanswered (SC-150/151: the server never drops a
session that still sends).
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiocoap
from aiocoap import Message
from aiocoap import numbers as coap

from agent.aio import cancel_and_wait
from agent.codec import Message as DotsMessage
from agent.codec import MessageType
from agent.numbers import rfc9132
from agent.protocol.session import SendHeartbeat, SessionLost
from agent.tuning import tuning

from .mitigations import MitigationService
from .sessions import Session, SessionRegistry

log = logging.getLogger("dots.server")
HB_PATH = (*rfc9132.WELL_KNOWN, rfc9132.PATH_HEARTBEAT)


def heartbeat_body(peer_hb_status: bool) -> bytes:
    msg = DotsMessage.new(MessageType.HEARTBEAT)
    msg.signal._set_peer_hb_status(peer_hb_status)
    return msg.to_cbor()


class HeartbeatSender:
    def __init__(self, context: aiocoap.Context, sessions: SessionRegistry, service: MitigationService,
                 tick: float = 1.0) -> None:
        self.context = context
        self.sessions = sessions
        self.service = service
        self.tick_interval = tick
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await cancel_and_wait([self._task, *self._inflight])

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick_interval)
            now = time.time()
            for session in list(self.sessions.sessions.values()):
                try:
                    effects = session.liveness.tick(now)
                except Exception:  # a session in its final phase
                    effects = []
                for effect in effects:
                    if isinstance(effect, SendHeartbeat):
                        task = asyncio.get_running_loop().create_task(self._send(session, effect.peer_hb_status))
                        self._inflight.add(task)
                        task.add_done_callback(self._inflight.discard)
                    elif isinstance(effect, SessionLost):
                        await self._lost(session, effect.reason)

    async def _send(self, session: Session, status: bool) -> None:
        msg = Message(code=coap.PUT, payload=heartbeat_body(status),
                      content_format=rfc9132.CONTENT_FORMAT_DOTS_CBOR,
                      transport_tuning=tuning(session.liveness.config, False))
        msg.opt.uri_path = HB_PATH
        msg.remote = session.remote
        try:
            response = await asyncio.wait_for(self.context.request(msg).response,
                                              timeout=max(1.0, session.liveness.config.heartbeat_interval))
        except Exception as exc:  # unanswered: the liveness machine counts it
            log.debug("heartbeat to %s unanswered: %s", session.cuid, exc)
            return
        if response.code == coap.CHANGED:
            session.liveness.heartbeat_response(time.time())

    async def _lost(self, session: Session, reason: str) -> None:
        self.sessions.drop(session.key)
        log.warning("session of %s (%s %s) lost: %s", session.cuid, session.transport, session.peer, reason)
        if not self.sessions.of_client(session.cuid):
            await self.service.signal_lost(session.cuid)
