"""Unit tests of the embedded LogMitigator and of MitigationAction validation."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from agent.mitigators import Counters, LogMitigator, MitigationAction, Mitigator

NET = ipaddress.ip_network


def act(key: str = "c1/1", **kw: object) -> MitigationAction:
    kw.setdefault("target_prefixes", (NET("192.0.2.0/24"),))
    return MitigationAction(key=key, **kw)  # type: ignore[arg-type]


def test_action_validation() -> None:
    with pytest.raises(ValueError):
        MitigationAction(key="k")  # neither targets nor sources
    with pytest.raises(ValueError):
        act(target_port_ranges=((10, 5),))
    with pytest.raises(ValueError):
        act(source_icmp_type_ranges=((0, 256),))
    with pytest.raises(ValueError):
        act(action="rate-limit")
    with pytest.raises(ValueError):
        act(action="bogus")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        act(target_prefixes=("192.0.2.0/24",))
    a = act(action="rate-limit", rate_limit_pps=10, source_prefixes=(NET("2001:db8::/32"),))
    assert hash(a) == hash(
        act(action="rate-limit", rate_limit_pps=10, source_prefixes=(NET("2001:db8::/32"),))
    )


async def test_log_mitigator_lifecycle(caplog: pytest.LogCaptureFixture) -> None:
    m = LogMitigator()
    assert isinstance(m, Mitigator) and m.name == "log"
    with caplog.at_level(logging.INFO, logger="dots.mitigator"):
        await m.apply(act("a"))
        await m.apply(act("a", target_port_ranges=((53, 53),)))
        await m.apply(act("b"))
    assert set(m.installed) == {"a", "b"}
    assert m.installed["a"].target_port_ranges == ((53, 53),)
    assert "apply a" in caplog.text and "replace a" in caplog.text
    assert await m.counters("a") == Counters(0, 0)
    assert await m.counters("nope") == Counters(0, 0)
    await m.close()
    assert m.closed


@pytest.mark.req("SC-108")
async def test_log_mitigator_remove_on_termination(caplog: pytest.LogCaptureFixture) -> None:
    m = LogMitigator()
    await m.apply(act("a"))
    with caplog.at_level(logging.INFO, logger="dots.mitigator"):
        await m.remove("a")
        await m.remove("a")  # idempotent
    assert m.installed == {}
    assert caplog.text.count("remove a") == 1


async def test_log_mitigator_reconcile() -> None:
    m = LogMitigator()
    await m.apply(act("a"))
    await m.apply(act("b"))
    await m.reconcile([act("b", target_protocols=(17,)), act("c")])
    assert set(m.installed) == {"b", "c"}
    assert m.installed["b"].target_protocols == (17,)
    await m.reconcile([])
    assert m.installed == {}
