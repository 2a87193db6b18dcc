"""playbooks/host.yml (roles lxd_host + base_image) on this machine.

The test command runs the playbook once before pytest, so here the host is already set up: a run
must succeed and change nothing, check mode must predict nothing, and what the roles promise
(image alias, pool, bridge on a subnet of its own, default profile) must be there.

Against the daemon the run targets (conftest's DAEMON): LXD, or with ONEBOX_TEST_DAEMON=incus the
playbook with onebox_lxd_host_daemon=incus (Incus from bookworm-backports on Debian 12, beside
LXD), which must then have been run once before too."""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess

from conftest import CLI, DAEMON, ROOT, run_playbook

PLAYBOOK = os.path.join(ROOT, "playbooks", "host.yml")
# The same extra variables the test command passes (tests use nginx on the host); the daemon named
# only for Incus, so that the LXD run is the default one.
EXTRA_VARS = dict({"onebox_lxd_host_extra_packages": ["nginx-light"]},
                  **({"onebox_lxd_host_daemon": "incus"} if DAEMON == "incus" else {}))
ALIAS = "onebox-debian12"
POOL, NETWORK, PROFILE = "default", {"lxd": "lxdbr0", "incus": "incusbr0"}[DAEMON], "default"


def changed_tasks(out):
    """Names of the tasks that reported a change (or failed), for a readable assertion message."""
    names = []
    for play in out.get("plays", []):
        for task in play.get("tasks", []):
            for host, result in task.get("hosts", {}).items():
                if result.get("changed") or result.get("failed"):
                    names.append("%s: %s %s" % (host, task["task"]["name"],
                                                "FAILED %s" % result.get("msg", "") if result.get("failed") else ""))
    return names


# The task Ansible puts first in each role with an argument spec (meta/argument_specs.yml).
VALIDATION = "Validating arguments against arg spec"


def run_tasks(out):
    """Names of the tasks that ran (were not skipped) on some host, the roles' argument validations
    (one task per role, run on the controller) left out."""
    return ["%s: %s" % (host, task["task"]["name"])
            for play in out.get("plays", []) for task in play.get("tasks", [])
            for host, result in task.get("hosts", {}).items()
            if not result.get("skipped") and VALIDATION not in task["task"]["name"]]


def assert_no_change(rc, out):
    stats = out["stats"]["localhost"]
    assert rc == 0 and stats["failures"] == 0 and stats["unreachable"] == 0, changed_tasks(out)
    assert stats["changed"] == 0, changed_tasks(out)


def reported_backend(out):
    """The fact onebox_lxd_host_backend as lxd_host set it."""
    for play in out.get("plays", []):
        for task in play.get("tasks", []):
            for result in task.get("hosts", {}).values():
                backend = (result.get("ansible_facts") or {}).get("onebox_lxd_host_backend")
                if backend:
                    return backend
    raise AssertionError("no task set onebox_lxd_host_backend")


def test_second_run_changes_nothing():
    rc, out = run_playbook(PLAYBOOK, EXTRA_VARS)
    assert_no_change(rc, out)
    # The fast path: the os-release read, lxd_host's probe and the facts it sets; everything else
    # is skipped.
    ran = run_tasks(out)
    assert len(ran) <= 3, ran


def test_the_daemon_chosen_is_reported_to_later_roles():
    rc, out = run_playbook(PLAYBOOK, EXTRA_VARS)
    assert rc == 0
    backend = reported_backend(out)
    assert backend["daemon"] == DAEMON and backend["command"] == CLI and backend["network"] == NETWORK
    assert backend["socket"] == {"lxd": "/var/lib/lxd/unix.socket", "incus": "/var/lib/incus/unix.socket"}[DAEMON]
    assert os.path.exists(backend["socket"])
    if debian_release() == "12":  # LXD by default, Incus from backports when asked for
        assert backend["apt_release"] == ("bookworm-backports" if DAEMON == "incus" else "")


def debian_release():
    with open("/etc/os-release", encoding="utf-8") as handle:
        fields = dict(line.rstrip("\n").split("=", 1) for line in handle if "=" in line)
    return fields.get("VERSION_ID", "").strip('"')


def test_check_mode_predicts_nothing():
    rc, out = run_playbook(PLAYBOOK, EXTRA_VARS, check=True)
    assert_no_change(rc, out)
    ran = run_tasks(out)
    assert len(ran) <= 3, ran


def test_image_alias_exists(lxd):
    alias = lxd.image_alias(ALIAS)
    assert alias is not None, "image alias %s is missing" % ALIAS
    image = lxd.image(alias["target"])
    assert image["type"] == "container"
    props = image["properties"]
    assert props["os"] == "debian" and props["release"] == "bookworm"


def test_default_profile_uses_the_pool_and_the_bridge(lxd):
    devices = lxd.profile(PROFILE)["devices"]
    roots = [d for d in devices.values() if d.get("type") == "disk" and d.get("path") == "/"]
    assert roots and roots[0]["pool"] == POOL
    nics = [d for d in devices.values() if d.get("type") == "nic" and d.get("name") == "eth0"]
    assert nics and nics[0]["network"] == NETWORK


def test_bridge_is_managed_nat_and_its_subnet_is_routed_only_through_it(lxd):
    network = lxd.network(NETWORK)
    assert network["managed"] and network["type"] == "bridge"
    config = network["config"]
    assert config.get("ipv4.nat") == "true"
    subnet = ipaddress.ip_interface(config["ipv4.address"]).network
    routes = json.loads(subprocess.run(["ip", "-j", "route", "show", "table", "all"], capture_output=True,
                                       text=True, check=True, timeout=10).stdout)
    others = []
    for route in routes:
        dst = route.get("dst")
        if not dst or dst == "default" or ":" in dst:
            continue
        net = ipaddress.ip_network(dst, strict=False)
        if net.prefixlen and net.overlaps(subnet) and route.get("dev") != NETWORK:
            others.append(route)
    assert not others, "routes overlapping the bridge's subnet %s elsewhere: %s" % (subnet, others)


def test_storage_pool_exists():
    pool = json.loads(subprocess.run([CLI, "query", "/1.0/storage-pools/%s" % POOL], capture_output=True,
                                     text=True, check=True, timeout=30).stdout)
    assert pool["status"] == "Created"
