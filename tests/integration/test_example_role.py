"""examples/role_in_container.yml against the real thing: the box of
examples/inventories/role-in-container built (play 1, homelab.onebox.site), its container added to
the running inventory, and the example role (examples/roles/notes) applied inside it through the
homelab.onebox.lxd connection (play 2); checked from the host over the daemon's API (the ``lxd``
fixture), not through the connection under test.

The example's description as written, under this run's owner and a container name of its own
(RUN_PREFIX), so it runs beside any other box; the box is torn down with its volumes (purge) at the
end, also when a test failed."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, RUN_PREFIX, ansible_env

INVENTORY = os.path.join(ROOT, "examples", "inventories", "role-in-container")
PLAYBOOK = os.path.join(ROOT, "examples", "role_in_container.yml")
TEARDOWN = os.path.join(ROOT, "playbooks", "teardown.yml")
OWNER = "%s-notes" % RUN_PREFIX
NAME = "%s-notes" % RUN_PREFIX
GROUP = "onebox_%s" % NAME.replace("-", "_")  # a group name has no "-" (homelab.onebox's hosts)
CONFIG = "/etc/notes/httpd.conf"
NOTE = "/var/lib/notes/www/index.html"
# The role's variables given here (the rest its defaults): only loopback may read the notes.
ROLE_VARS = {"notes_allow": ["127.0.0.1"], "notes_title": "Notes of %s" % RUN_PREFIX}
CONFIG_TEXT = """# Ansible managed
# busybox httpd's configuration for the notes service (the notes role): who may read, and the
# content types of what it serves. Read by the service as notes at start.
A:127.0.0.1
D:*
.md:text/markdown; charset=utf-8
.txt:text/plain; charset=utf-8
.html:text/html; charset=utf-8
"""


def described():
    """The example inventory's description with this run's owner and container name."""
    with open(os.path.join(INVENTORY, "group_vars", "all.yml"), encoding="utf-8") as handle:
        example = yaml.safe_load(handle)
    services = example["onebox_services"]
    assert [service["name"] for service in services] == ["notes"], services
    return {"onebox_owner": OWNER, "onebox_services": [dict(services[0], name=NAME)]}


def playbook(path, extra, check=False, timeout=900):
    """(returncode, the JSON callback's document, stderr) of ansible-playbook on the example's
    inventory. Not conftest.run_playbook: its -e ansible_python_interpreter (the controller's
    Python) would reach the containers too, and -c local would be the plays' default."""
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", INVENTORY, path,
           "-e", json.dumps(extra)] + (["--check"] if check else [])
    proc = subprocess.run(cmd, cwd=ROOT, env=ansible_env(), capture_output=True, text=True, timeout=timeout, check=False)
    try:
        return proc.returncode, json.loads(proc.stdout), proc.stderr
    except ValueError:
        raise AssertionError("ansible-playbook gave no JSON (rc %s)\nstdout:\n%s\nstderr:\n%s"
                             % (proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:]))


def example(check=False):
    """The example playbook on this run's box; the run's document, after it passed."""
    returncode, out, stderr = playbook(PLAYBOOK, dict(described(), notes_hosts=GROUP, **ROLE_VARS), check=check)
    failed = {host: stats for host, stats in out["stats"].items() if stats["failures"] or stats["unreachable"]}
    assert returncode == 0 and not failed, "rc %s, %s\n%s\n%s" % (returncode, failed, failures(out), stderr[-3000:])
    return out


def failures(out):
    return [(task["task"]["name"], host, result.get("msg"))
            for play in out["plays"] for task in play["tasks"]
            for host, result in task["hosts"].items() if result.get("failed") or result.get("unreachable")]


def changed_tasks(out, host):
    """The names of the tasks (handlers too) that changed ``host``."""
    return [task["task"]["name"] for play in out["plays"] for task in play["tasks"]
            if task["hosts"].get(host, {}).get("changed")]


