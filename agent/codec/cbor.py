"""RFC 7951 JSON trees <-> RFC 9132 CBOR (Table 5 integer keys), with strict shape checks.

JSON member names map to the integer keys of RFC 9132 Table 5 and RFC 9066; enumerations
travel as unsigned integers, decimal64 as tag 4 ``[-2, mantissa]``, 64-bit counters as
integers (RFC 7951 writes them as strings), lifetime -1 as a negative integer.

Decoding checks the CBOR shape of every key against Table 5 ("CBOR major type"), rejects
unknown comprehension-required keys (naming them) and ignores unknown comprehension-optional
ones, as RFC 9132 §6 requires.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import cbor2

from agent.numbers import rfc9066, rfc9132
from agent.numbers.rfc9132 import Major

from .errors import CodecError

# name (unqualified) -> key; the Call Home names are qualified where they hang off an RFC 9132 node.
KEY_OF: dict[str, int] = {name: key for key, name in rfc9132.KEY_NAMES.items()}
NAME_OF: dict[int, str] = dict(rfc9132.KEY_NAMES)
MAJOR: dict[int, Major] = {**rfc9132.KEY_MAJOR, **rfc9066.KEY_MAJOR}
_QUALIFIED_CALL_HOME = {rfc9066.Key.SOURCE_PREFIX, rfc9066.Key.SOURCE_PORT_RANGE,
                        rfc9066.Key.SOURCE_ICMP_TYPE_RANGE, rfc9066.Key.ALT_CH_CLIENT,
                        rfc9066.Key.ALT_CH_CLIENT_RECORD, rfc9066.Key.TTL}
for _key, _name in rfc9066.KEY_NAMES.items():
    KEY_OF[_name] = _key
    NAME_OF[_key] = f"{rfc9066.MODULE}:{_name}" if _key in _QUALIFIED_CALL_HOME else _name

# 64-bit integers are strings in RFC 7951 JSON.
UINT64_KEYS = {rfc9132.Key.MITIGATION_START, rfc9132.Key.BYTES_DROPPED, rfc9132.Key.BPS_DROPPED,
               rfc9132.Key.PKTS_DROPPED, rfc9132.Key.PPS_DROPPED}
_ENUM_BY_NAME = {k: {e.yang: e.value for e in enum} for k, enum in rfc9132.KEY_ENUM.items()}
_ENUM_BY_VALUE = {k: {e.value: e.yang for e in enum} for k, enum in rfc9132.KEY_ENUM.items()}


def key_label(key: int) -> str:
    return f"{NAME_OF.get(key, '?')} ({key})"


# ----------------------------------------------------------------------------- CBOR -> JSON
UINT64_MAX = 2**64 - 1


def _is_uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= UINT64_MAX


def map_to_json(data: Any, path: str = "", reject: frozenset[int] = frozenset(),
                lenient: bool = False) -> dict[str, Any]:
    """Integer-keyed CBOR map -> RFC 7951 members.  Unknown optional keys are dropped.

    Keys in *reject* are refused wherever they appear (Uri-Path parameters in a body).  With
    *lenient* (what a client does with a server's answers) unknown comprehension-required keys
    are dropped too: RFC 9132 §6 makes them a 4.00 for requests, and a peer such as go-dots
    answers with keys of extensions we do not implement (e.g. 53, RFC 9133).
    """
    if not isinstance(data, Mapping):
        raise CodecError(path or "/", f"expected a CBOR map, got {_cbor_type(data)}")
    out: dict[str, Any] = {}
    unknown: list[int] = []
    for key, value in data.items():
        if not isinstance(key, int) or isinstance(key, bool):
            raise CodecError(path or "/", f"map key {key!r} is not an integer (RFC 9132 §6)")
        if not rfc9132.MIN_KEY <= key <= rfc9132.MAX_KEY:
            raise CodecError(path or "/", f"map key {key} is outside 1-65535 (RFC 9132 §10.6.1.1)")
        if key in reject:
            name = NAME_OF.get(key, str(key))
            raise CodecError(f"{path}/{name}", f"'{name}' must not appear in a message body; "
                             "it is a Uri-Path parameter (RFC 9132 §4.4.1.1)")
        major = MAJOR.get(key)
        if major is None:
            if rfc9132.is_comprehension_required(key) and not lenient:
                unknown.append(key)
            continue
        name = NAME_OF[key]
        out[name] = value_to_json(key, major, value, f"{path}/{name}", reject, lenient)
    if unknown:
        keys = ", ".join(str(k) for k in sorted(unknown))
        raise CodecError(path or "/", f"unknown comprehension-required key(s): {keys}",
                         unknown_keys=tuple(sorted(unknown)))
    return out


def _cbor_type(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an unsigned integer" if v >= 0 else "a negative integer"
    if isinstance(v, str):
        return "a text string"
    if isinstance(v, bytes):
        return "a byte string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, Mapping):
        return "a map"
    if v is None:
        return "null"
    if isinstance(v, float):
        return "a float"
    if isinstance(v, cbor2.CBORTag):
        return f"tag {v.tag}"
    return type(v).__name__


def value_to_json(key: int, major: Major, value: Any, path: str, reject: frozenset[int] = frozenset(),
                  lenient: bool = False) -> Any:
    def bad(expected: str) -> CodecError:
        return CodecError(path, f"expected {expected} (key {key}), got {_cbor_type(value)}")

    if major is Major.MAP:
        return map_to_json(value, path, reject, lenient)
    if major is Major.ARRAY_OF_MAPS:
        if not isinstance(value, list | tuple):
            raise bad("an array of maps")
        return [map_to_json(v, f"{path}[{i}]", reject, lenient) for i, v in enumerate(value)]
    if major is Major.ARRAY_OF_TSTR:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise bad("an array of text strings")
        return list(value)
    if major is Major.ARRAY_OF_UINT:
        if not isinstance(value, list | tuple) or not all(_is_uint(v) for v in value):
            raise bad("an array of unsigned integers")
        return list(value)
    if major is Major.TSTR:
        if not isinstance(value, str):
            raise bad("a text string")
        return value
    if major is Major.UINT:
        if not _is_uint(value):
            raise bad("an unsigned integer")
        return str(value) if key in UINT64_KEYS else value
    if major is Major.UINT_OR_NEGINT:
        if not isinstance(value, int) or isinstance(value, bool) or not -(2**63) <= value <= UINT64_MAX:
            raise bad("an integer")
        return value
    if major is Major.BOOL:
        if not isinstance(value, bool):
            raise bad("a boolean (simple value 20/21)")
        return value
    if major is Major.DECIMAL:
        if not isinstance(value, Decimal) or not value.is_finite():
            raise bad("a decimal fraction (tag 4)")
        exponent = value.as_tuple().exponent
        # decimal64 with 2 fraction digits: exponent -2..0 and an int64 mantissa (RFC 9132 §6)
        if not isinstance(exponent, int) or not -18 <= exponent <= 0 or abs(value) >= Decimal(2**63) / 100:
            raise CodecError(path, f"decimal fraction out of the decimal64 range (key {key})")
        return str(value)
    if major is Major.ENUM:
        if not _is_uint(value):
            raise bad("an unsigned integer (enumeration)")
        name = _ENUM_BY_VALUE[key].get(value)
        if name is None:
            raise CodecError(path, f"{value} is not a valid {NAME_OF[key]} value")
        return name
    raise AssertionError(major)  # pragma: no cover


# ----------------------------------------------------------------------------- JSON -> CBOR
def _local(name: str) -> str:
    return name.rpartition(":")[2]


def json_to_map(members: dict[str, Any], path: str = "") -> dict[int, Any]:
    if not isinstance(members, dict):
        raise CodecError(path or "/", "expected an object")
    out: dict[int, Any] = {}
    for name, value in members.items():
        key = KEY_OF.get(_local(name))
        here = f"{path}/{name}"
        if key is None:
            raise CodecError(here, "no CBOR key is defined for this member")
        out[key] = json_value_to_cbor(key, value, here)
    return out


def json_value_to_cbor(key: int, value: Any, path: str) -> Any:
    major = MAJOR[key]
    if major is Major.MAP:
        return json_to_map(value, path)
    if major is Major.ARRAY_OF_MAPS:
        if not isinstance(value, list):
            raise CodecError(path, "expected an array of objects")
        return [json_to_map(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if major is Major.ENUM:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        code = _ENUM_BY_NAME[key].get(value)
        if code is None:
            raise CodecError(path, f"{value!r} is not a valid {NAME_OF[key]} value")
        return code
    if major is Major.DECIMAL:
        try:
            d = Decimal(str(value))
        except InvalidOperation:
            raise CodecError(path, f"{value!r} is not a decimal64") from None
        return d.quantize(Decimal("0.01")) if d.as_tuple().exponent > -2 else d
    if major is Major.UINT and key in UINT64_KEYS and isinstance(value, str):
        if not (value.isascii() and value.isdigit() and len(value) <= 20 and int(value) <= UINT64_MAX):
            raise CodecError(path, f"{value!r} is not an unsigned 64-bit integer")
        return int(value)
    return value


# ----------------------------------------------------------------------------- bytes
def loads(data: bytes) -> Any:
    """CBOR bytes -> Python, with the optional DOTS tag 271 (RFC 9132 §10.5) removed."""
    if not data:
        raise CodecError("/", "empty payload")
    stream = io.BytesIO(data)
    try:
        obj = cbor2.CBORDecoder(stream).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError,
            LookupError, AttributeError) as exc:
        raise CodecError("/", f"malformed CBOR: {exc}") from None
    if stream.tell() != len(data):
        raise CodecError("/", f"{len(data) - stream.tell()} bytes of trailing data after the CBOR item")
    if isinstance(obj, cbor2.CBORTag) and obj.tag == rfc9132.CBOR_TAG_DOTS:
        obj = obj.value
    return obj


def dumps(obj: Any) -> bytes:
    """Deterministic encoding (RFC 8949 §4.2.1): integer keys in ascending order."""
    return cbor2.dumps(obj, canonical=True)
