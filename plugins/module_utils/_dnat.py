# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Port forwards as the user gives them, parsed and checked, and the names of their owner. Pure.

forward items --parse_forwards()--> [Forward] (an instance target resolved later by static_ipv4())
isolate items --parse_isolate()--> (interface, ...)

Several boxes (owners) may share a host: each owner has chains of its own prefix (owner_prefix()),
files and a boot unit of its own (owner_defaults()), and the jumps to its chains say whose they are
(jump_comment(): ``homelab.onebox owner=NAME``). The rules themselves are _dnat_rules'; what other
owners and the host hold, _dnat_claims'.
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from collections import namedtuple

from ansible_collections.homelab.onebox.plugins.module_utils import _validate as v
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError

PROTOCOLS = ("tcp", "udp")
DEFAULT_PREFIX = "ONEBOX"
DEFAULT_OWNER = "onebox"
JUMP_COMMENT = "homelab.onebox"
# How a jump names its owner: "homelab.onebox owner=NAME" (a jump of 0.1 says "homelab.onebox" only).
OWNER_MARK = " owner="
# The files of the default owner (and of a run without owner): those of 0.1, so a box made then
# keeps its files and its boot unit.
_DEFAULT_FILES = dict(
    save_path="/etc/onebox/dnat.rules",
    restore_script="/usr/local/sbin/onebox-dnat-restore",
    sysctl_file="/etc/sysctl.d/60-onebox-ip-forward.conf",
    unit_name="onebox-dnat.service",
)
FORWARD_KEYS = ("proto", "port", "target", "target_port", "host_address", "source", "comment", "allow_host_listener")
_PREFIX = re.compile(r"^[A-Z][A-Z0-9_]{0,15}$")
# A network interface name as isolate takes it: at most 15 characters (IFNAMSIZ - 1), none that
# the kernel refuses ('/', ':', whitespace) or that a rule, its comment or a shell would read
# specially (quotes, ';', '\\', '$', '!', '#'), and no '+' (iptables' wildcard).
_IFACE = re.compile(r"(?!\.\.?\Z)[A-Za-z0-9_.@][A-Za-z0-9_.@-]{0,14}")

# port and target_port are (low, high); address is target's IPv4 address once resolved (the
# target itself when it is an address, None for an instance name not yet looked up).
# allow_listener: the forward may cover a port the host itself listens on (allow_host_listener).
Forward = namedtuple("Forward", "proto port target address target_port host_address sources comment field allow_listener",
                     defaults=(False,))


def check_prefix(value, field="chain_prefix"):
    if not _PREFIX.match(v.text(value, field)):
        raise ValidationError(field, value, "must be 1-16 upper-case letters, digits or '_', starting with a letter")
    return value


# ---- owners --------------------------------------------------------------------------------
def check_owner_name(value, field="owner"):
    """None (no owner: the behaviour of 0.1) or an owner as LXD names things (the box's owner)."""
    return None if value is None else v.instance_name(value, field)


def owner_prefix(owner):
    """The chain prefix of an owner's forwards. The owner upper-cased, '-' as '_', when that is a
    valid prefix (at most 16 characters) and says the owner unambiguously (no upper-case letter in
    the owner, so "Web" and "web" do not meet); otherwise its first 10 characters so written, '_'
    and 5 base32 characters (25 bits) of its SHA-256: readable, and long names with the same start
    stay apart (16 bits met among a few hundred such names; 25 bits make that about one in ten
    thousand). Two owners that still met on one prefix would be refused by check_owner(), never
    merged. None and the default owner give ONEBOX, the prefix of 0.1."""
    if owner is None:
        return DEFAULT_PREFIX
    plain = owner.upper().replace("-", "_")
    if owner == owner.lower() and _PREFIX.match(plain):
        return plain
    digest = base64.b32encode(hashlib.sha256(owner.encode("utf-8")).digest()).decode("ascii")[:5]
    return "%s_%s" % (plain[:10].rstrip("_"), digest)


def owner_defaults(owner):
    """The defaults of an owner's forwards: chain_prefix, save_path, restore_script, sysctl_file,
    unit_name (the systemd unit of the port_forward role). The default owner (and no owner) has
    the names of 0.1; any other owner has names with its own name in them, so a teardown of one
    box never deletes a file another box needs."""
    if owner is None or owner == DEFAULT_OWNER:
        return dict(_DEFAULT_FILES, chain_prefix=DEFAULT_PREFIX)
    return dict(
        chain_prefix=owner_prefix(owner),
        save_path="/etc/onebox/dnat-%s.rules" % owner,
        restore_script="/usr/local/sbin/onebox-dnat-restore-%s" % owner,
        sysctl_file="/etc/sysctl.d/60-onebox-ip-forward-%s.conf" % owner,
        unit_name="onebox-dnat-%s.service" % owner,
    )


def jump_comment(owner=None):
    """The comment on the jumps to an owner's chains: what tells the owners apart on the host."""
    return JUMP_COMMENT if owner is None else "%s%s%s" % (JUMP_COMMENT, OWNER_MARK, owner)


def owner_label(owner, prefix):
    """An owner as a message names it (chains of 0.1 recorded none)."""
    return owner if owner is not None else "unknown (chains %s_*)" % prefix


# ---- input ---------------------------------------------------------------------------------
def _public_ipv4(value, field):
    address = v.ipv4_address(value, field)
    parsed = ipaddress.IPv4Address(address)
    if parsed.is_loopback or parsed.is_unspecified or parsed.is_multicast or address == "255.255.255.255":
        raise ValidationError(field, value, "must be a unicast address that is not loopback or 0.0.0.0")
    return address


