# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host port forwards as iptables rules in chains the collection owns. Pure logic, no I/O.

forward specs --normalise()--> Forward --(targets resolved)--> desired_state() --> State
iptables-save text --parse_save()--> State
plan(current, desired) --> iptables-restore --noflush text (empty when nothing differs)

Several boxes (owners) may share a host: each owner has chains of its own prefix (owner_prefix(),
owner_defaults() for its files), and the jumps to them say whose they are (``homelab.onebox
owner=NAME``). Before a change, the same iptables-save text tells whose the other chains are
(collection_owners(), check_owner()) and which ports they forward (other_claims(), check_claims());
/proc/net/{tcp,udp}[6] tells which ports the host itself serves (parse_proc_net(),
listener_conflicts()).

A State holds the bodies of the rules in the collection's chains ``<PREFIX>_PREROUTING``,
``_OUTPUT``, ``_POSTROUTING`` (table nat) and ``_FORWARD`` (table filter: the forwards' ACCEPT
rules, then the isolation rules of isolate_rules()), and of the jumps to them
from the built-in chains, written exactly as ``iptables-save`` prints them (both the nft and the
legacy backend print the same text), so comparing the two States is comparing strings.
Nothing outside those chains and jumps is ever named in the restore text, so LXD's nftables
table, Docker's chains and the user's own rules are left as they are.
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import shlex
from collections import namedtuple

from ansible_collections.homelab.onebox.plugins.module_utils import _validate
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError

PROTOCOLS = ("tcp", "udp")
TABLES = ("nat", "filter")
DEFAULT_PREFIX = "ONEBOX"
DEFAULT_OWNER = "onebox"
JUMP_COMMENT = "homelab.onebox"
# How a jump names its owner: "homelab.onebox owner=NAME" (a jump of 0.1 says "homelab.onebox" only).
_OWNER_MARK = " owner="
# The files of the default owner (and of a run without owner): those of 0.1, so a box made then
# keeps its files and its boot unit.
_DEFAULT_FILES = dict(
    save_path="/etc/onebox/dnat.rules",
    restore_script="/usr/local/sbin/onebox-dnat-restore",
    sysctl_file="/etc/sysctl.d/60-onebox-ip-forward.conf",
    unit_name="onebox-dnat.service",
)
# (table, built-in chain, where the jump to <PREFIX>_<built-in chain> goes). FORWARD's jump goes
# first so the accept rules come before a DROP policy's or a user's REJECT.
HOOKS = (
    ("nat", "PREROUTING", "append"),
    ("nat", "OUTPUT", "append"),
    ("nat", "POSTROUTING", "append"),
    ("filter", "FORWARD", "first"),
)
FORWARD_KEYS = ("proto", "port", "target", "target_port", "host_address", "source", "comment", "allow_host_listener")
_PREFIX = re.compile(r"^[A-Z][A-Z0-9_]{0,15}$")
# iptables-save quotes a string unless it is made of these only (xtables_save_string).
_NO_QUOTE = re.compile(r"^[A-Za-z0-9_-]+$")
# A network interface name as isolate takes it: at most 15 characters (IFNAMSIZ - 1), none that
# the kernel refuses ('/', ':', whitespace) or that a rule, its comment or a shell would read
# specially (quotes, ';', '\\', '$', '!', '#'), and no '+' (iptables' wildcard).
_IFACE = re.compile(r"(?!\.\.?\Z)[A-Za-z0-9_.@][A-Za-z0-9_.@-]{0,14}")

# port and target_port are (low, high); address is target's IPv4 address once resolved (the
# target itself when it is an address, None for an instance name not yet looked up).
# allow_listener: the forward may cover a port the host itself listens on (allow_host_listener).
Forward = namedtuple("Forward", "proto port target address target_port host_address sources comment field allow_listener",
                     defaults=(False,))
