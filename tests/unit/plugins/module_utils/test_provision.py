"""_provision: the plan (what changes, what restarts) and the Provisioner's orchestration against the
in-memory LXD (check mode writes nothing, a failure names its container, an unchanged inside is left alone)."""
import hashlib
import os
import shutil
import subprocess

import pytest

from ansible_collections.homelab.onebox.plugins.module_utils import _provision as p
from ansible_collections.homelab.onebox.plugins.module_utils import _provision_spec as ps
from ansible_collections.homelab.onebox.plugins.module_utils import _provision_state as st
from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError, ValidationError

import subprocess

from unit.fake_lxd import FakeLxd
from unit.plugins.module_utils.test_provision_spec import APP, spec_of


def test_check_instances_unknown_and_stopped():
    specs = ps.parse_insides([{"name": "a"}, {"name": "b"}])
    with pytest.raises(ValidationError) as err:
        p.check_instances(specs, {"a": {"status": "Running"}})
    assert err.value.field == "instances[1].name" and err.value.value == "b"
    with pytest.raises(ValidationError) as err:
        p.check_instances(specs, {"a": {"status": "Running"}, "b": {"status": "Stopped"}})
    assert "Stopped" in err.value.msg
    p.check_instances(specs, {"a": {"status": "Running"}, "b": {"status": "Running"}})


def output_for(spec, files=None, users=None, groups=None, units=None, packages=None, dirs=None, lists=5):
    """What the state script would print for a container in the given state. ``files``: path ->
    "file MODE UID GID DIGEST" or a kind (link, dir)."""
    lines = []
    for path, desc in (files or {}).items():
        parts = desc.split()
        kind = {"file": "regular file", "link": "symbolic link", "dir": "directory"}.get(parts[0], "fifo")
        if parts[0] == "file":
            lines.append("F %s|%s|%s|%s|%s" % (kind, parts[1], parts[2], parts[3], path))
            lines.append("H %s  %s" % (parts[4], path))
        else:
            lines.append("F %s|777|0|0|%s" % (kind, path))
    for i, d in enumerate(sorted({st.parents(f.path) for f in spec.all_files if f.state == "present"})):
        lines.append("D %d %d" % (0 if d in (dirs or ()) else 1, i))
    users = dict({"root": "root:x:0:0:root:/root:/bin/bash"}, **(users or {}))
    lines += ["U " + users[u] for u in spec.user_names() if u in users]
    lines += ["G " + (groups or {})[g] for g in spec.group_names() if g in (groups or {})]
    for svc in spec.services:
        enabled, active = (units or {}).get(svc.unit, "|inactive").split("|")
        lines += ["S LoadState=%s" % ("loaded" if enabled else "not-found"), "S ActiveState=%s" % active,
                  "S UnitFileState=%s" % enabled, "S "]
    if spec.packages:
        lines.append("A %d" % lists)
        lines += ["P %s %s" % (name, status) for name, status in (packages or {}).items()]
    return "\n".join(lines + ["END", ""])


def converged(spec):
    """The state of a container where everything declared is already there."""
    files = {}
    for f in spec.all_files:
        if f.state == "present":
            uid = 0 if f.owner == "root" else 998
            files[f.path] = "file %o %d %d %s" % (f.mode, uid, uid, f.digest)
    return dict(files=files, users={"app": "app:x:998:998::/srv/app:/usr/sbin/nologin"},
                groups={"app": "app:x:998:"},
                units={svc.unit: "enabled|active" for svc in spec.services},
                packages={pkg: "ii " for pkg in spec.packages})


def plan_for(spec, **state):
    return p.plan_inside(spec, st.parse_state(spec, output_for(spec, **state)))


def test_first_run_plans_everything_in_order():
    spec = spec_of()
    todo = plan_for(spec, packages={"procps": "ii "}, units={"nginx.service": "disabled|inactive"},
                    files={"/etc/nginx/sites-enabled/default": "link"})
    assert todo.actions == ["user app", "file /srv/app/app.py", "remove /etc/nginx/sites-enabled/default",
                            "unit onebox-app", "environment onebox-app", "daemon-reload",
                            "enable onebox-app", "enable nginx", "start onebox-app", "start nginx"]
    assert todo.users == [("app", "/srv/app")] and todo.packages == []
    assert todo.removals == ["/etc/nginx/sites-enabled/default"]


def test_systemctl_steps_are_one_script_with_one_reload():
    spec = spec_of()
    todo = plan_for(spec, packages={"procps": "ii "}, units={"nginx.service": "disabled|inactive"})
    assert p.systemctl_script(todo).splitlines() == [
        "set -e", "systemctl daemon-reload",
        "systemctl enable --no-reload -- onebox-app.service nginx.service",
        "systemctl reset-failed -- onebox-app.service nginx.service 2>/dev/null || true",
        "systemctl restart -- onebox-app.service nginx.service"]
    assert p.systemctl_script(plan_for(spec, **converged(spec))) == ""


