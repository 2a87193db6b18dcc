"""A service's setup steps and its process against the real LXD (homelab.onebox.box run through
ansible): a step runs once, as the service's user in its directory with its environment, not again
on a second run nor for a file it does not name, again when a file it names changes or what it
creates is gone; check mode only says it would run; a failing step fails the converge with the end
of its output and the version already running keeps answering; a command that exits at once fails
the converge naming the service with its journal (on the next run too); open_files is the running
process's limit.

The box has an owner of its own, one internal service (a small Python HTTP server that answers the
version it read when it started) and only the containers and insides parts; everything is removed
at the end, even when a test fails."""
from __future__ import annotations

import subprocess
import time
import urllib.request

import pytest

from conftest import RUN_PREFIX, delete_instance_quietly, run_module

OWNER = "%s-setup" % RUN_PREFIX
APP = "%s-su-app" % RUN_PREFIX
HOME = "/srv/%s" % APP
PORT = 8080
OPEN_FILES = 4242
# Answers "VERSION GREETING": the version read once, at start (a new one answers only once restarted).
SERVER = """import http.server, os
VERSION = open("version").read().strip()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("%s %s" % (VERSION, os.environ.get("GREETING", ""))).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("", 8080), Handler).serve_forever()
"""
# Who ran the step, where, with which environment: one line a run.
RECORD = 'printf "%s %s %s\\n" "$(id -un)" "$(pwd)" "$GREETING" >> setup.log'


def service(version="v1", requirements="flask\n", notes="a\n", setup=None, command=None):
    return {
        "name": APP, "kind": "internal", "port": PORT, "open_files": OPEN_FILES,
        "command": command or ["/usr/bin/python3", "%s/server.py" % HOME],
        "environment": {"GREETING": "hello"},
        "files": [{"path": "%s/server.py" % HOME, "content": SERVER},
                  {"path": "%s/version" % HOME, "content": version + "\n"},
                  {"path": "%s/requirements.txt" % HOME, "content": requirements},
                  {"path": "%s/notes.txt" % HOME, "content": notes}],
        "setup": setup or [
            {"command": RECORD, "when_changed": ["%s/requirements.txt" % HOME, "GREETING"]},
            {"command": ["touch", "%s/made" % HOME], "creates": "%s/made" % HOME, "user": "root"}],
    }


def args(**kwargs):
    return {"owner": OWNER, "parts": ["containers", "insides"], "services": [service(**kwargs)]}


def sh(script, check=True):
    return subprocess.run(["lxc", "exec", APP, "--", "sh", "-c", script], capture_output=True, text=True,
                          timeout=60, check=check)


def runs():
    return sh("cat %s/setup.log" % HOME).stdout.splitlines()


def setups(result):
    [inside] = result["provision"]
    return [a for a in inside["actions"] if a.startswith("setup")]


def ok(result, changed=True):
    assert not result.get("failed"), result.get("msg", result)
    assert result["changed"] is changed, result
    return result


def answer(lxd, seconds=10):
    """What the service answers from the host, at its container's address (retried while it starts)."""
    address = lxd.ipv4_addresses(lxd.instance_state(APP))[0]
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen("http://%s:%d/" % (address, PORT), timeout=2) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def built(lxd):
    try:
        yield ok(run_module("box", args(), timeout=600))
    finally:
        run_module("box", {"owner": OWNER, "state": "absent", "purge": True})
        delete_instance_quietly(lxd, APP)
        assert lxd.instance(APP) is None


def test_the_steps_run_once_as_the_service_user_in_its_directory_with_its_environment(built, lxd):
    assert setups(built) == ["setup %s[0]" % APP, "setup %s[1]" % APP]
    assert runs() == ["%s %s hello" % (APP, HOME)]
    assert sh("test -e %s/made" % HOME, check=False).returncode == 0
    assert answer(lxd) == "v1 hello"
    # What each step last ran against: root's alone.
    assert sh("stat -c '%a %U' /var/lib/onebox/setup /var/lib/onebox/setup/{0}.0".format(APP)).stdout.split() == [
        "700", "root", "600", "root"]


def test_a_second_run_runs_nothing_and_changes_nothing(built):
    again = ok(run_module("box", args()), changed=False)
    assert setups(again) == [] and runs() == ["%s %s hello" % (APP, HOME)]


