"""Find the map keys a decoded message dropped, and show them in its JSON form.

The codec drops what it does not know, as RFC 9132 §6 asks of a receiver: unknown
comprehension-optional keys always, unknown comprehension-required keys in a server's answer
(where a peer such as go-dots sends keys of extensions we do not implement).  A debugging tool
must not do that silently: :func:`annotate_unknown` walks the raw CBOR item beside the JSON
document made from it and puts each dropped key back as ``"unknown-key-N": VALUE`` at the
place it was found, returning where each one was, so the caller can warn about them.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from agent.codec.cbor import MAJOR, NAME_OF
from agent.numbers import rfc9132


@dataclass(frozen=True)
class UnknownKey:
    key: int
    path: str
    required: bool

    @property
    def label(self) -> str:
        return f"unknown-key-{self.key}"


def jsonable(value: Any) -> Any:
    """Any CBOR item as JSON: byte strings in base64, tags as {"tag": N, "value": ...}."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, cbor2.CBORTag):
        return {"tag": value.tag, "value": jsonable(value.value)}
    if isinstance(value, cbor2.CBORSimpleValue):
        return {"simple": value.value}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _member(doc: Mapping[str, Any], key: int) -> str | None:
    """The JSON member name that *key* became (module prefixes may differ)."""
    name = NAME_OF.get(key)
    if name is None:
        return None
    short = name.rsplit(":", 1)[-1]
    for member in doc:
        if member == name or member.rsplit(":", 1)[-1] == short:
            return member
    return None


def annotate_unknown(raw: Any, doc: Any, path: str = "") -> list[UnknownKey]:
    """Put the keys of *raw* that *doc* lacks into *doc* (in place); return them."""
    found: list[UnknownKey] = []
    if isinstance(raw, Mapping) and isinstance(doc, dict):
        for key, value in raw.items():
            if not isinstance(key, int) or isinstance(key, bool):
                continue
            member = _member(doc, key) if key in MAJOR else None
            if member is None:
                if key in MAJOR:
                    continue  # a known key the message legitimately omits (e.g. an empty list)
                item = UnknownKey(key, path or "/", rfc9132.is_comprehension_required(key))
                doc[item.label] = jsonable(value)
                found.append(item)
            else:
                found += annotate_unknown(value, doc[member], f"{path}/{member.rsplit(':', 1)[-1]}")
    elif isinstance(raw, list | tuple) and isinstance(doc, list) and len(raw) == len(doc):
        for i, (r, d) in enumerate(zip(raw, doc, strict=True)):
            found += annotate_unknown(r, d, f"{path}[{i}]")
    return found