State = namedtuple("State", "chains jumps")  # {(table, chain): [rule body, ...]}, same for jumps


def chain_names(prefix):
    """{(table, our chain): built-in chain it hangs off}."""
    return {(table, "%s_%s" % (prefix, builtin)): builtin for table, builtin, _where in HOOKS}


def check_prefix(value, field="chain_prefix"):
    if not isinstance(value, str) or not _PREFIX.match(value):
        raise ValidationError(field, value, "must be 1-16 upper-case letters, digits or '_', starting with a letter")
    return value


# ---- owners --------------------------------------------------------------------------------
def check_owner_name(value, field="owner"):
    """None (no owner: the behaviour of 0.1) or an owner as LXD names things (the box's owner)."""
    return None if value is None else _validate.instance_name(value, field)


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
    return JUMP_COMMENT if owner is None else "%s%s%s" % (JUMP_COMMENT, _OWNER_MARK, owner)


def owner_label(owner, prefix):
    """An owner as a message names it (chains of 0.1 recorded none)."""
    return owner if owner is not None else "unknown (chains %s_*)" % prefix


# ---- input ---------------------------------------------------------------------------------
def _public_ipv4(value, field):
    address = _validate.ipv4_address(value, field)
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


def normalise_one(item, field):
    """One forward as the user wrote it -> Forward (target not yet resolved). Raises ValidationError."""
    if not isinstance(item, dict):
        raise ValidationError(field, item, "must be a dict with at least port and target")
    unknown = sorted(set(item) - set(FORWARD_KEYS))
    if unknown:
        raise ValidationError(field, item, "unknown key(s) %s (known: %s)" % (", ".join(unknown), ", ".join(FORWARD_KEYS)))
    proto = item.get("proto") or "tcp"
    proto = _validate.one_of(proto.lower() if isinstance(proto, str) else proto, PROTOCOLS, field + ".proto")
    if item.get("port") is None:
        raise ValidationError(field + ".port", None, "is required")
    port = _validate.port_range(item["port"], field + ".port")
    target = item.get("target")
    if not isinstance(target, str) or not target:
        raise ValidationError(field + ".target", target, "is required: an LXD instance name or an IPv4 address")
    if _is_ipv4(target):
        address = _public_ipv4(target, field + ".target")
    else:
        _validate.instance_name(target, field + ".target")
        address = None
    if item.get("target_port") is None:
        target_port = port
    else:
        target_port = _validate.port_range(item["target_port"], field + ".target_port")
        if target_port[1] - target_port[0] != port[1] - port[0]:
            raise ValidationError(field + ".target_port", item["target_port"],
                                  "must span as many ports as port (%s)" % _ports(port, "-"))
    host_address = item.get("host_address")
    if host_address is not None:
        host_address = _public_ipv4(host_address, field + ".host_address")
    sources = item.get("source")
    if sources is None:
        sources = []
    elif isinstance(sources, str):
        sources = [sources]
    if not isinstance(sources, list):
        raise ValidationError(field + ".source", sources, "must be an IPv4 network or a list of them")
    sources = tuple(_validate.ipv4_network(s, "%s.source[%d]" % (field, i)) for i, s in enumerate(sources))
    comment = item.get("comment")
    if comment is not None:
        comment = _validate.comment(comment, field + ".comment")
    allow_listener = item.get("allow_host_listener")
    if allow_listener is None:
        allow_listener = False
    if not isinstance(allow_listener, bool):
        raise ValidationError(field + ".allow_host_listener", allow_listener, "must be true or false")
    return Forward(proto, port, target, address, target_port, host_address, sources, comment, field, allow_listener)


