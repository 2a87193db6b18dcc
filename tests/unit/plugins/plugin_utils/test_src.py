"""plugin_utils._src: where a src is read (the decision local or remote), each resolved as copy does and
refused naming the field, and the task run: the module given paths (local) or archives in the task's
directory (remote), the directory removed, a refusal before the module runs."""
import os
import shutil
import tarfile

import pytest
from ansible.errors import AnsibleError

from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError
from ansible_collections.homelab.onebox.plugins.plugin_utils import _src


@pytest.mark.parametrize("transport, delegate_to, here", [
    ("local", None, True), ("ansible.builtin.local", None, True), ("ssh", None, False),
    ("ansible.builtin.ssh", "localhost", True), ("ssh", "127.0.0.1", True), ("ssh", "db1", False),
    ("community.general.lxd", None, False), ("onebox_elsewhere", None, False),
])
def test_the_module_reads_a_source_where_it_is_only_on_the_controller(transport, delegate_to, here):
    assert _src.runs_here(transport, delegate_to) is here


def needle_in(base):
    def find_needle(dirname, needle):
        path = os.path.join(base, dirname, needle)
        if not os.path.exists(path):
            raise AnsibleError("Could not find or access '%s'" % needle)
        return path
    return find_needle


def test_resolve_finds_relative_ones_in_files_and_keeps_absolute_ones(tmp_path):
    (tmp_path / "files" / "site").mkdir(parents=True)
    (tmp_path / "app.jar").write_bytes(b"x")
    items = [("services[web].files[0]", {"path": "/srv/site", "src": "site/"}),
             ("services[web].files[1]", {"path": "/opt/app.jar", "src": str(tmp_path / "app.jar")}),
             ("services[web].files[2]", {"path": "/x", "content": "x"}),
             ("services[web].files[3]", {"path": "/y", "src": "gone", "state": "absent"}),
             ("services[db].files[0]", {"path": "/opt/again.jar", "src": str(tmp_path / "app.jar")})]
    sources = _src.resolve(items, needle_in(str(tmp_path)))
    assert sources == sorted([str(tmp_path / "app.jar"), str(tmp_path / "files" / "site")])
    assert items[0][1]["src"] == str(tmp_path / "files" / "site") and items[3][1]["src"] == "gone"


@pytest.mark.parametrize("src, words", [("missing.jar", "looked for in the role's and the playbook's files/"),
                                        ("/no/such/file", "no such file or directory on the controller"),
                                        ("", "must be a path"), (5, "must be a path"),
                                        ("/dev/null", "must be a regular file or a directory")])
def test_resolve_refuses_naming_the_field_and_the_value(tmp_path, src, words):
    with pytest.raises(ValidationError) as err:
        _src.resolve([("instances[0].files[1]", {"path": "/x", "src": src})], needle_in(str(tmp_path)))
    assert err.value.field == "instances[0].files[1].src" and err.value.value == src and words in err.value.reason


class Shell:
    def __init__(self):
        self.tmpdir = None

    @staticmethod
    def join_path(*parts):
        return os.path.join(*parts)


class Action:
    """What run_module uses of an ActionBase: its task, connection and the calls that reach the host."""

    def __init__(self, tmp_path, args, transport="local"):
        self.remote = tmp_path / "remote"
        self._task = type("Task", (), {"args": args, "delegate_to": None})()
        self._connection = type("Conn", (), {"transport": transport, "_shell": Shell()})()
        self.calls = []

    def _find_needle(self, dirname, needle):
        return needle_in(str(self.remote.parent))(dirname, needle)

    def _make_tmp_path(self):
        self.remote.mkdir()
        self._connection._shell.tmpdir = str(self.remote)
        return str(self.remote)

    def _transfer_file(self, local, remote):
        self.calls.append(("transfer", remote, sorted(tarfile.open(local).getnames())))
        shutil.copy(local, remote)

    def _fixup_perms2(self, paths):
        self.calls.append(("perms", paths))

    def _execute_module(self, module_name, module_args, task_vars):
        self.calls.append(("module", module_name, module_args))
        return {"changed": False}

    def _remove_tmp_path(self, path):
        self.calls.append(("remove", path))


def fields(args):
    return [("instances[0].files[%d]" % i, item) for i, item in enumerate(args["instances"][0]["files"])]


def test_a_local_connection_gives_the_module_the_paths_and_transfers_nothing(tmp_path):
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.txt").write_text("a")
    args = {"instances": [{"name": "c", "files": [{"path": "/a", "src": "a.txt"}]}], "src_archives": {"x": "y"}}
    action = Action(tmp_path, args)
    assert _src.run_module(action, "homelab.onebox.lxd_provision", fields, {}) == {"changed": False}
    (kind, name, module_args), removed = action.calls
    assert kind == "module" and "src_archives" not in module_args
    assert module_args["instances"][0]["files"][0]["src"] == str(tmp_path / "files" / "a.txt")
    assert args["instances"][0]["files"][0]["src"] == "a.txt"            # the task's own args untouched
    assert removed == ("remove", None)


def test_another_connection_gets_one_archive_per_source_in_the_task_directory(tmp_path):
    (tmp_path / "files" / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "files" / "tree" / "sub" / "x").write_text("x")
    (tmp_path / "files" / "a.txt").write_text("a")
    files = [{"path": "/a", "src": "a.txt"}, {"path": "/t", "src": "tree"}, {"path": "/b", "src": "a.txt"}]
    action = Action(tmp_path, {"instances": [{"name": "c", "files": files}]}, transport="ssh")
    _src.run_module(action, "homelab.onebox.lxd_provision", fields, {})
    transfers = [call for call in action.calls if call[0] == "transfer"]
    assert [names for _t, _r, names in transfers] == [["src"], ["src", "src/sub", "src/sub/x"]]
    module_args = [call for call in action.calls if call[0] == "module"][0][2]
    archives = module_args["src_archives"]
    assert archives == {str(tmp_path / "files" / "a.txt"): str(action.remote / "onebox-src-0.tar"),
                        str(tmp_path / "files" / "tree"): str(action.remote / "onebox-src-1.tar")}
    assert ("perms", [str(action.remote)] + list(archives.values())) in action.calls
    assert action.calls[-1] == ("remove", str(action.remote))


def test_a_missing_source_fails_the_task_before_the_module_runs(tmp_path):
    action = Action(tmp_path, {"instances": [{"name": "c", "files": [{"path": "/a", "src": "nope"}]}]}, "ssh")
    result = _src.run_module(action, "homelab.onebox.lxd_provision", fields, {})
    assert result["failed"] and result["field"] == "instances[0].files[0].src" and "'nope'" in result["msg"]
    assert [call[0] for call in action.calls] == ["remove"]
