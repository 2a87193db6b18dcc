# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The box's custom storage volumes in one pool (VolumeSet): made when missing, grown when their
size says so, refused when someone else's, deleted only when purged (read/plan/apply/result, as
every component).

Data outlives containers: a volume is never deleted with a container that mounts it, nor when its
service leaves the description, nor by a teardown; only by an explicit purge, and never one
without the owner's mark. Every volume the box makes carries its marks: the owner
(``user.onebox.owner``), and the service it belongs to (``user.onebox.service``) or
``user.onebox.shared: "true"`` for a volume several services mount.
"""
from __future__ import annotations

from ansible_collections.homelab.onebox.plugins.module_utils import _validate as v
from ansible_collections.homelab.onebox.plugins.module_utils._diff import entry
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError

OWNER_KEY = "user.onebox.owner"
SERVICE_KEY = "user.onebox.service"
SHARED_KEY = "user.onebox.shared"
INSTANCES_PATH = "/1.0/instances/"


def marks(owner, service=None, shared=False):
    """The config that marks a volume as the box's: its owner, and its service or shared."""
    out = {OWNER_KEY: owner}
    if shared:
        out[SHARED_KEY] = "true"
    elif service:
        out[SERVICE_KEY] = service
    return out


def _bytes(size):
    """A size in bytes; None when not given, or not as the collection writes sizes (set by hand)."""
    try:
        return None if size in (None, "") else v.size_bytes(size, "size")
    except ValidationError:
        return None


def _users(volume):
    """The instances that mount ``volume`` (LXD's used_by), by name; other users (a profile) as given."""
    out = []
    for user in volume.get("used_by") or []:
        path = user.split("?")[0]
        out.append(path[len(INSTANCES_PATH):].split("/")[0] if path.startswith(INSTANCES_PATH) else path)
    return out