def test_converged_container_plans_nothing():
    spec = spec_of()
    assert plan_for(spec, **converged(spec)).actions == []


def test_a_changed_file_restarts_every_started_service_of_the_instance():
    spec = spec_of()
    state = converged(spec)
    state["files"]["/srv/app/app.py"] = "file 644 998 998 " + "0" * 64
    todo = plan_for(spec, **state)
    assert todo.actions == ["file /srv/app/app.py", "restart onebox-app", "restart nginx"]
    assert not todo.daemon_reload and [f.path for f in todo.pushes] == ["/srv/app/app.py"] and not todo.meta


def test_a_changed_file_that_says_restart_false_restarts_nothing():
    spec = spec_of(files=[dict(APP["files"][0], restart=False)] + APP["files"][1:])
    state = converged(spec)
    state["files"]["/srv/app/app.py"] = "file 644 998 998 " + "0" * 64
    todo = plan_for(spec, **state)
    assert todo.actions == ["file /srv/app/app.py"] and not todo.restart


def test_a_removed_unit_file_reloads_systemd_and_restarts_nothing():
    timer = "/etc/systemd/system/old.timer"
    spec = spec_of(files=APP["files"] + [{"path": timer, "state": "absent", "restart": False}])
    state = converged(spec)
    state["files"][timer] = "file 644 0 0 " + "0" * 64
    todo = plan_for(spec, **state)
    assert todo.removals == [timer] and todo.daemon_reload and not todo.restart
    assert "systemctl daemon-reload" in p.systemctl_script(todo)


def test_a_changed_environment_restarts_only_its_service_without_daemon_reload():
    spec = spec_of()
    state = converged(spec)
    state["files"]["/etc/onebox/app.env"] = "file 600 0 0 " + "0" * 64
    todo = plan_for(spec, **state)
    assert todo.actions == ["environment onebox-app", "restart onebox-app"]


def test_a_changed_unit_reloads_systemd_once_and_restarts():
    spec = spec_of()
    state = converged(spec)
    state["files"]["/etc/systemd/system/onebox-app.service"] = "file 644 0 0 " + "0" * 64
    assert plan_for(spec, **state).actions == ["unit onebox-app", "daemon-reload", "restart onebox-app"]


def test_mode_or_owner_only_changes_metadata():
    spec = spec_of()
    state = converged(spec)
    digest = spec.files[0].digest
    state["files"]["/srv/app/app.py"] = "file 600 998 998 %s" % digest
    todo = plan_for(spec, **state)
    assert todo.meta == [spec.files[0]] and todo.pushes == []
    assert todo.actions[0] == "file /srv/app/app.py"


def test_a_killed_or_stopped_service_is_started_and_a_stopped_one_stopped():
    spec = spec_of({"name": "a", "services": [{"name": "x", "command": ["/bin/true"]},
                                              {"name": "nginx", "state": "stopped", "enabled": False}]})
    state = converged(spec)
    state["units"] = {"onebox-x.service": "enabled|failed", "nginx.service": "enabled|active"}
    assert plan_for(spec, **state).actions == ["disable nginx", "stop nginx", "start onebox-x"]
    state["units"]["onebox-x.service"] = "enabled|activating"   # in its RestartSec: leave it
    assert plan_for(spec, **state).actions == ["disable nginx", "stop nginx"]


def test_missing_package_is_installed_and_restarts():
    spec = spec_of({"name": "a", "packages": ["jq", "procps"], "services": [{"name": "nginx"}]})
    state = converged(spec)
    state["packages"] = {"procps": "ii ", "jq": "un "}
    todo = plan_for(spec, **state)
    assert todo.packages == ["jq"] and todo.actions == ["package jq", "restart nginx"]


def test_unknown_unit_is_refused_unless_a_package_is_being_installed():
    spec = spec_of({"name": "a", "services": [{"name": "nosuch"}]})
    with pytest.raises(ValidationError) as err:
        plan_for(spec)
    assert err.value.field == "instances[0].services[0].name" and err.value.value == "nosuch"
    spec = spec_of({"name": "a", "packages": ["nosuch"], "services": [{"name": "nosuch"}]})
    assert plan_for(spec).actions == ["package nosuch", "enable nosuch", "start nosuch"]


def test_service_user_must_exist_or_be_declared():
    item = {"name": "a", "services": [{"name": "x", "command": ["/bin/true"], "user": "ghost"}]}
    with pytest.raises(ValidationError) as err:
        plan_for(spec_of(item))
    assert err.value.field == "instances[0].services[0].user" and err.value.value == "ghost"
    assert plan_for(spec_of(item), users={"ghost": "ghost:x:5:5::/:/bin/sh"}).actions[-1] == "start onebox-x"
    assert "user ghost" in plan_for(spec_of(dict(item, users=[{"name": "ghost"}]))).actions


