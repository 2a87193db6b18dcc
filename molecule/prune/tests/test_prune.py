"""After site-b and vpn left the description: no trace of them, the rest unchanged."""
import os
import subprocess
import sys


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
from box_client import http_get, udp_echo  # noqa: E402


def test_their_containers_are_gone(lxd):
    names = {instance["name"] for instance in lxd.instances()}
    assert not {"site-b", "vpn"} & names
    assert {"site-a", "app", "jenkins", "web-1", "db", "onebox-example-proxy"} <= names


def test_their_vhost_is_gone(client, lxd):
    status, body = http_get(client, "site-b.example.test")
    assert status == 404 and "Site B" not in body
    files = lxd.run("onebox-example-proxy", ["ls", "/etc/nginx/conf.d"], timeout=10).split()
    assert "site-b.example.test.conf" not in files and "site-a.example.test.conf" in files


def test_their_forward_is_gone(client):
    assert udp_echo(client, 51820, "hello") is None
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True, timeout=30).stdout
    assert "51820" not in rules and "onebox vpn" not in rules
    saved = open("/etc/onebox/dnat-onebox-example.rules", encoding="utf-8").read()
    assert "51820" not in saved


def test_the_rest_still_answers(client):
    assert http_get(client, "site-a.example.test")[1].startswith("<h1>Site A</h1>")
    assert http_get(client, "app.example.test", "/db")[1].strip() == "db ok"
