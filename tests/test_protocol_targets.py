"""Mitigation scopes: overlap, validation, domain checks (agent.protocol.targets)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.protocol.targets import (
    Targets,
    conflict_scope,
    forbidden_reason,
    overlaps,
    sources_within,
    validate_request_targets,
    within,
)

T = Targets.of


@pytest.mark.req("SC-065")
def test_common_address_overlaps_across_prefix_lengths():
    assert overlaps(T(["2001:db8:6401::/48"]), T(["2001:db8:6401::1/128"]))
    assert not overlaps(T(["2001:db8:6401::/48"]), T(["2001:db8:6402::1/128"]))
    assert not overlaps(T(["192.0.2.0/24"]), T(["2001:db8::/32"]))


@pytest.mark.req("SC-065")
def test_fqdn_uri_alias_overlap():
    assert overlaps(T(fqdns=["WWW.example.com."]), T(fqdns=["www.example.com"]))
    assert overlaps(T(uris=["https://example.com/"]), T(uris=["https://example.com/"]))
    assert overlaps(T(aliases=["web"]), T(prefixes=["192.0.2.1/32"], aliases=["web"]))
    assert not overlaps(T(aliases=["web"]), T(aliases=["dns"]))


@pytest.mark.req("SC-065")
def test_ports_and_protocols_are_wildcards_when_absent():
    a = T(["192.0.2.0/24"], ports=[80], protocols=[6])
    assert overlaps(a, T(["192.0.2.1/32"]))
    assert overlaps(a, T(["192.0.2.1/32"], ports=[(1, 1023)]))
    assert not overlaps(a, T(["192.0.2.1/32"], ports=[443]))
    assert not overlaps(a, T(["192.0.2.1/32"], protocols=[17]))


@pytest.mark.req("CH-016")
def test_call_home_source_attributes_narrow_overlap():
    a = T(["2001:db8:c000::/128"], source_prefixes=["2001:db8:123::1/128"])
    b = T(["2001:db8:c000::/128"], source_prefixes=["2001:db8:124::1/128"])
    assert not overlaps(a, b)
    assert overlaps(a, T(["2001:db8:c000::/128"]))
    c = T(["192.0.2.1/32"], source_prefixes=["198.51.100.1/32"], source_ports=[(1000, 2000)])
    d = T(["192.0.2.1/32"], source_prefixes=["198.51.100.1/32"], source_ports=[(3000, 4000)])
    assert not overlaps(c, d)


@pytest.mark.req("SC-066")
def test_conflict_scope_is_the_intersection():
    a = T(["192.0.2.0/24"], ports=[(80, 90)], protocols=[6, 17])
    b = T(["192.0.2.8/29", "198.51.100.0/24"], ports=[(85, 100)], protocols=[6])
    s = conflict_scope(a, b)
    assert s.prefixes == {ipaddress.ip_network("192.0.2.8/29")}
    assert s.port_ranges == ((85, 90),)
    assert s.protocols == {6}


def test_port_ranges_are_normalised_so_equal_scopes_compare_equal():
    assert T(["192.0.2.1/32"], ports=[443, 80, (81, 82)]) == T(["192.0.2.1/32"], ports=[(80, 82), 443])


@pytest.mark.req("SC-046")
def test_at_least_one_target_required():
    assert validate_request_targets(T(ports=[80], protocols=[6]))
    for t in (T(["192.0.2.1/32"]), T(fqdns=["a.example"]), T(uris=["https://a.example"]), T(aliases=["x"])):
        assert validate_request_targets(t) == []


@pytest.mark.req("SC-036", "CH-012")
@pytest.mark.parametrize(
    "prefix",
    [
        "127.0.0.1/32",
        "224.0.0.1/32",
        "239.1.0.0/16",
        "255.255.255.255/32",
        "::1/128",
        "ff02::1/128",
        "::ffff:127.0.0.1/128",
        "0.0.0.0/0",
    ],
)
def test_loopback_multicast_broadcast_refused(prefix):
    assert validate_request_targets(T([prefix]))
    assert validate_request_targets(T(["192.0.2.1/32"], source_prefixes=[prefix]))


@pytest.mark.req("CH-012")
def test_link_local_allowed():
    assert forbidden_reason(ipaddress.ip_network("fe80::1/128")) is None
    assert validate_request_targets(T(["fe80::1/128"])) == []


@pytest.mark.req("SC-047")
def test_range_and_empty_value_errors():
    assert validate_request_targets(T(["192.0.2.1/32"], ports=[(90, 80)]))
    assert validate_request_targets(T(["192.0.2.1/32"], ports=[(0, 70000)]))
    assert validate_request_targets(T(["192.0.2.1/32"], protocols=[256]))
    assert validate_request_targets(T(["192.0.2.1/32"], source_icmp_types=[(0, 300)]))
    assert validate_request_targets(T(["192.0.2.1/32"], fqdns=[""]))


@pytest.mark.req("CH-014")
def test_call_home_needs_target_and_source_prefix():
    assert validate_request_targets(
        T(fqdns=["a.example"], source_prefixes=["198.51.100.1/32"]), call_home=True
    )
    assert validate_request_targets(T(["192.0.2.1/32"]), call_home=True)
    assert (
        validate_request_targets(T(["192.0.2.1/32"], source_prefixes=["198.51.100.1/32"]), call_home=True)
        == []
    )


@pytest.mark.req("SC-037", "CH-013", "CH-019")
def test_within_domain():
    dom = [ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32")]
    assert within(T(["192.0.2.128/25", "2001:db8:1::/48"]), dom)
    assert not within(T(["192.0.2.0/23"]), dom)
    assert not within(T(["198.51.100.1/32"]), dom)
    assert sources_within(T(["203.0.113.1/32"], source_prefixes=["192.0.2.7/32"]), dom)
    assert not sources_within(T(["203.0.113.1/32"], source_prefixes=["198.51.100.7/32"]), dom)


# --- properties ---------------------------------------------------------------------------
v4 = st.builds(
    lambda a, n: ipaddress.ip_network((a, n), strict=False), st.integers(0, 2**32 - 1), st.integers(8, 32)
)
ranges = st.tuples(st.integers(0, 65535), st.integers(0, 65535)).map(lambda r: (min(r), max(r)))
targets = st.builds(
    Targets,
    prefixes=st.frozensets(v4, max_size=3),
    port_ranges=st.lists(ranges, max_size=3).map(tuple),
    protocols=st.frozensets(st.sampled_from([1, 6, 17]), max_size=2),
    fqdns=st.frozensets(st.sampled_from(["a.example", "b.example"]), max_size=1),
    aliases=st.frozensets(st.sampled_from(["x", "y"]), max_size=1),
)


@pytest.mark.req("SC-065")
@given(targets, targets)
def test_overlap_is_symmetric(a, b):
    assert overlaps(a, b) == overlaps(b, a)


@pytest.mark.req("SC-065")
@given(targets)
def test_a_scope_with_a_target_overlaps_itself(a):
    assert overlaps(a, a) == a.has_target


@pytest.mark.req("SC-066")
@given(targets, targets)
def test_conflict_scope_overlaps_both_sides(a, b):
    if overlaps(a, b):
        s = conflict_scope(a, b)
        assert overlaps(s, a) and overlaps(s, b)
