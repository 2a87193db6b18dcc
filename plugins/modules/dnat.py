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
    the P(homelab.onebox.port_forward#role) role installs a systemd unit that runs it.
author:
  - homelab.onebox developers (@homelab)
extends_documentation_fragment:
  - homelab.onebox.lxd
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: The collection's rules before and after, and the saved files that change.
  platform:
    platforms: posix
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
    description: V(absent) removes every forward, the collection's chains and jumps, and the saved files.
    type: str
    choices: [present, absent]
    default: present
  chain_prefix:
    description: Names the chains the module owns (C(<prefix>_PREROUTING)...). Upper case, at most 16 characters.
    type: str
    default: ONEBOX
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
    description: File that keeps IPv4 forwarding on across reboots.
    type: path
    default: /etc/sysctl.d/60-onebox-ip-forward.conf
  save_path:
    description:
      - Where the chains are saved for O(restore_script). An empty value saves nothing (and writes no script).
    type: path
    default: /etc/onebox/dnat.rules
  restore_script:
    description:
      - A shell script that loads O(save_path) with C(iptables-restore --noflush) and adds the
        missing jumps; run it at boot (the P(homelab.onebox.port_forward#role) role's systemd unit
        does) or by hand on a host without systemd. Safe to run more than once.
    type: path
    default: /usr/local/sbin/onebox-dnat-restore
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
    forwards:
      - {port: 80, target: proxy, comment: http}
      - {port: 443, target: proxy, comment: https}
      - {port: 8000, target: lb, target_port: 80}
      - {proto: udp, port: 51820, target: vpn}
      - {port: 27015-27030, target: game, source: [203.0.113.0/24]}
      - {port: 2222, target: 10.87.0.50, target_port: 22, host_address: 192.0.2.2}
    # from outside, containers are reached only through the forwards above
    isolate: [lxdbr0]

- name: Remove every forward of the collection
  homelab.onebox.dnat:
    state: absent
"""

RETURN = r"""
backend:
  description: The iptables backend used.
  returned: always
  type: str
  sample: nft
forwards:
  description: The forwards as applied, targets resolved to addresses, in the order the rules are written.
  returned: always
  type: list
  elements: dict
  sample:
    - {proto: tcp, port: "80", target: proxy, address: 10.87.0.10, target_port: "80",
       host_address: null, source: [], comment: http}
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
    -A PREROUTING -m comment --comment "homelab.onebox" -j ONEBOX_PREROUTING
    -A ONEBOX_PREROUTING -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 80 -m comment --comment http -j DNAT --to-destination 10.87.0.10:80
    COMMIT
    *filter
    :ONEBOX_FORWARD - [0:0]
    -A FORWARD -m comment --comment "homelab.onebox" -j ONEBOX_FORWARD
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
