# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host port forwards as iptables rules in chains the collection owns. Pure logic, no I/O.

forward specs --normalise()--> Forward --(targets resolved)--> desired_state() --> State
iptables-save text --parse_save()--> State
plan(current, desired) --> iptables-restore --noflush text (empty when nothing differs)

A State holds the bodies of the rules in the collection's chains ``<PREFIX>_PREROUTING``,
``_OUTPUT``, ``_POSTROUTING`` (table nat) and ``_FORWARD`` (table filter: the forwards' ACCEPT
rules, then the isolation rules of isolate_rules()), and of the jumps to them
from the built-in chains, written exactly as ``iptables-save`` prints them (both the nft and the
legacy backend print the same text), so comparing the two States is comparing strings.
Nothing outside those chains and jumps is ever named in the restore text, so LXD's nftables
table, Docker's chains and the user's own rules are left as they are.
"""
from __future__ import annotations

import ipaddress
import re
import shlex
from collections import namedtuple

from ansible_collections.homelab.onebox.plugins.module_utils import _validate
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError

PROTOCOLS = ("tcp", "udp")
TABLES = ("nat", "filter")
DEFAULT_PREFIX = "ONEBOX"
JUMP_COMMENT = "homelab.onebox"
# (table, built-in chain, where the jump to <PREFIX>_<built-in chain> goes). FORWARD's jump goes
# first so the accept rules come before a DROP policy's or a user's REJECT.
HOOKS = (
    ("nat", "PREROUTING", "append"),
    ("nat", "OUTPUT", "append"),
    ("nat", "POSTROUTING", "append"),
    ("filter", "FORWARD", "first"),
)
FORWARD_KEYS = ("proto", "port", "target", "target_port", "host_address", "source", "comment")
_PREFIX = re.compile(r"^[A-Z][A-Z0-9_]{0,15}$")
# iptables-save quotes a string unless it is made of these only (xtables_save_string).
_NO_QUOTE = re.compile(r"^[A-Za-z0-9_-]+$")
# A network interface name as isolate takes it: at most 15 characters (IFNAMSIZ - 1), none that
# the kernel refuses ('/', ':', whitespace) or that a rule, its comment or a shell would read
# specially (quotes, ';', '\\', '$', '!', '#'), and no '+' (iptables' wildcard).
_IFACE = re.compile(r"(?!\.\.?\Z)[A-Za-z0-9_.@][A-Za-z0-9_.@-]{0,14}")

# port and target_port are (low, high); address is target's IPv4 address once resolved (the
# target itself when it is an address, None for an instance name not yet looked up).
Forward = namedtuple("Forward", "proto port target address target_port host_address sources comment field")
State = namedtuple("State", "chains jumps")  # {(table, chain): [rule body, ...]}, same for jumps


def chain_names(prefix):
    """{(table, our chain): built-in chain it hangs off}."""
    return {(table, "%s_%s" % (prefix, builtin)): builtin for table, builtin, _where in HOOKS}


def check_prefix(value, field="chain_prefix"):
    if not isinstance(value, str) or not _PREFIX.match(value):
        raise ValidationError(field, value, "must be 1-16 upper-case letters, digits or '_', starting with a letter")
    return value


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
    return Forward(proto, port, target, address, target_port, host_address, sources, comment, field)


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
            if (later.proto == earlier.proto and later.port[0] <= earlier.port[1]
                    and earlier.port[0] <= later.port[1]
                    and (later.host_address is None or earlier.host_address is None
                         or later.host_address == earlier.host_address)):
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


def jump_body(prefix, builtin):
    return "-m comment --comment %s -j %s_%s" % (quote(JUMP_COMMENT), prefix, builtin)


def desired_state(forwards, prefix, networks=(), isolate=()):
    """State for resolved forwards. ``networks``: the host's attached networks (hairpin);
    ``isolate``: interfaces (from normalise_isolate) the outside may enter only through a forward."""
    chains = {(table, "%s_%s" % (prefix, builtin)): [] for table, builtin, _where in HOOKS}
    for fwd in forwards:
        if fwd.address is None:
            raise ValueError("forward %s: target %s not resolved" % (fwd.field, fwd.target))
        per_chain = forward_rules(fwd, hairpin_network(fwd.address, networks))
        for table, builtin, _where in HOOKS:
            chains[(table, "%s_%s" % (prefix, builtin))].extend(per_chain[builtin])
    for iface in isolate:  # last: a RETURN before the forwards' ACCEPT rules would skip them
        chains[("filter", "%s_FORWARD" % prefix)].extend(isolate_rules(iface))
    jumps = {(table, builtin): [jump_body(prefix, builtin)] for table, builtin, _where in HOOKS}
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


def save_file(state, prefix):
    """The file the restore command loads at boot: the chains only (the jumps are added by the
    command when missing, so running it twice does not duplicate them)."""
    return ("# homelab.onebox.dnat: port forwards (chains %s_*), loaded with iptables-restore --noflush\n"
            "# by the restore command at boot. Generated; changes are overwritten.\n" % prefix
            + render(state, with_jumps=False))


def restore_script(save_path, iptables, iptables_restore, prefix, ip_forward=True):
    """A POSIX sh script that loads ``save_path`` and adds the missing jumps: the boot-time restore."""
    q = shlex.quote
    lines = [
        "#!/bin/sh",
        "# homelab.onebox.dnat: restore the collection's port forwards (chains %s_*) from" % prefix,
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
                     % (table, builtin, where, q(JUMP_COMMENT), prefix, builtin))
    return "\n".join(lines) + "\n"


def summary(forwards):
    """What the module returns about each forward."""
    return [dict(proto=f.proto, port=_ports(f.port, "-"), target=f.target, address=f.address,
                 target_port=_ports(f.target_port, "-"), host_address=f.host_address,
                 source=list(f.sources), comment=f.comment) for f in forwards]