def test_file_owner_and_group_must_exist_or_be_declared():
    spec = spec_of({"name": "a", "files": [{"path": "/x", "content": "", "owner": "ghost"}]})
    with pytest.raises(ValidationError) as err:
        plan_for(spec)
    assert err.value.field == "instances[0].files[0].owner"
    spec = spec_of({"name": "a", "files": [{"path": "/x", "content": "", "group": "ghosts"}]})
    with pytest.raises(ValidationError) as err:
        plan_for(spec)
    assert err.value.field == "instances[0].files[0].group" and err.value.value == "ghosts"


def test_a_directory_where_a_file_is_declared_is_refused():
    spec = spec_of({"name": "a", "files": [{"path": "/srv", "state": "absent"}]})
    with pytest.raises(ValidationError) as err:
        plan_for(spec, files={"/srv": "dir"})
    assert err.value.field == "instances[0].files[0].path"


def test_missing_parents_are_created():
    spec = spec_of({"name": "a", "files": [{"path": "/srv/new/deep/x", "content": ""}]})
    assert plan_for(spec, dirs={"/srv/new/deep"}).mkdirs == ["/srv/new/deep"]


# ---- the Provisioner against the in-memory LXD ----------------------------------------------------
APP_USER = "U app:x:998:998::/srv/app:/usr/sbin/nologin\nU root:x:0:0:root:/root:/bin/bash\nG app:x:998:\n"


def is_state_script(command):
    return command[:2] == ["sh", "-c"] and command[2].endswith("echo END\n")


def inside_lxd(states):
    """A FakeLxd with a running container per ``states`` entry (name -> (spec, output_for()'s
    arguments)): the state script prints that state, useradd's script the new user's entries."""
    lxd = FakeLxd([{"name": name, "status": "Running"} for name in states])

    def answer(name, command, _kwargs):
        if is_state_script(command):
            spec, state = states[name]
            return 0, output_for(spec, **state), ""
        if command[:2] == ["sh", "-c"] and "useradd" in command[2]:
            return 0, APP_USER, ""
        return None
    lxd.on_exec = answer
    return lxd


def writes(lxd):
    """Every call that could change a container: all but reads and the state script."""
    return [call for call in lxd.changes() if not (call[0] == "exec" and is_state_script(call[2]))]


def provisioned(lxd, spec, diff=False):
    worker = p.Provisioner(lxd, spec, timeout=30, diff=diff)
    worker.read()
    worker.plan()
    return worker


def test_a_first_run_applies_in_order():
    spec = spec_of(packages=["procps", "jq"])
    lxd = inside_lxd({"app": (spec, dict(packages={"procps": "ii "}, units={"nginx.service": "disabled|inactive"},
                                         files={"/etc/nginx/sites-enabled/default": "link"}, dirs={"/srv/app"}))})
    worker = provisioned(lxd, spec)
    worker.apply()
    steps = [("push", call[2], "%o" % call[3], call[4], call[5]) if call[0] == "push_file" else " ".join(call[2])
             for call in writes(lxd)]
    expected = [
        "apt-get -q install -y --no-install-recommends",    # jq (the lists are there: no update first)
        "useradd --system --create-home --shell /usr/sbin/nologin --home-dir /srv/app app",
        "mkdir -p -- \"$@\" sh /srv/app",
        "rm -f -- /etc/nginx/sites-enabled/default",        # the link in the way
        ("push", "/srv/app/app.py", "644", 998, 998),       # the new user's ids, read back after useradd
        ("push", "/etc/systemd/system/onebox-app.service", "644", 0, 0),
        ("push", "/etc/onebox/app.env", "600", 0, 0),
        "systemctl daemon-reload"]
    assert len(steps) == len(expected), steps
    for step, want in zip(steps, expected):
        assert want == step if isinstance(want, tuple) else want in step, (step, want)
    install = writes(lxd)[0][2]
    assert install[-2:] == ["--", "jq"]
    assert writes(lxd)[-1][2][2].splitlines()[:7] == [
        "set -e", "systemctl daemon-reload", "systemctl enable --no-reload -- onebox-app.service nginx.service",
        "systemctl reset-failed -- onebox-app.service nginx.service 2>/dev/null || true",
        "systemctl restart -- onebox-app.service nginx.service", "set +e", "sleep 1"]   # then the check
    assert lxd.files[("app", "/etc/onebox/app.env")] == spec.services[0].env_file.content
    assert worker.result() == {"name": "app", "changed": True, "actions": worker.planned.actions}


def test_owner_and_mode_are_set_before_the_content_so_a_secret_never_has_the_old_mode():
    spec = spec_of()
    state = converged(spec)
    state["files"]["/etc/onebox/app.env"] = "file 644 998 998 " + "0" * 64
    lxd = inside_lxd({"app": (spec, state)})
    provisioned(lxd, spec).apply()
    fix, push, restart = writes(lxd)
    assert fix[2][2] == "set -e\nchown 0:0 -- /etc/onebox/app.env && chmod 0600 -- /etc/onebox/app.env"
    assert push[:3] == ("push_file", "app", "/etc/onebox/app.env")
    assert restart[2][2].splitlines()[2:4] == ["systemctl restart -- onebox-app.service", "set +e"]


