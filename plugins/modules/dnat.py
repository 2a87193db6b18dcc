#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: dnat
short_description: Forward the host's ports to containers (the whole set, atomically)
version_added: 0.1.0
description:
  - Declares the B(whole set) of port forwards the collection owns on this host. Each forward
    sends TCP or UDP traffic addressed to the host itself (or to one of its addresses) on a port or
    a port range to an LXD instance's static address or to an IPv4 address.
  - The rules live in chains of their own, C(<chain_prefix>_PREROUTING), C(_OUTPUT) and
    C(_POSTROUTING) in table C(nat) and C(_FORWARD) in table C(filter), each jumped to once from
    the built-in chain of the same name. Rules the module does not own (LXD's nftables table,
    Docker's chains, the user's rules) are never flushed, reordered or edited.
  - A forward matches only traffic addressed to the host (C(-m addrtype --dst-type LOCAL), or
    O(forwards[].host_address)), so container-to-container traffic on the same port number is
    untouched. It also works from the host itself (C(OUTPUT) chain, except to C(127.0.0.0/8)) and
    from the target's neighbours reaching the host's address (hairpin, masqueraded).
  - Forwarded traffic is accepted in C(FORWARD) (the jump goes first in that chain), so forwards
    work when its policy is C(DROP), as on a host with Docker.
  - With O(isolate), the same chain, after those C(ACCEPT) rules, keeps the outside from routing
    to a container's private address, as in a cloud. A packet going into an isolated interface
    (the LXD bridge) from any other interface passes only when its connection was DNATed (a
    declared forward) or is established or related (replies to connections the containers opened);
    anything else is dropped. Traffic between the containers on the bridge, out of the bridge, and
    to or from the host itself is not touched.
  - The desired chains are compared with C(iptables-save) output and, only when they differ,
    loaded with one C(iptables-restore --noflush); if that fails the previous rules are put back.
    Uses the backend (nft or legacy) that C(iptables) on the host uses.
  - Turns IPv4 forwarding on, now and across reboots (O(sysctl_file)).
  - Saves the chains to O(save_path) and writes O(restore_script), which loads them again at boot;
    the P(homelab.onebox.box#role) role (which P(homelab.onebox.port_forward#role) runs with its
    one part) installs a systemd unit that runs it.
  - Several boxes can share a host, each with its own O(owner). An owner's forwards live in chains
    and files of its own (derived from the owner unless given), and the jumps to its chains carry
    the comment C(homelab.onebox owner=NAME), which says whose they are.
  - Refused before anything changes (in check mode too) - chains of the prefix whose jumps name
    another owner; a file to write or delete whose first line names another owner; a forward
    whose protocol, port and listen address meet a forward of another owner (the C(DNAT) rules
    of its C(<prefix>_PREROUTING) chain); a forward over a port the host itself listens on (TCP
    C(LISTEN) or unconnected UDP sockets of C(/proc/net/tcp), C(tcp6), C(udp), C(udp6)) on an
    address the forward catches, unless it says O(forwards[].allow_host_listener=true). The
    message names the field, the value and the other owner or what listens. V(state=absent)
    checks only the owner of the chains and files.
extends_documentation_fragment:
  - homelab.onebox.lxd
  - homelab.onebox.module
  - ansible.builtin.action_common_attributes
attributes:
  diff_mode:
    details: The collection's rules before and after, and the saved files that change.
  platform:
    details: Linux with iptables (nft or legacy backend). LXD is needed only when a target is an instance name.
