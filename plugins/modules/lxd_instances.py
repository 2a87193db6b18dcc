#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: lxd_instances
short_description: Manage a set of LXD or Incus containers in one call
version_added: 0.1.0
description:
  - Brings every container of a list to what it declares, exactly as M(homelab.onebox.lxd_instance)
    does for one, in one task. It reads all instances in one request and works on several
    at once, so a box of many containers costs one Ansible task, not one per container.
  - With O(owner), marks each declared container as the owner's (config key
    C(user.onebox.owner)); with O(prune), deletes the owner's containers that are no longer
    declared. Containers of other owners, or of none, are never touched.
  - Every item is validated before anything changes.
extends_documentation_fragment:
  - homelab.onebox.lxd
  - homelab.onebox.module
  - ansible.builtin.action_common_attributes
options:
  instances:
    description:
      - The containers. Each item takes the options of M(homelab.onebox.lxd_instance) (C(name),
        C(state), C(image), C(copy_from), C(config), C(memory), C(memory_swap), C(cpus),
        C(autostart), C(autostart_priority), C(autostart_delay), C(profiles), C(devices),
        C(ipv4_address) (including V(auto)), C(network), C(ephemeral), C(wait_for_ipv4), C(wait_timeout),
        C(force_stop), C(target)), with the same defaults.
      - An item may copy from another item of the list (its C(copy_from)); it is created after it.
      - With O(owner), an item also takes C(adopt) (bool, default V(false)). A container of that name
        that exists without this owner's mark (made by hand, or another owner's) fails the run
        before anything changes, unless its item says C(adopt=true); the mark is then written and
        reported as a change.
    type: list
    elements: dict
    default: []
  owner:
    description:
      - Who owns these containers, stored in their C(user.onebox.owner) config key. Needed by O(prune).
      - Letters, digits and hyphens.
    type: str
  prune:
    description:
      - Delete the containers of O(owner) that are not in O(instances). They are named in the
        result (RV(pruned)) and in a warning, in check mode too.
      - A run that would delete more than O(prune_max) of them fails before anything changes,
        unless O(prune_confirm) says it is meant.
    type: bool
    default: false
  prune_max:
    description:
      - How many containers a prune may delete without O(prune_confirm).
      - When omitted, more than one container and more than half of the owner's containers at once
        need O(prune_confirm) (what a typo in the list looks like).
    type: int
  prune_confirm:
    description: Delete however many containers the prune finds (after reading them in the result of a check run).
    type: bool
    default: false
  parallel:
    description: How many containers are worked on at once.
    type: int
    default: 8
notes:
  - Runs on the LXD host (or anywhere with O(lxd_url) pointing at an LXD API). Needs pylxd there.
"""

EXAMPLES = r"""
- name: A pool of three web containers cloned from one base, and a database
  homelab.onebox.lxd_instances:
    owner: mybox
    prune: true
    instances:
      - name: web-base
        image: onebox-debian12
        state: stopped
      - {name: web1, copy_from: web-base, memory: 256MiB, autostart: true}
      - {name: web2, copy_from: web-base, memory: 256MiB, autostart: true}
      - {name: web3, copy_from: web-base, memory: 256MiB, autostart: true}
      - name: db
        image: onebox-debian12
        memory: 1GiB
        memory_swap: 1536MiB
        autostart: true
        autostart_priority: 90
  register: box

- name: Addresses by name
  ansible.builtin.debug:
    msg: "{{ box.addresses.web1 }}"
"""

RETURN = r"""
instances:
  description: One result per declared container, in the declared order, as M(homelab.onebox.lxd_instance) returns it.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Container name.
      type: str
    changed:
      description: Whether this container changed.
      type: bool
    actions:
      description: What was done to it (C(create), C(update), C(start), C(stop), C(restart), C(delete)).
      type: list
      elements: str
    addresses:
      description: Its global IPv4 addresses.
      type: list
      elements: str
    instance:
      description: The container after the run (see M(homelab.onebox.lxd_instance)).
      type: dict
addresses:
  description: Global IPv4 addresses by container name.
  returned: always
  type: dict
  sample: {web1: [10.87.0.11], db: [10.87.0.20]}
pruned:
  description: Containers of O(owner) deleted because they are no longer declared.
  returned: always
  type: list
  elements: str
  sample: [web4]
"""

from ansible_collections.homelab.onebox.plugins.module_utils import _validate
from ansible_collections.homelab.onebox.plugins.module_utils._instance_set import InstanceSet, parse_instances, warn_pruned
from ansible_collections.homelab.onebox.plugins.module_utils._module import OneboxModule

ARGUMENT_SPEC = dict(
    instances=dict(type="list", elements="dict", default=[]),
    owner=dict(type="str"),
    prune=dict(type="bool", default=False),
    prune_max=dict(type="int"),
    prune_confirm=dict(type="bool", default=False),
    parallel=dict(type="int", default=8),
)


class InstanceSetManager:
    def __init__(self, module):
        self.module = module
        params = module.params
        _validate.at_least_one(params, ("parallel",))
        self.specs = parse_instances(params["instances"], params["owner"])

    def run(self):
        module = self.module
        params = module.params
        instance_set = InstanceSet(module.lxd, self.specs, owner=params["owner"], prune=params["prune"],
                                   check_mode=module.check_mode, diff=module._diff,
                                   prune_max=params["prune_max"], prune_confirm=params["prune_confirm"])
        instance_set.read()
        instance_set.plan()
        warn_pruned(module, instance_set)
        instance_set.apply(params["parallel"])
        return instance_set.result()


def main():
    module = OneboxModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True, lxd=True)
    module.run(InstanceSetManager)


if __name__ == "__main__":
    main()