def test_an_unchanged_inside_makes_no_write_and_reports_no_change():
    spec = spec_of()
    lxd = inside_lxd({"app": (spec, converged(spec))})
    worker = provisioned(lxd, spec, diff=True)
    worker.apply()   # a caller applies only what changes; even so, nothing to do is nothing done
    assert writes(lxd) == [] and lxd.names("pull_file") == []
    assert worker.result() == {"name": "app", "changed": False, "actions": [], "diff": []}


def test_diff_pulls_only_the_changed_files_and_masks_the_environment():
    spec = spec_of()
    state = converged(spec)
    state["files"]["/srv/app/app.py"] = "file 644 998 998 " + "0" * 64
    state["files"]["/etc/onebox/app.env"] = "file 600 0 0 " + "0" * 64
    lxd = inside_lxd({"app": (spec, state)})
    lxd.files[("app", "/srv/app/app.py")] = b"print(0)\n"
    lxd.files[("app", "/etc/onebox/app.env")] = b"SECRET_KEY=old-secret\n"
    worker = provisioned(lxd, spec, diff=True)
    assert sorted(call[2] for call in lxd.calls if call[0] == "pull_file") == ["/etc/onebox/app.env", "/srv/app/app.py"]
    [diff] = worker.result()["diff"]
    assert diff["before_header"] == "inside app"
    assert diff["before"] == {"/srv/app/app.py": "print(0)\n", "/etc/onebox/app.env": "SECRET_KEY=********\n"}
    assert diff["after"]["/srv/app/app.py"] == "print(1)\n"
    assert "s3cret" not in str(diff) and "old-secret" not in str(diff)
    assert writes(lxd) == []   # plan() reads; only apply() writes


def test_a_refusal_comes_from_plan_before_any_write():
    spec = spec_of({"name": "app", "files": [{"path": "/x", "content": "", "owner": "ghost"}]})
    lxd = inside_lxd({"app": (spec, {})})
    worker = p.Provisioner(lxd, spec)
    worker.read()
    with pytest.raises(ValidationError, match="no such owner in app"):
        worker.plan()
    assert writes(lxd) == []


def test_a_failed_command_names_the_container():
    spec = spec_of({"name": "web", "services": [{"name": "nginx"}]})
    lxd = inside_lxd({"web": (spec, dict(units={"nginx.service": "enabled|failed"}))})
    answer = lxd.on_exec
    lxd.on_exec = lambda name, command, kw: ((1, "", "Job for nginx.service failed.")
                                             if "systemctl restart" in command[-1] or "systemctl start" in command[-1]
                                             else answer(name, command, kw))
    worker = provisioned(lxd, spec)
    assert worker.planned.actions == ["start nginx"]
    with pytest.raises(OneboxError) as err:
        worker.apply()
    assert err.value.msg.startswith("in web, sh -c set -e") and err.value.msg.endswith("Job for nginx.service failed.")


def test_take_diff_keys_them_by_container_and_leaves_the_results_plain():
    results = [{"name": "a", "changed": True, "actions": ["file /x"], "diff": [{"before": {"/x": "1"}, "after": {"/x": "2"}}]},
               {"name": "b", "changed": False, "actions": [], "diff": []}]
    assert p.take_diff(results) == {"before_header": "inside the containers", "after_header": "inside the containers",
                                    "before": {"a": {"/x": "1"}}, "after": {"a": {"/x": "2"}}}
    assert results == [{"name": "a", "changed": True, "actions": ["file /x"]}, {"name": "b", "changed": False, "actions": []}]


# ---- trees and files from a src: the plan against a real directory standing for the container's --------
def host_lxd(name="a"):
    """A FakeLxd whose state script runs in this machine's sh (its directories stand for the
    container's); every other exec is recorded and answered 0."""
    lxd = FakeLxd([{"name": name, "status": "Running"}])

    def answer(_name, command, _kwargs):
        if is_state_script(command):
            run = subprocess.run(["sh", "-c", command[2]], capture_output=True, text=True, timeout=10, check=True)
            return 0, run.stdout, ""
        return None
    lxd.on_exec = answer
    return lxd


def source_tree(root):
    (root / "sub").mkdir(parents=True)
    (root / "index.html").write_text("<h1>hi</h1>\n")
    (root / "sub" / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "sub" / "run.sh", 0o755)
    return root


def copied(source, there):
    shutil.copytree(source, there)
    for top, dirs, _files in os.walk(there):
        for name in dirs:
            os.chmod(os.path.join(top, name), 0o755)
    os.chmod(there, 0o755)
    return there