def test_open_files_is_the_limit_of_the_running_process(built):
    pid = sh("systemctl show -p MainPID --value onebox-%s" % APP).stdout.strip()
    limits = sh("cat /proc/%s/limits" % pid).stdout
    assert [line.split()[3:5] for line in limits.splitlines() if line.startswith("Max open files")] == [
        [str(OPEN_FILES), str(OPEN_FILES)]], limits


def test_a_file_the_step_does_not_name_runs_nothing_and_a_missing_creates_runs_its_step(built):
    sh("rm %s/made" % HOME)
    result = ok(run_module("box", args(notes="b\n")))
    assert setups(result) == ["setup %s[1]" % APP] and len(runs()) == 1
    assert sh("test -e %s/made" % HOME, check=False).returncode == 0


def test_a_file_the_step_names_runs_it_again_check_mode_only_says_so(built, lxd):
    predicted = ok(run_module("box", args(notes="b\n", requirements="flask\ndjango\n"), check=True))
    assert setups(predicted) == ["setup %s[0]" % APP] and len(runs()) == 1
    result = ok(run_module("box", args(notes="b\n", requirements="flask\ndjango\n")))
    assert setups(result) == ["setup %s[0]" % APP] and len(runs()) == 2
    assert "restart onebox-%s" % APP in result["provision"][0]["actions"]
    ok(run_module("box", args(notes="b\n", requirements="flask\ndjango\n")), changed=False)


def test_a_failing_step_fails_with_its_output_and_the_running_version_keeps_answering(built, lxd):
    failing = [{"command": "echo installing; for i in $(seq 30); do echo line $i; done; echo boom >&2; exit 3",
                "when_changed": ["%s/requirements.txt" % HOME]}]
    failed = run_module("box", args(version="v2", notes="b\n", requirements="flask\ndjango\n", setup=failing))
    assert failed.get("failed"), failed
    msg = failed["msg"]
    assert "services[%s].setup[0]" % APP in msg and "exited 3" in msg, msg
    assert "line 30\nboom" in msg and "line 12\n" in msg and "line 10\n" not in msg, msg   # its last 20 lines
    assert answer(lxd) == "v1 hello"   # not restarted: the version that ran before still answers
    # The step put back as it was: it already ran against these files, so it does not run again;
    # the restart the failed run owed is made (the new version answers).
    fixed = ok(run_module("box", args(version="v2", notes="b\n", requirements="flask\ndjango\n")))
    assert setups(fixed) == [] and "restart onebox-%s" % APP in fixed["provision"][0]["actions"]
    assert answer(lxd) == "v2 hello"


def test_a_step_past_its_timeout_is_stopped_and_fails(built, lxd):
    slow = [{"command": "echo waiting; exec sleep 60", "when_changed": ["%s/requirements.txt" % HOME], "timeout": 1}]
    started = time.monotonic()
    failed = run_module("box", args(version="v2", notes="b\n", requirements="flask\n", setup=slow))
    assert failed.get("failed") and "did not finish within 1 s (its timeout)" in failed["msg"], failed
    assert "waiting" in failed["msg"] and time.monotonic() - started < 30
    assert sh("pgrep -x sleep", check=False).returncode == 1   # stopped, not left behind
    assert answer(lxd) == "v2 hello"


def test_a_command_that_exits_at_once_fails_the_converge_with_its_journal(built, lxd):
    crash = ["/bin/sh", "-c", "echo cannot start: no config >&2; exit 7"]
    failed = run_module("box", args(version="v2", notes="b\n", requirements="flask\ndjango\n", command=crash))
    assert failed.get("failed"), failed
    msg = failed["msg"]
    assert "service %s (onebox-%s.service" % (APP, APP) in msg and "did not stay up" in msg, msg
    assert "cannot start: no config" in msg, msg   # from its journal
    # Restarted over and over by systemd, it is not "ok" on the next run either.
    again = run_module("box", args(version="v2", notes="b\n", requirements="flask\ndjango\n", command=crash))
    assert again.get("failed") and "did not stay up" in again["msg"], again
    back = ok(run_module("box", args(version="v2", notes="b\n", requirements="flask\ndjango\n")))
    assert setups(back) == [] and answer(lxd) == "v2 hello"
