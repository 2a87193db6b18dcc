"""A client "outside" the host for traffic tests: a network namespace joined to the host by a veth
pair carrying a /30 that overlaps nothing the host routes or has as an address. The namespace
itself (Netns, free_subnet) is the collection's shipped helper,
extensions/molecule/onebox_verify.py, which users' Molecule scenarios import too; this file adds
the ``netns`` fixture and a DHCP client for the tests.

    with Netns() as ns:                  # or the ``netns`` fixture
        ns.host_address                  # the host's end (a local address of the host)
        ns.address                       # the namespace's end
        ns.run(["curl", "-s", "http://%s:8000/" % ns.host_address], timeout=5)

Packets from the namespace reach the host through PREROUTING like traffic from another machine
(locally generated packets never do). Cleanup deletes only the namespace and the veth it created.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

# By its path in this tree, not through .collections: the tests need no link to extensions/.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "extensions", "molecule"))
from onebox_verify import CANDIDATES, Netns, _ip, free_subnet  # noqa: E402,F401  pylint: disable=wrong-import-position

__all__ = ["CANDIDATES", "Netns", "free_subnet", "netns", "lease_of_a_machine_gone"]


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
