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

from ansible_collections.homelab.onebox.plugins.filter.free_subnet import free_subnet as filter_free_subnet

# The benchmarking range (RFC 2544): not routed on the internet, free on the test machines.
CANDIDATES = ipaddress.IPv4Network("198.18.0.0/15")


def _ip(*args, timeout=10):
    return subprocess.run(["ip"] + list(args), capture_output=True, text=True, timeout=timeout, check=True).stdout


def free_subnet(rng=random, tries=512):
    """A /30 of 198.18.0.0/15, from a random start, that overlaps no route (any table) and no
    address of the host (the collection's own free_subnet filter does the comparing)."""
    routes = json.loads(_ip("-4", "-j", "route", "show", "table", "all") or "[]")
    addresses = json.loads(_ip("-4", "-j", "addr", "show") or "[]")
    count = CANDIDATES.num_addresses // 4
    start = rng.randrange(count)
    candidates = [str(ipaddress.IPv4Network((int(CANDIDATES.network_address) + 4 * ((start + i) % count), 30)))
                  for i in range(tries)]
    return ipaddress.IPv4Network(filter_free_subnet(routes, candidates, addresses))


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
