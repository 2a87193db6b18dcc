"""The box and lxd_provision action plugins: each hands plugin_utils._src its module and its files items,
named as the user wrote them (services[web].files[1], instances[0].files[1]), and returns its result; the
box's none on a teardown or without the insides part (the module reads none then). The box's also shows
its progress while the module runs (through display, on stderr) and returns the module's result as it is."""
import re
import threading
from types import SimpleNamespace

import pytest
from ansible.plugins.action import ActionBase

from ansible_collections.homelab.onebox.plugins.action import box, lxd_provision


@pytest.mark.parametrize("plugin, module, args, named", [
    (box, "homelab.onebox.box",
     {"services": [{"name": "web", "files": [{"path": "/a", "content": "a"}, {"path": "/b", "src": "b"}]},
                   {"name": "bad name!", "files": [{"path": "/c", "src": "c"}]}]},
     ["services[web].files[0]", "services[web].files[1]", "services[1].files[0]"]),
    (lxd_provision, "homelab.onebox.lxd_provision",
     {"instances": [{"name": "c", "files": [{"path": "/a", "content": "a"}, {"path": "/b", "src": "b"}]}]},
     ["instances[0].files[0]", "instances[0].files[1]"]),
    (box, "homelab.onebox.box", {"state": "absent", "services": [{"name": "a", "files": [{"src": "x"}]}]}, []),
    (box, "homelab.onebox.box", {"parts": ["containers", "sites"], "services": [{"name": "a", "files": [{"src": "x"}]}]},
     []),
    (box, "homelab.onebox.box", {"parts": ["insides"], "services": [{"name": "a", "files": [{"src": "x"}]}]},
     ["services[a].files[0]"]),
])
def test_the_plugin_runs_its_module_with_its_files_items(monkeypatch, plugin, module, args, named):
    seen = {}

    def run_module(action, module_name, fields_of, task_vars):
        seen.update(module=module_name, fields=[field for field, _item in fields_of(args)], vars=task_vars)
        return {"changed": True}
    monkeypatch.setattr(ActionBase, "run", lambda self, tmp=None, task_vars=None: {"skipped": False})
    monkeypatch.setattr(plugin, "run_module", run_module)
    monkeypatch.setenv("ONEBOX_PROGRESS_AFTER", "-1")   # the box's progress: its own tests below
    action = plugin.ActionModule.__new__(plugin.ActionModule)
    action._task = SimpleNamespace(delegate_to=None)
    assert action.run(task_vars={"x": 1}) == {"skipped": False, "changed": True}
    assert seen == {"module": module, "fields": named, "vars": {"x": 1}}


class Connection:
    """The task's connection: its shell's temporary directory, and a progress file that says
    1 of 2 done (read by exec_command)."""

    def __init__(self, tmpdir):
        self._shell = SimpleNamespace(tmpdir=tmpdir)
        self.commands = []

    def exec_command(self, cmd, in_data=None, sudoable=True):
        self.commands.append(cmd)
        return 0, b'{"done": 1, "total": 2}', b""


def counts(lines):
    """The lines without their seconds (the first read may come before the module made its directory)."""
    return [re.sub(r" \(\d+ s\)$", "", line) for line in lines]


