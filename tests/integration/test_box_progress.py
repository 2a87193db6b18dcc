"""The box's progress through ansible-playbook's own output: a cold converge of three containers
says how many are done as it goes, up to 3 of 3, with the threshold forced to 0 s
(ONEBOX_PROGRESS_AFTER) so that the test does not depend on this machine's speed; the lines go to
stderr, so a JSON stdout callback keeps its one document and the module's result is as before.
The box has its own owner, chain prefix and files: nothing else on this host is touched."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import RUN_PREFIX, ROOT, ansible_env, ok, run_playbook

OWNER = "%s-prog" % RUN_PREFIX
NAMES = ["%s-pg-%d" % (RUN_PREFIX, index) for index in range(3)]
LINE = re.compile(r"^\[localhost\] box: (\d+) of (\d+) containers done \((\d+) s\)$")


def playbook(tmp, state):
    path = tmp / ("box-%s.yml" % state)
    path.write_text(json.dumps([{
        "hosts": "localhost", "gather_facts": False,
        "tasks": [{"name": "the box", "homelab.onebox.box": {
            "owner": OWNER, "state": state,
            "services": [{"name": name, "kind": "static",
                          "files": [{"path": "/var/www/html/index.html", "content": "page %s\n" % name}]}
                         for name in NAMES],
            "proxy": {"name": "%s-pg-proxy" % RUN_PREFIX},
            "forwards": {"chain_prefix": "OBG%s" % RUN_PREFIX[1:].upper(), "save_path": str(tmp / "dnat.rules"),
                         "restore_script": str(tmp / "restore"), "sysctl_file": str(tmp / "ip_forward.conf")}}}]}]))
    return str(path)


def run_default(path, after):
    """ansible-playbook with its default output, as a user sees it: (returncode, stdout, stderr)."""
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-c", "local",
                           "-i", "localhost,", "-e", "ansible_python_interpreter=%s" % sys.executable, path],
                          cwd=ROOT, env=ansible_env(ANSIBLE_STDOUT_CALLBACK="default", ONEBOX_PROGRESS_AFTER=after),
                          capture_output=True, text=True, timeout=900, check=False)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def box(tmp_path_factory, lxd):
    tmp = tmp_path_factory.mktemp("progress")
    try:
        yield tmp
    finally:
        rc, out = run_playbook(playbook(tmp, "absent"))
        assert rc == 0, out
        assert not [i for i in lxd.instances() if (i.get("config") or {}).get("user.onebox.owner") == OWNER]


def test_a_cold_converge_says_how_many_containers_are_done_up_to_n_of_n(box):
    rc, stdout, stderr = run_default(playbook(box, "present"), "0")
    assert rc == 0, stdout + stderr
    counts = [tuple(int(g) for g in LINE.match(line).groups()) for line in stderr.splitlines() if LINE.match(line)]
    assert counts, stderr
    assert {total for _done, total, _s in counts} == {3}
    assert [done for done, _t, _s in counts] == sorted(set(done for done, _t, _s in counts))   # each new, rising
    assert [s for _d, _t, s in counts] == sorted(s for _d, _t, s in counts)
    assert counts[-1][:2] == (3, 3)
    assert "changed: [localhost]" in stdout


def test_a_json_callback_keeps_its_document_and_the_result_with_progress_on(box, monkeypatch):
    monkeypatch.setenv("ONEBOX_PROGRESS_AFTER", "0")
    for check, diff in ((True, True), (False, False)):
        rc, out = run_playbook(playbook(box, "present"), check=check, diff=diff)
        assert rc == 0
        result = ok(out["plays"][0]["tasks"][0]["hosts"]["localhost"], False)
        assert sorted(r["name"] for r in result["instances"]) == sorted(NAMES)
        assert ("diff" in result) is diff
