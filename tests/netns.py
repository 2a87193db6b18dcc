"""A client "outside" the host for traffic tests: a network namespace joined to the host by a veth
pair carrying a /30 that overlaps nothing the host routes or has as an address.

    with Netns() as ns:                  # or the ``netns`` fixture
        ns.host_address                  # the host's end (a local address of the host)
        ns.address                       # the namespace's end
        ns.run(["curl", "-s", "http://%s:8000/" % ns.host_address], timeout=5)

Packets from the namespace reach the host through PREROUTING like traffic from another machine
(locally generated packets never do). Cleanup deletes only the namespace and the veth it created.
"""
from __future__ import annotations

import ipaddress
import json
import random
import subprocess
import uuid

import pytest

# The benchmarking range (RFC 2544): not routed on the internet, free on the test machines.
CANDIDATES = ipaddress.IPv4Network("198.18.0.0/15")


def _ip(*args, timeout=10):
    return subprocess.run(["ip"] + list(args), capture_output=True, text=True, timeout=timeout, check=True).stdout


def used_networks():
    """Every IPv4 route destination (all tables, default route aside) and every address's network."""
    used = []
    for route in json.loads(_ip("-4", "-j", "route", "show", "table", "all") or "[]"):
        dst = route.get("dst")
        if dst and dst != "default":
            used.append(ipaddress.IPv4Network(dst if "/" in dst else dst + "/32", strict=False))
    for link in json.loads(_ip("-4", "-j", "addr", "show") or "[]"):
        for info in link.get("addr_info") or []:
            used.append(ipaddress.IPv4Network("%s/%s" % (info["local"], info["prefixlen"]), strict=False))
    return used


def free_subnet(used=None, rng=random):
    """A /30 of 198.18.0.0/15 that overlaps none of ``used`` (read from the host when None)."""
    used = used_networks() if used is None else used
    count = CANDIDATES.num_addresses // 4
    start = rng.randrange(count)
    for i in range(count):
        base = int(CANDIDATES.network_address) + 4 * ((start + i) % count)
        subnet = ipaddress.IPv4Network((base, 30))
        if not any(subnet.overlaps(net) for net in used):
            return subnet
    raise RuntimeError("no free /30 in %s" % CANDIDATES)


class Netns:
    """A namespace + veth pair + /30. Use as a context manager (or call create()/close())."""

    def __init__(self, label="t"):
        tag = uuid.uuid4().hex[:6]
        self.name = "onebox-%s-%s" % (label, tag)
        self.host_link = "obh%s" % tag  # interface names: at most 15 characters
        self.ns_link = "obn%s" % tag
        self.subnet = None
        self.host_address = None
        self.address = None
        self._made = []

    def create(self):
        self.subnet = free_subnet()
        host, peer = list(self.subnet.hosts())
        self.host_address, self.address = str(host), str(peer)
        _ip("netns", "add", self.name)
        self._made.append("netns")
        _ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.ns_link, "netns", self.name)
        self._made.append("link")
        _ip("addr", "add", "%s/30" % self.host_address, "dev", self.host_link)
        _ip("link", "set", self.host_link, "up")
        for args in (("link", "set", "lo", "up"),
                     ("addr", "add", "%s/30" % self.address, "dev", self.ns_link),
                     ("link", "set", self.ns_link, "up"),
                     ("route", "add", "default", "via", self.host_address)):
            _ip("-n", self.name, *args)
        return self

    def run(self, argv, timeout=10, check=False, input=None):
        """Run argv inside the namespace; a CompletedProcess with text output."""
        return subprocess.run(["ip", "netns", "exec", self.name] + list(argv), input=input,
                              capture_output=True, text=True, timeout=timeout, check=check)

    def close(self):
        # Deleting the namespace deletes its end of the veth, and with it the host's end.
        if "netns" in self._made:
            subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, timeout=30, check=False)
        if "link" in self._made:
            subprocess.run(["ip", "link", "delete", self.host_link], capture_output=True, timeout=30, check=False)
        self._made = []

    def __enter__(self):
        try:
            return self.create()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc):
        self.close()


@pytest.fixture
def netns():
    with Netns() as ns:
        yield ns