class VolumeSet:
    """The volumes ``wanted`` in ``pool``, of ``owner``.

    ``wanted``: dicts of name (in LXD), size (None: LXD's default; never shrunk), service (None
    for a shared volume and the proxy's), shared, field and value (how an error names it, as the
    user wrote it), description. ``purge_services``: service name -> field of the removed services
    whose volumes go (never a shared one); ``purge_all``: every volume of the owner goes (a
    teardown's purge). ``complete``: ``wanted`` is every volume the box describes, so a volume of
    a service's (or shared) that it lacks and this run unmounts is reported as ``kept``.
    """

    def __init__(self, lxd, pool, owner, wanted=(), purge_services=None, purge_all=False, purge_field="purge",
                 complete=False, check_mode=False, diff=False):
        self.lxd, self.pool, self.owner = lxd, pool, owner
        self.wanted = list(wanted)
        self.purge_services = dict(purge_services or {})
        self.purge_all, self.purge_field, self.complete = purge_all, purge_field, complete
        self.check_mode, self.diff = check_mode, diff
        self.current = None
        self.actions = {}   # name -> "create", "resize" or "none", for the wanted ones
        self.deleting = []  # the names apply_deletions() deletes
        self.kept = []      # the owner's volumes no longer described that this run unmounts and keeps

    def read(self):
        """Every custom volume of the pool, in one request."""
        self.current = {volume["name"]: volume for volume in self.lxd.custom_volumes(self.pool)}
        return self.current

    def _config(self, name):
        return (self.current.get(name) or {}).get("config") or {}

    def doomed(self):
        """The volumes a purge deletes: the owner's (with purge_all), or those marked as a purged
        service's (never a shared one); none of the wanted. Known once read, before plan()."""
        wanted = {volume["name"] for volume in self.wanted}
        out = []
        for name in sorted(self.current):
            config = self._config(name)
            if name in wanted or config.get(OWNER_KEY) != self.owner:
                continue
            if self.purge_all or (config.get(SERVICE_KEY) in self.purge_services and config.get(SHARED_KEY) != "true"):
                out.append(name)
        return out

    def plan(self, leaving=()):
        """Every refusal, before any change: a wanted volume that is not this owner's (or is
        another service's of it), one that would shrink, one to delete that an instance still
        mounts after this run (``leaving``: the instances this run deletes). Returns the actions."""
        if self.current is None:
            self.read()
        for volume in self.wanted:
            self.actions[volume["name"]] = self._plan_one(volume)
        self.deleting = self.doomed()
        for name in self.deleting:
            staying = [user for user in _users(self.current[name]) if user not in leaving]
            if staying:
                service = self._config(name).get(SERVICE_KEY)
                field = self.purge_field if self.purge_all else self.purge_services.get(service, self.purge_field)
                raise ValidationError(field, True, "storage volume %s/%s is still used by %s, which this run keeps; "
                                                   "nothing was changed" % (self.pool, name, ", ".join(staying)))
        wanted = {volume["name"] for volume in self.wanted}
        if self.complete:
            self.kept = [name for name in sorted(self.current)
                         if name not in wanted and name not in self.deleting and self._ours_of_a_service(name)
                         and _users(self.current[name])]
        return self.actions

    def _ours_of_a_service(self, name):
        config = self._config(name)
        return config.get(OWNER_KEY) == self.owner and bool(config.get(SERVICE_KEY) or config.get(SHARED_KEY))

    def _plan_one(self, volume):
        name, field, value = volume["name"], volume["field"], volume.get("value", volume["name"])
        if name not in self.current:
            return "create"
        config = self._config(name)
        mark = config.get(OWNER_KEY)
        where = "%s/%s" % (self.pool, name)
        if mark != self.owner:
            whose = "owner %s's" % mark if mark else "not marked as any box's (made by hand or by another tool)"
            raise ValidationError(field, value, "storage volume %s exists and is %s: it is never taken over, written "
                                                "to or deleted; give this volume another name, or remove that one"
                                  % (where, whose))
        want = marks(self.owner, volume.get("service"), volume.get("shared"))
        had = {key: config.get(key) for key in (SERVICE_KEY, SHARED_KEY) if config.get(key)}
        if had != {key: val for key, val in want.items() if key != OWNER_KEY}:
            whose = "a shared volume" if had.get(SHARED_KEY) else (
                "service %s's" % had[SERVICE_KEY] if had.get(SERVICE_KEY) else "another part's of the box")
            raise ValidationError(field, value, "storage volume %s is %s (of owner %s, kept when it left the "
                                                "description?), not this one's: give this volume another name, or "
                                                "purge that one first" % (where, whose, self.owner))
        if volume.get("size") is None or _bytes(config.get("size")) == _bytes(volume["size"]):
            return "none"
        if config.get("size") and _bytes(volume["size"]) < (_bytes(config["size"]) or 0):
            raise ValidationError(volume.get("size_field", field), volume["size"],
                                  "storage volume %s is %s: a volume is never shrunk (its data may not fit); "
                                  "shrink it by hand (lxc storage volume set %s %s size=...) if it must be"
                                  % (where, config["size"], self.pool, name))
        return "resize"

    def apply(self):
        """The volumes made and grown, before the containers that mount them are made or changed."""
        if self.check_mode:
            return
        for volume in self.wanted:
            action = self.actions.get(volume["name"])
            if action == "create":
                config = marks(self.owner, volume.get("service"), volume.get("shared"))
                if volume.get("size"):
                    config["size"] = volume["size"]
                self.lxd.create_volume(self.pool, {"name": volume["name"], "type": "custom", "config": config,
                                                   "description": volume.get("description") or ""})
            elif action == "resize":
                self.lxd.patch_volume(self.pool, volume["name"], {"config": {"size": volume["size"]}})

    def apply_deletions(self):
        """The purged volumes deleted, once the containers that mounted them are gone."""
        if not self.check_mode:
            for name in self.deleting:
                self.lxd.delete_volume(self.pool, name)

    @property
    def changed(self):
        return bool(self.deleting) or any(action != "none" for action in self.actions.values())

    def result(self):
        """``changed``; ``volumes``: each wanted and each deleted volume with ``name``, ``pool``,
        ``service`` (None: shared, or the proxy's) and ``action`` (create, resize, delete, none);
        ``kept``; in diff mode ``diff``: one entry of the volumes before and after."""
        items = [{"name": volume["name"], "pool": self.pool, "service": volume.get("service"),
                  "action": self.actions.get(volume["name"], "none")} for volume in self.wanted]
        items += [{"name": name, "pool": self.pool, "service": self._config(name).get(SERVICE_KEY),
                   "action": "delete"} for name in self.deleting]
        out = {"changed": self.changed, "volumes": items, "kept": list(self.kept)}
        if self.diff:
            before = "".join(self._line(item["name"], self._config(item["name"]).get("size"))
                             for item in items if item["name"] in self.current)
            sizes = {volume["name"]: volume.get("size") or self._config(volume["name"]).get("size")
                     for volume in self.wanted}
            after = "".join(self._line(item["name"], sizes.get(item["name"])) for item in items
                            if item["action"] != "delete")
            out["diff"] = entry("storage volumes", before, after)
        return out

    def _line(self, name, size):
        return "%s/%s%s\n" % (self.pool, name, " size=%s" % size if size else "")
