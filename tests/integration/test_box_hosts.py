"""The box's containers as inventory hosts, for real: a tiny box of its own (no domains, no forwards:
no proxy and no iptables) converged by the box role, its containers in a second play by their
groups with their variables and, through the homelab.onebox.lxd connection, a command in each;
a second run changing nothing; a container named like another inventory host refused; and
`ansible-inventory` with the homelab.onebox.box plugin listing exactly the owner's containers
(one without a mark and one of another owner beside them)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from conftest import DAEMON_DIR, RUN_PREFIX, ROOT, ansible_env, run_playbook

OWNER = "%s-hosts" % RUN_PREFIX
OWNER_GROUP = "onebox_owner_%s" % OWNER.replace("-", "_")
DB = "%s-hs-db" % RUN_PREFIX
POOL = "%s-hs-web" % RUN_PREFIX
MEMBERS = ["%s-1" % POOL, "%s-2" % POOL]
SERVICES = [{"name": DB, "kind": "internal"}, {"name": POOL, "kind": "pool", "count": 2}]
IMAGE = "onebox-debian12"


def box_play(state="present"):
    return {"name": "The box", "hosts": "localhost", "gather_facts": False,
            "roles": [{"role": "homelab.onebox.box", "vars": {
                "onebox_owner": OWNER, "onebox_services": SERVICES, "onebox_box_state": state, "onebox_purge": True,
                # the containers and their insides: a box without domains or forwards needs no more
                "onebox_box_parts": ["containers", "insides"]}}]}


def playbook(tmp_path):
    """The box, then a play on the pool's group that only reads variables, then a command in each
    container through the connection."""
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump([box_play(), {
        "name": "The pool's containers", "hosts": "onebox_%s" % POOL.replace("-", "_"), "gather_facts": False,
        "tasks": [
            {"name": "vars", "ansible.builtin.debug": {"msg": {
                "groups": "{{ group_names }}", "service": "{{ onebox_service }}", "kind": "{{ onebox_kind }}",
                "owner": "{{ onebox_owner }}", "address": "{{ onebox_address }}", "port": "{{ onebox_port }}",
                "domains": "{{ onebox_domains }}", "connection": "{{ ansible_connection }}",
                "url": "{{ onebox_lxd_url }}", "pool": "{{ groups['onebox_kind_pool'] | sort }}"}}},
            {"name": "fact", "ansible.builtin.set_fact": {"seen_as": "{{ inventory_hostname }}"}},
            {"name": "hostname", "ansible.builtin.raw": "hostname", "changed_when": False},
        ]}]))
    return str(path)


def tasks(out, play):
    """A play's tasks by name (a role's without its ``ROLE : `` prefix)."""
    return {task["task"]["name"].split(" : ", 1)[-1]: task for task in out["plays"][play]["tasks"]}


def failed_tasks(out):
    return [(t["task"]["name"].split(" : ", 1)[-1], h.get("msg")) for p in out["plays"] for t in p["tasks"] for h in t["hosts"].values()
            if h.get("failed") or h.get("unreachable")]


@pytest.fixture(scope="module")
def box(lxd, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hosts")
    try:
        started = time.monotonic()
        first = run_playbook(playbook(tmp), timeout=600)
        first_seconds = time.monotonic() - started
        started = time.monotonic()
        second = run_playbook(playbook(tmp), timeout=600)
        yield {"tmp": tmp, "first": first, "second": second, "first_seconds": first_seconds,
               "second_seconds": time.monotonic() - started}
    finally:
        path = tmp / "teardown.yml"
        path.write_text(yaml.safe_dump([box_play("absent")]))
        rc, out = run_playbook(str(path))
        assert rc == 0, failed_tasks(out)
        assert [i["name"] for i in lxd.instances() if (i.get("config") or {}).get("user.onebox.owner") == OWNER] == []


def test_the_second_play_finds_the_pool_by_its_group_with_its_variables(box, lxd):
    rc, out = box["first"]
    assert rc == 0, failed_tasks(out)
    seen = {host: result["msg"] for host, result in tasks(out, 1)["vars"]["hosts"].items()}
    assert sorted(seen) == MEMBERS
    addresses = {i["name"]: lxd.ipv4_addresses(i.get("state")) for i in lxd.instances(state=True)}
    for member in MEMBERS:
        found = seen[member]
        assert sorted(found["groups"]) == sorted(["onebox", OWNER_GROUP, "onebox_kind_pool", "onebox_%s" % POOL.replace("-", "_")])
        assert (found["service"], found["kind"], found["owner"], found["domains"]) == (POOL, "pool", OWNER, [])
        assert found["address"] == addresses[member][0] and int(found["port"]) == 80
        # the play host is reached locally: the containers through the same daemon's socket
        assert found["connection"] == "homelab.onebox.lxd" and found["url"] == "unix:%s/unix.socket" % DAEMON_DIR
        assert set(MEMBERS) <= set(found["pool"])
    assert {h: r["ansible_facts"]["seen_as"] for h, r in tasks(out, 1)["fact"]["hosts"].items()} == {m: m for m in MEMBERS}
    # through the connection, in the container itself
    assert {h: r["stdout"].strip() for h, r in tasks(out, 1)["hostname"]["hosts"].items()} == {m: m for m in MEMBERS}


def test_the_marks_are_on_the_containers_and_a_second_run_changes_nothing(box, lxd):
    config = lxd.instance(DB, state=False)["config"]
    assert config["user.onebox.service"] == DB and json.loads(config["user.onebox.host"])["kind"] == "internal"
    rc, out = box["second"]
    assert rc == 0, failed_tasks(out)
    assert out["stats"]["localhost"]["changed"] == 0, [
        (name, result) for name, task in tasks(out, 0).items() for result in task["hosts"].values() if result.get("changed")]
    added = tasks(out, 0)["The box's containers as inventory hosts (ansible_connection homelab.onebox.lxd)"]
    assert sorted(r["add_host"]["host_name"] for r in added["hosts"]["localhost"]["results"]) == sorted([DB] + MEMBERS)
    # what the hosts cost a run that changes nothing: the check, the daemon per play host, the add_host loop
    cost = sum(t["task"].get("duration", 0) for name, t in tasks(out, 0).items()
               if name.startswith(("No container of the box", "The box's containers")))
    print("\nbox_hosts: no-change run %.1f s (first %.1f s); the hosts' three tasks %.3f s for 3 containers"
          % (box["second_seconds"], box["first_seconds"], cost))
    assert cost < 2


def test_a_container_named_like_another_inventory_host_is_refused_before_any_is_added(box):
    inventory = box["tmp"] / "inventory.yml"
    hosts = {"localhost": {"ansible_connection": "local"}, DB: {"ansible_host": "192.0.2.1"}}
    inventory.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    path = box["tmp"] / "box-only.yml"
    path.write_text(yaml.safe_dump([box_play()]))
    rc, out = run_playbook(str(path), inventory=str(inventory))
    assert rc != 0
    names = [name for name, _msg in failed_tasks(out)]
    assert names == ["No container of the box is named like another inventory host"], failed_tasks(out)
    assert "%s: already an inventory host" % DB in failed_tasks(out)[0][1]
    assert "The box's containers as inventory hosts (ansible_connection homelab.onebox.lxd)" not in tasks(out, 0)


@pytest.fixture
def strangers(lxd, instance_names):
    """A container without an owner's mark and one of another owner, beside the box."""
    bare, other = instance_names("bare"), instance_names("other")
    lxd.create_instance({"name": bare, "type": "container", "source": {"type": "image", "alias": IMAGE},
                         "config": {"user.onebox.service": POOL}})
    lxd.create_instance({"name": other, "type": "container", "source": {"type": "image", "alias": IMAGE},
                         "config": {"user.onebox.owner": "%s-other" % RUN_PREFIX, "user.onebox.service": "x"}})
    return bare, other


