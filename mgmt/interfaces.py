"""Seams between the management plane and the agent process that embeds it.

Theory of operation: the agent owns the behaviour, ``mgmt`` owns the datastores.

* :class:`ConfigSubscriber` -- told about every change of ``running`` (commit, direct edit,
  copy-config, confirmed-commit rollback) *after* validation; raising rejects the change, the
  datastore rolls back and the client gets ``operation-failed`` with the exception text.
* :class:`StateProvider` -- returns the ``config false`` parts as RFC 7951 JSON; ``<get>`` and
  RESTCONF ``GET`` merge them with ``running``.
* :class:`RpcHandler` -- implements one of our module's RPCs (``approve-mitigation`` ...);
  receives the validated input as RFC 7951 JSON and returns the output (or None).
* Notifications flow the other way: the agent calls ``await Management.notify(event)``.

All callbacks run on the agent's asyncio loop, whichever protocol thread the request came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

JsonTree = dict[str, Any]


@runtime_checkable
class ConfigSubscriber(Protocol):
    """Applies a new running configuration to the agent."""

    async def apply(self, new_running: JsonTree, old: JsonTree) -> None:
        """Called after running changed; raise to refuse (the change is rolled back)."""
        ...


@runtime_checkable
class StateProvider(Protocol):
    """Supplies operational state (config false nodes) of dots-agent."""

    async def state(self) -> JsonTree:
        """RFC 7951 JSON, e.g. ``{"dots-agent:dots-agent": {"server": {"sessions": ...}}}``."""
        ...


class RpcHandler(Protocol):
    """Implementation of one RPC of our module."""

    async def __call__(self, rpc_input: JsonTree, session: SessionInfo) -> JsonTree | None:
        ...


@dataclass
class SessionInfo:
    """A management session (NETCONF over SSH or one RESTCONF request's client).

    ``username`` is the NACM user (RFC 8341): the SSH login name, or the ``cert-to-name`` result
    of a RESTCONF client certificate (empty when the certificate maps to no user).
    """

    session_id: int
    username: str
    transport: str = "netconf-ssh"
    source_host: str = ""
    login_time: str = ""
    counters: dict[str, int] = field(default_factory=lambda: {"in-rpcs": 0, "in-bad-rpcs": 0,
                                                              "out-rpc-errors": 0,
                                                              "out-notifications": 0})
