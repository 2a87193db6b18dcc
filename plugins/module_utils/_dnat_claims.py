# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What others hold on the host (other owners' chains and ports, its own listeners) and the refusals that keep forwards off them. Pure.

iptables-save text --collection_owners()--> {prefix: owner} --check_owner()--> refused or not
iptables-save text --other_claims()--> [Claim] --check_claims(forwards)--> refused or not
/proc/net/{tcp,udp}[6] --parse_proc_net()--> [Listener] --listener_conflicts(forwards)--> [(Forward, Listener)]
"""
from __future__ import annotations

import ipaddress
import shlex
from collections import namedtuple

from ansible_collections.homelab.onebox.plugins.module_utils import _dnat
from ansible_collections.homelab.onebox.plugins.module_utils import _dnat_rules
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError

Claim = namedtuple("Claim", "owner prefix proto port host rule")  # one DNAT rule of another owner
Listener = namedtuple("Listener", "proto address port inode")  # address: an ipaddress object
_LISTEN_STATE = {"tcp": "0A", "udp": "07"}  # TCP_LISTEN; TCP_CLOSE is an unconnected UDP socket
_OWNER_COMMENT = _dnat.JUMP_COMMENT + _dnat.OWNER_MARK


# ---- other owners ----------------------------------------------------------------------------
def _words(body):
    try:
        return shlex.split(body)
    except ValueError:
        return None


def collection_owners(text):
    """{prefix: owner} of every set of the collection's chains on the host, read from the jumps
    of the built-in chains it hooks into (the only rules that say whose a chain is): a jump whose
    comment is ``homelab.onebox owner=NAME`` to ``<PREFIX>_<built-in>``, or ``homelab.onebox``
    alone (a jump of 0.1: owner None). A jump naming an owner wins over one naming none."""
    hooks = {(table, builtin) for table, builtin, _where in _dnat_rules.HOOKS}
    found = {}
    for table, chain, body in _dnat_rules.saved_rules(text):
        if (table, chain) not in hooks or _dnat.JUMP_COMMENT not in body:
            continue
        words = _words(body)
        if words is None:
            continue
        comment = _dnat_rules.option(words, "--comment")[0]
        target = _dnat_rules.option(words, "-j", "--jump", "-g", "--goto")[0]
        suffix = "_" + chain
        if comment is None or target is None or not target.endswith(suffix) or target == suffix:
            continue
        if comment == _dnat.JUMP_COMMENT:
            owner = None
        elif comment.startswith(_OWNER_COMMENT):
            owner = comment[len(_OWNER_COMMENT):]
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
    for chain, body, words in _dnat_rules.dnat_rules(text, wanted):
        words = words or body.split()
        proto, not_proto = _dnat_rules.option(words, "-p", "--protocol")
        proto = None if not_proto or proto not in _dnat.PROTOCOLS else proto
        host, not_host = _dnat_rules.option(words, "-d", "--destination")
        try:
            host = None if host is None or not_host else str(ipaddress.IPv4Network(host, strict=False))
        except ValueError:
            host = None
        dports, not_dports = _dnat_rules.option(words, "--dport", "--destination-port", "--dports", "--destination-ports")
        ranges = [(1, 65535)]
        if dports is not None and not not_dports:
            try:
                ranges = [tuple(int(n) for n in (part.split(":") * 2)[:2]) for part in dports.split(",")]
            except ValueError:
                pass
        owner = wanted[chain]
        claims.extend(Claim(owners[owner], owner, proto, port, host, "-A %s %s" % (chain, body)) for port in ranges)
    return claims


def check_claims(forwards, claims):
    """Refuses the first forward of ours that would catch packets another owner's forward takes
    (the same proto, ports that meet, listen addresses that meet: as parse_forwards() for two of ours)."""
    for fwd in forwards:
        for claim in claims:
            if _dnat.overlap(fwd.proto, fwd.port, fwd.host_address, claim.proto, claim.port, claim.host):
                hint = ""
                if claim.owner is None:
                    hint = ("; those chains were written before owners were recorded: if they are this "
                            "box's, chain_prefix: %s takes them over" % claim.prefix)
                raise ValidationError(
                    fwd.field + ".port", _dnat.port_value(fwd.port),
                    "%s port %s is already forwarded by owner %s (%s)%s"
                    % (fwd.proto, _dnat.ports(fwd.port, "-"), _dnat.owner_label(claim.owner, claim.prefix),
                       claim.rule, hint))


# ---- the host's own listeners -----------------------------------------------------------------
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
        fwd.field + ".port", _dnat.port_value(fwd.port),
        "the host itself listens on %s %s:%d%s, and this forward would take that port's traffic "
        "(a forward of the host's SSH port locks its owner out); choose another port, or set "
        "allow_host_listener: true on this forward if that is meant"
        % (listener.proto, where, listener.port, " (%s)" % process if process else ""))
