# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A declared set of LXD containers reconciled together (lxd_instances, box): every item parsed
first, one read of all instances, copies after their own source only, several at once, and the
owner's undeclared containers pruned."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.homelab.onebox.plugins.module_utils import _validate
from ansible_collections.homelab.onebox.plugins.module_utils._addresses import assign_addresses
from ansible_collections.homelab.onebox.plugins.module_utils._diff import entry
from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError, ValidationError, named_failure
from ansible_collections.homelab.onebox.plugins.module_utils._instance import OPTION_RULES, InstanceSpec, parse_instance
from ansible_collections.homelab.onebox.plugins.module_utils._reconcile import InstanceReconciler

OWNER_KEY = "user.onebox.owner"


def parse_instances(items, owner, field="instances"):
    """Every item (types, defaults, then values) -> their InstanceSpecs.

    An item of an owned set also takes ``adopt``: that container may be taken over when it exists
    without this owner's mark."""
    argument_spec = InstanceSpec.argument_spec()
    if owner is not None:
        argument_spec["adopt"] = dict(type="bool", default=False)
    validator = ArgumentSpecValidator(argument_spec, **OPTION_RULES)
    specs, seen = [], {}
    for index, item in enumerate(items):
        where = "%s[%d]" % (field, index)
        if not isinstance(item, dict):
            raise ValidationError(where, item, "must be a dict of lxd_instance options")
        checked = validator.validate(item)
        if checked.error_messages:
            raise OneboxError("%s (%s): %s" % (where, item.get("name"), "; ".join(checked.error_messages)))
        try:
            spec = parse_instance(checked.validated_parameters)
        except ValidationError as exc:
            raise ValidationError("%s.%s" % (where, exc.field), exc.value, exc.reason)
        if spec.name in seen:
            raise ValidationError(where + ".name", spec.name, "declared twice (also %s[%d])" % (field, seen[spec.name]))
        seen[spec.name] = index
        spec.field = where
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


def warn_pruned(module, instance_set):
    """Name what the run deletes (or, in check mode, would delete) in its output: the containers
    a prune deletes, the storage volumes a purge deletes (given to plan()), the containers
    re-created from a new image."""
    verb = "would delete" if instance_set.check_mode else "deleting"
    if instance_set.doomed:
        module.warn("%s the containers of owner %s that are no longer declared: %s" % (
            verb, instance_set.owner, ", ".join(spec.name for spec in instance_set.doomed)))
    if instance_set.doomed_volumes:
        module.warn("%s the storage volumes of owner %s that are purged: %s" % (
            verb, instance_set.owner, ", ".join(instance_set.doomed_volumes)))
    for name, why in instance_set.recreated:
        module.warn("%s %s to make it again (%s); what is on its storage volumes stays, the rest is lost"
                    % (verb, name, why))


