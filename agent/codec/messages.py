"""DOTS signal channel messages: typed objects <-> CBOR (application/dots+cbor) and JSON.

A message is one case of the ``dots-signal`` structure of RFC 9132 (mitigation-scope,
signal-config, redirected-signal, heartbeat).  On the wire the case is named by the top-level
key (``{1: {...}}``, or ``"ietf-dots-signal-channel:mitigation-scope"`` in the JSON notation
of the RFC's examples); in the typed objects it is the set of children of ``dots_signal``.

Decoding order: CBOR shapes and keys (``cbor``) -> direction rules (cuid/mid/sid never in a
request body, at most one scope per request, server-only fields not from a client) -> libyang
validation (``validate``) -> typed objects through the generated setters (``tree``).  Any
failure raises ``CodecError`` naming the field.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from typing import Any

from agent.numbers import rfc9132
from agent.numbers.rfc9132 import Key
from bindings.generated import dots_signal as _bindings

from . import cbor, tree, validate
from .errors import CodecError

MODULE = rfc9132.MODULE
ROOT_NAME = f"{MODULE}:dots-signal"


class MessageType(enum.Enum):
    """The choice cases of dots-signal, with their top-level CBOR key and JSON name."""

    MITIGATION = (Key.MITIGATION_SCOPE, "mitigation-scope")
    SIGNAL_CONFIG = (Key.SIGNAL_CONFIG, "signal-config")
    REDIRECTED_SIGNAL = (Key.REDIRECTED_SIGNAL, "redirected-signal")
    HEARTBEAT = (Key.HEARTBEAT, "heartbeat")

    @property
    def key(self) -> int:
        return int(self.value[0])

    @property
    def wire_name(self) -> str:
        return f"{MODULE}:{self.value[1]}"


_BY_KEY = {t.key: t for t in MessageType}
_BY_WIRE = {t.wire_name: t for t in MessageType}


class Direction(enum.Enum):
    REQUEST = "client-to-server"  # what a DOTS client sends (PUT bodies)
    RESPONSE = "server-to-client"  # responses and notifications


# Members of the scope that only a server sends (choice direction, case server-to-client-only).
SERVER_ONLY = ("mid", "mitigation-start", "status", "conflict-information", "bytes-dropped",
               "bps-dropped", "pkts-dropped", "pps-dropped")
CLIENT_ONLY = ("attack-status",)


def new_root() -> Any:
    """An empty typed message root (module class of ietf-dots-signal-channel)."""
    return _bindings.ietf_dots_signal_channel()


class Message:
    """A decoded or to-be-encoded message: its case and the typed root object.

    A decoded message keeps the validated RFC 7951 members it came from and builds the typed
    objects only when ``root``/``signal`` is first used: libyang has already checked everything
    the typed objects would, so a server that only reads the members skips that cost.  Once the
    typed objects exist they are the source of truth (``members()`` dumps them).
    """

    __slots__ = ("type", "_root", "_members")

    def __init__(self, type: MessageType, root: Any = None, members: dict[str, Any] | None = None) -> None:
        self.type = type
        self._root = root
        self._members = members
        if root is None and members is None:
            self._root = new_root()

    @property
    def root(self) -> Any:
        if self._root is None:
            root = new_root()
            tree.load(root.dots_signal, self._members or {}, "", MODULE)
            self._root, self._members = root, None
        return self._root

    @property
    def signal(self) -> Any:
        """The ``dots_signal`` container holding the case's children."""
        return self.root.dots_signal

    @classmethod
    def new(cls, mtype: MessageType) -> Message:
        return cls(mtype, new_root())

    # -- encoding --------------------------------------------------------------------
    def members(self) -> dict[str, Any]:
        """RFC 7951 members of this message's case."""
        if self._root is None and self._members is not None:
            return self._members
        return tree.dump(self.root.dots_signal, MODULE)

    def to_cbor(self) -> bytes:
        return cbor.dumps({self.type.key: cbor.json_to_map(self.members())})

    def to_json_obj(self) -> dict[str, Any]:
        return {self.type.wire_name: self.members()}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_json_obj(), indent=indent)


def _check_direction(mtype: MessageType, members: dict[str, Any], direction: Direction,
                     path: str) -> None:
    if mtype is not MessageType.MITIGATION:
        return
    scopes = members.get("scope")
    if direction is Direction.REQUEST:
        if isinstance(scopes, list) and len(scopes) > 1:
            raise CodecError(f"{path}/scope", f"a request carries one scope, got {len(scopes)}"
                             " (RFC 9132 §4.4.1.1)")
        for i, scope in enumerate(scopes or []):
            if not isinstance(scope, dict):
                continue
            for name in SERVER_ONLY:
                if name in scope:
                    hint = " (mid travels in the Uri-Path)" if name == "mid" else ""
                    raise CodecError(f"{path}/scope[{i}]/{name}",
                                     f"not allowed in a request body{hint} (RFC 9132 §4.4.1.1)")


