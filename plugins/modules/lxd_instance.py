#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: lxd_instance
short_description: Manage an LXD or Incus container declaratively
version_added: 0.1.0
description:
  - Creates, configures, starts, stops, restarts and deletes one container of LXD or Incus (the
    daemon found or named by O(lxd_url); the same API).
  - Compares only what the task declares (config keys, devices, profiles, ephemeral). Keys it
    was not given are left as they are; LXD's own C(volatile.*) keys are never written.
  - Reads the instance once, writes at most one update, and waits for every LXD operation with a
    timeout. With O(state=started), waits until the container has an IPv4 address and fails if it
    gets none in O(wait_timeout) seconds.
extends_documentation_fragment:
  - homelab.onebox.lxd
  - homelab.onebox.module
  - ansible.builtin.action_common_attributes
options:
  name:
    description:
      - Instance name. Letters, digits and hyphens, 1-63 characters, starting with a letter and not
        ending with a hyphen (it is also the container's host name on the bridge's DNS).
    type: str
    required: true
  state:
    description:
      - V(present) creates it if missing (started or not, as LXD leaves it) and applies config.
      - V(started)/V(stopped) also set its run state. V(restarted) restarts a running instance
        (always reports a change) and starts a stopped one. V(absent) stops and deletes it.
    type: str
    choices: [present, started, stopped, restarted, absent]
    default: started
  image:
    description:
      - Image to create the instance from, a local alias or fingerprint, or an alias on
        O(image_server). Used only when the instance does not exist yet.
      - Mutually exclusive with O(copy_from).
    type: str
  image_server:
    description: Remote image server URL for O(image) (for example a simplestreams server).
    type: str
  image_protocol:
    description: Protocol of O(image_server).
    type: str
    choices: [simplestreams, lxd]
    default: simplestreams
  copy_from:
    description:
      - Create the instance as a copy of another local instance (C(base)) or of one of its
        snapshots (C(base/snap0)), without that instance's snapshots. Used only at creation.
    type: str
  config:
    description:
      - LXD config keys to set. Values may be strings, integers or booleans; they are compared and
        sent as the strings LXD stores (V(true) as C("true"), V(512) as C("512")).
      - C(volatile.*) keys are LXD's own and are refused.
    type: dict
    default: {}
  memory:
    description: RAM limit (C(limits.memory)), for example C(512MiB), C(2GB) or C(50%).
    type: str
  memory_swap:
    description:
      - RAM plus swap limit, for example C(1GiB) with O(memory=512MiB). Needs O(memory) and must not
        be smaller. Applied through C(raw.lxc) as the host's cgroup version requires, so it cannot
        be combined with a C(raw.lxc) key in O(config).
    type: str
  cpus:
    description: C(limits.cpu), a CPU count (C(2)) or the CPUs to pin to (C(0-1), C(0,2)).
    type: str
  autostart:
    description: Start the instance when LXD starts (C(boot.autostart)).
    type: bool
  autostart_priority:
    description: Boot order (C(boot.autostart.priority)); higher starts first.
    type: int
  autostart_delay:
    description: Seconds LXD waits after starting this instance before the next (C(boot.autostart.delay)).
    type: int
  profiles:
    description:
      - Profiles, in order. When omitted, a new instance gets LXD's C(default) profile and an
        existing one keeps its profiles.
    type: list
    elements: str
  devices:
    description:
      - "Devices by name, each a dict of LXD device keys (C(type) required), for example a disk
        C({type: disk, source: /srv/site, path: /var/www, readonly: true}). Each declared device is
        compared whole; devices not declared are left alone."
    type: dict
    default: {}
  ipv4_address:
    description:
      - A static IPv4 address on the bridge for the instance's C(eth0) (a DHCP reservation on an
        LXD-managed bridge), so forwards and upstreams never point at a stale address.
      - V(auto) picks one, the address the instance already has statically, else the lowest free
        address of the network's subnet from its 10th host up (not the gateway, not leased, not
        reserved by another instance). It then stays the instance's address.
      - On a local LXD, leases are also read from the bridge's dnsmasq lease file, which keeps the
        leases of machines that are gone (LXD's API does not list them, and dnsmasq gives their
        addresses to nobody until they run out). Before the instance starts, such a lease of its
        address is released (a DHCPRELEASE from the host, as dnsmasq's C(dhcp_release) does); a
        lease of another instance is an error naming it.
      - Sets device C(eth0) to a bridged NIC on O(network).
    type: str
  network:
    description:
      - Network for O(ipv4_address). Default is the network of the C(eth0) NIC in the instance's
        profiles.
    type: str
  ephemeral:
    description: Whether LXD deletes the instance when it stops.
    type: bool
  wait_for_ipv4:
    description:
      - With O(state=started) or O(state=restarted), wait until the instance has a global IPv4 address.
      - With O(ipv4_address), that address on C(eth0). An instance that holds another lease (taken
        before its reservation reached the bridge's DHCP server, or kept after the address changed)
        is restarted once for a fresh lease (after releasing a stale lease of the address), and the
        task fails if it still lacks its address.
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait for the IPv4 address and for start/stop before failing.
    type: int
    default: 60
  force_stop:
    description: Kill instead of a clean shutdown when stopping, restarting or deleting.
    type: bool
    default: false
  target:
    description:
      - The cluster member a new instance is made on (the API's C(?target=)); without it the daemon
        places it. An existing instance is never moved. A daemon that is not a cluster refuses it.
      - Passed through as it is; tested only against a standalone daemon (its refusal), not a cluster.
    type: str
notes:
  - Runs on the LXD host (or anywhere with O(lxd_url) pointing at an LXD API). Needs pylxd there.
  - Containers only; virtual machines are out of scope.
"""

EXAMPLES = r"""
- name: A web container from the collection's base image, with a fixed address and limits
  homelab.onebox.lxd_instance:
    name: web1
    image: onebox-debian12
    ipv4_address: 10.87.0.11
    memory: 512MiB
    memory_swap: 1GiB
    cpus: "0-1"
    autostart: true
    autostart_priority: 50
    autostart_delay: 5

- name: A second web container cloned from the first
  homelab.onebox.lxd_instance:
    name: web2
    copy_from: web1
    ipv4_address: 10.87.0.12

- name: Any LXD key, typed values are fine
  homelab.onebox.lxd_instance:
    name: worker
    image: onebox-debian12
    config:
      security.nesting: true
      limits.processes: 500

- name: Stopped, not deleted
  homelab.onebox.lxd_instance:
    name: worker
    state: stopped

- name: Gone
  homelab.onebox.lxd_instance:
    name: worker
    state: absent
"""

RETURN = r"""
instance:
  description: The instance after the run (what a check-mode run predicts), or C({}) when absent.
  returned: always
  type: dict
  contains:
    name:
      description: Instance name.
      type: str
    status:
      description: LXD status (C(Running), C(Stopped)); in check mode the predicted one.
      type: str
    config:
      description: The instance's own config, without C(volatile.*) keys.
      type: dict
    devices:
      description: The instance's own devices.
      type: dict
    profiles:
      description: Its profiles.
      type: list
    ephemeral:
      description: Whether it is ephemeral.
      type: bool
  sample:
    name: web1
    status: Running
    config: {limits.memory: 512MiB}
    devices: {eth0: {type: nic, network: lxdbr0, name: eth0, ipv4.address: 10.87.0.11}}
    profiles: [default]
    ephemeral: false
addresses:
  description: Global IPv4 addresses of the instance (empty when it is not running).
  returned: always
  type: list
  elements: str
  sample: [10.87.0.11]
actions:
  description: What was done, in order (C(create), C(update), C(start), C(stop), C(restart), C(delete)).
  returned: always
  type: list
  elements: str
  sample: [create, start]
"""

from ansible_collections.homelab.onebox.plugins.module_utils._addresses import assign_addresses
from ansible_collections.homelab.onebox.plugins.module_utils._diff import entry
from ansible_collections.homelab.onebox.plugins.module_utils._instance import OPTION_RULES, InstanceSpec, parse_instance
from ansible_collections.homelab.onebox.plugins.module_utils._module import OneboxModule
from ansible_collections.homelab.onebox.plugins.module_utils._reconcile import InstanceReconciler


class InstanceManager:
    """Validate every field first, then read, diff and change (outside check mode) one instance."""

    def __init__(self, module):
        self.module = module
        self.spec = parse_instance(module.params)

    def run(self):
        lxd = self.module.lxd
        self.spec.check_host(lxd)
        known = {}
        if self.spec.ipv4_address == "auto":
            # Choosing a free address needs every instance's devices: one listing.
            current = {inst["name"]: inst for inst in lxd.instances()}
            assign_addresses(lxd, [self.spec], current)
            known["current"] = current.get(self.spec.name)
        result = InstanceReconciler(lxd, self.spec, check_mode=self.module.check_mode, diff=self.module._diff,
                                    **known).run()
        if "diff" in result:
            result["diff"] = [entry("container %s" % self.spec.name, result["diff"]["before"], result["diff"]["after"])]
        return result


def main():
    module = OneboxModule(argument_spec=InstanceSpec.argument_spec(), supports_check_mode=True, lxd=True,
                          **OPTION_RULES)
    module.run(InstanceManager)


if __name__ == "__main__":
    main()
