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


# A DHCP client of a few lines, run inside a namespace whose only link is a port of an LXD bridge:
# DISCOVER, OFFER, REQUEST, ACK, then print the leased address. The interface keeps no address.
DHCP_CLIENT = r"""
import random, socket, struct, sys, time
iface, mac = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", ""))
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
sock.setsockopt(socket.SOL_SOCKET, 25, iface.encode() + b"\0")  # SO_BINDTODEVICE
sock.bind(("0.0.0.0", 68))
sock.settimeout(2)
xid = random.getrandbits(32)

def packet(kind, extra=b""):
    head = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, bytes(4), bytes(4),
                       bytes(4), bytes(4), mac, bytes(64), bytes(128))
    return head + b"\x63\x82\x53\x63" + bytes([53, 1, kind]) + extra + b"\xff" + bytes(64)

def options(data):
    found, i = {}, 240
    while i < len(data) and data[i] != 255:
        if data[i] == 0:
            i += 1
            continue
        found[data[i]] = data[i + 2:i + 2 + data[i + 1]]
        i += 2 + data[i + 1]
    return found

def exchange(kind, want, extra=b""):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        sock.sendto(packet(kind, extra), ("255.255.255.255", 67))
        try:
            while True:
                data = sock.recv(4096)
                if data[4:8] == struct.pack("!I", xid) and options(data).get(53) == bytes([want]):
                    return data, options(data)
        except socket.timeout:
            continue
    raise SystemExit("no DHCP answer of type %d" % want)

offer, found = exchange(1, 2)
exchange(3, 5, bytes([50, 4]) + offer[16:20] + bytes([54, 4]) + found[54])
print(socket.inet_ntoa(offer[16:20]))
"""


def lease_of_a_machine_gone(bridge, python="python3"):
    """(address, mac) of a DHCP lease that ``bridge``'s server gave a machine which then left: a
    namespace plugged into the bridge takes a lease and is deleted, as a container that was
    deleted without releasing its lease. The lease stays in the server's file for its lease time."""
    tag = uuid.uuid4().hex[:6]
    name, host_link, ns_link = "onebox-dhcp-%s" % tag, "obd%s" % tag, "obe%s" % tag
    mac = "02:0b:%s:%s:%s:%s" % (tag[0:2], tag[2:4], tag[4:6], "01")
    _ip("netns", "add", name)
    try:
        _ip("link", "add", host_link, "type", "veth", "peer", "name", ns_link, "netns", name)
        _ip("link", "set", host_link, "master", bridge, "up")
        _ip("-n", name, "link", "set", ns_link, "address", mac, "up")
        address = subprocess.run(["ip", "netns", "exec", name, python, "-c", DHCP_CLIENT, ns_link, mac],
                                 capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30, check=False)
        subprocess.run(["ip", "link", "delete", host_link], capture_output=True, timeout=30, check=False)
    return address, mac
