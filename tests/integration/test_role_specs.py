"""The roles' argument specs as Ansible uses them: `ansible-doc -t role` lists every role's
variables (each default of defaults/main.yml among them), and a wrong type or a bad choice fails
the role's first task - Ansible's argument validation - naming the variable, before any other task
runs; through site.yml too, where the host's set-up before it changes nothing.

(The specs against the defaults' values, the modules' specs and each other:
tests/unit/roles/test_argument_specs.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import RUN_PREFIX, ROOT, ansible_env, run_playbook

ROLES = ("backup", "base_image", "box", "lxd_host", "port_forward", "reverse_proxy", "service")
# The validation task, as the callback names it: "homelab.onebox.ROLE : Validating ... 'ENTRY POINT' - ...".
VALIDATION = "homelab.onebox.%s : Validating arguments against arg spec '%s' - "
OWNER = "%s-spec" % RUN_PREFIX


def defaults(role):
    with open(os.path.join(ROOT, "roles", role, "defaults", "main.yml"), encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def role_doc(role):
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-doc"), "-t", "role", "--json",
                           "homelab.onebox.%s" % role], cwd=ROOT, env=ansible_env(), capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["homelab.onebox.%s" % role]["entry_points"]


@pytest.mark.parametrize("role", ROLES)
def test_ansible_doc_lists_every_default(role):
    entry_points = role_doc(role)
    listed = entry_points["main"]["options"]
    missing = sorted(set(defaults(role)) - set(listed))
    assert not missing, "%s: defaults without a spec entry: %s" % (role, missing)
    for name, option in listed.items():
        assert option.get("description") and option.get("type"), (role, name)
    if role == "box":  # the entry points site.yml and upgrade.yml import
        assert set(entry_points) == {"main", "check.yml", "converge.yml"}
        assert "onebox_box_parallel" in entry_points["converge.yml"]["options"]
    else:
        assert set(entry_points) == {"main"}


def play(tmp_path, role, tasks_from=None):
    """A playbook running the role (or its entry point) on localhost; the variables come as extra vars."""
    if tasks_from:
        body = {"tasks": [{"name": "The entry point", "ansible.builtin.import_role": {
            "name": "homelab.onebox.%s" % role, "tasks_from": tasks_from}}]}
    else:
        body = {"roles": ["homelab.onebox.%s" % role]}
    path = tmp_path / ("%s-%s.yml" % (role, tasks_from or "main"))
    path.write_text(yaml.safe_dump([dict({"name": "A role with a wrong variable", "hosts": "localhost",
                                          "gather_facts": False}, **body)]))
    return str(path)


def ran(out):
    return [(task["task"]["name"], result) for play_ in out["plays"] for task in play_["tasks"]
            for result in task["hosts"].values() if not result.get("skipped")]


# (role, entry point, its variables, the variable the failure names, what the message says of it)
BAD = [
    ("box", None, {"onebox_box_parallel": "many"}, "onebox_box_parallel", "unable to convert to int"),
    ("box", None, {"onebox_box_state": "gone"}, "onebox_box_state", "one of: present, absent"),
    ("box", None, {"onebox_box_parts": ["containers", "everything"]}, "onebox_box_parts", "no match for: everything"),
    ("box", None, {"onebox_services": {"name": "x1"}}, "onebox_services", "unable to convert to list"),
    ("box", None, {"onebox_tls": {"email": "a@example.org", "key_type": "dsa"}}, "key_type", "one of: ecdsa, rsa"),
    ("box", "converge.yml", {"onebox_forward_backend": "iptables"}, "onebox_forward_backend", "one of: auto, nft, legacy"),
    ("box", "converge.yml", {"onebox_forward_systemd": "sometimes"}, "onebox_forward_systemd", "one of: auto"),
    ("box", "check.yml", {"onebox_services": [{"name": "x1"}], "onebox_allow_empty": "maybe"},
     "onebox_allow_empty", "unable to convert to bool"),
    ("lxd_host", None, {"onebox_lxd_host_daemon": "docker"}, "onebox_lxd_host_daemon", "one of: auto, lxd, incus"),
    ("lxd_host", None, {"onebox_lxd_host_waitready_timeout": "soon"}, "onebox_lxd_host_waitready_timeout",
     "unable to convert to int"),
    ("lxd_host", None, {"onebox_lxd_host_sysctl": ["vm.max_map_count"]}, "onebox_lxd_host_sysctl", "unable to convert to dict"),
    ("base_image", None, {"onebox_base_image_rebuild": "perhaps"}, "onebox_base_image_rebuild", "unable to convert to bool"),
    ("service", None, {"onebox_service_state": "gone"}, "onebox_service_state", "one of: present, absent"),
    ("reverse_proxy", None, {"onebox_proxy_autostart_priority": "high"}, "onebox_proxy_autostart_priority",
     "unable to convert to int"),
    ("port_forward", None, {"onebox_forward_state": "gone"}, "onebox_forward_state", "one of: present, absent"),
    ("backup", None, {"onebox_backup_action": "destroy"}, "onebox_backup_action", "one of: configure"),
    ("backup", None, {"onebox_backup": {"password": "x", "targets": [{"name": "disk"}]}}, "repository",
     "missing required arguments: repository"),
]


@pytest.mark.parametrize("role, tasks_from, variables, name, says", BAD,
                         ids=["%s-%s-%s" % (case[0], case[1] or "main", case[3]) for case in BAD])
def test_a_wrong_variable_fails_the_first_task_naming_it(tmp_path, role, tasks_from, variables, name, says):
    rc, out = run_playbook(play(tmp_path, role, tasks_from), dict(variables, onebox_owner=OWNER))
    assert rc != 0
    tasks = ran(out)
    # The validation is the only task that ran: nothing after it started, so nothing changed.
    assert len(tasks) == 1, [pair[0] for pair in tasks]
    task, result = tasks[0]
    assert task.startswith(VALIDATION % (role, tasks_from or "main")), task
    assert result.get("failed") and not result.get("changed")
    assert name in result["msg"] and says in result["msg"], result["msg"]


def owners_rules():
    """This test's owner's lines of iptables-save (its chains, its jumps' comments): other tests
    on the machine may change theirs meanwhile."""
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, timeout=30, check=True).stdout
    return [line for line in out.splitlines() if OWNER in line or OWNER.upper().replace("-", "_") in line]


def test_site_yml_stops_at_the_box_with_a_wrong_variable(lxd, tmp_path):
    """The host's set-up (lxd_host, base_image) runs first and changes nothing on a set-up host;
    the box's converge then fails at its validation, naming the variable: no container, no rule."""
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "all.yml").write_text(json.dumps({
        "onebox_owner": OWNER, "onebox_services": [{"name": "%s-web" % OWNER, "domains": ["spec.example.test"]}],
        "onebox_box_parallel": "many"}))
    (tmp_path / "hosts").write_text("localhost\n")
    rc, out = run_playbook("site.yml", inventory=str(tmp_path / "hosts"))
    assert rc != 0 and out["stats"]["localhost"]["changed"] == 0
    failed = [(task, result) for task, result in ran(out) if result.get("failed")]
    assert len(failed) == 1 and failed[0][0].startswith(VALIDATION % ("box", "converge.yml")), [pair[0] for pair in ran(out)]
    assert "onebox_box_parallel" in failed[0][1]["msg"]
    assert not [i["name"] for i in lxd.instances() if i["name"].startswith(OWNER)]
    assert owners_rules() == []
