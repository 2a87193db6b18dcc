# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The DHCP leases of an LXD bridge, as its dnsmasq keeps them on the host.

LXD's leases API lists only the leases of instances that still exist. A container deleted while
its dynamic lease stood can leave that lease in dnsmasq's file for the lease time (an hour by
default), and dnsmasq gives the address to nobody else meanwhile, not even to the container that
now has it as a static reservation: that container gets another address and every forward to its
static one reaches nobody. So address choice reads the file too, and a lease of a MAC that no
instance has can be released, as dnsmasq's own ``dhcp_release`` tool does (a DHCPRELEASE sent
from the host on the bridge).
"""
from __future__ import annotations

import ipaddress
import os
import random
import socket
import struct
from collections import namedtuple

Lease = namedtuple("Lease", "expiry mac address hostname client_id")

DHCP_SERVER_PORT = 67
DHCPRELEASE = 7
OPTION_MESSAGE_TYPE = 53
OPTION_SERVER_ID = 54
OPTION_CLIENT_ID = 61
OPTION_END = 255
MAGIC_COOKIE = b"\x63\x82\x53\x63"
BOOTP_MIN_SIZE = 300  # RFC 951: servers may drop shorter packets
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


def parse_leases(text):
    """dnsmasq's lease file -> [Lease] of its IPv4 leases (IPv6 lines and junk are skipped).

    A line: ``expiry mac address hostname client-id`` (``*`` where there is no hostname or id)."""
    leases = []
    for line in (text or "").splitlines():
        words = line.split()
        if len(words) < 4:
            continue
        try:
            address = ipaddress.ip_address(words[2])
            expiry = int(words[0])
        except ValueError:
            continue
        if address.version != 4 or not _is_mac(words[1]):
            continue
        client_id = words[4] if len(words) > 4 and words[4] != "*" else None
        leases.append(Lease(expiry, words[1].lower(), str(address), None if words[3] == "*" else words[3], client_id))
    return leases


def _is_mac(text):
    parts = text.split(":")
    return len(parts) == 6 and all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts)


def lease_file(lxd_dir, network):
    """Where LXD's dnsmasq keeps the leases of ``network`` on this host."""
    return os.path.join(lxd_dir, "networks", network, "dnsmasq.leases")


def read_leases(path):
    """The leases of a lease file; [] when the file is not there (no DHCP yet, or not this host)."""
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return parse_leases(handle.read())
    except (FileNotFoundError, PermissionError, NotADirectoryError):
        return []


def release_packet(lease, server, xid=None):
    """The DHCPRELEASE (RFC 2131 4.4.6) that makes dnsmasq drop ``lease``; ``server``: its address."""
    mac = bytes(int(part, 16) for part in lease.mac.split(":"))
    xid = random.getrandbits(32) if xid is None else xid
    header = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0,
                         socket.inet_aton(lease.address), bytes(4), bytes(4), bytes(4),
                         mac, bytes(64), bytes(128))
    options = bytes([OPTION_MESSAGE_TYPE, 1, DHCPRELEASE, OPTION_SERVER_ID, 4]) + socket.inet_aton(server)
    if lease.client_id:
        # dnsmasq finds a lease by its client id first: give the one it recorded.
        client_id = bytes(int(part, 16) for part in lease.client_id.split(":"))
        options += bytes([OPTION_CLIENT_ID, len(client_id)]) + client_id
    packet = header + MAGIC_COOKIE + options + bytes([OPTION_END])
    return packet + bytes(max(0, BOOTP_MIN_SIZE - len(packet)))


def send_release(lease, interface, server, timeout=5):
    """Send the release from this host to the bridge's dnsmasq, as received on ``interface``.

    Bound to the bridge, the packet to the bridge's own address is taken by dnsmasq as coming in on
    the bridge (not on lo, which it ignores). Needs root. dnsmasq does not answer a release."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.settimeout(timeout)
        sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode() + b"\0")
        sock.sendto(release_packet(lease, server), (server, DHCP_SERVER_PORT))
    finally:
        sock.close()
