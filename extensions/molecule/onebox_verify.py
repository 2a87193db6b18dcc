# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checking a box from outside, the way its users reach it: a client in its own network namespace
and what to ask it, read from the box's description. Shipped with the collection (the project's own
tests import it too), for a Molecule scenario that converges a box on a CI machine (extensions/molecule/box):

    from ansible_collections.homelab.onebox.extensions.molecule.onebox_verify import Netns, http_get
    with Netns() as ns:                        # or the ``client`` fixture
        ns.host_address                        # the host's end of the veth (a local address of the host)
        http_get(ns, "blog.example.org")       # (status, body): port 80 of the host, that Host header
        checks(services_of(inventory))         # [Check]: one per domain, route, health, host port, TCP forward

The namespace is joined to the host by a veth pair carrying a /30 of 198.18.0.0/15 (RFC 2544's
benchmarking range) that overlaps no route and no address of the host. Its packets reach the host
through PREROUTING, like another machine's (packets the host makes itself never do), so they take
the box's forwards exactly as its users' do. Closing deletes only the namespace and its veth.
Linux only, as root (ip netns).
"""
from __future__ import annotations

import collections
import ipaddress
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from ansible_collections.homelab.onebox.plugins.filter.free_subnet import free_subnet as filter_free_subnet

# The benchmarking range (RFC 2544): not routed on the internet, free on test machines.
CANDIDATES = ipaddress.IPv4Network("198.18.0.0/15")
HTTP_PORT = 80
# A wildcard domain is asked for under this name (it stands for any name the wildcard covers).
WILDCARD_NAME = "onebox-verify"
# A name no box serves (.invalid, RFC 2606): what the proxy answers when it has no site for a name.
UNCLAIMED = "onebox-verify.invalid"


def _ip(*args, timeout=10):
    return subprocess.run(["ip"] + list(args), capture_output=True, text=True, timeout=timeout, check=True).stdout


def free_subnet(rng=random, tries=512):
    """A /30 of 198.18.0.0/15, from a random start, that overlaps no route (any table) and no
    address of the host (the collection's own free_subnet filter does the comparing)."""
    routes = json.loads(_ip("-4", "-j", "route", "show", "table", "all") or "[]")
    addresses = json.loads(_ip("-4", "-j", "addr", "show") or "[]")
    count = CANDIDATES.num_addresses // 4
    start = rng.randrange(count)
    candidates = [str(ipaddress.IPv4Network((int(CANDIDATES.network_address) + 4 * ((start + i) % count), 30)))
                  for i in range(tries)]
    return ipaddress.IPv4Network(filter_free_subnet(routes, candidates, addresses))


class Netns:
    """A namespace + veth pair + /30. Use as a context manager (or call create()/close())."""

    def __init__(self, label="t"):
        tag = uuid.uuid4().hex[:6]
        self.name = "onebox-%s-%s" % (label, tag)
        self.host_link = "obh%s" % tag  # interface names: at most 15 characters
        self.ns_link = "obn%s" % tag
        self.subnet = None
        self.host_address = None
        self.address = None
        self._made = []

    def create(self):
        self.subnet = free_subnet()
        host, peer = list(self.subnet.hosts())
        self.host_address, self.address = str(host), str(peer)
        _ip("netns", "add", self.name)
        self._made.append("netns")
        _ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.ns_link, "netns", self.name)
        self._made.append("link")
        _ip("addr", "add", "%s/30" % self.host_address, "dev", self.host_link)
        _ip("link", "set", self.host_link, "up")
        for args in (("link", "set", "lo", "up"),
                     ("addr", "add", "%s/30" % self.address, "dev", self.ns_link),
                     ("link", "set", self.ns_link, "up"),
                     ("route", "add", "default", "via", self.host_address)):
            _ip("-n", self.name, *args)
        return self

    def run(self, argv, timeout=10, check=False, input=None):
        """Run argv inside the namespace; a CompletedProcess with text output."""
        return subprocess.run(["ip", "netns", "exec", self.name] + list(argv), input=input,
                              capture_output=True, text=True, timeout=timeout, check=check)

    def close(self):
        # Deleting the namespace deletes its end of the veth, and with it the host's end.
        if "netns" in self._made:
            subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, timeout=30, check=False)
        if "link" in self._made:
            subprocess.run(["ip", "link", "delete", self.host_link], capture_output=True, timeout=30, check=False)
        self._made = []

    def __enter__(self):
        try:
            return self.create()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc):
        self.close()


# ---- requests from the namespace (run there with this Python: the namespace has no other tools) ----
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
CONNECT = r"""
import socket, sys
socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
"""


def http_get(ns, host, path="/", port=HTTP_PORT, address=None):
    """(status, body) of one GET from the namespace to the host's address (15 s at most);
    (None, the error's last line) when no answer came."""
    result = ns.run([sys.executable, "-c", HTTP, address or ns.host_address, str(port), host, path], timeout=25)
    if result.returncode != 0:
        return None, result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    status, body = result.stdout.split("\n", 1) if "\n" in result.stdout else (result.stdout, "")
    return int(status), body


def udp_echo(ns, port, payload):
    """The answer to one UDP datagram to the host's port, or None."""
    result = ns.run([sys.executable, "-c", UDP, ns.host_address, str(port), payload], timeout=15)
    return result.stdout.strip() if result.returncode == 0 else None


def tcp_ping(ns, address, port):
    """What a TCP server says to 'ping' (its first 100 bytes), or None when the connect or read fails."""
    result = ns.run([sys.executable, "-c", TCP, address, str(port)], timeout=15)
    return result.stdout.strip() if result.returncode == 0 else None


