"""homelab.onebox.box against the real thing: LXD containers, nginx in the proxy container, this
host's iptables, and a client in a network namespace of its own that sends real requests to the
host. The box here has no domains (so no forward of port 80), forwards on random high ports, its
own chain prefix, owner and file paths: nothing the example box runs is touched."""
from __future__ import annotations

import json
import random
import re
import subprocess
import sys

import pytest

from conftest import RUN_PREFIX, run_module
from netns import Netns

OWNER = "%s-box" % RUN_PREFIX
PROXY = "%s-bx-proxy" % RUN_PREFIX
WEB = "%s-bx-web" % RUN_PREFIX
ECHO = "%s-bx-echo" % RUN_PREFIX
PREFIX = "OBB%s" % RUN_PREFIX[1:].upper()
PORT = random.randrange(30000, 39000, 10)
UDP = PORT + 1
SECRET = "s3cret-%s" % RUN_PREFIX

ECHO_PY = """import os, socket
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", %d))
while True:
    data, peer = sock.recvfrom(2048)
    sock.sendto(("%%s " %% len(os.environ["GREETING"])).encode() + data, peer)
""" % UDP

# Prints an HTTP body, or a UDP answer, or "ERROR <reason>".
CLIENT = r"""
import socket, sys, urllib.request
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if proto == "http":
        print(urllib.request.urlopen("http://%s:%d/" % (host, port), timeout=5).read().decode(), end="")
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
        s.sendto(b"ping", (host, port)); print(s.recv(2048).decode(), end="")
except Exception as exc:
    print("ERROR %s" % exc)
"""


def services(page="box page\n", echo=True):
    out = [{"name": WEB, "kind": "static", "host_port": PORT,
            "files": [{"path": "/var/www/html/index.html", "content": page}]}]
    if echo:
        out.append({"name": ECHO, "kind": "plain", "command": ["/usr/bin/python3", "/srv/echo.py"],
                    "environment": {"GREETING": SECRET}, "forwards": [{"proto": "udp", "port": UDP}],
                    "files": [{"path": "/srv/echo.py", "content": ECHO_PY}]})
    return out


def iptables_save():
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, timeout=30, check=True).stdout
    return [re.sub(r"\[\d+:\d+\]$", "[0:0]", line) for line in out.splitlines() if not line.startswith("#")]


def owned(lxd):
    return sorted(i["name"] for i in lxd.instances() if (i.get("config") or {}).get("user.onebox.owner") == OWNER)


@pytest.fixture(scope="module")
def client():
    with Netns("box") as ns:
        yield ns


def ask(client, proto, port):
    return client.run([sys.executable, "-c", CLIENT, proto, client.host_address, str(port)], timeout=20).stdout


@pytest.fixture(scope="module")
def args(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("box")
    return {"owner": OWNER, "services": services(), "proxy": {"name": PROXY},
            "forwards": {"chain_prefix": PREFIX, "save_path": str(tmp / "dnat.rules"),
                         "restore_script": str(tmp / "restore"), "sysctl_file": str(tmp / "ip_forward.conf")}}


@pytest.fixture(scope="module")
def built(lxd, args):
    """Check mode on nothing, then the box for real; torn down (state=absent) at the end."""
    rules_before = iptables_save()
    predicted = run_module("box", args, check=True, diff=True)
    after_check = (owned(lxd), iptables_save())
    result = run_module("box", args, timeout=600)
    try:
        yield {"predicted": predicted, "after_check": after_check, "rules_before": rules_before, "result": result}
    finally:
        gone = run_module("box", dict(args, state="absent"))
        assert not gone.get("failed"), gone
        assert owned(lxd) == []
        assert iptables_save() == rules_before


def test_check_mode_predicts_and_changes_nothing(built):
    predicted = built["predicted"]
    assert predicted["changed"] and not predicted.get("failed"), predicted
    actions = {r["name"]: r["actions"] for r in predicted["instances"]}
    assert actions[WEB] == ["create", "start"] and actions[PROXY] == ["create", "start"]
    assert built["after_check"] == ([], built["rules_before"])


def test_converges_and_serves_from_outside(built, client):
    result = built["result"]
    assert result["changed"] and not result.get("failed"), result
    assert sorted(result["addresses"]) == sorted([WEB, ECHO, PROXY])
    assert {s["name"]: s["action"] for s in result["sites"]}["%s-port%d" % (WEB, PORT)] == "created"
    assert ask(client, "http", PORT) == "box page\n"
    # The secret reached the service (it answers with its length) ...
    assert ask(client, "udp", UDP) == "%d ping" % len(SECRET)


def test_secret_stays_out_of_the_output(built):
    text = json.dumps(built["result"])
    assert "invocation" in text and SECRET not in text


def test_second_run_changes_nothing(built, args):
    again = run_module("box", args)
    assert not again.get("failed") and again["changed"] is False, again
    assert again["reloaded"] is False


def test_check_and_diff_predict_one_change_without_making_it(built, args, client):
    changed = dict(args, services=services(page="new page\n"))
    predicted = run_module("box", changed, check=True, diff=True)
    assert predicted["changed"] and not predicted.get("failed"), predicted
    inside = [d for d in predicted["diff"] if d.get("after_header") == "inside the containers"][0]
    assert inside["after"][WEB]["/var/www/html/index.html"] == "new page\n"
    assert ask(client, "http", PORT) == "box page\n"


def test_one_change_is_applied_and_served(built, args, client):
    result = run_module("box", dict(args, services=services(page="new page\n")))
    assert result["changed"] and not result.get("failed"), result
    assert [r["actions"] for r in result["instances"] if r["actions"]] == []
    assert ask(client, "http", PORT) == "new page\n"
    back = run_module("box", args)
    assert back["changed"] and ask(client, "http", PORT) == "box page\n"


@pytest.mark.parametrize("bad, field, value", [
    ([{"name": "bad;name"}], "services[2].name", "bad;name"),
    ([{"name": "x1", "host_port": 70000}], "services[x1].host_port", "70000"),
    ([{"name": "x1", "domains": ["a..b"]}], "services[x1].domains[0]", "a..b"),
    ([{"name": "x1", "host_port": 8001}, {"name": "x2", "host_port": 8001}], "services[x2].host_port", "8001"),
    ([{"name": "x1", "files": [{"path": "/etc/x\n", "content": ""}]}], "files", "/etc/x"),
])
def test_bad_input_fails_before_any_change(built, args, lxd, bad, field, value):
    before = (owned(lxd), iptables_save())
    result = run_module("box", dict(args, services=services() + bad))
    assert result.get("failed"), result
    assert field in result["msg"] and value in result["msg"], result["msg"]
    assert (owned(lxd), iptables_save()) == before


def test_a_service_dropped_is_gone_entirely(built, args, lxd, client):
    result = run_module("box", dict(args, services=services(echo=False)))
    assert result["changed"] and result["pruned"] == [ECHO], result
    assert owned(lxd) == sorted([WEB, PROXY])
    assert not any(str(UDP) in line for line in iptables_save())
    assert ask(client, "udp", UDP).startswith("ERROR")
    assert ask(client, "http", PORT) == "box page\n"