def box_action(monkeypatch, outcome, pipelining=False):
    """The box's action plugin run with the module replaced by one that makes the task's directory
    (as _execute_module does without pipelining) and ends once a count was shown (progress from
    the first second); the lines shown, the connection, and the directories the plugin made."""
    lines, shown = [], threading.Event()

    def show(line, stderr=False):
        assert stderr   # a JSON stdout callback keeps its one document
        lines.append(line)
        shown.set()

    def run_module(action, module_name, fields_of, task_vars):
        if action._connection._shell.tmpdir is None:
            action._connection._shell.tmpdir = "/root/.ansible/tmp/ansible-tmp-by-module"
        assert shown.wait(10)
        return dict(outcome)
    monkeypatch.setattr(ActionBase, "run", lambda self, tmp=None, task_vars=None: {})
    monkeypatch.setattr(box, "run_module", run_module)
    monkeypatch.setattr(box.display, "display", show)
    monkeypatch.setenv("ONEBOX_PROGRESS_AFTER", "0")
    action = box.ActionModule.__new__(box.ActionModule)
    action._task = SimpleNamespace(delegate_to=None)
    action._connection = Connection(None)
    action._is_pipelining_enabled = lambda module_style, wrap_async=False: pipelining
    made = []

    def make_tmp_path():
        made.append(1)
        action._connection._shell.tmpdir = "/root/.ansible/tmp/ansible-tmp-by-plugin"
    action._make_tmp_path = make_tmp_path
    assert action.run(task_vars={"inventory_hostname": "web1"}) == outcome
    return lines, action._connection, made


def test_the_box_shows_its_progress_while_the_module_runs_and_n_of_n_at_a_good_end(monkeypatch):
    lines, connection, made = box_action(monkeypatch, {"changed": True})
    assert counts(lines) == ["[web1] box: 1 of 2 containers done", "[web1] box: 2 of 2 containers done"]
    # read in the directory the module's run made: no command more than before
    assert made == [] and set(connection.commands) == {
        "cat /root/.ansible/tmp/ansible-tmp-by-module/onebox-progress.json 2>/dev/null"}


def test_with_pipelining_the_plugin_makes_the_directory_the_module_writes_in(monkeypatch):
    lines, connection, made = box_action(monkeypatch, {"changed": False}, pipelining=True)
    assert made == [1] and set(connection.commands) == {
        "cat /root/.ansible/tmp/ansible-tmp-by-plugin/onebox-progress.json 2>/dev/null"}
    assert counts(lines)[-1] == "[web1] box: 2 of 2 containers done"


def test_a_failed_box_ends_its_progress_where_it_was(monkeypatch):
    lines, _connection, _made = box_action(monkeypatch, {"failed": True, "msg": "web: no"})
    assert counts(lines) == ["[web1] box: 1 of 2 containers done"]


def test_a_run_shorter_than_the_threshold_reads_and_shows_nothing(monkeypatch):
    monkeypatch.setattr(ActionBase, "run", lambda self, tmp=None, task_vars=None: {})
    monkeypatch.setattr(box, "run_module", lambda action, module_name, fields_of, task_vars: {"changed": False})
    monkeypatch.setattr(box.display, "display", lambda line, stderr=False: pytest.fail(line))
    monkeypatch.delenv("ONEBOX_PROGRESS_AFTER", raising=False)   # 5 s
    action = box.ActionModule.__new__(box.ActionModule)
    action._task = SimpleNamespace(delegate_to=None)
    action._connection = Connection("/root/.ansible/tmp/ansible-tmp-1")
    action._is_pipelining_enabled = lambda module_style, wrap_async=False: False
    assert action.run(task_vars={"inventory_hostname": "web1"}) == {"changed": False}
    assert action._connection.commands == []


def test_a_threshold_that_is_not_a_number_fails_the_task_before_the_module_runs(monkeypatch):
    monkeypatch.setattr(ActionBase, "run", lambda self, tmp=None, task_vars=None: {})
    monkeypatch.setattr(box, "run_module", lambda *args: pytest.fail("the module ran"))
    monkeypatch.setenv("ONEBOX_PROGRESS_AFTER", "5s")
    action = box.ActionModule.__new__(box.ActionModule)
    action._task = SimpleNamespace(delegate_to=None)
    action._connection = Connection("/root/.ansible/tmp/ansible-tmp-1")
    action._is_pipelining_enabled = lambda module_style, wrap_async=False: False
    result = action.run(task_vars={"inventory_hostname": "web1"})
    assert result["failed"] and result["msg"].startswith("ONEBOX_PROGRESS_AFTER=5s: give the seconds"), result