class InstanceSet:
    """Reconcile ``specs`` (from parse_instances) against LXD in one pass.

    ``read()`` reads every instance once; ``plan()`` makes every check that needs the daemon
    (owners, CPUs, what a prune would delete) and fixes the ``auto`` addresses, so the addresses
    are known before anything is created; ``apply(parallel, then)`` reconciles each container
    (in check mode: predicts, changing nothing) and, in the same worker, calls ``then`` for a
    container that is not being deleted: work on a container's inside starts as soon as that
    container runs, not after the whole set; ``result()`` is the lxd_instances result.
    """

    def __init__(self, lxd, specs, owner=None, prune=False, check_mode=False, diff=False,
                 prune_max=None, prune_confirm=False, only=None):
        if owner is not None:
            _validate.instance_name(owner, "owner")
        if prune and owner is None:
            raise ValidationError("prune", True, "needs owner: only an owner's containers are pruned")
        if prune_max is not None:
            _validate.whole(prune_max, "prune_max")
        self.lxd, self.specs, self.owner, self.prune = lxd, specs, owner, prune
        self.prune_max, self.prune_confirm = prune_max, prune_confirm
        self.check_mode, self.diff = check_mode, diff
        self.current = None
        self.doomed = []
        self.doomed_volumes = []  # the storage volumes deleted beside the prune (named with it)
        self.recreated = []       # (name, why) of the containers re-created from a new image
        self.results = None
        # The specs this set makes and changes (``only``: their names); the others are only read,
        # for their addresses (another part of the same box makes them).
        self.applied = specs if only is None else [spec for spec in specs if spec.name in only]
        self.order = waves(specs)  # a copy_from cycle fails here, before any change

    def read(self):
        """Every instance in one request. Returns name -> instance."""
        self.current = {inst["name"]: inst for inst in self.lxd.instances()}
        return self.current

    def plan(self, volumes=()):
        """Every check that needs the daemon (owners, CPUs, what a prune would delete), all before
        any change; ``auto`` addresses chosen. ``volumes``: the storage volumes this run deletes,
        named with the containers wherever those are. Returns the containers a prune deletes
        (``doomed``)."""
        if self.current is None:
            self.read()
        self._check_owners()
        for spec in self.applied:
            spec.check_host(self.lxd, "%s.cpus" % spec.field)
        self.doomed_volumes = list(volumes)
        self.recreated = [(spec.name, spec.why_replaced(self.current[spec.name]))
                          for spec in self.applied if spec.state != "absent" and spec.name in self.current
                          and spec.replaced_image(self.current[spec.name]) is not None]
        self.doomed = self._doomed()
        self._check_prune()
        assign_addresses(self.lxd, self.specs, self.current)
        return self.doomed

    def _mark(self, name):
        return ((self.current.get(name) or {}).get("config") or {}).get(OWNER_KEY)

    def _check_owners(self):
        """An owned set never takes over, nor deletes, a container without its mark (made by hand,
        by another tool, or another owner's) unless that item says ``adopt``."""
        if self.owner is None:
            return
        for spec in self.applied:
            mark = self._mark(spec.name)
            if spec.name not in self.current or mark == self.owner or spec.adopt:
                continue
            whose = "belongs to owner %s" % mark if mark else "carries no owner mark (made by hand or by another tool)"
            raise ValidationError(
                "%s.name" % spec.field, spec.name,
                "container %s already exists and %s; it is never taken over silently: give this one another "
                "name, or set adopt: true on it to take that container over as owner %s" % (spec.name, whose, self.owner))

    def _doomed(self):
        """The owner's containers that are not declared (deleted when pruning)."""
        if not self.prune:
            return []
        declared = {spec.name for spec in self.specs}
        return [InstanceSpec(name, state="absent", force_stop=True) for name in sorted(self.current)
                if name not in declared and self._mark(name) == self.owner]

    def _check_prune(self):
        """Deleting many of the owner's containers at once is what a typo in the description looks
        like (a service list renamed, or cut short): above the limit, only with prune_confirm.
        The default limit: more than one container and more than half of the owner's."""
        if not self.doomed or self.prune_confirm:
            return
        owned = sum(1 for name in self.current if self._mark(name) == self.owner)
        count = len(self.doomed)
        if self.prune_max is not None:
            too_many, limit = count > self.prune_max, "prune_max %d" % self.prune_max
        else:
            too_many, limit = count > 1 and count * 2 > owned, "more than one and more than half"
        if too_many:
            volumes = (", and the storage volumes %s" % ", ".join(self.doomed_volumes)) if self.doomed_volumes else ""
            raise ValidationError(
                "prune", [spec.name for spec in self.doomed],
                "this run would delete %d of the %d containers of owner %s (%s)%s, which is over the limit (%s); "
                "nothing was changed. Check the description; if these containers are to go, confirm it with "
                "prune_confirm: true (variable onebox_prune_confirm), or raise prune_max (onebox_prune_max); "
                "a whole box is removed with playbooks/teardown.yml"
                % (count, owned, self.owner, ", ".join(spec.name for spec in self.doomed), volumes, limit))

    def static_addresses(self):
        """name -> [IPv4] of each declared container with a static address (known before it exists)."""
        return {spec.name: [spec.static_ipv4] for spec in self.specs
                if spec.state != "absent" and spec.static_ipv4}

    def _reconciler(self, spec, state_of=None):
        # In check mode nothing is created, so a copy's declared source is taken as there.
        pending = {s.name for s in self.specs} if self.check_mode else ()
        return InstanceReconciler(self.lxd, spec, self.check_mode, self.diff,
                                  current=self.current.get(spec.name), pending=pending, state_of=state_of)

    def apply(self, parallel, then=None, around=None, done=None):
        """Reconcile every applied spec and prune (after plan(); in check mode nothing changes).
        Errors of containers, and ``then``'s, raise once all are done, naming each container.

        ``then(spec, result, settle)`` runs once the container is there and running, before it
        necessarily has its address (set-up inside overlaps its DHCP); ``settle()`` waits for the
        address when the work needs the network, and returns the result with it.
        ``around(spec)``: a context manager each declared container's whole work runs in (the
        box's rolling changes take a pool member's turn there, before it is re-created).
        ``done()``: called as each container's work ends (well or not), from its worker (the box's
        progress count)."""
        results = {}

        def state_of(name):
            return states.result().get(name) if states is not None else None

        def one(spec, source_future):
            if source_future is not None and spec.state != "absent":
                source_future.result()  # a copy waits for its own source only
            with around(spec) if around is not None else nullcontext():
                reconciler = self._reconciler(spec, state_of)
                if then is None or spec.state == "absent":
                    return reconciler.run()
                then(spec, reconciler.run(settle=False), reconciler.settle)
                return reconciler.settle()

        with ThreadPoolExecutor(max_workers=parallel) as pool:
            # The states of every instance, in one request beside the work on the containers: an
            # untouched container's address check waits for it instead of asking on its own.
            # Measured with 150 containers: one listing 0.6 s against 1.0-1.5 s for 150 requests
            # 16 at a time; read first instead (not beside), it made a loaded 50-box run slower.
            # Only when a running container is kept: a teardown or a new box has none to ask about.
            kept = any(spec.state != "absent" and (self.current.get(spec.name) or {}).get("status") == "Running"
                       for spec in self.applied)
            states = None
            if kept:
                states = pool.submit(lambda: {inst["name"]: inst.get("state") for inst in self.lxd.instances(state=True)})
            # Submitted in dependency order, a waiting copy never holds up the source it waits for.
            futures, applied = {}, {spec.name for spec in self.applied}
            for wave in self.order:
                for spec in (s for s in wave if s.name in applied):
                    source = spec.copy_from.split("/")[0] if spec.copy_from else None
                    futures[spec.name] = pool.submit(one, spec, futures.get(source))
            pruning = {spec.name: pool.submit(self._reconciler(spec).run) for spec in self.doomed}
            if done is not None:
                for future in list(futures.values()) + list(pruning.values()):
                    future.add_done_callback(lambda _future: done())
            errors = []
            for name, future in list(futures.items()) + list(pruning.items()):
                try:
                    results[name] = future.result()
                except OneboxError as exc:
                    errors.append((name, exc))
        if errors:
            raise named_failure(errors)
        self.results = results

    def result(self):
        """The lxd_instances result of apply(): ``changed``, ``instances`` (in declared order, each
        with its ``name`` and ``actions``), ``addresses``, ``pruned`` and, in diff mode, ``diff``:
        one entry (header ``containers``) of the changed containers before and after, by name."""
        results = self.results
        ordered = [dict(results[spec.name], name=spec.name) for spec in self.applied]
        result = {
            "changed": any(r["changed"] for r in results.values()),
            "instances": ordered,
            "addresses": {r["name"]: r["addresses"] for r in ordered},
            "pruned": [spec.name for spec in self.doomed],
        }
        if self.diff:
            changed = sorted((n, r["diff"]) for n, r in results.items() if r["changed"])
            result["diff"] = [entry("containers", {n: d["before"] for n, d in changed},
                                    {n: d["after"] for n, d in changed})]
        for item in ordered:
            item.pop("diff", None)
        return result