def tree_spec(source, there, services=(), **options):
    return ps.parse_insides([{"name": "a", "files": [dict({"path": str(there), "src": str(source)}, **options)],
                              "services": list(services)}])[0]


def test_a_new_tree_is_made_pushed_and_owned(tmp_path):
    source, there = source_tree(tmp_path / "source"), tmp_path / "new" / "there"
    lxd = host_lxd()
    worker = provisioned(lxd, tree_spec(source, there))
    assert worker.planned.actions == ["tree %s (2 pushed, 2 dirs)" % there]
    assert [path for path, _tree in worker.planned.dirs] == [str(there), "%s/sub" % there]
    worker.apply()
    assert lxd.files[("a", "%s/sub/run.sh" % there)] == b"#!/bin/sh\n"
    pushed = {call[2]: call[3] for call in lxd.calls if call[0] == "push_file"}
    assert pushed == {"%s/index.html" % there: 0o644, "%s/sub/run.sh" % there: 0o755}
    made = [call[2][2] for call in lxd.calls if call[0] == "exec" and "mkdir -p" in call[2][2]][0]
    assert "mkdir -p -- %s && chown 0:0 -- %s && chmod 0755 -- %s" % ((there,) * 3) in made


def test_an_unchanged_tree_plans_nothing_and_a_mode_alone_is_fixed(tmp_path):
    source = source_tree(tmp_path / "source")
    there = copied(source, tmp_path / "there")
    assert provisioned(host_lxd(), tree_spec(source, there)).planned.actions == []
    os.chmod(there / "index.html", 0o600)
    os.chmod(there / "sub", 0o700)
    worker = provisioned(host_lxd(), tree_spec(source, there))
    assert worker.planned.actions == ["tree %s (1 fixed, 1 dirs)" % there]
    assert [f.path for f in worker.planned.meta] == ["%s/index.html" % there] and not worker.planned.pushes
    every = provisioned(host_lxd(), tree_spec(source, there, mode="0640"))
    assert every.planned.actions == ["tree %s (2 fixed, 1 dirs)" % there]
    assert {f.mode for f in every.planned.meta} == {0o640}


def test_sync_removes_what_the_source_lacks_and_only_with_sync(tmp_path):
    source = source_tree(tmp_path / "source")
    there = copied(source, tmp_path / "there")
    (there / "stale.txt").write_text("x")
    (there / "old" / "deeper").mkdir(parents=True)
    (there / "old" / "deeper" / "x").write_text("x")
    assert provisioned(host_lxd(), tree_spec(source, there)).planned.actions == []
    worker = provisioned(host_lxd(), tree_spec(source, there, sync=True))
    assert worker.planned.actions == ["tree %s (2 removed)" % there]
    assert worker.planned.removals == ["%s/stale.txt" % there] and worker.planned.purges == ["%s/old" % there]


def test_a_changed_tree_restarts_the_services_unless_it_says_restart_false(tmp_path):
    source = source_tree(tmp_path / "source")
    there = copied(source, tmp_path / "there")
    (there / "index.html").write_text("changed")
    bare = tree_spec(source, there)
    read = st.parse_state(bare, subprocess.run(["sh", "-c", st.state_script(bare)], capture_output=True, text=True,
                                               check=True, timeout=10).stdout)
    for restart, restarted in ((True, ["nginx"]), (False, [])):
        spec = tree_spec(source, there, services=[{"name": "nginx"}], restart=restart)
        state = st.parse_state(spec, output_for(spec, units={"nginx.service": "enabled|active"}))
        state.trees = read.trees   # the units as output_for() says, the tree as it is
        todo = p.plan_inside(spec, state)
        assert todo.actions[0] == "tree %s (1 pushed)" % there
        assert [svc.name for svc, _verb in todo.restart] == restarted


def test_a_tree_refuses_a_directory_for_a_file_and_a_file_for_its_path(tmp_path):
    source = source_tree(tmp_path / "source")
    there = copied(source, tmp_path / "there")
    os.remove(there / "index.html")
    (there / "index.html").mkdir()
    with pytest.raises(ValidationError) as err:
        provisioned(host_lxd(), tree_spec(source, there))
    assert err.value.field == "instances[0].files[0].path" and "is a directory in a" in err.value.reason
    plain = tmp_path / "plain"
    plain.write_text("")
    with pytest.raises(ValidationError) as err:
        provisioned(host_lxd(), tree_spec(source, plain))
    assert "is not a directory in a" in err.value.reason


