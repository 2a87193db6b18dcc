"""_provision: the plan (what changes, what restarts)."""
import pytest

from ansible_collections.homelab.onebox.plugins.module_utils import _provision as p
from ansible_collections.homelab.onebox.plugins.module_utils import _provision_spec as ps
from ansible_collections.homelab.onebox.plugins.module_utils import _provision_state as st
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError

from unit.plugins.module_utils.test_provision_spec import spec_of


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

