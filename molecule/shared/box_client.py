"""Helpers for verifying the example box from outside: a client in its own network namespace
sends real requests to the host's address on its veth (PREROUTING, like another machine)."""
from __future__ import annotations

import os
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, ".collections"))

from netns import Netns  # noqa: E402  pylint: disable=wrong-import-position
from ansible_collections.homelab.onebox.plugins.module_utils._lxd import LxdClient  # noqa: E402

# Run inside the namespace with the host's Python: one HTTP GET, or one UDP/TCP exchange.
HTTP = r"""
import http.client, sys
conn = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=15)
conn.request("GET", sys.argv[4], headers={"Host": sys.argv[3]})
resp = conn.getresponse()
print(resp.status)
print(resp.read().decode(errors="replace"), end="")
"""
UDP = r"""
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(5)
sock.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
print(sock.recvfrom(2048)[0].decode())
"""
TCP = r"""
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as conn:
    conn.sendall(b"ping\n")
    print(conn.recv(100).decode(), end="")
"""


def http_get(ns, host, path="/", port=80):
    """(status, body) of one request from the namespace to the host's address (15 s at most)."""
    result = ns.run([sys.executable, "-c", HTTP, ns.host_address, str(port), host, path], timeout=25)
    if result.returncode != 0:
        return None, result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    status, body = result.stdout.split("\n", 1) if "\n" in result.stdout else (result.stdout, "")
    return int(status), body


def udp_echo(ns, port, payload):
    result = ns.run([sys.executable, "-c", UDP, ns.host_address, str(port), payload], timeout=15)
    return result.stdout.strip() if result.returncode == 0 else None


def tcp_ping(ns, address, port):
    result = ns.run([sys.executable, "-c", TCP, address, str(port)], timeout=15)
    return result.stdout.strip() if result.returncode == 0 else None


def wait_for(predicate, timeout, interval=0.5):
    """Poll until predicate() is truthy; return its value, or the last (falsy) one at timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


@pytest.fixture(scope="module")
def client():
    """The outside client: a network namespace whose only way in is the host's address."""
    with Netns("verify") as ns:
        yield ns


@pytest.fixture(scope="module")
def lxd():
    return LxdClient(timeout=60)
