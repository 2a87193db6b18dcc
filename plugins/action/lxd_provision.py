# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lxd_provision module's action plugin: its ``files[].src`` read on the controller (plugin_utils._src)."""
from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.homelab.onebox.plugins.module_utils._provision_spec import file_fields
from ansible_collections.homelab.onebox.plugins.plugin_utils._src import run_module


class ActionModule(ActionBase):

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp  # unused since Ansible 2.5
        result.update(run_module(self, "homelab.onebox.lxd_provision",
                                 lambda args: list(file_fields(args.get("instances"))), task_vars))
        return result