def ansible_inventory(tmp, text):
    path = tmp / "box.onebox.yml"
    path.write_text("plugin: homelab.onebox.box\n" + text)
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-inventory"), "-i", str(path), "--list"],
                          cwd=ROOT, env=dict(ansible_env(), ANSIBLE_STDOUT_CALLBACK="default"),
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and "WARNING" not in proc.stderr, proc.stderr
    # ansible-inventory marks an inventory plugin's text as not to be templated: {"__ansible_unsafe": TEXT}
    return json.loads(proc.stdout, object_hook=lambda d: d["__ansible_unsafe"] if set(d) == {"__ansible_unsafe"} else d)


def children(listed, group):
    return sorted((listed.get(group) or {}).get("hosts") or [])


def test_the_inventory_plugin_lists_exactly_the_owners_containers_as_the_role_adds_them(box, strangers, lxd):
    bare, other = strangers
    listed = ansible_inventory(box["tmp"], "owners: [%s]\n" % OWNER)
    assert sorted(listed["_meta"]["hostvars"]) == sorted([DB] + MEMBERS)
    assert children(listed, OWNER_GROUP) == sorted([DB] + MEMBERS) == children(listed, "onebox")
    assert children(listed, "onebox_kind_pool") == MEMBERS and children(listed, "onebox_kind_internal") == [DB]
    assert children(listed, "onebox_%s" % POOL.replace("-", "_")) == MEMBERS
    # the variables the role gave the same containers in the playbook's second play
    seen = {host: result["msg"] for host, result in tasks(box["first"][1], 1)["vars"]["hosts"].items()}
    for member in MEMBERS:
        hostvars = listed["_meta"]["hostvars"][member]
        assert hostvars["onebox_address"] == seen[member]["address"] and hostvars["onebox_service"] == POOL
        assert hostvars["ansible_connection"] == "homelab.onebox.lxd" and "onebox_lxd_url" not in hostvars
    # every owner: the other owner's container is listed, the unmarked one never
    everything = ansible_inventory(box["tmp"], "")
    assert other in everything["_meta"]["hostvars"] and bare not in everything["_meta"]["hostvars"]
    assert set([DB] + MEMBERS) <= set(everything["_meta"]["hostvars"])
    running = ansible_inventory(box["tmp"], "owners: [%s, %s-other]\nstates: [Stopped]\n" % (OWNER, RUN_PREFIX))
    assert sorted(running["_meta"]["hostvars"]) == [other]   # created, never started