def tcp_connect(ns, address, port):
    """None when a TCP connect to address:port from the namespace succeeds, else the error."""
    result = ns.run([sys.executable, "-c", CONNECT, address, str(port)], timeout=15)
    if result.returncode == 0:
        return None
    return result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "exit %d" % result.returncode


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


# ---- what to check, from the description ------------------------------------------------------
# kind: http (a GET with Host, port and path: a status below 500, or exactly ``expect``) or tcp (a connect).
Check = collections.namedtuple("Check", "id kind service host path port expect address")


def services_of(inventory, ansible=None):
    """The ``onebox_services`` of the inventory's one host that has them, as Ansible templates
    them (an ad-hoc debug: vaults, lookups and group_vars as in a converge). The box is the
    machine that runs the checks, so exactly one host may describe a box."""
    ansible = ansible or _sibling("ansible")
    env = dict(os.environ, ANSIBLE_CALLBACK_FORMAT_PRETTY="false", ANSIBLE_CALLBACK_RESULT_FORMAT="json",
               ANSIBLE_LOAD_CALLBACK_PLUGINS="0", ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_DEPRECATION_WARNINGS="false")
    result = subprocess.run([ansible, "all", "-i", inventory, "-m", "ansible.builtin.debug", "-a", "var=onebox_services"],
                            capture_output=True, text=True, env=env, timeout=300, check=False)
    found = {}
    for line in result.stdout.splitlines():
        match = re.match(r"^(\S+) \| SUCCESS => (\{.*\})\s*$", line)
        if match:
            value = json.loads(match.group(2)).get("onebox_services")
            if isinstance(value, list):
                found[match.group(1)] = value
    if result.returncode != 0 or len(found) != 1:
        raise AssertionError("%s: %s; ansible said (rc %d): %s%s" % (
            inventory, "hosts with onebox_services: %s (one expected: the machine these checks run on)"
            % (sorted(found) or "none"), result.returncode, result.stdout[-2000:], result.stderr[-2000:]))
    return next(iter(found.values()))


def _sibling(command):
    """``command`` beside the running Python (its virtualenv's), else from PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), command)
    return beside if os.access(beside, os.X_OK) else (shutil.which(command) or command)


def _name(domain):
    return WILDCARD_NAME + domain[1:] if domain.startswith("*.") else domain


def _first_port(port):
    return int(str(port).split("-", 1)[0].split(":", 1)[0])


def checks(services):
    """[Check] for a described box, as its users reach it: each domain (GET / with that Host on
    port 80: below 500, and not the catch-all's answer to a name no site claims), each route (GET
    its path under its domain), each ``health.http`` (its path under the first domain, answered
    with ``expect``, 200 unless said), each ``host_port`` (GET / on it) and
    each TCP forward (a connect to its port, the first of a range, on its ``host_address`` when it
    names one). Not checked: UDP forwards (no answer is owed), forwards limited to a ``source``
    (the client is not it), internal services (never reachable from outside). A domain under
    HTTPS still answers on port 80 with a redirect to https, which passes (a health check too)."""
    out = []
    for service in services:
        name = service.get("name", "?")
        domains = [_name(d) for d in service.get("domains") or []]
        for domain in domains:
            out.append(Check("%s:http://%s/" % (name, domain), "http", name, domain, "/", HTTP_PORT, None, None))
        for route in service.get("routes") or []:
            domain, path = _name(route.get("domain", "")), route.get("path", "/")
            out.append(Check("%s:http://%s%s" % (name, domain, path), "http", name, domain, path, HTTP_PORT, None, None))
        health = service.get("health") or {}
        if health.get("http") and domains:
            expect = int(health.get("expect", 200))
            out.append(Check("%s:health:http://%s%s=%d" % (name, domains[0], health["http"], expect), "http", name,
                             domains[0], health["http"], HTTP_PORT, expect, None))
        if service.get("host_port"):
            port = int(service["host_port"])
            out.append(Check("%s:http://*:%d/" % (name, port), "http", name, domains[0] if domains else "localhost",
                             "/", port, None, None))
        for forward in service.get("forwards") or []:
            if forward.get("proto", "tcp") != "tcp" or forward.get("source"):
                continue
            port = _first_port(forward["port"])
            out.append(Check("%s:tcp:%d" % (name, port), "tcp", name, None, None, port, None, forward.get("host_address")))
    return out


def answer(ns, check, timeout=30):
    """None when the box answers ``check`` as it should from the namespace, else what it did
    instead (the last try's). Retried for ``timeout`` seconds: a service may still be starting."""
    def attempt():
        address = check.address or ns.host_address
        if check.kind == "tcp":
            error = tcp_connect(ns, address, check.port)
            return None if error is None else "TCP connect to %s:%d failed: %s" % (address, check.port, error)
        status, body = http_get(ns, check.host, check.path, check.port, address)
        # Under HTTPS, port 80 answers everything with a redirect to https (below 500, not ``expect``).
        good = status is not None and (status < 500 if check.expect is None else status in (check.expect, 301, 308))
        # The proxy's catch-all for names no site claims answers 404 too: the same answer is no site.
        if good and status == 404 and check.expect is None \
                and (status, body) == http_get(ns, UNCLAIMED, check.path, check.port, address):
            return "GET http://%s:%d%s with Host %s: the answer to a name no site claims (%s): no site for it" % (
                address, check.port, check.path, check.host, UNCLAIMED)
        if good:
            return None
        return "GET http://%s:%d%s with Host %s: %s %s (wanted %s)" % (
            address, check.port, check.path, check.host, status, " ".join(body.split())[:300],
            check.expect if check.expect is not None else "a status below 500")

    last = [None]

    def settled():
        last[0] = attempt()
        return last[0] is None

    wait_for(settled, timeout, interval=1)
    return last[0]
