"""SC-032/SC-033: 'mid' rollover past 3221225471 recreates the preconfigured requests from mid 0."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.client import ClientState, DotsError
from agent.numbers.rfc9132 import MID_ROLLOVER
from agent.server.app import DotsServer
from tests.test_client_session import client, pki, server  # noqa: F401 - fixtures


@pytest.mark.parametrize("transport", ["tls", "dtls"])
@pytest.mark.req("SC-032", "SC-033")
async def test_rollover_recreates_preconfigured_requests(server: DotsServer, pki: Path, tmp_path: Path,  # noqa: F811
                                                         transport: str) -> None:
    state = ClientState(tmp_path / "state.json")
    async with client(server, pki, transport, state=state) as c:
        state.raise_mid_floor(c.cuid, MID_ROLLOVER - 2)
        pre1 = await c.mitigate(target_prefixes=["192.0.2.0/24"], ports=[53], protocols=[17],
                                trigger_mitigation=False, lifetime=-1)
        pre2 = await c.mitigate(target_prefixes=["198.51.100.0/24"], trigger_mitigation=False, lifetime=3600)
        assert (pre1.mid, pre2.mid) == (MID_ROLLOVER - 1, MID_ROLLOVER)
        # preconfigured requests are not an attack: the next mid rolls over (SC-032) and they
        # are recreated with the mids restarting at 0 (SC-033), before the new request's mid
        new = await c.mitigate(target_prefixes=["203.0.113.0/24"])
        assert new.code == "2.01" and new.mid == 2
        assert c.recreated_after_rollover == [(pre1.mid, 0), (pre2.mid, 1)]
        scopes = {s["mid"]: s for s in await c.status()}
        assert sorted(scopes) == [0, 1, 2]
        assert scopes[0]["target-prefix"] == ["192.0.2.0/24"] and scopes[0]["trigger-mitigation"] is False
        assert scopes[0]["target-protocol"] == [17] and scopes[0]["target-port-range"] == [{"lower-port": 53}]
        assert scopes[1]["target-prefix"] == ["198.51.100.0/24"] and scopes[1]["trigger-mitigation"] is False
        for old in (pre1.mid, pre2.mid):
            with pytest.raises(DotsError) as err:
                await c.status(old)
            assert err.value.code == "4.04"
        assert [r.mid for r in state.requests(c.cuid)] == [0, 1, 2]
        assert [r.mid for r in state.preconfigured(c.cuid)] == [0, 1]
        # the recreated requests are ordinary ones: renewals keep the new mids
        assert (await c.refresh(0)).code == "2.04"


@pytest.mark.req("SC-032")
async def test_no_rollover_while_mitigating(server: DotsServer, pki: Path) -> None:  # noqa: F811
    async with client(server, pki, "tls") as c:
        c.state.raise_mid_floor(c.cuid, MID_ROLLOVER - 2)
        active = await c.mitigate(target_prefixes=["198.51.100.0/24"])
        pre = await c.mitigate(target_prefixes=["192.0.2.0/24"], trigger_mitigation=False)
        more = await c.mitigate(target_prefixes=["198.51.100.128/25"], ports=[80])
        assert (active.mid, pre.mid, more.mid) == (MID_ROLLOVER - 1, MID_ROLLOVER, MID_ROLLOVER + 1)  # no reset
        assert c.recreated_after_rollover == []
        assert await c.withdraw(active.mid) == "2.02" and await c.withdraw(more.mid) == "2.02"
        after = await c.mitigate(target_prefixes=["203.0.113.0/24"])
        assert after.mid == 1 and c.recreated_after_rollover == [(pre.mid, 0)]
        live = [s["mid"] for s in await c.status() if s["status"] != "dots-client-withdrawn-mitigation"]
        assert sorted(live) == [0, 1]


@pytest.mark.req("SC-032", "SC-033")
def test_state_rollover_ignores_preconfigured(tmp_path: Path) -> None:
    s = ClientState(tmp_path / "st.json")
    s.raise_mid_floor("c", MID_ROLLOVER)
    s.remember("c", MID_ROLLOVER, {"target-prefix": ["192.0.2.0/24"], "trigger-mitigation": False}, -1)
    assert s.allocate_mid_checked("c") == (0, True)
    assert s.allocate_mid_checked("c") == (1, False)
    assert [r.mid for r in s.preconfigured("c")] == [MID_ROLLOVER]
