# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One custom storage volume the box owns: made when missing, refused when someone else's, deleted
only when asked (read/plan/apply/result, as every component).

Data outlives containers: a volume is never deleted with the container it is attached to, nor by
a teardown, only by an explicit purge, and never one without the owner's mark.
"""
from __future__ import annotations

from ansible_collections.homelab.onebox.plugins.module_utils._diff import entry
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError

OWNER_KEY = "user.onebox.owner"


class OwnedVolume:
    """Volume ``name`` in ``pool``, marked as ``owner``'s. ``state``: present or purged."""

    def __init__(self, lxd, pool, name, owner, state="present", field="volume", description="", check_mode=False):
        self.lxd, self.pool, self.name, self.owner = lxd, pool, name, owner
        self.state, self.field, self.description, self.check_mode = state, field, description, check_mode
        self.current = None
        self.action = None  # "create", "delete" or None

    def read(self):
        self.current = self.lxd.volume(self.pool, self.name)
        return self.current

    def plan(self):
        """What apply() does; a volume without the owner's mark is refused whatever the state."""
        mark = (self.current or {}).get("config", {}).get(OWNER_KEY)
        if self.current is not None and mark != self.owner:
            raise ValidationError(self.field, self.name, "storage volume %s/%s exists and is %s: it is never taken "
                                                         "over or deleted" % (self.pool, self.name,
                                                                              "owner %s's" % mark if mark else
                                                                              "not marked as the box's"))
        if self.state == "present":
            self.action = "create" if self.current is None else None
        else:
            self.action = "delete" if self.current is not None else None
        return self.action

    def apply(self):
        if self.check_mode or self.action is None:
            return
        if self.action == "create":
            self.lxd.create_volume(self.pool, {"name": self.name, "type": "custom", "description": self.description,
                                               "config": {OWNER_KEY: self.owner}})
        else:
            self.lxd.delete_volume(self.pool, self.name)

    def result(self, diff=False):
        out = {"name": self.name, "pool": self.pool, "action": self.action or "none", "changed": self.action is not None}
        if diff:
            was = "%s/%s\n" % (self.pool, self.name) if self.current is not None else ""
            out["diff"] = entry("storage volume %s" % self.name, was,
                                "" if self.state != "present" else "%s/%s\n" % (self.pool, self.name))
        return out