def normalise_isolate(items, field="isolate"):
    """The user's list of interfaces to isolate -> a sorted tuple without duplicates."""
    if items is None:
        items = []
    if isinstance(items, str):
        items = [items]
    if not isinstance(items, (list, tuple)):
        raise ValidationError(field, items, "must be a list of network interface names")
    for i, name in enumerate(items):
        if not isinstance(name, str) or not _IFACE.fullmatch(name):
            raise ValidationError(
                "%s[%d]" % (field, i), name,
                "must be a network interface name: 1-15 letters, digits, '_', '.', '@' or '-', not "
                "starting with '-' (no '/', whitespace, quotes, ';' or '+' wildcard)")
    return tuple(sorted(set(items)))


def _overlap(proto, port, host, other_proto, other_port, other_host):
    """Two forwards catch the same packets: the same protocol (None: any), port ranges that meet,
    and listen addresses that meet (None: any address of the host; else an address or network)."""
    if proto is not None and other_proto is not None and proto != other_proto:
        return False
    if port[0] > other_port[1] or other_port[0] > port[1]:
        return False
    if host is None or other_host is None:
        return True
    return ipaddress.IPv4Network(host, strict=False).overlaps(ipaddress.IPv4Network(other_host, strict=False))


def normalise(items, field="forwards"):
    """The user's list of forwards -> [Forward] in a stable order. Fails on the first bad one,
    and when two forwards claim the same protocol and host port (on the same listen address)."""
    if items is None:
        items = []
    if not isinstance(items, list):
        raise ValidationError(field, items, "must be a list of forwards")
    forwards = [normalise_one(item, "%s[%d]" % (field, i)) for i, item in enumerate(items)]
    for i, later in enumerate(forwards):
        for earlier in forwards[:i]:
            if _overlap(later.proto, later.port, later.host_address, earlier.proto, earlier.port, earlier.host_address):
                raise ValidationError(
                    later.field + ".port", items[i]["port"],
                    "%s port %s is already forwarded by %s (%s port %s)"
                    % (later.proto, _ports(later.port, "-"), earlier.field, earlier.proto, _ports(earlier.port, "-")))
    return sorted(forwards, key=lambda f: (f.proto, f.port, f.host_address or ""))


def static_ipv4(instance, name, field):
    """The static IPv4 address (``ipv4.address`` of a NIC device) of an instance record."""
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


def connected_networks(ip_addr_json):
    """The IPv4 networks the host is attached to, from ``ip -j -4 addr`` (parsed JSON)."""
    networks = set()
    for link in ip_addr_json or []:
        for info in link.get("addr_info") or []:
            if info.get("family") != "inet" or info.get("scope") == "host":
                continue
            net = ipaddress.IPv4Network("%s/%s" % (info["local"], info["prefixlen"]), strict=False)
            if net.prefixlen < 32:
                networks.add(net)
    return sorted(networks, key=lambda n: (-n.prefixlen, n))


def hairpin_network(address, networks):
    """The attached network a target sits in (its neighbours need masquerading), or None."""
    ip = ipaddress.IPv4Address(address)
    for net in networks:  # most specific first
        if ip in net:
            return str(net)
    return None


# ---- rules ---------------------------------------------------------------------------------
def quote(text):
    """A word as iptables-save writes it."""
    return text if _NO_QUOTE.match(text) else '"%s"' % text


def _ports(port, sep=":"):
    low, high = port
    return str(low) if low == high else "%d%s%d" % (low, sep, high)


def _to_destination(fwd):
    low, high = fwd.target_port
    if low == high:
        return "%s:%d" % (fwd.address, low)
    if low == fwd.port[0]:
        return "%s:%d-%d" % (fwd.address, low, high)  # same numbers: DNAT keeps each port
    return "%s:%d-%d/%d" % (fwd.address, low, high, fwd.port[0])  # shifted range


def _comment(fwd):
    return ["-m", "comment", "--comment", quote(fwd.comment)] if fwd.comment else []


