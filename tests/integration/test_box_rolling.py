"""Rolling changes of a pool and health checks, against the real thing (LXD, nginx in the proxy,
this host's iptables): a client in a network namespace of its own asks the pool through the host's
port in a loop while the pool's page changes and while its image changes; not one request may fail,
and every member ends on the new version. A service that never answers its health check fails
the converge naming it, with its journal.

The box has an owner of its own, a host port chosen at random, its own chain prefix and files:
nothing the example box runs is touched. Torn down at the end, even when a test fails."""
from __future__ import annotations

import datetime
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

from conftest import RUN_PREFIX, run_module
from netns import Netns

OWNER = "%s-roll" % RUN_PREFIX
POOL = "%s-rl-web" % RUN_PREFIX
PROXY = "%s-rl-proxy" % RUN_PREFIX
SICK = "%s-rl-sick" % RUN_PREFIX
PREFIX = "OBR%s" % RUN_PREFIX[1:].upper()
PORT = random.randrange(40000, 49000, 10)
IMAGE = "onebox-debian12"
IMAGE2 = "%s-rl-img2" % RUN_PREFIX    # a second alias of the same image: a "new" image, made in seconds
MEMBERS = ["%s-%d" % (POOL, i) for i in (1, 2, 3)]

# Asks http://HOST:PORT/ every 20 ms until the file STOP exists (at most LIMIT seconds), then
# prints {"ok": N, "failed": N, "errors": [...], "bodies": {body: count}} as JSON.
CLIENT = r"""
import json, os, sys, time, urllib.request
host, port, stop, limit = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
ok, failed, errors, bodies = 0, 0, [], {}
deadline = time.monotonic() + limit
while not os.path.exists(stop) and time.monotonic() < deadline:
    try:
        body = urllib.request.urlopen("http://%s:%d/" % (host, port), timeout=5).read().decode().strip()
        ok += 1
        bodies[body] = bodies.get(body, 0) + 1
    except Exception as exc:
        failed += 1
        errors.append("%.2f %s" % (time.monotonic(), exc))
    time.sleep(0.02)
print(json.dumps({"ok": ok, "failed": failed, "errors": errors[:20], "bodies": bodies}))
"""


# A member's server: slow to start (as an application server loading its code is), so a change
# made to every member at once leaves the pool answering nothing for a while; its page is read at
# start, so a member serves the new version only once it was restarted.
MEMBER_PY = """import http.server, time
time.sleep(1.5)
body = open("/srv/page.txt", "rb").read()
class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8000), Page).serve_forever()
"""


def services(version="v1", image=None, sick=False):
    pool = {"name": POOL, "kind": "pool", "count": 3, "host_port": PORT, "port": 8000,
            "command": ["/usr/bin/python3", "/srv/member.py"], "health": {"http": "/", "timeout": 30},
            "files": [{"path": "/srv/member.py", "content": MEMBER_PY},
                      {"path": "/srv/page.txt", "content": "%s @INSTANCE@\n" % version}]}
    if image:
        pool["image"] = image
    out = [pool]
    if sick:
        # Listens on 8081, while its health check asks 8080: it never answers.
        out.append({"name": SICK, "kind": "app", "port": 8080, "host_port": PORT + 1,
                    "command": ["/usr/bin/python3", "-u", "-m", "http.server", "8081"],
                    "health": {"http": "/", "timeout": 5}})
    return out


def args(tmp, **kwargs):
    return {"owner": OWNER, "services": services(**kwargs), "proxy": {"name": PROXY},
            "forwards": {"chain_prefix": PREFIX, "save_path": str(tmp / "dnat.rules"),
                         "restore_script": str(tmp / "restore"), "sysctl_file": str(tmp / "ip_forward.conf")}}


def lxc(*argv, check=True):
    return subprocess.run(["lxc"] + list(argv), capture_output=True, text=True, timeout=120, check=check)


def page(address):
    return urllib.request.urlopen("http://%s:8000/" % address, timeout=5).read().decode().strip()


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("rolling")


@pytest.fixture(scope="module")
def client():
    with Netns("roll") as ns:
        yield ns


@pytest.fixture(scope="module")
def built(lxd, tmp):
    fingerprint = lxd.image_alias(IMAGE)["target"]
    lxc("image", "alias", "create", IMAGE2, fingerprint)
    try:
        result = run_module("box", args(tmp), timeout=600)
        assert not result.get("failed"), result
        yield result
    finally:
        gone = run_module("box", {"owner": OWNER, "state": "absent", "purge": True,
                                  "forwards": args(tmp)["forwards"]})
        lxc("image", "alias", "delete", IMAGE2, check=False)
        assert not gone.get("failed"), gone