def test_diff_shows_a_large_or_binary_file_by_its_size_and_checksum_and_pulls_no_large_one(tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(b"a" * (p.DIFF_LIMIT + 1))
    there = tmp_path / "there.bin"
    there.write_bytes(b"b" * (p.DIFF_LIMIT + 1))
    binary = tmp_path / "small.bin"
    binary.write_bytes(b"\xff\x00")
    spec = ps.parse_insides([{"name": "a", "files": [{"path": str(there), "src": str(big)},
                                                     {"path": str(tmp_path / "new.bin"), "src": str(binary)}]}])[0]
    lxd = host_lxd()
    worker = provisioned(lxd, spec, diff=True)
    assert worker.before == {str(there): "<%d bytes, sha256 %s>" % (p.DIFF_LIMIT + 1, hashlib.sha256(there.read_bytes()).hexdigest())}
    assert worker.after[str(there)] == "<%d bytes, sha256 %s>" % (p.DIFF_LIMIT + 1, hashlib.sha256(big.read_bytes()).hexdigest())
    assert worker.after[str(tmp_path / "new.bin")] == "<binary: 2 bytes, sha256 %s>" % hashlib.sha256(b"\xff\x00").hexdigest()
    assert not [call for call in lxd.calls if call[0] == "pull_file"]


def test_scripts_are_batched_below_the_argument_limit():
    lines = ["chmod 0644 -- /srv/%04d" % i for i in range(20000)]
    batches = list(p.script_batches(lines))
    assert len(batches) > 1 and all(len(b) <= p.SCRIPT_LIMIT + 100 for b in batches)
    assert [line for b in batches for line in b.splitlines() if line != "set -e"] == lines
    assert list(p.script_batches([])) == []


# ---- setup steps -----------------------------------------------------------------------------------
SHOP_ITEM = {
    "name": "shop",
    "users": [{"name": "shop", "home": "/srv/shop"}],
    "packages": ["python3-venv"],
    "files": [{"path": "/srv/shop/requirements.txt", "content": "django\n", "owner": "shop"},
              {"path": "/srv/shop/notes.txt", "content": "a\n", "owner": "shop"}],
    "services": [{"name": "shop", "command": ["/srv/shop/venv/bin/gunicorn"], "user": "shop",
                  "working_directory": "/srv/shop", "environment": {"MODE": "prod"}}],
    "setup": [{"command": "pip install -r requirements.txt", "service": "shop",
               "when_changed": ["/srv/shop/requirements.txt", "python3-venv", "MODE"]},
              {"command": ["touch", "/srv/shop/made"], "creates": "/srv/shop/made", "user": "root", "service": "shop"}],
}
SHOP_USER = {"shop": "shop:x:997:997::/srv/shop:/usr/sbin/nologin"}


def shop(**changes):
    return spec_of(SHOP_ITEM, **changes)


def shop_state(spec, ran=(0, 1), created=True, pending=False, versions=None):
    """A converged shop (its steps ran against what is declared now), its output as the state script prints it."""
    state = converged(spec)
    state["users"] = SHOP_USER
    for path in state["files"]:
        if path.startswith("/srv/shop/"):
            state["files"][path] = state["files"][path].replace(" 998 998 ", " 997 997 ")
    versions = versions or {"python3-venv": "3.11.2-1"}
    state["packages"] = {name: "ii " + version for name, version in versions.items()}
    lines = ["X %d %s" % (step.index, p.setup_digest(step, spec, versions)) for step in spec.setup if step.index in ran]
    lines += ["C 1"] * created + ["X pending"] * pending
    return output_for(spec, **state).replace("END\n", "\n".join(lines + ["END", ""]))


def shop_plan(spec, **kwargs):
    return p.plan_inside(spec, st.parse_state(spec, shop_state(spec, **kwargs)))


def test_a_step_that_never_ran_runs_and_restarts_the_services():
    spec = shop()
    todo = shop_plan(spec, ran=(), created=False)
    assert todo.actions == ["setup shop[0]", "setup shop[1]", "restart onebox-shop"]
    assert shop_plan(spec).actions == []   # ran against all of this: nothing


@pytest.mark.parametrize("changes, runs", [
    ({"files": [dict(SHOP_ITEM["files"][0], content="django\nrequests\n"), SHOP_ITEM["files"][1]]}, ["setup shop[0]"]),
    ({"files": [SHOP_ITEM["files"][0], dict(SHOP_ITEM["files"][1], content="b\n")]}, []),   # a file it does not name
    ({"services": [dict(SHOP_ITEM["services"][0], environment={"MODE": "dev"})]}, ["setup shop[0]"]),
    ({"services": [dict(SHOP_ITEM["services"][0], environment={"MODE": "prod", "OTHER": "1"})]}, []),
    ({"setup": [dict(SHOP_ITEM["setup"][0], command="pip install -U -r requirements.txt"), SHOP_ITEM["setup"][1]]},
     ["setup shop[0]"]),   # the step itself changed
    ({"setup": [dict(SHOP_ITEM["setup"][0], user="root"), SHOP_ITEM["setup"][1]]}, ["setup shop[0]"]),
])
def test_a_step_runs_again_only_when_what_it_names_changed(changes, runs):
    before = shop()
    state = st.parse_state(before, shop_state(before))
    after = shop(**changes)
    todo = p.plan_inside(after, state)
    assert [a for a in todo.actions if a.startswith("setup")] == runs
    assert ("restart onebox-shop" in todo.actions) == bool(runs or todo.changed_files)


def test_a_package_whose_version_changed_or_that_is_being_installed_runs_its_step():
    spec = shop()
    state = st.parse_state(spec, shop_state(spec))
    state.versions["python3-venv"] = "3.11.2-6"    # upgraded since
    assert [a for a in p.plan_inside(spec, state).actions if a.startswith("setup")] == ["setup shop[0]"]
    state = st.parse_state(spec, shop_state(spec))
    del state.packages["python3-venv"], state.versions["python3-venv"]
    assert p.plan_inside(spec, state).actions[:2] == ["package python3-venv", "setup shop[0]"]


def test_a_missing_creates_runs_its_step_and_an_owed_restart_is_made():
    spec = shop()
    assert shop_plan(spec, created=False).actions == ["setup shop[1]", "restart onebox-shop"]
    assert shop_plan(spec, pending=True).actions == ["restart onebox-shop"]


def test_a_steps_user_must_exist_or_be_declared():
    spec = shop(setup=[dict(SHOP_ITEM["setup"][1], user="ghost")])
    with pytest.raises(ValidationError) as err:
        shop_plan(spec)
    assert err.value.field == "instances[0].setup[0].user" and "no such user in shop" in err.value.msg


def test_a_directory_in_when_changed_stands_for_every_declared_file_under_it(tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "views.py").write_text("v1\n")
    item = dict(SHOP_ITEM, files=SHOP_ITEM["files"] + [{"path": "/srv/shop/src", "src": str(tmp_path)}],
                setup=[{"command": "collectstatic", "when_changed": ["/srv/shop/src/app", "/srv/shop"]}])
    spec = spec_of(item)
    step = spec.setup[0]
    first = p.setup_digest(step, spec, {})
    assert [path for path, _state, _digest in p.declared_digests(spec, "/srv/shop/src/app")] == ["/srv/shop/src/app/views.py"]
    assert len(p.declared_digests(spec, "/srv/shop")) == 3
    (tmp_path / "app" / "views.py").write_text("v2\n")
    assert p.setup_digest(step, spec_of(item), {}) != first


def setup_lxd(spec, state_output, fail=None):
    """A FakeLxd whose shop prints ``state_output``; a setup step answers ``fail`` (rc, output) when given."""
    lxd = FakeLxd([{"name": "shop", "status": "Running"}])
    answer = lxd.on_exec

    def on_exec(name, command, kwargs):
        if is_state_script(command):
            return 0, state_output, ""
        if command[:3] == ["sh", "-c", p.SETUP_SCRIPT] and fail:
            return fail[0], fail[1], ""
        return answer(name, command, kwargs) if answer else None
    lxd.on_exec = on_exec
    return lxd


def test_steps_run_after_the_files_and_before_the_restart_as_their_user_with_the_environment():
    before = shop()
    spec = shop(files=[dict(SHOP_ITEM["files"][0], content="django\nrequests\n"), SHOP_ITEM["files"][1]],
                services=[dict(SHOP_ITEM["services"][0], command=["/srv/shop/venv/bin/uvicorn"])])
    lxd = setup_lxd(spec, shop_state(before).replace(before.services[0].unit_file.digest, "0" * 64))
    worker = provisioned(lxd, spec)
    worker.apply()
    calls = writes(lxd)
    kinds = [call[2] if call[0] == "push_file" else call[2][2].splitlines()[0] if call[2][:2] == ["sh", "-c"]
             else call[2][0] for call in calls]
    assert kinds == ["/srv/shop/requirements.txt", "/etc/systemd/system/onebox-shop.service",
                     "systemctl daemon-reload", "exec 2>&1", "set -e"]   # the new unit known before the step
    step_call = [call for call in lxd.calls if call[0] == "exec" and call[2][:3] == ["sh", "-c", p.SETUP_SCRIPT]]
    assert len(step_call) == 1
    argv = step_call[0][2]
    assert argv[4:9] == ["/srv/shop", "/var/lib/onebox/setup/shop.0", p.setup_digest(spec.setup[0], spec, worker.state.versions),
                         "600", ps.RESTART_PENDING]
    assert argv[9:] == ["setpriv", "--reuid=997", "--regid=997", "--init-groups", "--",
                        "/bin/sh", "-c", "pip install -r requirements.txt"]
    systemctl = calls[-1][2][2]
    assert "rm -f -- %s" % ps.RESTART_PENDING in systemctl and "systemctl daemon-reload" not in systemctl


def test_a_step_has_its_services_environment_and_its_users_home():
    spec = shop()
    lxd = setup_lxd(spec, shop_state(spec, ran=(1,)))
    seen = []
    answer = lxd.on_exec
    lxd.on_exec = lambda name, command, kwargs: seen.append(kwargs) or answer(name, command, kwargs)
    provisioned(lxd, spec).apply()
    [step] = [kw for kw in seen if kw["timeout"] == 600 + p.SETUP_GRACE]   # the package timeout, and some grace
    assert step["environment"] == {"PATH": p.SETUP_PATH, "HOME": "/srv/shop", "USER": "shop", "LOGNAME": "shop",
                                   "MODE": "prod"}


@pytest.mark.parametrize("rc, said", [(3, "exited 3"), (124, "did not finish within 600 s (its timeout)")])
def test_a_failing_step_fails_with_the_end_of_its_output_and_restarts_nothing(rc, said):
    spec = shop()
    output = "".join("line %d\n" % i for i in range(1, 31))
    lxd = setup_lxd(spec, shop_state(spec, ran=()), fail=(rc, output))
    worker = provisioned(lxd, spec)
    with pytest.raises(OneboxError) as err:
        worker.apply()
    msg = err.value.msg
    assert msg.startswith("in shop, instances[0].setup[0] (/bin/sh -c 'pip install -r requirements.txt') %s;" % said)
    assert msg.endswith("line 11\n" + "".join("line %d\n" % i for i in range(12, 31)).rstrip("\n")) and "line 10\n" not in msg
    assert err.value.details["field"] == "instances[0].setup[0]"
    assert not any("systemctl" in " ".join(call[2]) for call in writes(lxd) if call[0] == "exec"), "restarted"


# ---- the check after a (re)start ----------------------------------------------------------------------
FAKE_UNITS = """#!/bin/sh
# systemctl show -p ... -- UNIT: the properties in $PROPS_<unit without dots and dashes>; journalctl: two lines
case "$(basename "$0")" in
journalctl) echo "Dec 03 app[1]: Traceback (most recent call last)"; echo "Dec 03 app[1]: ModuleNotFoundError: x" ;;
systemctl) eval "unit=\\${$#}"; eval "printf '%s\\n' \\"\\$PROPS_$(echo "$unit" | tr -d '.-')\\"" | tr ' ' '\\n' ;;
esac
"""


def test_the_check_after_a_start_reads_systemd_and_the_journal_of_a_service_that_died(tmp_path, monkeypatch):
    """started_check_lines() run by a real sh against a fake systemctl and journalctl."""
    monkeypatch.setattr(p, "SETTLE_SECONDS", 0)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("systemctl", "journalctl"):
        (bin_dir / tool).write_text(FAKE_UNITS)
        (bin_dir / tool).chmod(0o755)
    spec = spec_of({"name": "a", "services": [{"name": "up", "command": ["/bin/up"]}, {"name": "down", "command": ["/bin/down"]},
                                              {"name": "nginx"}, {"name": "t.timer"}]})
    env = {"PATH": "%s:/usr/bin:/bin" % bin_dir,
           "PROPS_oneboxupservice": "ActiveState=active SubState=running NRestarts=0 Result=success",
           "PROPS_oneboxdownservice": "ActiveState=activating SubState=auto-restart NRestarts=1 Result=exit-code ExecMainStatus=1",
           "PROPS_nginxservice": "ActiveState=active SubState=exited NRestarts=0",   # a oneshot-like unit: fine
           "PROPS_ttimer": "ActiveState=active SubState=waiting"}
    output = subprocess.run(["sh", "-c", "\n".join(p.started_check_lines(spec.services))], capture_output=True,
                            text=True, timeout=10, env=env, check=True).stdout
    assert output.count("Traceback") == 1   # only the one that died has its journal read
    err = p.parse_started(spec.services, output, "a")
    assert err.details["failed_services"] == ["down"]
    assert err.msg.startswith("in a, service down (onebox-down.service, instances[0].services[1]) did not stay up: 0 s "
                              "after its start systemd says ActiveState=activating, SubState=auto-restart, NRestarts=1, "
                              "Result=exit-code, ExecMainStatus=1; the end of its journal (journalctl -u onebox-down.service "
                              "-n 20):\nDec 03 app[1]: Traceback")
    assert p.parse_started(spec.services[:1], output, "a") is None


def test_a_service_that_stays_up_is_not_reported_and_a_silent_one_is():
    svc = spec_of({"name": "a", "services": [{"name": "up", "command": ["/bin/up"]}]}).services
    assert p.parse_started(svc, "R0 ActiveState=active\nR0 SubState=running\nR0 NRestarts=0\n", "a") is None
    assert "systemd says nothing" in p.parse_started(svc, "", "a").msg


def test_a_service_waiting_to_be_restarted_is_started_and_checked():
    spec = spec_of({"name": "a", "services": [{"name": "nginx"}]})
    output = output_for(spec, units={"nginx.service": "enabled|active"}).replace(
        "S ActiveState=active", "S ActiveState=activating\nS SubState=auto-restart")
    assert p.plan_inside(spec, st.parse_state(spec, output)).actions == ["start nginx"]
