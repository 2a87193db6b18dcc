# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The box module's action plugin: its services' ``files[].src`` read on the controller (plugin_utils._src)."""
from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.homelab.onebox.plugins.module_utils._box_service import file_fields
from ansible_collections.homelab.onebox.plugins.plugin_utils._src import run_module


def files_read(args):
    """The services' files items the module will read: none on a teardown (a source gone from the
    controller must not stop one) or without the insides part (the services' files are its)."""
    if args.get("state", "present") == "absent" or "insides" not in (args.get("parts") or ["insides"]):
        return []
    return list(file_fields(args.get("services")))


class ActionModule(ActionBase):

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp  # unused since Ansible 2.5
        result.update(run_module(self, "homelab.onebox.box", files_read, task_vars))
        return result