def inside(lxd, *command):
    result = lxd.exec(NAME, list(command), timeout=60)
    assert result.rc == 0, (command, result)
    return result.stdout


def owned(lxd):
    return sorted(i["name"] for i in lxd.instances() if (i.get("config") or {}).get("user.onebox.owner") == OWNER)


@pytest.fixture(scope="module")
def first(lxd):
    """The example's first run (the box and the role); the box purged at the end, whatever happened."""
    try:
        yield example()
    finally:
        returncode, out, stderr = playbook(TEARDOWN, dict(described(), onebox_purge=True))
        assert returncode == 0, "teardown: rc %s\n%s\n%s" % (returncode, failures(out), stderr[-3000:])
        assert owned(lxd) == []


def test_the_container_became_a_host_and_the_role_ran_in_it(first):
    assert first["stats"][NAME]["changed"] > 0, first["stats"]
    role_play = first["plays"][-1]
    ran = {task["task"]["name"] for task in role_play["tasks"] if NAME in task["hosts"]}
    assert {"notes : The package is installed", "notes : The service is enabled and running"} <= ran, ran


def test_the_package_is_installed(first, lxd):
    assert inside(lxd, "dpkg-query", "-W", "-f", "${Status}", "busybox") == "install ok installed"


def test_the_configuration_has_its_content_and_mode(first, lxd):
    assert inside(lxd, "cat", CONFIG) == CONFIG_TEXT
    assert inside(lxd, "stat", "-c", "%a %U %G", CONFIG) == "640 root notes\n"


def test_the_unit_is_enabled_active_and_runs_as_the_user(first, lxd):
    assert inside(lxd, "systemctl", "is-active", "notes") == "active\n"
    assert inside(lxd, "systemctl", "is-enabled", "notes") == "enabled\n"
    assert inside(lxd, "ps", "-o", "user=", "-C", "busybox").split() == ["notes"]


def test_the_service_serves_the_note_under_its_configuration(first, lxd):
    page = inside(lxd, "curl", "-sS", "--max-time", "5", "http://127.0.0.1:8080/")
    assert "<h1>Notes of %s</h1>" % RUN_PREFIX in page
    # From the host (not loopback to the service), the configuration's D:* answers 403.
    address = lxd.wait_ipv4(NAME, timeout=30)[0][0]
    code = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                           "http://%s:8080/" % address], capture_output=True, text=True, timeout=30, check=False).stdout
    assert code == "403"


def test_the_file_written_as_the_become_user_is_the_users(first, lxd):
    assert inside(lxd, "stat", "-c", "%U %G %a", NOTE) == "notes notes 644\n"
    assert inside(lxd, "getent", "passwd", "notes").split(":")[5:] == ["/var/lib/notes", "/usr/sbin/nologin\n"]


def test_a_second_run_changes_nothing(first):
    again = example()
    assert changed_tasks(again, NAME) == [] and again["stats"][NAME]["changed"] == 0, again["stats"]
    assert again["stats"]["localhost"]["changed"] == 0, changed_tasks(again, "localhost")


def test_check_mode_predicts_a_hand_edit_back_and_changes_nothing(first, lxd):
    inside(lxd, "sh", "-c", "echo A:10.0.0.0/8 >> %s" % CONFIG)
    edited = CONFIG_TEXT + "A:10.0.0.0/8\n"
    predicted = example(check=True)
    assert "notes : The service's configuration is written" in changed_tasks(predicted, NAME), predicted["stats"]
    assert inside(lxd, "cat", CONFIG) == edited
    assert inside(lxd, "stat", "-c", "%a %U %G", CONFIG) == "640 root notes\n"
    # A real run puts it back (and restarts the service through the handler).
    fixed = example()
    assert {"notes : The service's configuration is written", "notes : Restart notes"} <= set(changed_tasks(fixed, NAME))
    assert inside(lxd, "cat", CONFIG) == CONFIG_TEXT
    assert inside(lxd, "systemctl", "is-active", "notes") == "active\n"
