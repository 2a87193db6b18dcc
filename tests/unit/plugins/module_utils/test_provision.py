"""_provision: the plan (what changes, what restarts) and the Provisioner's orchestration against the
in-memory LXD (check mode writes nothing, a failure names its container, an unchanged inside is left alone)."""
import pytest

from ansible_collections.homelab.onebox.plugins.module_utils import _provision as p
from ansible_collections.homelab.onebox.plugins.module_utils import _provision_spec as ps
from ansible_collections.homelab.onebox.plugins.module_utils import _provision_state as st
from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError, ValidationError

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
    assert writes(lxd)[-1][2][2].splitlines() == [
        "set -e", "systemctl daemon-reload", "systemctl enable --no-reload -- onebox-app.service nginx.service",
        "systemctl restart -- onebox-app.service nginx.service"]
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
    assert restart[2][2].splitlines()[1:] == ["systemctl restart -- onebox-app.service"]


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