# cuid, cdid and sid travel in Uri-Path options, never in a body (RFC 9132 §4.4.1.1, §4.5.2).
URI_ONLY = frozenset(int(k) for k in rfc9132.URI_ONLY_KEYS)


def from_members(mtype: MessageType, members: dict[str, Any], direction: Direction,
                 path: str = "", check_yang: bool = True) -> Message:
    """Build a message from RFC 7951 members of one case, validating on the way.

    With ``check_yang`` libyang validates and the typed objects are built on first use; without
    it (internal data) the typed objects are built at once, so their type checks still apply.
    """
    _check_direction(mtype, members, direction, path)
    if check_yang:
        try:
            validate.validate_tree({ROOT_NAME: members})
        except CodecError as yang_error:
            # The typed load pinpoints type errors by path; otherwise keep libyang's reason.
            try:
                tree.load(new_root().dots_signal, members, path, MODULE)
            except CodecError as typed_error:
                raise typed_error from None
            raise yang_error from None
        return Message(mtype, members=members)
    root = new_root()
    tree.load(root.dots_signal, members, path, MODULE)
    return Message(mtype, root)


def encode_members(mtype: MessageType, members: dict[str, Any]) -> bytes:
    """CBOR of a message whose RFC 7951 members the caller built from validated data.

    The hot path of a server answering requests: it skips building typed objects.  Everything
    the server sends this way is covered by tests that decode and libyang-validate it.
    """
    return cbor.dumps({mtype.key: cbor.json_to_map(members, f"/{mtype.value[1]}")})


def _single_case(obj: Any, by: dict[Any, MessageType], what: str) -> tuple[MessageType, Any]:
    if not isinstance(obj, Mapping):
        raise CodecError("/", f"a DOTS message is a map, got {cbor._cbor_type(obj)}")
    found = [(by[k], v) for k, v in obj.items() if k in by]
    if len(found) != 1:
        names = ", ".join(t.wire_name for t, _ in found) or "none"
        raise CodecError("/", f"expected exactly one of {what}, found {names}")
    return found[0]


def decode_cbor(data: bytes, direction: Direction = Direction.REQUEST,
                expect: MessageType | None = None) -> Message:
    """application/dots+cbor bytes -> Message (raises ``CodecError``)."""
    obj = cbor.loads(data)
    if isinstance(obj, Mapping):
        unknown = sorted(k for k in obj if isinstance(k, int) and not isinstance(k, bool)
                         and k not in _BY_KEY and rfc9132.is_comprehension_required(k))
        if unknown and direction is Direction.REQUEST:
            raise CodecError("/", "unknown comprehension-required key(s): "
                             + ", ".join(map(str, unknown)), unknown_keys=tuple(unknown))
    mtype, body = _single_case(obj, _BY_KEY, "the message keys 1, 30, 46, 49")
    if expect is not None and mtype is not expect:
        raise CodecError("/", f"expected a {expect.wire_name} message, got {mtype.wire_name}")
    members = cbor.map_to_json(body, f"/{mtype.value[1]}", reject=URI_ONLY,
                               lenient=direction is Direction.RESPONSE)
    try:
        return from_members(mtype, members, direction, f"/{mtype.value[1]}")
    except (ValueError, ArithmeticError, OverflowError, RecursionError) as exc:
        if isinstance(exc, CodecError):
            raise
        raise CodecError(f"/{mtype.value[1]}", f"invalid value: {exc}") from None


def decode_json(text: str | bytes | dict[str, Any], direction: Direction = Direction.REQUEST,
                expect: MessageType | None = None) -> Message:
    """JSON in the notation of the RFC's examples -> Message (raises ``CodecError``)."""
    if isinstance(text, dict):
        obj = text
    else:
        try:
            obj = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CodecError("/", f"malformed JSON: {exc}") from None
    mtype, members = _single_case(obj, _BY_WIRE, ", ".join(_BY_WIRE))
    if expect is not None and mtype is not expect:
        raise CodecError("/", f"expected a {expect.wire_name} message, got {mtype.wire_name}")
    if not isinstance(members, dict):
        raise CodecError(f"/{mtype.wire_name}", "expected an object")
    for name in members:
        if name.rpartition(":")[2] in ("cuid", "cdid", "sid"):
            raise CodecError(f"/{name}", "must not appear in a message body; it is a Uri-Path parameter")
    # Round-trip the shapes through the CBOR rules so both notations accept exactly the same.
    cbor_members = cbor.json_to_map(members, f"/{mtype.value[1]}")
    members = cbor.map_to_json(cbor_members, f"/{mtype.value[1]}")
    return from_members(mtype, members, direction, f"/{mtype.value[1]}")


def json_to_cbor(text: str | bytes, direction: Direction = Direction.RESPONSE) -> bytes:
    return decode_json(text, direction).to_cbor()


def cbor_to_json(data: bytes, direction: Direction = Direction.RESPONSE, indent: int | None = 2) -> str:
    return decode_cbor(data, direction).to_json(indent)
