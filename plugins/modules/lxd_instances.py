#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: lxd_instances
short_description: Manage a set of LXD containers in one call
version_added: 0.1.0
description:
  - Brings every container of a list to what it declares, exactly as M(homelab.onebox.lxd_instance)
    does for one, in one task. It reads all instances in one request and works on several
    at once, so a box of many containers costs one Ansible task, not one per container.
  - With O(owner), marks each declared container as the owner's (config key
    C(user.onebox.owner)); with O(prune), deletes the owner's containers that are no longer
    declared. Containers of other owners, or of none, are never touched.
  - Every item is validated before anything changes.
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
  platform:
    platforms: posix
options:
  instances:
    description:
      - The containers. Each item takes the options of M(homelab.onebox.lxd_instance) (C(name),
        C(state), C(image), C(copy_from), C(config), C(memory), C(memory_swap), C(cpus),
        C(autostart), C(autostart_priority), C(autostart_delay), C(profiles), C(devices),
        C(ipv4_address) (including V(auto)), C(network), C(ephemeral), C(wait_for_ipv4), C(wait_timeout),
        C(force_stop)), with the same defaults.
      - An item may copy from another item of the list (its C(copy_from)); it is created after it.
    type: list
    elements: dict
    default: []
  owner:
    description:
      - Who owns these containers, stored in their C(user.onebox.owner) config key. Needed by O(prune).
      - Letters, digits and hyphens.
    type: str
  prune:
    description: Delete the containers of O(owner) that are not in O(instances).
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

from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.homelab.onebox.plugins.module_utils import _validate
from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError, ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._lxd import InstanceReconciler, InstanceSpec, assign_addresses
from ansible_collections.homelab.onebox.plugins.module_utils._module import OneboxModule

OWNER_KEY = "user.onebox.owner"


def item_specs(items, owner):
    """Validate every item (types, defaults, then values) and return their InstanceSpecs."""
    validator = ArgumentSpecValidator(InstanceSpec.argument_spec(),
                                      mutually_exclusive=[("image", "copy_from")],
                                      required_by={"memory_swap": "memory", "image_server": "image"})
    specs, seen = [], {}
    for index, item in enumerate(items):
        where = "instances[%d]" % index
        if not isinstance(item, dict):
            raise ValidationError(where, item, "must be a dict of lxd_instance options")
        checked = validator.validate(item)
        if checked.error_messages:
            raise OneboxError("%s (%s): %s" % (where, item.get("name"), "; ".join(checked.error_messages)))
        try:
            spec = InstanceSpec.from_params(checked.validated_parameters)
        except ValidationError as exc:
            raise ValidationError("%s.%s" % (where, exc.field), exc.value, exc.reason)
        if spec.name in seen:
            raise ValidationError(where + ".name", spec.name, "declared twice (also instances[%d])" % seen[spec.name])
        seen[spec.name] = index
        if owner is not None:
            if spec.config.get(OWNER_KEY, owner) != owner:
                raise ValidationError(where + ".config", OWNER_KEY, "is set by owner")
            spec.config[OWNER_KEY] = owner
        specs.append(spec)
    return specs


def waves(specs):
    """Order the work so a copy runs after the declared container it copies from."""
    declared = {spec.name for spec in specs}
    done, remaining, order = set(), list(specs), []
    while remaining:
        ready = [s for s in remaining
                 if not s.copy_from or s.copy_from.split("/")[0] not in declared - done or s.state == "absent"]
        if not ready:
            raise ValidationError("instances", [s.name for s in remaining], "copy_from forms a cycle")
        order.append(ready)
        done.update(s.name for s in ready)
        remaining = [s for s in remaining if s not in ready]
    return order


class InstanceSetManager:
    def __init__(self, module):
        self.module = module
        params = module.params
        self.owner = params["owner"]
        if self.owner is not None:
            _validate.instance_name(self.owner, "owner")
        if params["prune"] and self.owner is None:
            raise ValidationError("prune", True, "needs owner: only an owner's containers are pruned")
        if params["parallel"] < 1:
            raise ValidationError("parallel", params["parallel"], "must be at least 1")
        self.specs = item_specs(params["instances"], self.owner)

    def run(self):
        module, lxd = self.module, self.module.lxd
        current = {inst["name"]: inst for inst in lxd.instances()}
        assign_addresses(lxd, self.specs, current)
        declared = {spec.name for spec in self.specs}
        # In check mode nothing is created, so a copy's declared source is taken as there.
        pending = declared if module.check_mode else ()
        results = {}

        def reconcile(spec):
            return spec.name, InstanceReconciler(lxd, spec, module.check_mode, module._diff,
                                                 current=current.get(spec.name), pending=pending).run()

        with ThreadPoolExecutor(max_workers=module.params["parallel"]) as pool:
            # A copy waits only for its own declared source, not for a whole wave: submitted in
            # dependency order, a waiting copy never holds up the source it waits for.
            futures = {}

            def after_source(spec):
                source = spec.copy_from.split("/")[0] if spec.copy_from else None
                if source in futures and spec.state != "absent":
                    futures[source].result()
                return reconcile(spec)

            for wave in waves(self.specs):
                for spec in wave:
                    futures[spec.name] = pool.submit(after_source, spec)
            results.update(future.result() for future in futures.values())
            pruned = []
            if module.params["prune"]:
                doomed = [InstanceSpec(name, state="absent", force_stop=True) for name, inst in sorted(current.items())
                          if name not in declared and (inst.get("config") or {}).get(OWNER_KEY) == self.owner]
                results.update(pool.map(reconcile, doomed))
                pruned = [spec.name for spec in doomed]

        ordered = [dict(results[spec.name], name=spec.name) for spec in self.specs]
        result = {
            "changed": any(r["changed"] for r in results.values()),
            "instances": ordered,
            "addresses": {r["name"]: r["addresses"] for r in ordered},
            "pruned": pruned,
        }
        if module._diff:
            result["diff"] = {"before": {n: r["diff"]["before"] for n, r in sorted(results.items()) if r["changed"]},
                              "after": {n: r["diff"]["after"] for n, r in sorted(results.items()) if r["changed"]}}
        for entry in ordered:
            entry.pop("diff", None)
        return result


def main():
    module = OneboxModule(
        argument_spec=dict(
            instances=dict(type="list", elements="dict", default=[]),
            owner=dict(type="str"),
            prune=dict(type="bool", default=False),
            parallel=dict(type="int", default=8),
        ),
        supports_check_mode=True,
        lxd=True,
    )
    module.run(InstanceSetManager)


if __name__ == "__main__":
    main()
