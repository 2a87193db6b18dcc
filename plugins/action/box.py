# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The box module's action plugin: its services' ``files[].src`` read on the controller (plugin_utils._src),
and, while a long converge runs, how many containers are done (plugin_utils._progress)."""
from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.homelab.onebox.plugins.module_utils._box_service import file_fields
from ansible_collections.homelab.onebox.plugins.plugin_utils._progress import Watch, after_seconds, remote_reader
from ansible_collections.homelab.onebox.plugins.plugin_utils._src import run_module

display = Display()


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
        try:
            watch = self._progress(task_vars or {})
        except ValueError as exc:  # ONEBOX_PROGRESS_AFTER: refused before the module runs
            result.update(failed=True, msg=str(exc))
            return result
        with watch:
            outcome = run_module(self, "homelab.onebox.box", files_read, task_vars)
        watch.finish(not outcome.get("failed"))
        if watch.failure:
            display.vvv("box: progress not read (%s)" % watch.failure)
        result.update(outcome)
        return result

    def _progress(self, task_vars):
        """The Watch of this run. The module writes its progress file in the task's temporary
        directory: the module's run makes it (no command more), except with pipelining, where it
        is made here (one command more; the module would have none to write in)."""
        after = after_seconds()
        read = None
        if after is not None:
            shell = self._connection._shell
            if shell.tmpdir is None and self._is_pipelining_enabled("new"):
                self._make_tmp_path()
            read = remote_reader(self._connection, lambda: shell.tmpdir)
        host = self._task.delegate_to or task_vars.get("inventory_hostname") or "?"
        # On stderr: a stdout callback that prints one JSON document (ansible.posix.json) keeps it whole.
        return Watch(read, lambda line: display.display(line, stderr=True), after, host=host)
