"""The prefix index never misses an overlapping request (checked against a full scan)."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.server.index import PrefixIndex

v4 = st.builds(lambda a, n: ipaddress.ip_network((a, n), strict=False), st.integers(0, 2**32 - 1), st.integers(0, 32))
v6 = st.builds(lambda a, n: ipaddress.ip_network((a, n), strict=False), st.integers(0, 2**128 - 1),
               st.integers(0, 128))
nets = st.lists(v4 | v6, max_size=3)


@settings(max_examples=200, deadline=None)
@given(st.lists(nets, max_size=30), nets, st.data())
def test_candidates_are_a_superset_of_overlaps(filed: list, query: list, data: st.DataObject) -> None:
    index = PrefixIndex()
    for i, prefixes in enumerate(filed):
        index.add(i, prefixes)
    removed = data.draw(st.sets(st.integers(0, max(0, len(filed) - 1)), max_size=5)) if filed else set()
    for i in removed:
        index.remove(i)
    got = index.candidates(query)
    for i, prefixes in enumerate(filed):
        if i in removed:
            assert i not in got
            continue
        overlapping = not prefixes or not query or any(
            p.version == q.version and p.overlaps(q) for p in prefixes for q in query)
        if overlapping:
            assert i in got, (prefixes, query)