options:
  forwards:
    description:
      - The whole set of forwards. Forwards not listed are removed.
      - No two forwards may share a protocol and a host port (or overlapping ranges) on the same
        listen address.
    type: list
    elements: dict
    default: []
    suboptions:
      proto:
        description: Protocol.
        type: str
        choices: [tcp, udp]
        default: tcp
      port:
        description: Host port (V(80)) or inclusive range (V(7000-7010)).
        type: raw
        required: true
      target:
        description:
          - An LXD instance name, resolved to the static address of its NIC (C(ipv4.address) of
            the C(eth0) device, or of its only NIC with one), or an IPv4 address.
          - An instance without a static address is an error (a DHCP address changes on restart).
        type: str
        required: true
      target_port:
        description:
          - Port or range on the target. Defaults to O(forwards[].port).
          - A range must span as many ports as O(forwards[].port); port N goes to the port at the
            same offset.
        type: raw
      host_address:
        description: Listen only on this host address. Default is every address of the host.
        type: str
      source:
        description: Forward only traffic from these IPv4 networks or addresses.
        type: list
        elements: str
      comment:
        description: Written on each rule (C(-m comment)). No quotes, backslashes or newlines; at most 255 characters.
        type: str
      allow_host_listener:
        description:
          - Forward this port even though the host itself listens on it. Without it, a forward
            whose protocol and port range cover a socket the host listens on, on an address the
            forward catches, is refused, because the forward would take that port's traffic from
            the host's service (a forward of port 22 locks the owner out of SSH).
          - An address the forward catches - C(0.0.0.0) or C(::) always; without
            O(forwards[].host_address) any address but loopback; with it, that address. Sockets on
            loopback only (C(127.0.0.0/8), C(::1)) never meet a forward and are not in the way;
            nor are sockets on other IPv6 addresses (the forwards are IPv4).
          - LXD's C(dnsmasq) listens on the bridge's address (UDP and TCP 53, UDP 67), so a
            forward of port 53 is refused.
        type: bool
        default: false
  isolate:
    description:
      - Network interfaces (usually the LXD bridge, V(lxdbr0)) that traffic from the outside may
        enter B(only) through a forward. For each one, two rules at the end of
        C(<chain_prefix>_FORWARD), written as C(iptables-save) prints them
        (C(! -i IFACE -o IFACE -m conntrack --ctstate DNAT ... -j RETURN), then
        C(! -i IFACE -o IFACE -m conntrack ! --ctstate RELATED,ESTABLISHED ... -j DROP)), so a
        packet routed into IFACE from another interface is dropped unless its connection was
        DNATed or is an established or related one (replies to what the containers opened).
      - The verdict is C(DROP), not C(REJECT). As on a cloud's private network, an address that is
        not forwarded does not answer at all (no reset or ICMP error telling a scanner it exists,
        nothing sent back to a forged source), and a client sees a time-out.
      - Container-to-container traffic on the bridge (C(-i IFACE -o IFACE), seen through bridge
        netfilter), traffic leaving IFACE, and the host's own traffic (C(INPUT), C(OUTPUT)) are
        not matched. The rules only drop; what they let pass still meets the rest of C(FORWARD).
      - Names are 1-15 characters, letters, digits, C(_), C(.), C(@) or C(-), not starting with
        C(-); no wildcard. The interface need not exist yet (the rules are loaded at boot, maybe
        before LXD creates its bridge). The order of the list does not matter.
      - Ignored with V(state=absent), which removes the rules with the chain.
    type: list
    elements: str
    default: []
  state:
    description:
      - V(absent) removes every forward of the owner, its chains and jumps, and its saved files.
        Another owner's chains and files are never touched.
    type: str
    choices: [present, absent]
    default: present
  owner:
    description:
      - Whose forwards these are - the box's owner (as O(homelab.onebox.box#module:owner)). An LXD
        style name - 1-63 letters, digits or hyphens, starting with a letter.
      - Written on the jumps to the owner's chains (C(homelab.onebox owner=NAME)) and on the first
        line of its files. A run refuses chains and files that name another owner. Chains
        written without owner (by version 0.1, or by a run without O(owner)) are taken over by the
        first run of an owner with that prefix.
      - Gives the defaults of O(chain_prefix), O(save_path), O(restore_script) and O(sysctl_file).
        The default owner V(onebox) has the names of version 0.1 - chains C(ONEBOX_*),
        C(/etc/onebox/dnat.rules), C(/usr/local/sbin/onebox-dnat-restore),
        C(/etc/sysctl.d/60-onebox-ip-forward.conf), and the unit name C(onebox-dnat.service). Any
        other owner NAME has C(/etc/onebox/dnat-NAME.rules), C(/usr/local/sbin/onebox-dnat-restore-NAME),
        C(/etc/sysctl.d/60-onebox-ip-forward-NAME.conf) and C(onebox-dnat-NAME.service), so a
        teardown of one box never deletes a file of another.
      - Without it, the module behaves as version 0.1 - the defaults of V(onebox), a plain
        C(homelab.onebox) comment - but it still refuses chains and files of a named owner.
    type: str
  chain_prefix:
    description:
      - Names the chains the module owns (C(<prefix>_PREROUTING)...). Upper case, at most 16 characters.
      - Default - derived from O(owner). The owner upper-cased with C(-) as C(_) when that fits (V(web-2)
        gives C(WEB_2), V(onebox) and no owner give C(ONEBOX)); for an owner longer than 16
        characters or with upper-case letters, its first 10 characters so written, C(_) and 5
        base32 characters of its SHA-256 (V(my-very-long-box-name) gives C(MY_VERY_LO_44RGX), V(MyBox)
        C(MYBOX_A5EZ3)).
      - A given value wins, as long as its chains are not another owner's.
    type: str
  backend:
    description: Which iptables to use. V(auto) uses the backend of C(iptables) on the host (C(iptables -V)).
    type: str
    choices: [auto, nft, legacy]
    default: auto
  ip_forward:
    description:
      - Turn on C(net.ipv4.ip_forward) now and in O(sysctl_file).
      - V(state=absent) removes O(sysctl_file) but leaves the running value as it is.
    type: bool
    default: true
  sysctl_file:
    description:
      - File that keeps IPv4 forwarding on across reboots. Default - the owner's (see O(owner)).
        An empty value keeps none.
    type: path
  save_path:
    description:
      - Where the chains are saved for O(restore_script). Default - the owner's (see O(owner)). An
        empty value saves nothing (and writes no script).
    type: path
  restore_script:
    description:
      - A shell script that loads O(save_path) with C(iptables-restore --noflush) and adds the
        missing jumps; run it at boot (the P(homelab.onebox.port_forward#role) role's systemd unit
        does) or by hand on a host without systemd. Safe to run more than once.
      - Default - the owner's (see O(owner)). An empty value writes none.
    type: path
notes:
  - IPv4 only.
  - A UDP flow that was already tracked before a change keeps its old destination until its
    conntrack entry expires (C(conntrack -D -p udp --dport PORT) ends it at once).
seealso:
  - name: iptables-extensions(8)
    description: DNAT, addrtype, conntrack and comment matches.
    link: https://manpages.debian.org/bookworm/iptables/iptables-extensions.8.en.html
"""

EXAMPLES = r"""
- name: The box's forwards (the whole set)
  homelab.onebox.dnat:
    owner: mybox              # chains MYBOX_*, /etc/onebox/dnat-mybox.rules, ...
    forwards:
      - {port: 80, target: proxy, comment: http}
      - {port: 443, target: proxy, comment: https}
      - {port: 8000, target: lb, target_port: 80}
      - {proto: udp, port: 51820, target: vpn}
      - {port: 27015-27030, target: game, source: [203.0.113.0/24]}
      - {port: 2222, target: 10.87.0.50, target_port: 22, host_address: 192.0.2.2}
      # the host's own SSH stays on 22; this port is the host's too, and meant
      - {port: 8022, target: 10.87.0.50, target_port: 22, allow_host_listener: true}
    # from outside, containers are reached only through the forwards above
    isolate: [lxdbr0]

- name: Remove every forward of that box (another owner's stay)
  homelab.onebox.dnat:
    owner: mybox
    state: absent
"""

RETURN = r"""
backend:
  description: The iptables backend used.
  returned: always
  type: str
  sample: nft
owner:
  description: The owner of the forwards (null without O(owner)).
  returned: always
  type: str
  sample: mybox
chain_prefix:
  description: The prefix of the chains used (given, or derived from the owner).
  returned: always
  type: str
  sample: MYBOX
save_path:
  description: The saved rules' file (given, or the owner's); null when none is kept.
  returned: always
  type: str
  sample: /etc/onebox/dnat-mybox.rules
restore_script:
  description: The boot-time restore script (given, or the owner's); null when none is written.
  returned: always
  type: str
  sample: /usr/local/sbin/onebox-dnat-restore-mybox
sysctl_file:
  description: The file keeping IPv4 forwarding on (given, or the owner's); null when none is kept.
  returned: always
  type: str
  sample: /etc/sysctl.d/60-onebox-ip-forward-mybox.conf
unit_name:
  description:
    - The name of the owner's systemd unit that runs O(restore_script) at boot (the module does
      not write it; the P(homelab.onebox.port_forward#role) role does, from this result).
  returned: always
  type: str
  sample: onebox-dnat-mybox.service
forwards:
  description: The forwards as applied, targets resolved to addresses, in the order the rules are written.
  returned: always
  type: list
  elements: dict
  sample:
    - {proto: tcp, port: "80", target: proxy, address: 10.87.0.10, target_port: "80",
       host_address: null, source: [], comment: http, allow_host_listener: false}
isolate:
  description: The isolated interfaces, sorted, without duplicates (empty with V(state=absent)).
  returned: always
  type: list
  elements: str
  sample: [lxdbr0]
rules:
  description: The collection's rules after the run, as C(iptables-save) prints them.
  returned: always
  type: str
  sample: |
    *nat
    :ONEBOX_OUTPUT - [0:0]
    -A PREROUTING -m comment --comment "homelab.onebox owner=onebox" -j ONEBOX_PREROUTING
    -A ONEBOX_PREROUTING -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 80 -m comment --comment http -j DNAT --to-destination 10.87.0.10:80
    COMMIT
    *filter
    :ONEBOX_FORWARD - [0:0]
    -A FORWARD -m comment --comment "homelab.onebox owner=onebox" -j ONEBOX_FORWARD
    -A ONEBOX_FORWARD -d 10.87.0.10/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT -m comment --comment http -j ACCEPT
    -A ONEBOX_FORWARD ! -i lxdbr0 -o lxdbr0 -m conntrack --ctstate DNAT -m comment --comment "isolate lxdbr0" -j RETURN
    -A ONEBOX_FORWARD ! -i lxdbr0 -o lxdbr0 -m conntrack ! --ctstate RELATED,ESTABLISHED -m comment --comment "isolate lxdbr0" -j DROP
    COMMIT
"""

from ansible_collections.homelab.onebox.plugins.module_utils._dnat_host import ARGUMENT_SPEC, DnatManager
from ansible_collections.homelab.onebox.plugins.module_utils._module import OneboxModule


def main():
    module = OneboxModule(ARGUMENT_SPEC, lxd=True, supports_check_mode=True)
    module.run(DnatManager)


if __name__ == "__main__":
    main()
