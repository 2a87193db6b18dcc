# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The iptables rules of an owner's forwards: rendered, read back from iptables-save, planned, saved. Pure.

resolved [Forward] --desired_rules()--> RuleSet
iptables-save text --parse_save()--> RuleSet
plan(current, desired) --> iptables-restore --noflush text (empty when nothing differs)
save_file(), restore_script(), sysctl_text(): the files that bring the rules back at boot

A RuleSet holds the bodies of the rules in the collection's chains ``<PREFIX>_PREROUTING``,
``_OUTPUT``, ``_POSTROUTING`` (table nat) and ``_FORWARD`` (table filter: the forwards' ACCEPT
rules, then the isolation rules of isolate_rules()), and of the jumps to them from the built-in
chains, written exactly as ``iptables-save`` prints them (both the nft and the legacy backend print
the same text), so comparing two RuleSets is comparing strings. Nothing outside those chains and
jumps is ever named in the restore text, so LXD's nftables table, Docker's chains and the user's
own rules are left as they are.
"""
from __future__ import annotations

import ipaddress
import re
import shlex
from collections import namedtuple

from ansible_collections.homelab.onebox.plugins.module_utils import _dnat

TABLES = ("nat", "filter")
# (table, built-in chain, where the jump to <PREFIX>_<built-in chain> goes). FORWARD's jump goes
# first so the accept rules come before a DROP policy's or a user's REJECT.
HOOKS = (
    ("nat", "PREROUTING", "append"),
    ("nat", "OUTPUT", "append"),
    ("nat", "POSTROUTING", "append"),
    ("filter", "FORWARD", "first"),
)
# iptables-save quotes a string unless it is made of these only (xtables_save_string).
_NO_QUOTE = re.compile(r"^[A-Za-z0-9_-]+$")

RuleSet = namedtuple("RuleSet", "chains jumps")  # {(table, chain): [rule body, ...]}, same for jumps


def chain_names(prefix):
    """{(table, our chain): built-in chain it hangs off}."""
    return {(table, "%s_%s" % (prefix, builtin)): builtin for table, builtin, _where in HOOKS}


def quote(text):
    """A word as iptables-save writes it."""
    return text if _NO_QUOTE.match(text) else '"%s"' % text


# ---- rendering -----------------------------------------------------------------------------
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
    dnat = ["-m", fwd.proto, "--dport", _dnat.ports(fwd.port)] + _comment(fwd) + [
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
    tport = _dnat.ports(fwd.target_port)
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
    return "-m comment --comment %s -j %s_%s" % (quote(_dnat.jump_comment(owner)), prefix, builtin)


def desired_rules(forwards, prefix, networks=(), isolate=(), owner=None):
    """RuleSet for resolved forwards. ``networks``: the host's attached networks (hairpin);
    ``isolate``: interfaces (from parse_isolate) the outside may enter only through a forward;
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
    return RuleSet(chains, jumps)


def empty_rules():
    return RuleSet({}, {})


# ---- reading iptables-save -----------------------------------------------------------------
def saved_rules(text):
    """(table, chain, body) of each rule of iptables-save text, in the tables the collection uses."""
    table = None
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif table in TABLES and line.startswith("-A "):
            parts = line[3:].split(" ", 1)
            yield table, parts[0], parts[1] if len(parts) > 1 else ""


def dnat_rules(text, chains):
    """(chain, body, words) of each DNAT rule of the nat table's ``chains`` in iptables-save text:
    the forwards as the host holds them (of an owner, or of the others). ``words`` is None for a
    rule shlex cannot split (its jump read from its plain words)."""
    for table, chain, body in saved_rules(text):
        if table != "nat" or chain not in chains:
            continue
        try:
            words = shlex.split(body)
        except ValueError:
            words = None
        if option(words or body.split(), "-j", "--jump")[0] == "DNAT":
            yield chain, body, words


def option(words, *names):
    """(value, negated) of the first of ``names`` among a rule's words; (None, False) if none is."""
    for i, word in enumerate(words[:-1]):
        if word in names:
            return words[i + 1], i > 0 and words[i - 1] == "!"
    return None, False


def jump_target(body):
    """The chain or target a rule jumps to (``-j``, ``-g``), or None."""
    try:
        words = shlex.split(body)
    except ValueError:
        return None
    return option(words, "-j", "--jump", "-g", "--goto")[0]


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
        elif table in TABLES and line.startswith(":"):
            name = line[1:].split(" ", 1)[0]
            if (table, name) in ours:
                chains.setdefault((table, name), [])
    for table, chain, body in saved_rules(text):
        if (table, chain) in ours:
            chains.setdefault((table, chain), []).append(body)
        elif (table, chain) in builtins and marker in body and (table, jump_target(body)) in ours:
            jumps.setdefault((table, chain), []).append(body)
    return RuleSet(chains, jumps)


# ---- the plan and its text ------------------------------------------------------------------
def _table_part(rules, table):
    return ({k: v for k, v in rules.chains.items() if k[0] == table},
            {k: v for k, v in rules.jumps.items() if k[0] == table and v})


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


def render(rules, with_jumps=True, with_header=True):
    """A RuleSet as iptables-save-like text (for diffs, and the file restored at boot)."""
    out = []
    for table in TABLES:
        chains, jumps = _table_part(rules, table)
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


# ---- the files that restore them at boot ----------------------------------------------------
def _whose(owner):
    # On the first line of a saved file, so file_owner() can tell whose it is.
    return "" if owner is None else " of%s%s" % (_dnat.OWNER_MARK, owner)


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


def save_file(rules, prefix, owner=None):
    """The file the restore command loads at boot: the chains only (the jumps are added by the
    command when missing, so running it twice does not duplicate them)."""
    return ("# homelab.onebox.dnat: port forwards%s (chains %s_*), loaded with iptables-restore --noflush\n"
            "# by the restore command at boot. Generated; changes are overwritten.\n" % (_whose(owner), prefix)
            + render(rules, with_jumps=False))


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
                     % (table, builtin, where, q(_dnat.jump_comment(owner)), prefix, builtin))
    return "\n".join(lines) + "\n"
