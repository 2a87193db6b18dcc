"""homelab.onebox.free_subnet: pure logic, no host state."""
from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.homelab.onebox.plugins.filter.free_subnet import FilterModule, free_subnet

# The shape of `ip -j route show table all` on a host like the test machine.
ROUTES = [
    {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0", "flags": []},
    {"dst": "192.0.2.0/24", "dev": "eth0", "protocol": "kernel", "scope": "link", "prefsrc": "192.0.2.2"},
    {"type": "local", "dst": "192.0.2.2", "dev": "eth0", "table": "local"},
    {"type": "local", "dst": "127.0.0.0/8", "dev": "lo", "table": "local"},
    {"dst": "fd00::/64", "dev": "eth0", "metric": 256},
    {"dst": "default", "gateway": "fd00::1", "dev": "eth0", "metric": 1024},
    {"type": "multicast", "dst": "ff00::/8", "dev": "eth0", "table": "local"},
]
# The shape of `ip -j addr show`.
ADDRESSES = [
    {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
    {"ifname": "eth0", "addr_info": [{"family": "inet", "local": "192.0.2.2", "prefixlen": 24},
                                     {"family": "inet6", "local": "fd00::2", "prefixlen": 64}]},
]
CANDIDATES = ["10.87.0.0/24", "10.87.1.0/24", "198.18.0.0/24"]


def test_registered_as_filter():
    assert FilterModule().filters()["free_subnet"] is free_subnet


def test_first_candidate_when_nothing_overlaps():
    assert free_subnet(ROUTES, CANDIDATES, addresses=ADDRESSES) == "10.87.0.0/24"


def test_default_routes_are_ignored():
    routes = [{"dst": "default", "gateway": "10.87.0.1"}, {"dst": "0.0.0.0/0", "dev": "x"}, "::/0"]
    assert free_subnet(routes, CANDIDATES) == "10.87.0.0/24"


def test_a_16_route_covers_every_24_inside_it():
    routes = ROUTES + [{"dst": "10.87.0.0/16", "dev": "wg0"}]
    assert free_subnet(routes, CANDIDATES, addresses=ADDRESSES) == "198.18.0.0/24"


def test_a_larger_candidate_overlapping_a_small_route_is_skipped():
    routes = [{"dst": "10.87.0.128/25", "dev": "tun0"}]
    assert free_subnet(routes, ["10.87.0.0/16", "10.88.0.0/16"]) == "10.88.0.0/16"


def test_the_hosts_own_24_is_skipped():
    # An address without a matching route (e.g. a link that is down) still counts.
    addresses = ADDRESSES + [{"ifname": "br9", "addr_info": [{"family": "inet", "local": "10.87.0.1",
                                                              "prefixlen": 24}]}]
    assert free_subnet(ROUTES, CANDIDATES, addresses=addresses) == "10.87.1.0/24"


def test_a_host_route_inside_a_candidate_counts():
    routes = ROUTES + [{"type": "local", "dst": "10.87.0.1", "dev": "lxdbr0", "table": "local"}]
    assert free_subnet(routes, CANDIDATES) == "10.87.1.0/24"


def test_ipv6_routes_do_not_block_ipv4_candidates():
    routes = [{"dst": "::/1", "dev": "x"}, {"dst": "fd00::/8", "dev": "y"}]
    assert free_subnet(routes, CANDIDATES) == "10.87.0.0/24"


def test_strings_are_accepted_for_routes_addresses_and_a_single_candidate():
    with pytest.raises(AnsibleFilterError):
        free_subnet(["10.87.0.0/24"], "10.87.0.0/23")
    assert free_subnet([], ["10.87.1.0/24"], addresses=["10.87.0.5/24"]) == "10.87.1.0/24"


def test_gateway_gives_the_first_host_with_its_prefix():
    assert free_subnet(ROUTES, CANDIDATES, addresses=ADDRESSES, gateway=True) == "10.87.0.1/24"


def test_candidate_given_as_an_address_is_normalised():
    assert free_subnet([], ["10.87.3.77/24"]) == "10.87.3.0/24"


def test_none_free_is_a_clear_error():
    routes = ROUTES + [{"dst": "10.0.0.0/8", "dev": "vpn0"}, {"dst": "198.18.0.0/15", "dev": "bench"}]
    with pytest.raises(AnsibleFilterError) as err:
        free_subnet(routes, CANDIDATES, addresses=ADDRESSES)
    msg = str(err.value)
    assert "no free subnet" in msg
    for text in ("10.87.0.0/24 overlaps route 10.0.0.0/8 dev vpn0", "198.18.0.0/24 overlaps route 198.18.0.0/15"):
        assert text in msg


@pytest.mark.parametrize("routes, candidates, match", [
    (ROUTES, [], "no candidate"),
    (ROUTES, ["10.87.0.0/33"], "candidate"),
    ([{"dst": "not-a-net"}], CANDIDATES, "route destination"),
    ("10.0.0.0/8", CANDIDATES, "routes must be a list"),
    ([42], CANDIDATES, "a route must be"),
])
def test_bad_input_is_named(routes, candidates, match):
    with pytest.raises(AnsibleFilterError, match=match):
        free_subnet(routes, candidates)
