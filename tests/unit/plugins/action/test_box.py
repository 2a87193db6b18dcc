"""The box and lxd_provision action plugins: each hands plugin_utils._src its module and its files items,
named as the user wrote them (services[web].files[1], instances[0].files[1]), and returns its result; the
box's none on a teardown or without the insides part (the module reads none then)."""
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
    action = plugin.ActionModule.__new__(plugin.ActionModule)
    assert action.run(task_vars={"x": 1}) == {"skipped": False, "changed": True}
    assert seen == {"module": module, "fields": named, "vars": {"x": 1}}
