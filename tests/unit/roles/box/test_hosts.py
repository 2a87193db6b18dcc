"""The box role's hosts block (tasks/converge.yml) run by ansible-playbook on the controller with
the box module's result given: the daemon each play host's containers are reached through (its
socket when the play runs locally, ssh://HOST over SSH, an https:// URL as given), the daemon's
variables only when set, and a container named like another inventory host refused before any is
added. Nothing connects anywhere: assert and add_host run on the controller."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
SOCKET = "unix:/var/lib/lxd/unix.socket"


def result(url, *names, owner="box"):
    """The box module's result: its daemon and hosts (groups as _box_hosts makes them)."""
    return {"lxd_url": url, "hosts": [
        {"name": name, "groups": ["onebox", "onebox_owner_" + owner, "onebox_kind_internal", "onebox_db"],
         "vars": {"onebox_owner": owner, "onebox_service": "db", "onebox_kind": "internal", "onebox_domains": [],
                  "onebox_routes": [], "onebox_port": None, "onebox_host_port": None, "onebox_forwards": [],
                  "onebox_address": "10.0.0.%d" % (index + 2)}} for index, name in enumerate(names)]}


INVENTORY = {"all": {
    "vars": {"onebox_box_hosts": True, "onebox_box_state": "present", "onebox_lxd_client_cert": None,
             "onebox_lxd_client_key": None, "onebox_lxd_verify": None, "onebox_lxd_project": None},
    "hosts": {
        "near": {"ansible_connection": "local", "onebox_owner": "box", "onebox_box": result(SOCKET, "n1", "n2")},
        "far": {"ansible_connection": "ssh", "ansible_host": "192.0.2.7", "onebox_owner": "far",
                "onebox_box": result("unix:/var/lib/incus/unix.socket", "f1", owner="far")},
        "web": {"ansible_connection": "ssh", "ansible_host": "192.0.2.8", "onebox_owner": "web",
                "onebox_lxd_url": "https://box.test:8443", "onebox_lxd_verify": False, "onebox_lxd_project": "p",
                "onebox_box": result("https://box.test:8443", "w1", owner="web")},
        "clash": {"ansible_connection": "local", "onebox_owner": "clash",
                  "onebox_box": result(SOCKET, "c1", "near", owner="clash")},
        "again": {"ansible_connection": "local", "onebox_owner": "box", "onebox_box": result(SOCKET, "n1")},
    }}}


def hosts_tasks():
    """converge.yml after the box module's call, without the forwards' unit."""
    with open(os.path.join(ROOT, "roles", "box", "tasks", "converge.yml"), encoding="utf-8") as handle:
        tasks = yaml.safe_load(handle)
    return [task for task in tasks[1:] if "include_tasks" not in str(task)]


def run(tmp_path):
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(INVENTORY))
    (tmp_path / "play.yml").write_text(yaml.safe_dump([
        {"hosts": "near,far,web,clash", "gather_facts": False, "tasks": hosts_tasks()},
        {"hosts": "again", "gather_facts": False, "tasks": hosts_tasks()},   # after near added n1
        {"hosts": "localhost", "gather_facts": False, "tasks": [{"ansible.builtin.debug": {"msg": (
            "{{ dict(groups['onebox'] | sort | zip(groups['onebox'] | sort | map('extract', hostvars) | map('dict2items')"
            " | map('selectattr', 'key', 'match', '^(onebox_lxd_|ansible_connection$|onebox_owner$)') | map('items2dict')))"
            " }}")}}]}]))
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_STDOUT_CALLBACK="onebox_json",
               ANSIBLE_CALLBACK_PLUGINS=os.path.join(ROOT, "tests", "plugins", "callback"), ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="0", ANSIBLE_LOCALHOST_WARNING="0")
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i",
                           str(tmp_path / "inventory.yml"), str(tmp_path / "play.yml"),
                           "-e", "ansible_python_interpreter=%s" % sys.executable],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    return json.loads(proc.stdout)


def test_each_play_hosts_containers_reach_its_daemon_and_a_clash_adds_nothing(tmp_path):
    out = run(tmp_path)
    # (the inventory's group variables, null, apply to them too: only what is set is compared)
    added = {name: {key: value for key, value in found.items() if value is not None}
             for name, found in out["plays"][-1]["tasks"][0]["hosts"]["localhost"]["msg"].items()}
    assert sorted(added) == ["f1", "n1", "n2", "w1"]   # not c1: its box has a container named like "near"
    assert added["n1"] == {"ansible_connection": "homelab.onebox.lxd", "onebox_lxd_url": SOCKET, "onebox_owner": "box"}
    # over SSH the socket is that host's: the connection is told where the daemon is, and says it cannot reach it
    assert added["f1"]["onebox_lxd_url"] == "ssh://192.0.2.7"
    assert added["w1"] == {"ansible_connection": "homelab.onebox.lxd", "onebox_lxd_url": "https://box.test:8443",
                           "onebox_lxd_verify": False, "onebox_lxd_project": "p", "onebox_owner": "web"}
    failed = {name: result for play in out["plays"] for task in play["tasks"] for name, result in task["hosts"].items()
              if result.get("failed")}
    assert list(failed) == ["clash"] and failed["clash"]["msg"].startswith("near: already an inventory host")
    # the same box's container, added before, is its own (again re-adds n1 without a refusal)
    assert out["stats"]["again"]["failures"] == 0 and out["stats"]["again"]["changed"] == 0