def forward_rules(fwd, hairpin):
    """{our chain suffix: [rule body]} for one resolved Forward, in iptables-save's spelling."""
    proto = ["-p", fwd.proto]
    dnat = ["-m", fwd.proto, "--dport", _ports(fwd.port)] + _comment(fwd) + [
        "-j", "DNAT", "--to-destination", _to_destination(fwd)]
    pre, out = [], []
    for source in fwd.sources or (None,):
        src = ["-s", source] if source else []
        if fwd.host_address:
            dst = ["-d", fwd.host_address + "/32"] + proto
            pre.append(src + dst + dnat)
            out.append(src + dst + dnat)
        else:
            local = proto + ["-m", "addrtype", "--dst-type", "LOCAL"]
            pre.append(src + local + dnat)
            # Locally generated: not to loopback (DNAT from 127/8 to another host cannot route).
            out.append(src + ["!", "-d", "127.0.0.0/8"] + local + dnat)
    target = fwd.address + "/32"
    tport = _ports(fwd.target_port)
    dnated = ["-m", "conntrack", "--ctstate", "DNAT"]
    rules = {
        "PREROUTING": pre,
        "OUTPUT": out,
        "POSTROUTING": [],
        "FORWARD": [
            ["-d", target] + proto + ["-m", fwd.proto, "--dport", tport] + dnated + _comment(fwd) + ["-j", "ACCEPT"],
            ["-s", target] + proto + ["-m", fwd.proto, "--sport", tport] + dnated + _comment(fwd) + ["-j", "ACCEPT"],
        ],
    }
    if hairpin:
        # A neighbour of the target reaching the host's address: without masquerading, the target
        # would answer it directly (same network) and the neighbour would drop the reply.
        rules["POSTROUTING"].append(["-s", hairpin, "-d", target] + proto + ["-m", fwd.proto, "--dport", tport]
                                    + dnated + _comment(fwd) + ["-j", "MASQUERADE"])
    return {suffix: [" ".join(words) for words in bodies] for suffix, bodies in rules.items()}


def isolate_rules(iface):
    """Rules of <PREFIX>_FORWARD that keep the outside from routing into ``iface`` (a bridge):
    a packet entering it from another interface passes only when its connection was DNATed (a
    declared forward, or anyone's DNAT) or is established/related (replies to connections the
    containers opened). Traffic within the bridge (-i iface -o iface, bridge netfilter), out of it,
    and the host's own (INPUT/OUTPUT) is not matched.

    Two rules, not one ``! --ctstate RELATED,ESTABLISHED,DNAT``: nft's listing of a negated
    ``DNAT`` state drops the negation (it would read as "drop DNATed traffic"). The RETURN only
    leaves the collection's chain (the built-in FORWARD and its policy still decide), and these
    rules go after the forwards' ACCEPT rules, which it would otherwise skip.
    """
    into = ["!", "-i", iface, "-o", iface, "-m", "conntrack"]
    comment = ["-m", "comment", "--comment", quote("isolate " + iface)]
    return [" ".join(into + ["--ctstate", "DNAT"] + comment + ["-j", "RETURN"]),
            " ".join(into + ["!", "--ctstate", "RELATED,ESTABLISHED"] + comment + ["-j", "DROP"])]


def jump_body(prefix, builtin, owner=None):
    return "-m comment --comment %s -j %s_%s" % (quote(jump_comment(owner)), prefix, builtin)


def desired_state(forwards, prefix, networks=(), isolate=(), owner=None):
    """State for resolved forwards. ``networks``: the host's attached networks (hairpin);
    ``isolate``: interfaces (from normalise_isolate) the outside may enter only through a forward;
    ``owner``: named on the jumps (None: the plain comment of 0.1)."""
    chains = {(table, "%s_%s" % (prefix, builtin)): [] for table, builtin, _where in HOOKS}
    for fwd in forwards:
        if fwd.address is None:
            raise ValueError("forward %s: target %s not resolved" % (fwd.field, fwd.target))
        per_chain = forward_rules(fwd, hairpin_network(fwd.address, networks))
        for table, builtin, _where in HOOKS:
            chains[(table, "%s_%s" % (prefix, builtin))].extend(per_chain[builtin])
    for iface in isolate:  # last: a RETURN before the forwards' ACCEPT rules would skip them
        chains[("filter", "%s_FORWARD" % prefix)].extend(isolate_rules(iface))
    jumps = {(table, builtin): [jump_body(prefix, builtin, owner)] for table, builtin, _where in HOOKS}
    return State(chains, jumps)


