"""SC-170: a mitigation request larger than the PMTU allows is split into several PUTs (§7.3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiocoap
import pytest

from agent.client import DotsClient, MessageLimit, RequestTooLargeError, build_scope
from agent.client.split import COAP_FIXED_HEADER, split_scope
from agent.server.app import DotsServer
from tests.test_client_session import client, pki, server  # noqa: F401 - fixtures

PREFIXES = [f"10.{i // 256}.{i % 256}.0/24" for i in range(200)]


def _record_sizes(c: DotsClient, sizes: list[int]) -> None:
    """Record the encoded size of every mitigation PUT the current session sends."""
    conn = c._conn
    assert conn is not None
    original = conn.context.request

    def request(msg: aiocoap.Message, *args: Any, **kw: Any) -> Any:
        if msg.code == aiocoap.PUT and "mitigate" in msg.opt.uri_path:
            sizes.append(COAP_FIXED_HEADER + 8 + len(msg.opt.encode()) + 1 + len(msg.payload))
        return original(msg, *args, **kw)

    conn.context.request = request  # type: ignore[method-assign]


@pytest.mark.req("SC-170")
async def test_oversized_request_split_over_dtls(server: DotsServer, pki: Path) -> None:  # noqa: F811
    async with client(server, pki, "dtls") as c:
        limit = c.message_limit()
        assert limit == MessageLimit.for_dtls(1280) and limit.message == 1280 - 48 - 13 - 24
        with pytest.raises(RequestTooLargeError) as err:
            await c.mitigate(target_prefixes=PREFIXES, ports=[80, 443], protocols=[6])
        assert err.value.pieces >= 2 and "mitigate_all" in str(err.value)
        assert server.service.stats.puts == 0  # nothing was sent
        sizes: list[int] = []
        _record_sizes(c, sizes)
        results = await c.mitigate_all(target_prefixes=PREFIXES, ports=[80, 443], protocols=[6])
        assert len(results) == err.value.pieces >= 2
        assert [r.code for r in results] == ["2.01"] * len(results)
        mids = [r.mid for r in results]
        assert mids == sorted(set(mids))  # separate, increasing mids
        assert len(sizes) >= len(results) and max(sizes) <= limit.message
        scopes = await c.status()
        assert sorted(s["mid"] for s in scopes) == mids  # all created, none replaced another (SC-065)
        covered = [p for s in scopes for p in s["target-prefix"]]
        assert sorted(covered) == sorted(PREFIXES)
        assert all(s["target-port-range"] == [{"lower-port": 80}, {"lower-port": 443}] for s in scopes)
        assert all(s["target-protocol"] == [6] for s in scopes)
        # the pieces are ordinary requests: renewals and efficacy updates fit and work
        assert (await c.efficacy_update(mids[0], "attack-successfully-mitigated")).code == "2.04"
        assert (await c.refresh(mids[-1])).code == "2.04"
        assert max(sizes) <= limit.message
        # a request that fits is one PUT, through either call
        small = await c.mitigate_all(target_prefixes=["192.0.2.0/24"])
        assert len(small) == 1 and small[0].code == "2.01"


@pytest.mark.req("SC-170")
async def test_tls_unlimited_unless_configured(server: DotsServer, pki: Path) -> None:  # noqa: F811
    async with client(server, pki, "tls") as c:
        assert c.message_limit() == MessageLimit.unlimited()
        r = await c.mitigate(target_prefixes=PREFIXES[:120])  # one PUT over TLS
        assert r.code == "2.01"
    async with client(server, pki, "tls", tls_max_message=600) as c:
        results = await c.mitigate_all(target_prefixes=PREFIXES[120:])
        assert len(results) >= 2 and all(r.code == "2.01" for r in results)


@pytest.mark.req("SC-170")
def test_split_scope_rules() -> None:
    limit = 300
    scope = build_scope(["192.0.2.0/24", "192.0.2.0/25", "192.0.2.0/24", *PREFIXES[:40]], ports=[53],
                        fqdns=["www.example.com"], lifetime=600)

    def fits(s: dict[str, Any]) -> bool:
        return len(repr(s)) <= limit

    pieces = split_scope(scope, fits)
    assert len(pieces) > 1 and all(fits(p) for p in pieces)
    prefixes = [p for piece in pieces for p in piece.get("target-prefix", [])]
    assert sorted(prefixes) == sorted(["192.0.2.0/24", *PREFIXES[:40]])  # covered/duplicate ones dropped
    assert [f for piece in pieces for f in piece.get("target-fqdn", [])] == ["www.example.com"]
    assert all(p["lifetime"] == 600 and p["target-port-range"] == [{"lower-port": 53}] for p in pieces)
    assert split_scope(scope, lambda s: True) == [scope]
    with pytest.raises(RequestTooLargeError):
        split_scope(scope, lambda s: False)
