"""Uri-Path and Uri-Query parameters of DOTS requests (RFC 9132 §4.2, §4.4.1.2, Table 1/2)."""

from __future__ import annotations

from dataclasses import dataclass

from agent.numbers import rfc9132

UINT32_MAX = 2**32 - 1


class UriError(ValueError):
    """A malformed Uri-Path/Uri-Query parameter (answered with 4.00)."""


@dataclass(frozen=True)
class Params:
    cdid: str | None = None
    cuid: str | None = None
    mid: int | None = None
    sid: int | None = None


def _uint32(name: str, value: str) -> int:
    """ASCII decimal digits only (``str.isdigit`` also takes '²', '٣' or fullwidth '２３')."""
    if not (value.isascii() and value.isdigit()):
        raise UriError(f"'{name}' must be an unsigned integer (ASCII digits 0-9), got {value!r}")
    if len(value.lstrip("0")) > len(str(UINT32_MAX)) or int(value) > UINT32_MAX:
        raise UriError(f"'{name}' {value[:12]}{'...' if len(value) > 12 else ''} is out of range (uint32)")
    return int(value)


def parse_params(segments: tuple[str, ...], allowed: tuple[str, ...]) -> Params:
    """``name=value`` Uri-Path segments, in the order the RFC fixes (cdid, cuid, mid/sid)."""
    values: dict[str, str] = {}
    order = []
    for seg in segments:
        name, eq, value = seg.partition("=")
        if not eq:
            raise UriError(f"unexpected Uri-Path segment {seg!r}")
        if name not in allowed:
            raise UriError(f"Uri-Path parameter '{name}' is not allowed here")
        if not value:
            raise UriError(f"empty '{name}' (RFC 9132 §4.4.1.1: empty values are invalid)")
        if name in values:
            raise UriError(f"duplicate '{name}'")
        values[name] = value
        order.append(name)
    expected = [n for n in ("cdid", "cuid", "mid", "sid") if n in values]
    if order != expected:
        raise UriError(f"Uri-Path parameters out of order: {'/'.join(order)} (cdid, cuid, then mid)")
    return Params(
        cdid=values.get("cdid"), cuid=values.get("cuid"),
        mid=_uint32("mid", values["mid"]) if "mid" in values else None,
        sid=_uint32("sid", values["sid"]) if "sid" in values else None,
    )


def content_filter(queries: tuple[str, ...]) -> str:
    """Table 2 ``c`` query: c (configuration), n (non-configuration) or a (all, the default)."""
    content = "a"
    for q in queries:
        name, _, value = q.partition("=")
        if name == rfc9132.QUERY_CONTENT:
            if value not in rfc9132.QUERY_CONTENT_VALUES:
                raise UriError(f"invalid c={value!r}: use c, n or a (RFC 9132 Table 2)")
            content = value
    return content