def empty_state():
    return State({}, {})


# ---- reading iptables-save -----------------------------------------------------------------
def _jump_target(body):
    try:
        words = shlex.split(body)
    except ValueError:
        return None
    for i, word in enumerate(words[:-1]):
        if word in ("-j", "--jump", "-g", "--goto"):
            return words[i + 1]
    return None


def parse_save(text, prefix):
    """The collection's part of ``iptables-save`` output: its chains (when present) with their
    rules, and the rules of the built-in chains it hooks into that jump to them."""
    ours = chain_names(prefix)
    builtins = {(table, builtin) for table, builtin, _where in HOOKS}
    marker = prefix + "_"
    chains, jumps = {}, {}
    table = None
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif table not in TABLES:
            continue
        elif line.startswith(":"):
            name = line[1:].split(" ", 1)[0]
            if (table, name) in ours:
                chains.setdefault((table, name), [])
        elif line.startswith("-A "):
            parts = line[3:].split(" ", 1)
            chain, body = parts[0], parts[1] if len(parts) > 1 else ""
            if (table, chain) in ours:
                chains.setdefault((table, chain), []).append(body)
            elif (table, chain) in builtins and marker in body and (table, _jump_target(body)) in ours:
                jumps.setdefault((table, chain), []).append(body)
    return State(chains, jumps)


# ---- other owners ----------------------------------------------------------------------------
Claim = namedtuple("Claim", "owner prefix proto port host rule")  # one DNAT rule of another owner


def _rules(text):
    """(table, chain, body) of each rule of iptables-save text, in the tables the collection uses."""
    table = None
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif table in TABLES and line.startswith("-A "):
            parts = line[3:].split(" ", 1)
            yield table, parts[0], parts[1] if len(parts) > 1 else ""


def _option(words, *names):
    """(value, negated) of the first of ``names`` among a rule's words; (None, False) if none is."""
    for i, word in enumerate(words[:-1]):
        if word in names:
            return words[i + 1], i > 0 and words[i - 1] == "!"
    return None, False


def collection_owners(text):
    """{prefix: owner} of every set of the collection's chains on the host, read from the jumps
    of the built-in chains it hooks into (the only rules that say whose a chain is): a jump whose
    comment is ``homelab.onebox owner=NAME`` to ``<PREFIX>_<built-in>``, or ``homelab.onebox``
    alone (a jump of 0.1: owner None). A jump naming an owner wins over one naming none."""
    hooks = {(table, builtin) for table, builtin, _where in HOOKS}
    found = {}
    for table, chain, body in _rules(text):
        if (table, chain) not in hooks or JUMP_COMMENT not in body:
            continue
        try:
            words = shlex.split(body)
        except ValueError:
            continue
        comment = _option(words, "--comment")[0]
        target = _option(words, "-j", "--jump", "-g", "--goto")[0]
        suffix = "_" + chain
        if comment is None or target is None or not target.endswith(suffix) or target == suffix:
            continue
        if comment == JUMP_COMMENT:
            owner = None
        elif comment.startswith(JUMP_COMMENT + _OWNER_MARK):
            owner = comment[len(JUMP_COMMENT + _OWNER_MARK):]
        else:
            continue
        prefix = target[:-len(suffix)]
        if found.get(prefix) is None:
            found[prefix] = owner
    return found