def _is_ipv4(value):
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


def parse_forward(item, field):
    """One forward as the user wrote it -> Forward (target not yet resolved). Raises ValidationError."""
    item = v.mapping(item, field, FORWARD_KEYS)
    proto = item.get("proto") or "tcp"
    proto = v.one_of(proto.lower() if isinstance(proto, str) else proto, PROTOCOLS, field + ".proto")
    if item.get("port") is None:
        raise ValidationError(field + ".port", None, "is required")
    port = v.port_range(item["port"], field + ".port")
    target = item.get("target")
    if target is None or target == "":
        raise ValidationError(field + ".target", target, "is required: an LXD instance name or an IPv4 address")
    if _is_ipv4(v.text(target, field + ".target")):
        address = _public_ipv4(target, field + ".target")
    else:
        v.instance_name(target, field + ".target")
        address = None
    if item.get("target_port") is None:
        target_port = port
    else:
        target_port = v.port_range(item["target_port"], field + ".target_port")
        if target_port[1] - target_port[0] != port[1] - port[0]:
            raise ValidationError(field + ".target_port", item["target_port"],
                                  "must span as many ports as port (%s)" % ports(port, "-"))
    host_address = item.get("host_address")
    if host_address is not None:
        host_address = _public_ipv4(host_address, field + ".host_address")
    sources = tuple(v.ipv4_network(s, "%s.source[%d]" % (field, i))
                    for i, s in enumerate(v.items(item.get("source"), field + ".source", scalar=True)))
    comment = item.get("comment")
    if comment is not None:
        comment = v.comment(comment, field + ".comment")
    allow_listener = item.get("allow_host_listener")
    allow_listener = False if allow_listener is None else v.flag(allow_listener, field + ".allow_host_listener")
    return Forward(proto, port, target, address, target_port, host_address, sources, comment, field, allow_listener)


def parse_isolate(items, field="isolate"):
    """The user's list of interfaces to isolate -> a sorted tuple without duplicates."""
    names = v.items(items, field, scalar=True)
    for i, name in enumerate(names):
        where = "%s[%d]" % (field, i)
        if not _IFACE.fullmatch(v.text(name, where)):
            raise ValidationError(
                where, name,
                "must be a network interface name: 1-15 letters, digits, '_', '.', '@' or '-', not "
                "starting with '-' (no '/', whitespace, quotes, ';' or '+' wildcard)")
    return tuple(sorted(set(names)))


def overlap(proto, port, host, other_proto, other_port, other_host):
    """Two forwards catch the same packets: the same protocol (None: any), port ranges that meet,
    and listen addresses that meet (None: any address of the host; else an address or network)."""
    if proto is not None and other_proto is not None and proto != other_proto:
        return False
    if port[0] > other_port[1] or other_port[0] > port[1]:
        return False
    if host is None or other_host is None:
        return True
    return ipaddress.IPv4Network(host, strict=False).overlaps(ipaddress.IPv4Network(other_host, strict=False))


def parse_forwards(items, field="forwards"):
    """The user's list of forwards -> [Forward] in a stable order. Fails on the first bad one,
    and when two forwards claim the same protocol and host port (on the same listen address)."""
    items = v.items(items, field)
    forwards = [parse_forward(item, "%s[%d]" % (field, i)) for i, item in enumerate(items)]
    for i, later in enumerate(forwards):
        for earlier in forwards[:i]:
            if overlap(later.proto, later.port, later.host_address, earlier.proto, earlier.port, earlier.host_address):
                raise ValidationError(
                    later.field + ".port", items[i]["port"],
                    "%s port %s is already forwarded by %s (%s port %s)"
                    % (later.proto, ports(later.port, "-"), earlier.field, earlier.proto, ports(earlier.port, "-")))
    return sorted(forwards, key=lambda f: (f.proto, f.port, f.host_address or ""))


def static_ipv4(instance, name, field):
    """The static IPv4 address (``ipv4.address`` of a NIC device) of an instance record: what an
    instance target resolves to."""
    if instance is None:
        raise ValidationError(field, name, "no LXD instance of that name")
    nics = sorted((dev_name, dev["ipv4.address"])
                  for dev_name, dev in (instance.get("expanded_devices") or {}).items()
                  if dev.get("type") == "nic" and dev.get("ipv4.address"))
    if not nics:
        raise ValidationError(
            field, name, "instance has no static IPv4 address (ipv4.address on its NIC device); "
            "a DHCP address changes when it restarts, so a forward needs a static one")
    by_name = dict(nics)
    return by_name.get("eth0", nics[0][1])


# ---- output --------------------------------------------------------------------------------
def ports(port, sep=":"):
    """A (low, high) port range as text: ``80``, ``7000:7010`` (iptables) or ``7000-7010``."""
    low, high = port
    return str(low) if low == high else "%d%s%d" % (low, sep, high)


def port_value(port):
    """A (low, high) port range as a message's value: the number, or ``low-high``."""
    return port[0] if port[0] == port[1] else "%d-%d" % port


def summary(forwards):
    """What the module returns about each forward."""
    return [dict(proto=f.proto, port=ports(f.port, "-"), target=f.target, address=f.address,
                 target_port=ports(f.target_port, "-"), host_address=f.host_address,
                 source=list(f.sources), comment=f.comment, allow_host_listener=f.allow_listener)
            for f in forwards]
