"""lxd_provision's manager against the in-memory LXD: every container read and planned before any
change, check mode writing nothing, a failure in one container reported with its name while the
others finish."""
from types import SimpleNamespace

import pytest

from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError, ValidationError
from ansible_collections.homelab.onebox.plugins.modules.lxd_provision import ProvisionManager

from unit.plugins.module_utils.test_provision import converged, inside_lxd, writes
from unit.plugins.module_utils.test_provision_spec import spec_of

WEB = {"name": "web", "files": [{"path": "/var/www/html/index.html", "content": "<h1>hi</h1>\n"}],
       "services": [{"name": "nginx"}]}
APP = {"name": "app", "files": [{"path": "/srv/app/app.py", "content": "print(1)\n"}],
       "services": [{"name": "app", "command": ["/usr/bin/python3", "/srv/app/app.py"],
                     "environment": {"TOKEN": "t0k"}}]}


def run(lxd, items, check=False, diff=False):
    module = SimpleNamespace(params={"instances": items, "parallel": 4, "timeout": 30, "package_timeout": 60},
                             lxd=lxd, check_mode=check, _diff=diff)
    return ProvisionManager(module).run()


def fresh(*items):
    """A FakeLxd whose containers have nothing of ``items`` yet but their units (enabled, stopped)."""
    return inside_lxd({item["name"]: (spec_of(item), dict(units={"nginx.service": "enabled|inactive"}))
                       for item in items})


def test_check_mode_reads_and_predicts_but_runs_no_writing_command():
    lxd = fresh(WEB, APP)
    result = run(lxd, [WEB, APP], check=True, diff=True)
    assert writes(lxd) == []
    assert [r["actions"] for r in result["instances"]] == [
        ["file /var/www/html/index.html", "start nginx"],
        ["file /srv/app/app.py", "unit onebox-app", "environment onebox-app", "daemon-reload", "enable onebox-app",
         "start onebox-app"]]
    assert result["changed"] is True and all("diff" not in r for r in result["instances"])
    assert result["diff"][0]["after"]["web"] == {"/var/www/html/index.html": "<h1>hi</h1>\n"}
    assert result["diff"][0]["after"]["app"]["/etc/onebox/app.env"].endswith("TOKEN=********\n")


def test_the_same_run_outside_check_mode_writes_what_it_predicted():
    lxd = fresh(WEB, APP)
    result = run(lxd, [WEB, APP])
    assert result["changed"] is True and "diff" not in result
    assert lxd.files[("web", "/var/www/html/index.html")] == b"<h1>hi</h1>\n"
    assert sorted(path for _name, path in lxd.files) == [
        "/etc/onebox/app.env", "/etc/systemd/system/onebox-app.service", "/srv/app/app.py", "/var/www/html/index.html"]


def test_an_unchanged_inside_makes_no_write():
    specs = {item["name"]: spec_of(item) for item in (WEB, APP)}
    lxd = inside_lxd({name: (spec, converged(spec)) for name, spec in specs.items()})
    result = run(lxd, [WEB, APP], diff=True)
    assert writes(lxd) == [] and lxd.names("pull_file") == []
    assert result == {"changed": False, "diff": [{"before_header": "inside the containers",
                                                  "after_header": "inside the containers", "before": {}, "after": {}}],
                      "instances": [{"name": "web", "changed": False, "actions": []},
                                    {"name": "app", "changed": False, "actions": []}]}


def test_a_failure_in_one_container_is_reported_with_its_name_and_the_others_finish():
    lxd = fresh(WEB, APP)
    lxd.fail("push_file", "web")
    with pytest.raises(OneboxError) as err:
        run(lxd, [WEB, APP])
    assert err.value.msg == "web: push_file instance web: fake failure"
    assert err.value.details["failed_instances"] == ["web"]
    assert [r["name"] for r in err.value.details["instances"]] == ["web", "app"]
    app_commands = [" ".join(call[2]) for call in writes(lxd) if call[0] == "exec" and call[1] == "app"]
    assert ("app", "/srv/app/app.py") in lxd.files and any("systemctl" in command for command in app_commands)


def test_a_refusal_in_any_container_stops_the_run_before_any_change():
    lxd = fresh(WEB, APP)
    ghost = dict(APP, files=[{"path": "/srv/app/app.py", "content": "", "owner": "ghost"}])
    with pytest.raises(ValidationError) as err:
        run(lxd, [WEB, ghost])
    assert err.value.field == "instances[1].files[0].owner"
    assert writes(lxd) == []


def test_a_stopped_or_missing_container_is_refused_before_it_is_read():
    lxd = fresh(WEB)
    lxd.add("app")   # stopped
    with pytest.raises(ValidationError, match="container is Stopped"):
        run(lxd, [WEB, APP])
    assert lxd.names("exec") == []


def test_setup_steps_as_the_module_passes_them_are_predicted_in_check_mode_and_run_none():
    # Every option of a step present, as AnsibleModule fills them in.
    step = {"command": "pip install -r /srv/app/requirements.txt", "when_changed": ["/srv/app/app.py", "TOKEN"],
            "creates": None, "user": None, "timeout": None, "service": "app"}
    app = dict(APP, setup=[step], services=[dict(APP["services"][0], open_files=None)])
    lxd = fresh(app)
    result = run(lxd, [app], check=True)
    assert writes(lxd) == []
    assert result["instances"][0]["actions"][-3:] == ["setup app[0]", "enable onebox-app", "start onebox-app"]