def check_owner(owners, prefix, owner):
    """Refuses to touch chains whose jumps name another owner (``owners``: collection_owners()).
    Chains of 0.1, which name none, are anyone's with that prefix: that is how a box of 0.1 gets
    its owner written on its jumps."""
    theirs = owners.get(prefix)
    if theirs is None or theirs == owner:
        return
    raise ValidationError(
        "chain_prefix", prefix,
        "chain prefix %s belongs to owner %s (the comment on its jumps); give this box its own chain_prefix%s"
        % (prefix, theirs, " (or owner: %s, if this is that box)" % theirs if owner is None else ""))


def other_claims(text, owners, prefix):
    """[Claim] of the DNAT rules in the PREROUTING chain of every other owner's prefix (the
    forwards of other boxes, as the rules say: a rule without -p or --dport claims every protocol
    or port, one with ``! -d`` any address)."""
    claims = []
    wanted = {"%s_PREROUTING" % other: other for other in owners if other != prefix}
    for table, chain, body in _rules(text):
        if table != "nat" or chain not in wanted:
            continue
        try:
            words = shlex.split(body)
        except ValueError:
            words = body.split()
        if _option(words, "-j", "--jump")[0] != "DNAT":
            continue
        proto, not_proto = _option(words, "-p", "--protocol")
        proto = None if not_proto or proto not in PROTOCOLS else proto
        host, not_host = _option(words, "-d", "--destination")
        try:
            host = None if host is None or not_host else str(ipaddress.IPv4Network(host, strict=False))
        except ValueError:
            host = None
        dports, not_dports = _option(words, "--dport", "--destination-port", "--dports", "--destination-ports")
        ranges = [(1, 65535)]
        if dports is not None and not not_dports:
            try:
                ranges = [tuple(int(n) for n in (part.split(":") * 2)[:2]) for part in dports.split(",")]
            except ValueError:
                pass
        owner = wanted[chain]
        claims.extend(Claim(owners[owner], owner, proto, port, host, "-A %s %s" % (chain, body)) for port in ranges)
    return claims


def _port_value(port):
    return port[0] if port[0] == port[1] else "%d-%d" % port


def check_claims(forwards, claims):
    """Refuses the first forward of ours that would catch packets another owner's forward takes
    (the same proto, ports that meet, listen addresses that meet: as normalise() for two of ours)."""
    for fwd in forwards:
        for claim in claims:
            if _overlap(fwd.proto, fwd.port, fwd.host_address, claim.proto, claim.port, claim.host):
                hint = ""
                if claim.owner is None:
                    hint = ("; those chains were written before owners were recorded: if they are this "
                            "box's, chain_prefix: %s takes them over" % claim.prefix)
                raise ValidationError(
                    fwd.field + ".port", _port_value(fwd.port),
                    "%s port %s is already forwarded by owner %s (%s)%s"
                    % (fwd.proto, _ports(fwd.port, "-"), owner_label(claim.owner, claim.prefix), claim.rule, hint))


# ---- the host's own listeners -----------------------------------------------------------------
Listener = namedtuple("Listener", "proto address port inode")  # address: an ipaddress object
_LISTEN_STATE = {"tcp": "0A", "udp": "07"}  # TCP_LISTEN; TCP_CLOSE is an unconnected UDP socket


def _proc_address(hexaddr, byteorder):
    raw = bytes.fromhex(hexaddr)
    if byteorder == "little":  # the kernel prints each 32-bit word in the host's byte order
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(raw)
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_proc_net(text, proto, byteorder="little"):
    """[Listener] from the text of /proc/net/tcp, tcp6 (``proto`` tcp) or udp, udp6 (udp): TCP
    sockets in LISTEN, UDP sockets not connected to a peer (a server's; a connected one is a
    client's, which gets only its peer's packets). IPv4-mapped IPv6 addresses read as IPv4."""
    out = []
    for line in (text or "").splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _LISTEN_STATE[proto] or ":" not in fields[1]:
            continue
        hexaddr, hexport = fields[1].split(":", 1)
        try:
            out.append(Listener(proto, _proc_address(hexaddr, byteorder), int(hexport, 16), int(fields[9])))
        except ValueError:
            continue
    return out