def converge_under_load(client, tmp, **kwargs):
    """The box converged with ``kwargs`` while the client asks the pool; (result, client's counts)."""
    stop = os.path.join(tempfile.mkdtemp(dir=str(tmp)), "stop")
    loop = subprocess.Popen(["ip", "netns", "exec", client.name, sys.executable, "-c", CLIENT,
                             client.host_address, str(PORT), stop, "300"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1)  # the loop is asking before the change starts
        result = run_module("box", args(tmp, **kwargs), timeout=600)
        time.sleep(1)
    finally:
        open(stop, "w").close()
        out, _err = loop.communicate(timeout=60)
    return result, json.loads(out)


def test_a_change_to_the_pool_rolls_one_member_at_a_time_without_a_failed_request(built, client, tmp):
    result, counts = converge_under_load(client, tmp, version="v2")
    assert result["changed"] and not result.get("failed"), result
    assert counts["failed"] == 0 and counts["ok"] > 20, counts
    # Every member changed, each waited for before the next, and each ends on v2.
    assert sorted(result["healthy"]) == MEMBERS, result["healthy"]
    addresses = result["addresses"]
    assert [page(addresses[m][0]) for m in MEMBERS] == ["v2 %s" % m for m in MEMBERS]
    # Both versions were served during the roll, never nothing.
    assert any(body.startswith("v1") for body in counts["bodies"]), counts
    assert any(body.startswith("v2") for body in counts["bodies"]), counts


def test_after_the_roll_every_member_is_back_in_the_proxy(built, client, tmp):
    again = run_module("box", args(tmp, version="v2"))
    assert not again["changed"], again
    ask = "import urllib.request; print(urllib.request.urlopen('http://%s:%d/', timeout=5).read().decode().strip())"
    seen = {client.run([sys.executable, "-c", ask % (client.host_address, PORT)], timeout=20).stdout.strip()
            for _attempt in range(12)}
    assert seen == {"v2 %s" % m for m in MEMBERS}, seen


def test_an_image_change_re_creates_the_members_one_at_a_time_without_a_failed_request(built, client, tmp, lxd):
    before = {m: lxd.instance(m, state=False)["config"].get("volatile.uuid") for m in MEMBERS}
    result, counts = converge_under_load(client, tmp, version="v2", image=IMAGE2)
    assert result["changed"] and not result.get("failed"), result
    assert counts["failed"] == 0 and counts["ok"] > 20, counts
    recreated = {r["name"]: r.get("recreated") for r in result["instances"] if r["name"] in MEMBERS}
    assert recreated == dict.fromkeys(MEMBERS, "image %s -> %s" % (IMAGE, IMAGE2)), recreated
    records = {m: lxd.instance(m, state=False) for m in MEMBERS}
    assert all(records[m]["config"].get("volatile.uuid") != before[m] for m in MEMBERS)
    # One at a time: each member was made once the one before it answered (made all at once,
    # they would be made within a fraction of a second of each other).
    made = sorted(datetime.datetime.fromisoformat(records[m]["created_at"][:26]) for m in MEMBERS)
    assert all((later - earlier).total_seconds() > 1 for earlier, later in zip(made, made[1:])), made
    assert [lxd.instance(m, state=False)["config"].get("user.onebox.image") for m in MEMBERS] == [IMAGE2] * 3
    addresses = result["addresses"]
    assert [page(addresses[m][0]) for m in MEMBERS] == ["v2 %s" % m for m in MEMBERS]


def test_a_service_that_never_answers_its_health_check_fails_the_converge_naming_it(built, tmp):
    result = run_module("box", args(tmp, version="v2", image=IMAGE2, sick=True), timeout=600)
    assert result.get("failed"), result
    msg = result["msg"]
    assert msg.startswith("%s: services[%s] is not healthy after 5 s: " % (SICK, SICK)), msg
    assert "GET http://" in msg and ":8080/" in msg, msg
    # The journal's last lines are in the message: the server it runs started on 8081.
    assert "journalctl -u onebox-%s.service" % SICK in msg and "8081" in msg, msg
    assert result.get("failed_instances") == [SICK], result
