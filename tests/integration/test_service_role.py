"""The service role converged for real (site.yml uses the box role; this role is for playbooks that
want the containers and their insides without the proxy and forwards): containers of a description,
a file and a non-root service inside, nothing changed on a second run, all gone with state absent."""
from __future__ import annotations

import yaml

from conftest import RUN_PREFIX, run_playbook

OWNER = "%s-svc" % RUN_PREFIX
APP = "%s-svc-app" % RUN_PREFIX
SERVICES = [{"name": APP, "kind": "internal", "port": 7000, "command": ["/usr/bin/python3", "-m", "http.server", "7000"],
             "working_directory": "/srv/app",
             "files": [{"path": "/srv/app/index.html", "content": "service role\n"}]}]

# The service may still be binding its port just after the role started it: a few tries.
FETCH = """import time, urllib.request
for _ in range(40):
    try:
        print(urllib.request.urlopen("http://127.0.0.1:7000/index.html", timeout=5).read().decode(), end="")
        break
    except OSError:
        time.sleep(0.25)
"""


def converge(tmp_path, state="present"):
    playbook = tmp_path / "service.yml"
    playbook.write_text(yaml.safe_dump([{
        "hosts": "localhost", "gather_facts": False,
        "roles": [{"role": "homelab.onebox.service",
                   "vars": {"onebox_owner": OWNER, "onebox_services": SERVICES, "onebox_service_state": state}}]}]))
    rc, out = run_playbook(str(playbook))
    stats = out["stats"]["localhost"]
    assert rc == 0 and stats["failures"] == 0, [
        t["hosts"]["localhost"].get("msg") for t in out["plays"][0]["tasks"] if t["hosts"]["localhost"].get("failed")]
    return stats


def test_service_role_builds_keeps_and_removes(lxd, tmp_path):
    try:
        assert converge(tmp_path)["changed"] == 1   # one box call: the container and its inside
        assert lxd.run(APP, ["cat", "/srv/app/index.html"], timeout=30) == "service role\n"
        user = lxd.run(APP, ["sh", "-c", "ps -o user= -C python3"], timeout=30).split()
        assert user and "root" not in user
        assert lxd.run(APP, ["python3", "-c", FETCH], timeout=30) == "service role\n"
        assert converge(tmp_path)["changed"] == 0
    finally:
        converge(tmp_path, state="absent")
    assert lxd.instance(APP) is None