def _caught(fwd, listener):
    """Would the forward take the traffic of this listener? The DNAT rules see IPv4 packets to any
    address of the host but loopback (PREROUTING never sees 127/8 from outside; the OUTPUT rule
    excludes it), or to host_address only."""
    if listener.proto != fwd.proto or not fwd.port[0] <= listener.port <= fwd.port[1]:
        return False
    address = listener.address
    if address.is_unspecified:  # 0.0.0.0, or :: (which takes IPv4 too unless IPV6_V6ONLY)
        return True
    if address.version == 6 or address.is_loopback:
        return False
    return fwd.host_address is None or str(address) == fwd.host_address


def listener_conflicts(forwards, listeners):
    """[(forward, listener)]: each forward (not allow_host_listener) over a port the host serves."""
    return [(fwd, listener) for fwd in forwards if not fwd.allow_listener
            for listener in sorted(listeners, key=lambda l: (l.port, l.address.version, int(l.address)))
            if _caught(fwd, listener)]


def listener_error(fwd, listener, process=None):
    """The refusal of a forward over a port the host serves (``process``: its name, if known)."""
    where = ("[%s]" if listener.address.version == 6 else "%s") % listener.address
    return ValidationError(
        fwd.field + ".port", _port_value(fwd.port),
        "the host itself listens on %s %s:%d%s, and this forward would take that port's traffic "
        "(a forward of the host's SSH port locks its owner out); choose another port, or set "
        "allow_host_listener: true on this forward if that is meant"
        % (listener.proto, where, listener.port, " (%s)" % process if process else ""))


# ---- writing ---------------------------------------------------------------------------------
def _table_part(state, table):
    return ({k: v for k, v in state.chains.items() if k[0] == table},
            {k: v for k, v in state.jumps.items() if k[0] == table and v})


def plan(current, desired):
    """iptables-restore --noflush text that turns ``current`` into ``desired``; "" when equal.

    Only the tables that differ are named. Each of our chains is declared (which creates it, or
    empties it when it exists) and refilled; a jump is added only when missing (so its position
    among the user's rules never changes) and a duplicate or stale one is deleted.
    """
    where = {(table, builtin): pos for table, builtin, pos in HOOKS}
    out = []
    for table in TABLES:
        if _table_part(current, table) == _table_part(desired, table):
            continue
        cur_chains, cur_jumps = _table_part(current, table)
        want_chains, want_jumps = _table_part(desired, table)
        gone = sorted(set(cur_chains) - set(want_chains))
        out.append("*%s" % table)
        out.extend(":%s - [0:0]" % chain for _t, chain in sorted(set(want_chains) | set(gone)))
        adds = []
        for key in sorted(set(cur_jumps) | set(want_jumps)):
            wanted = list(want_jumps.get(key, []))
            for body in cur_jumps.get(key, []):
                if body in wanted:
                    wanted.remove(body)
                else:
                    out.append("-D %s %s" % (key[1], body))
            for body in wanted:
                verb = "-I %s 1" if where.get(key) == "first" else "-A %s"
                adds.append("%s %s" % (verb % key[1], body))
        for (_t, chain), bodies in sorted(want_chains.items()):
            out.extend("-A %s %s" % (chain, body) for body in bodies)
        out.extend(adds)
        out.extend("-X %s" % chain for _t, chain in gone)
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


def render(state, with_jumps=True, with_header=True):
    """A State as iptables-save-like text (for diffs, and the file restored at boot)."""
    out = []
    for table in TABLES:
        chains, jumps = _table_part(state, table)
        if not chains and not (with_jumps and jumps):
            continue
        if with_header:
            out.append("*%s" % table)
            out.extend(":%s - [0:0]" % chain for _t, chain in sorted(chains))
        if with_jumps:
            for (_t, builtin), bodies in sorted(jumps.items()):
                out.extend("-A %s %s" % (builtin, body) for body in bodies)
        for (_t, chain), bodies in sorted(chains.items()):
            out.extend("-A %s %s" % (chain, body) for body in bodies)
        if with_header:
            out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


def _whose(owner):
    # On the first line of a saved file, so file_owner() can tell whose it is.
    return "" if owner is None else " of%s%s" % (_OWNER_MARK, owner)


def file_owner(text):
    """The owner the first lines of a file written by save_file() or restore_script() name;
    None when they name none (written without owner, by 0.1, or not by this module)."""
    for line in (text or "").splitlines()[:3]:
        match = re.match(r"^# homelab\.onebox\.dnat: .* of owner=(\S+) ", line)
        if match:
            return match.group(1)
    return None


def sysctl_text(owner=None):
    """The file that keeps IPv4 forwarding on across reboots (one per owner: see owner_defaults())."""
    return "# homelab.onebox.dnat: port forwards%s need IPv4 forwarding.\nnet.ipv4.ip_forward = 1\n" % _whose(owner)


def save_file(state, prefix, owner=None):
    """The file the restore command loads at boot: the chains only (the jumps are added by the
    command when missing, so running it twice does not duplicate them)."""
    return ("# homelab.onebox.dnat: port forwards%s (chains %s_*), loaded with iptables-restore --noflush\n"
            "# by the restore command at boot. Generated; changes are overwritten.\n" % (_whose(owner), prefix)
            + render(state, with_jumps=False))


def restore_script(save_path, iptables, iptables_restore, prefix, ip_forward=True, owner=None):
    """A POSIX sh script that loads ``save_path`` and adds the missing jumps: the boot-time restore."""
    q = shlex.quote
    lines = [
        "#!/bin/sh",
        "# homelab.onebox.dnat: restore the %s (chains %s_*) from"
        % ("port forwards" + _whose(owner) if owner is not None else "collection's port forwards", prefix),
        "# %s, e.g. at boot. Generated by the dnat module; changes are overwritten." % save_path,
        "# Safe to run again: it refills the collection's chains (nothing else) and adds a jump from",
        "# a built-in chain only when it is missing.",
        "set -eu",
        "rules=%s" % q(save_path),
        'if [ ! -r "$rules" ]; then',
        '    echo "$0: $rules not found, no forwards to restore" >&2',
        "    exit 0",
        "fi",
    ]
    if ip_forward:
        lines.append("echo 1 > /proc/sys/net/ipv4/ip_forward")
    lines += [
        '%s --wait=10 --noflush < "$rules"' % q(iptables_restore),
        "jump() {",
        '    table=$1 chain=$2 where=$3',
        "    shift 3",
        '    %s -w 10 -t "$table" -C "$chain" "$@" 2>/dev/null && return 0' % q(iptables),
        '    if [ "$where" = first ]; then',
        '        %s -w 10 -t "$table" -I "$chain" 1 "$@"' % q(iptables),
        "    else",
        '        %s -w 10 -t "$table" -A "$chain" "$@"' % q(iptables),
        "    fi",
        "}",
    ]
    for table, builtin, where in HOOKS:
        lines.append("jump %s %s %s -m comment --comment %s -j %s_%s"
                     % (table, builtin, where, q(jump_comment(owner)), prefix, builtin))
    return "\n".join(lines) + "\n"


def summary(forwards):
    """What the module returns about each forward."""
    return [dict(proto=f.proto, port=_ports(f.port, "-"), target=f.target, address=f.address,
                 target_port=_ports(f.target_port, "-"), host_address=f.host_address,
                 source=list(f.sources), comment=f.comment, allow_host_listener=f.allow_listener)
            for f in forwards]
