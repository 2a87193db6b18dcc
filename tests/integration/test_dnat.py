"""homelab.onebox.dnat against the real thing: iptables on this host, LXD containers, and a client in
a network namespace of its own (tests/netns.py). Test traffic goes only to that namespace, to the
host's own addresses and to the containers made here.

Every test uses chains with a prefix of its run (not the collection's default), forwards on high
random ports, and files under tmp_path, so nothing the box itself runs is touched.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import RUN_PREFIX, delete_instance_quietly, run_module, run_playbook
from netns import Netns, free_subnet

from ansible_collections.homelab.onebox.plugins.module_utils import _dnat, _dnat_claims, _dnat_rules

IMAGE = "onebox-debian12"
BRIDGE = "lxdbr0"
PREFIX = "OBT%s" % RUN_PREFIX[1:].upper()
BASE = random.randrange(20000, 29000, 10)
WEB_A, WEB_B, C2C, HAIRPIN = BASE, BASE + 1, BASE + 2, BASE + 3   # host ports
UDP = BASE + 4
RANGE = (BASE + 5, BASE + 7)           # -> A, ports SHIFT.. (shifted range)
SHIFT = BASE + 500
UNDECLARED = BASE + 8
TIMEOUT = 5

# A TCP server answering "<name> <port> <peer address>" and a UDP echo, in the container.
SERVER = r'''
import socket, sys, threading
name = sys.argv[1]
def tcp(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64)
    while True:
        c, peer = s.accept()
        try: c.sendall(("%s %d %s\n" % (name, port, peer[0])).encode())
        finally: c.close()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(("%s %d %s " % (name, port, peer[0])).encode() + data, peer)
for spec in sys.argv[2:]:
    proto, port = spec.split("/")
    threading.Thread(target=tcp if proto == "tcp" else udp, args=(int(port),), daemon=True).start()
threading.Event().wait()
'''

# A client: prints the answer of a TCP or UDP server, or "ERROR <reason>".
CLIENT = r'''
import socket, sys
proto, host, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
try:
    if proto == "tcp":
        s = socket.create_connection((host, port), timeout=timeout); s.settimeout(timeout)
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk: break
            data += chunk
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(timeout)
        s.sendto(b"ping", (host, port)); data = s.recvfrom(4096)[0]
    print(data.decode().strip())
except Exception as exc:
    print("ERROR %s" % exc.__class__.__name__)
'''


# This run's chain prefixes all carry its tag (PREFIX..., and the owners' RUN_PREFIX-own-...).
RUN_TAG = RUN_PREFIX[1:].upper()


def iptables_save():
    """iptables-save without its timestamps and packet counters, and without the collection's
    chains of other runs (prefixes without this run's tag, found by the comment on their jumps):
    other developers' tests and benchmarks on this machine add and remove theirs meanwhile, which a
    whole-table comparison would take for a change made here. Everything else - built-in chains,
    the user's and Docker's rules, this run's chains and jumps - is compared as it is."""
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, timeout=30, check=True).stdout
    others = sorted((p for p in _dnat_claims.collection_owners(out) if RUN_TAG not in p), key=len, reverse=True)
    theirs = re.compile(r"(^:|^-A |-j )(%s)_[A-Z]+\b" % "|".join(map(re.escape, others))) if others else None
    return [re.sub(r"\[\d+:\d+\]$", "[0:0]", line) for line in out.splitlines()
            if not line.startswith("#") and not (theirs and theirs.search(line))]


def iptables(*args):
    subprocess.run(["iptables", "-w", "10"] + list(args), capture_output=True, text=True, timeout=30, check=True)


def ask_from_host(proto, host, port, timeout=TIMEOUT):
    return subprocess.run([sys.executable, "-c", CLIENT, proto, host, str(port), str(timeout)],
                          capture_output=True, text=True, timeout=timeout + 10, check=True).stdout.strip()


def ask_from_ns(ns, proto, host, port, timeout=TIMEOUT):
    return ns.run([sys.executable, "-c", CLIENT, proto, host, str(port), str(timeout)],
                  timeout=timeout + 10, check=True).stdout.strip()


def ask_from_container(lxd, name, proto, host, port, timeout=TIMEOUT):
    result = lxd.exec(name, ["python3", "-c", CLIENT, proto, host, str(port), str(timeout)], timeout=timeout + 10)
    assert result.rc == 0 and result.stdout.strip(), result
    return result.stdout.strip()


def args_for(tmp_path, forwards=None, **extra):
    args = dict(forwards=forwards or [], chain_prefix=PREFIX, save_path=str(tmp_path / "dnat.rules"),
                restore_script=str(tmp_path / "onebox-dnat-restore"), sysctl_file=str(tmp_path / "ip_forward.conf"))
    args.update(extra)
    return args


def free_addresses(lxd, count):
    """Addresses on the bridge that no instance has or has reserved."""
    net = ipaddress.IPv4Interface(lxd.network(BRIDGE)["config"]["ipv4.address"])
    used = {str(net.ip)}
    for inst in lxd.metadata("get", lxd.api.instances, "list", params={"recursion": 2}):
        for dev in (inst.get("expanded_devices") or {}).values():
            used.add(dev.get("ipv4.address"))
        used.update(lxd.ipv4_addresses(inst.get("state")))
    hosts = [str(h) for h in net.network.hosts() if str(h) not in used][len(list(net.network.hosts())) // 3:]
    return random.sample(hosts, count)


@pytest.fixture(scope="module")
def box(lxd):
    """Two containers with static addresses, each serving TCP/UDP and answering with its name."""
    if lxd.image_alias(IMAGE) is None:
        pytest.fail("image %s is missing: run the base_image role first" % IMAGE)
    names = ["%s-dnat-%s-%s" % (RUN_PREFIX, label, uuid.uuid4().hex[:4]) for label in ("a", "b")]
    try:
        addresses = free_addresses(lxd, 2)
        for name, address in zip(names, addresses):
            result = run_module("lxd_instance", {"name": name, "image": IMAGE, "ipv4_address": address,
                                                 "state": "started", "wait_timeout": 60})
            assert not result.get("failed"), result
        a, b = names
        services = {a: ["tcp/%d" % WEB_A, "tcp/%d" % C2C, "tcp/%d" % (SHIFT + 1), "udp/%d" % UDP],
                    b: ["tcp/%d" % WEB_B, "tcp/%d" % C2C, "tcp/%d" % HAIRPIN]}
        for name, specs in services.items():
            lxd.push_file(name, "/root/onebox-test-server.py", SERVER)
            lxd.run(name, ["sh", "-c", "nohup python3 /root/onebox-test-server.py %s %s >/dev/null 2>&1 &"
                           % (name, " ".join(specs))], timeout=10)
        ip = dict(zip(names, addresses))
        for name, specs in services.items():  # wait until each server answers, directly
            deadline = time.monotonic() + 20
            while not ask_from_host("tcp", ip[name], int(specs[0].split("/")[1]), 1).startswith(name):
                assert time.monotonic() < deadline, "server in %s did not start" % name
                time.sleep(0.2)
        gateway = str(ipaddress.IPv4Interface(lxd.network(BRIDGE)["config"]["ipv4.address"]).ip)
        yield dict(a=a, b=b, ip=ip, gateway=gateway)
    finally:
        for name in names:
            delete_instance_quietly(lxd, name)


@pytest.fixture(scope="module")
def client():
    with Netns("dnat") as ns:
        yield ns


@pytest.fixture(scope="module")
def user_rules(client):
    """A user's own rules and a foreign chain, as on a real host (Docker-like). The FORWARD rules
    drop the namespace's routed traffic, as a DROP policy would: only forwards may pass."""
    tag = RUN_PREFIX.upper()
    before = iptables_save()
    rules = [
        ("nat", "-N", "FOREIGN%s" % tag), ("nat", "-A", "FOREIGN%s" % tag, "-j", "RETURN"),
        ("nat", "-A", "PREROUTING", "-s", "192.0.2.123/32", "-j", "FOREIGN%s" % tag),
        ("filter", "-N", "USER%s" % tag), ("filter", "-A", "USER%s" % tag, "-j", "RETURN"),
        ("filter", "-A", "FORWARD", "-s", str(client.subnet), "-j", "DROP"),
        ("filter", "-A", "FORWARD", "-d", str(client.subnet), "-j", "DROP"),
    ]
    for table, *rule in rules:
        iptables("-t", table, *rule)
    with_user_rules = iptables_save()
    yield with_user_rules
    for table, verb, chain, *rest in reversed(rules):
        iptables("-t", table, {"-N": "-X", "-A": "-D"}[verb], chain, *rest)
    assert iptables_save() == before


@pytest.fixture(scope="module")
def forwards(box):
    a, b = box["a"], box["b"]
    return [
        {"port": WEB_A, "target": a, "comment": "web a"},
        {"port": WEB_B, "target": b},
        {"port": C2C, "target": b, "comment": "c2c"},
        {"port": HAIRPIN, "target": b},
        {"proto": "udp", "port": UDP, "target": a, "comment": "udp echo"},
        {"port": "%d-%d" % RANGE, "target": box["ip"][a], "target_port": "%d-%d" % (SHIFT, SHIFT + 2)},
    ]


@pytest.fixture(scope="module")
def applied(box, client, user_rules, forwards, tmp_path_factory):
    """The forwards in place (and removed at the end, leaving iptables as it was)."""
    args = args_for(tmp_path_factory.mktemp("dnat"), forwards)
    result = run_module("dnat", args)
    assert result["changed"] and not result.get("failed"), result
    yield args
    result = run_module("dnat", dict(args, state="absent"))
    assert not result.get("failed"), result
    assert iptables_save() == user_rules


# ---- bad input ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dhcp_instance(lxd):
    """An instance without a static address (created, never started)."""
    name = "%s-dnat-dhcp-%s" % (RUN_PREFIX, uuid.uuid4().hex[:4])
    try:
        lxd.create_instance({"name": name, "source": {"type": "image", "alias": IMAGE}})
        yield name
    finally:
        delete_instance_quietly(lxd, name)


BAD = [
    ([{"port": 0, "target": "10.87.0.250"}], "forwards[0].port", "0"),
    ([{"port": 65536, "target": "10.87.0.250"}], "forwards[0].port", "65536"),
    ([{"port": "9010-9000", "target": "10.87.0.250"}], "forwards[0].port", "'9010-9000'"),
    ([{"port": 9000, "target": "10.87.0.250"}, {"port": 9000, "target": "10.87.0.251"}], "forwards[1].port", "9000"),
    ([{"port": "9000-9010", "target": "10.87.0.250"}, {"port": "9005-9020", "target": "10.87.0.251"}],
     "forwards[1].port", "'9005-9020'"),
    ([{"port": 9000, "target": "%s-no-such-instance" % RUN_PREFIX}], "forwards[0].target", "no-such-instance"),
    ([{"port": 9000, "target": "10.87.0.250", "comment": 'a "quoted" word'}], "forwards[0].comment", "quoted"),
    ([{"port": 9000, "target": "10.87.0.250", "comment": "two\nlines"}], "forwards[0].comment", "two\\nlines"),
    ([{"port": 9000, "target": "10.87.0.250", "proto": "sctp"}], "proto", "sctp"),
]


@pytest.mark.parametrize("forwards_, field, value", BAD)
def test_bad_input_fails_before_any_change(tmp_path, forwards_, field, value):
    before = iptables_save()
    result = run_module("dnat", args_for(tmp_path, forwards_))
    assert result.get("failed"), result
    assert field in result["msg"] and value in result["msg"], result["msg"]
    assert iptables_save() == before
    assert list(tmp_path.iterdir()) == []


def test_instance_without_static_address_is_refused(tmp_path, dhcp_instance):
    before = iptables_save()
    result = run_module("dnat", args_for(tmp_path, [{"port": 9000, "target": "10.87.0.250"},
                                                    {"port": 9001, "target": dhcp_instance}]))
    assert result.get("failed") and "forwards[1].target" in result["msg"] and dhcp_instance in result["msg"]
    assert "static" in result["msg"]
    assert iptables_save() == before


# ---- rules only (no traffic) ----------------------------------------------------------------
def test_check_diff_idempotence_and_removal(tmp_path):
    before = iptables_save()
    forwards = [{"port": 9000, "target": "10.87.0.250"}, {"proto": "udp", "port": "9000-9002", "target": "10.87.0.251"}]
    args = args_for(tmp_path, forwards)

    result = run_module("dnat", args, check=True, diff=True)
    assert result["changed"] and "DNAT --to-destination 10.87.0.250:9000" in result["diff"][0]["after"]
    assert result["diff"][0]["before"] == ""
    assert iptables_save() == before and list(tmp_path.iterdir()) == []
    try:
        assert run_module("dnat", args)["changed"]
        after = iptables_save()
        assert after != before
        assert run_module("dnat", args, diff=True)["changed"] is False
        assert run_module("dnat", args, check=True)["changed"] is False
        # order of the list is not a change
        assert run_module("dnat", dict(args, forwards=forwards[::-1]))["changed"] is False

        changed = [forwards[0], dict(forwards[1], target="10.87.0.252")]
        result = run_module("dnat", dict(args, forwards=changed), check=True, diff=True)
        assert result["changed"] and "10.87.0.251" in result["diff"][0]["before"]
        assert iptables_save() == after  # check mode changed nothing
        result = run_module("dnat", dict(args, forwards=changed))
        assert result["changed"] and not result.get("failed")
        saved = iptables_save()
        assert any("10.87.0.252:9000-9002" in line for line in saved)
        assert not any("10.87.0.251" in line for line in saved)
        # only the changed lines moved: every other line of iptables-save is where it was
        assert [line for line in saved if "10.87.0.25" not in line] == [line for line in after if "10.87.0.25" not in line]
        assert "10.87.0.252" in (tmp_path / "dnat.rules").read_text()
    finally:
        result = run_module("dnat", dict(args, state="absent"), diff=True)
    assert result["changed"] and result["diff"][0]["after"] == ""
    assert iptables_save() == before
    assert not (tmp_path / "dnat.rules").exists() and not (tmp_path / "onebox-dnat-restore").exists()
    assert not (tmp_path / "ip_forward.conf").exists()  # no file of the forwards is left
    assert run_module("dnat", dict(args, state="absent"))["changed"] is False


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_rules_are_written_as_iptables_save_prints_them(backend):
    """The comparison that makes a second run a no-op: the rules as rendered are, to the
    character, what each backend's iptables-save prints after loading them (in a scratch
    namespace, so the host is not touched)."""
    forwards = _dnat.parse_forwards([
        {"port": 80, "target": "10.87.0.10", "comment": "web proxy"},
        {"port": 443, "target": "10.87.0.10", "comment": "tls", "source": ["203.0.113.0/24", "198.51.100.7"]},
        {"proto": "udp", "port": "7000-7010", "target": "10.87.0.11", "target_port": "8000-8010"},
        {"proto": "udp", "port": "9000-9001", "target": "10.87.0.11", "host_address": "192.0.2.2"},
    ])
    networks = [ipaddress.IPv4Network("10.87.0.0/24")]
    desired = _dnat_rules.desired_rules(forwards, "ONEBOX", networks, _dnat.parse_isolate(["lxdbr0", "br-x.1@a"]))
    assert len(desired.chains[("filter", "ONEBOX_FORWARD")]) == 4 * 2 + 2 * 2
    # a second owner beside it, its owner on its jumps
    other = _dnat_rules.desired_rules(_dnat.parse_forwards([{"port": 8080, "target": "10.87.0.12"}]), "WEB_2", networks,
                                      owner="web-2")
    nothing = _dnat_rules.empty_rules()
    with Netns("save") as ns:
        ns.run(["iptables-%s-restore" % backend, "--noflush"], input=_dnat_rules.plan(nothing, desired), check=True)
        ns.run(["iptables-%s-restore" % backend, "--noflush"], input=_dnat_rules.plan(nothing, other), check=True)
        saved = ns.run(["iptables-%s-save" % backend], check=True).stdout
        current = _dnat_rules.parse_save(saved, "ONEBOX")
        assert current == desired
        assert _dnat_rules.plan(current, desired) == ""
        assert _dnat_rules.parse_save(saved, "WEB_2") == other
        assert _dnat_claims.collection_owners(saved) == {"ONEBOX": None, "WEB_2": "web-2"}
        assert [(c.owner, c.proto, c.port) for c in _dnat_claims.other_claims(saved, {"ONEBOX": None, "WEB_2": "web-2"}, "ONEBOX")] \
            == [("web-2", "tcp", (8080, 8080))]
        ns.run(["iptables-%s-restore" % backend, "--noflush"], input=_dnat_rules.plan(other, nothing), check=True)
        ns.run(["iptables-%s-restore" % backend, "--noflush"], input=_dnat_rules.plan(current, nothing), check=True)
        left = ns.run(["iptables-%s-save" % backend], check=True).stdout
        assert "ONEBOX" not in left


# ---- traffic ------------------------------------------------------------------------------
def test_tcp_reaches_the_right_container(box, client, applied):
    a, b = box["a"], box["b"]
    # the container's own answer, and it sees the client's real address (no masquerade)
    assert ask_from_ns(client, "tcp", client.host_address, WEB_A) == "%s %d %s" % (a, WEB_A, client.address)
    assert ask_from_ns(client, "tcp", client.host_address, WEB_B) == "%s %d %s" % (b, WEB_B, client.address)


def test_udp_reaches_an_echo_in_a_container(box, client, applied):
    assert ask_from_ns(client, "udp", client.host_address, UDP) == "%s %d %s ping" % (box["a"], UDP, client.address)


def test_a_port_range_is_forwarded_port_by_port(box, client, applied):
    # host RANGE[0]+1 -> SHIFT+1 on a (the only port of the range a listens on)
    assert ask_from_ns(client, "tcp", client.host_address, RANGE[0] + 1) == "%s %d %s" % (box["a"], SHIFT + 1, client.address)
    # the other ports of the range reach a too, where nothing listens
    assert ask_from_ns(client, "tcp", client.host_address, RANGE[0]) == "ERROR ConnectionRefusedError"


def test_undeclared_port_is_not_forwarded(box, client, applied):
    assert ask_from_ns(client, "tcp", client.host_address, UNDECLARED).startswith("ERROR")
    # and the containers are not reachable directly from outside (FORWARD drops it here)
    assert ask_from_ns(client, "tcp", box["ip"][box["a"]], WEB_A, timeout=1) == "ERROR TimeoutError"


def test_container_to_container_traffic_is_untouched(box, lxd, applied):
    # C2C is forwarded to b, but b talking to a on that port number reaches a
    a, b = box["a"], box["b"]
    assert ask_from_container(lxd, b, "tcp", box["ip"][a], C2C) == "%s %d %s" % (a, C2C, box["ip"][b])


def test_the_host_reaches_its_own_forwarded_port(box, client, applied):
    assert ask_from_host("tcp", client.host_address, WEB_B).startswith("%s %d " % (box["b"], WEB_B))
    # not through loopback
    assert ask_from_host("tcp", "127.0.0.1", WEB_B).startswith("ERROR")


def test_hairpin_a_container_reaches_the_hosts_address(box, lxd, client, applied):
    a, b = box["a"], box["b"]
    answer = ask_from_container(lxd, a, "tcp", client.host_address, HAIRPIN)
    gateway = str(ipaddress.IPv4Interface(lxd.network(BRIDGE)["config"]["ipv4.address"]).ip)
    assert answer == "%s %d %s" % (b, HAIRPIN, gateway)  # masqueraded, so b's reply goes back through the host


def test_user_rules_and_foreign_chains_survive(user_rules, applied):
    now = iptables_save()
    prefix_lines = [line for line in now if PREFIX in line]
    assert prefix_lines
    # the user's lines are all there, in the same order
    assert [line for line in now if line not in prefix_lines] == user_rules
    assert run_module("dnat", applied)["changed"] is False


def test_reboot_simulation_restores_traffic(box, client, applied):
    for chain in ("PREROUTING", "OUTPUT", "POSTROUTING"):
        iptables("-t", "nat", "-F", "%s_%s" % (PREFIX, chain))
    iptables("-t", "filter", "-F", "%s_FORWARD" % PREFIX)
    assert ask_from_ns(client, "tcp", client.host_address, WEB_A).startswith("ERROR")
    assert run_module("dnat", applied, check=True)["changed"] is True  # the module sees it
    proc = subprocess.run(["sh", applied["restore_script"]], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert ask_from_ns(client, "tcp", client.host_address, WEB_A).startswith(box["a"])
    assert ask_from_ns(client, "udp", client.host_address, UDP).startswith(box["a"])
    # a second run of the restore adds nothing twice, and the module sees no difference
    saved = iptables_save()
    subprocess.run(["sh", applied["restore_script"]], capture_output=True, timeout=60, check=True)
    assert iptables_save() == saved
    assert run_module("dnat", applied)["changed"] is False


def test_removing_forwards(box, client, user_rules, forwards, applied):
    kept = [f for f in forwards if f["port"] != WEB_A]
    try:
        result = run_module("dnat", dict(applied, forwards=kept))
        assert result["changed"] and not result.get("failed"), result
        assert ask_from_ns(client, "tcp", client.host_address, WEB_A).startswith("ERROR")
        assert ask_from_ns(client, "tcp", client.host_address, WEB_B).startswith(box["b"])
        assert not any("web a" in line for line in iptables_save())

        result = run_module("dnat", dict(applied, state="absent"))
        assert result["changed"] and not result.get("failed"), result
        assert iptables_save() == user_rules  # no rule left behind
        assert ask_from_ns(client, "tcp", client.host_address, WEB_B).startswith("ERROR")
    finally:
        assert run_module("dnat", applied)["changed"]  # back for the tests after this one


# ---- isolate: from outside, a container is reached only through a forward -------------------
# Two isolated interfaces: the LXD bridge with the box's containers (the real case), and a bridge
# of the test's own with one namespace on it standing for a container. The box deployed on this
# machine may isolate lxdbr0 itself, which closes the direct path to a and b whatever these tests
# do; so the test's chain is checked to be what drops (its counters), and the test's own bridge,
# which nothing else isolates, shows the path closing and opening again.
ISO_PREFIX = PREFIX + "I"
ISO_FORWARD = BASE + 9      # host port -> a:WEB_A
NS_PORT = BASE + 600        # servers in the outside namespace and in the bridge's "container"
ISO_FORWARD_LAN = BASE + 601  # host port -> the "container":NS_PORT
BLOCKED = 2                 # seconds a connection that should not get through is given


def _serve(ns_name, label):
    return subprocess.Popen(["ip", "netns", "exec", ns_name, sys.executable, "-c", SERVER, label,
                             "tcp/%d" % NS_PORT, "udp/%d" % NS_PORT],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(server):
    server.terminate()
    try:
        server.wait(timeout=5)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=5)


def _wait_for(ns, address, label, server):
    deadline = time.monotonic() + 10
    while not ask_from_ns(ns, "tcp", address, NS_PORT, 1).startswith(label):
        assert time.monotonic() < deadline and server.poll() is None, "server %s did not start" % label
        time.sleep(0.1)


def probe_all(*probes):
    """Run (function, args...) probes at once (blocked ones each wait BLOCKED seconds)."""
    with ThreadPoolExecutor(len(probes)) as pool:
        return [f.result() for f in [pool.submit(probe[0], *probe[1:]) for probe in probes]]


def isolation_counts():
    """{rule body: packets} of the test's FORWARD chain."""
    out = subprocess.run(["iptables-save", "-c", "-t", "filter"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    found = (re.match(r"^\[(\d+):\d+\] -A %s_FORWARD (.*)$" % ISO_PREFIX, line) for line in out.splitlines())
    return {m.group(2): int(m.group(1)) for m in found if m}


class Lan:
    """A bridge of the test's own on a free /30 (the host's end is the gateway) with one network
    namespace on it, the "container", serving NS_PORT. Cleanup removes only what it made."""

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.bridge, self.port, self.name = "obr%s" % tag, "obp%s" % tag, "onebox-lan-%s" % tag
        self.address = self.gateway = self.server = None
        self._made = []

    def run(self, argv, timeout=10, check=False):
        """Run argv inside the "container" (as Netns.run)."""
        return subprocess.run(["ip", "netns", "exec", self.name] + list(argv),
                              capture_output=True, text=True, timeout=timeout, check=check)

    def __enter__(self):
        def ip(*args):
            subprocess.run(["ip"] + list(args), capture_output=True, check=True, timeout=10)
        try:
            self.gateway, self.address = [str(h) for h in free_subnet().hosts()]
            ip("link", "add", self.bridge, "type", "bridge")
            self._made.append(("link", self.bridge))
            ip("addr", "add", "%s/30" % self.gateway, "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            ip("netns", "add", self.name)
            self._made.append(("netns", self.name))
            ip("link", "add", self.port, "master", self.bridge, "up", "type", "veth", "peer", "name", "eth0",
               "netns", self.name)
            self._made.append(("link", self.port))
            for args in (("link", "set", "lo", "up"), ("addr", "add", "%s/30" % self.address, "dev", "eth0"),
                         ("link", "set", "eth0", "up"), ("route", "add", "default", "via", self.gateway)):
                ip("-n", self.name, *args)
            self.server = _serve(self.name, "lan")
            _wait_for(self, self.address, "lan", self.server)
            return self
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc):
        if self.server is not None:
            _stop(self.server)
            self.server = None
        for kind, name in reversed(self._made):
            subprocess.run(["ip", kind, "delete", name], capture_output=True, timeout=30, check=False)
        self._made = []


@pytest.fixture(scope="module")
def outsider():
    """A client of its own (not the one user_rules drops), serving NS_PORT for the containers."""
    with Netns("iso") as ns:
        server = _serve(ns.name, "outside")
        try:
            _wait_for(ns, ns.address, "outside", server)
            yield ns
        finally:
            _stop(server)


@pytest.fixture(scope="module")
def lan():
    with Lan() as made:
        yield made


@pytest.fixture(scope="module")
def isolation(box, outsider, lan, tmp_path_factory):
    """A forward to a and one to the lan's container, with lxdbr0 and the lan's bridge isolated."""
    a, ip_a = box["a"], box["ip"][box["a"]]
    before = iptables_save()
    # the problem isolate solves: the outside routes straight to a private address
    assert ask_from_ns(outsider, "tcp", lan.address, NS_PORT) == "lan %d %s" % (NS_PORT, outsider.address)
    lxd_open = ask_from_ns(outsider, "tcp", ip_a, WEB_A, BLOCKED) == "%s %d %s" % (a, WEB_A, outsider.address)
    args = args_for(tmp_path_factory.mktemp("isolate"),
                    [{"port": ISO_FORWARD, "target": a, "target_port": WEB_A},
                     {"port": ISO_FORWARD_LAN, "target": lan.address, "target_port": NS_PORT},
                     {"proto": "udp", "port": ISO_FORWARD_LAN, "target": lan.address, "target_port": NS_PORT}],
                    chain_prefix=ISO_PREFIX, isolate=[BRIDGE, lan.bridge])
    result = run_module("dnat", args, check=True, diff=True)
    assert result["changed"], result
    assert all(rule in result["diff"][0]["after"] for rule in _dnat_rules.isolate_rules(BRIDGE) + _dnat_rules.isolate_rules(lan.bridge))
    assert iptables_save() == before  # check mode changed nothing
    result = run_module("dnat", args)
    assert result["changed"] and not result.get("failed"), result
    assert result["isolate"] == sorted([BRIDGE, lan.bridge])
    try:
        yield dict(args=args, before=before, lxd_open=lxd_open)
    finally:
        result = run_module("dnat", dict(args, state="absent"))
        assert not result.get("failed"), result


def test_isolate_rules_in_place_after_the_accept_rules(lan, isolation):
    args = isolation["args"]
    bodies = [line.split(" ", 2)[2] for line in iptables_save() if line.startswith("-A %s_FORWARD " % ISO_PREFIX)]
    assert len(bodies) == 3 * 2 + 2 * 2 and all(body.endswith("-j ACCEPT") for body in bodies[:6])
    assert bodies[6:] == _dnat_rules.isolate_rules(min(BRIDGE, lan.bridge)) + _dnat_rules.isolate_rules(max(BRIDGE, lan.bridge))
    # as iptables-save prints them: the next run (same list, other order, twice a name) is a no-op
    assert run_module("dnat", dict(args, isolate=[lan.bridge, BRIDGE, BRIDGE]))["changed"] is False
    with open(args["save_path"], encoding="utf-8") as handle:
        saved = handle.read()
    assert all("-A %s_FORWARD %s\n" % (ISO_PREFIX, body) in saved for body in bodies)


def test_isolate_blocks_the_direct_path(box, outsider, lan, isolation):
    ip_a, ip_b = box["ip"][box["a"]], box["ip"][box["b"]]
    counts = isolation_counts()
    started = time.monotonic()
    answers = probe_all((ask_from_ns, outsider, "tcp", lan.address, NS_PORT, BLOCKED),
                        (ask_from_ns, outsider, "udp", lan.address, NS_PORT, BLOCKED),
                        (ask_from_ns, outsider, "tcp", ip_a, WEB_A, BLOCKED),
                        (ask_from_ns, outsider, "udp", ip_a, UDP, BLOCKED),
                        (ask_from_ns, outsider, "tcp", ip_b, WEB_B, BLOCKED),
                        # a forwarded port too: a forward is the host's port, not the private address
                        (ask_from_ns, outsider, "tcp", ip_a, ISO_FORWARD, BLOCKED))
    assert answers == ["ERROR TimeoutError"] * 6
    assert time.monotonic() - started < BLOCKED + 5
    # dropped by the test's rules (the box's own chain, if it isolates lxdbr0 too, comes after them)
    after = isolation_counts()
    for iface, probes in ((lan.bridge, 2), (BRIDGE, 4)):
        drop = _dnat_rules.isolate_rules(iface)[1]
        assert after[drop] - counts[drop] >= probes, (iface, counts, after)


def test_isolate_keeps_the_declared_forwards(box, outsider, lan, isolation):
    counts = isolation_counts()
    assert probe_all((ask_from_ns, outsider, "tcp", outsider.host_address, ISO_FORWARD),
                     (ask_from_ns, outsider, "tcp", outsider.host_address, ISO_FORWARD_LAN),
                     (ask_from_ns, outsider, "udp", outsider.host_address, ISO_FORWARD_LAN)) == [
        "%s %d %s" % (box["a"], WEB_A, outsider.address),
        "lan %d %s" % (NS_PORT, outsider.address), "lan %d %s ping" % (NS_PORT, outsider.address)]
    # accepted before the isolation rules (which RETURN, so would skip the ACCEPTs if they came first)
    after = isolation_counts()
    assert all(after[body] > counts[body] for body in after if body.endswith("-j ACCEPT")), (counts, after)
    assert all(after[body] == counts[body] for body in after if "isolate" in body), (counts, after)


def test_isolate_lets_containers_reach_out_and_get_replies(box, lxd, outsider, lan, isolation):
    # a and b are masqueraded by LXD's NAT (the namespace sees the host's end of its link); the
    # lan's container is routed as it is
    assert probe_all((ask_from_container, lxd, box["a"], "tcp", outsider.address, NS_PORT),
                     (ask_from_container, lxd, box["b"], "udp", outsider.address, NS_PORT),
                     (ask_from_ns, lan, "tcp", outsider.address, NS_PORT),
                     (ask_from_ns, lan, "udp", outsider.address, NS_PORT)) == [
        "outside %d %s" % (NS_PORT, outsider.host_address), "outside %d %s ping" % (NS_PORT, outsider.host_address),
        "outside %d %s" % (NS_PORT, lan.address), "outside %d %s ping" % (NS_PORT, lan.address)]


def test_isolate_keeps_container_to_container_and_host_traffic(box, lxd, lan, isolation):
    a, b = box["a"], box["b"]
    ip_a, ip_b = box["ip"][a], box["ip"][b]
    assert probe_all((ask_from_container, lxd, b, "tcp", ip_a, C2C),
                     (ask_from_container, lxd, b, "udp", ip_a, UDP),
                     (ask_from_host, "tcp", ip_a, WEB_A),
                     (ask_from_host, "tcp", ip_b, WEB_B),
                     (ask_from_host, "tcp", lan.address, NS_PORT)) == [
        "%s %d %s" % (a, C2C, ip_b), "%s %d %s ping" % (a, UDP, ip_b), "%s %d %s" % (a, WEB_A, box["gateway"]),
        "%s %d %s" % (b, WEB_B, box["gateway"]), "lan %d %s" % (NS_PORT, lan.gateway)]


def test_isolate_survives_a_reboot(outsider, lan, isolation):
    args = isolation["args"]
    applied_rules = iptables_save()
    iptables("-t", "filter", "-F", "%s_FORWARD" % ISO_PREFIX)
    assert ask_from_ns(outsider, "tcp", lan.address, NS_PORT).startswith("lan ")
    subprocess.run(["sh", args["restore_script"]], capture_output=True, timeout=60, check=True)
    assert iptables_save() == applied_rules
    assert ask_from_ns(outsider, "tcp", lan.address, NS_PORT, BLOCKED) == "ERROR TimeoutError"


def test_bad_isolate_fails_before_any_change(tmp_path):
    before = iptables_save()
    result = run_module("dnat", args_for(tmp_path, chain_prefix=ISO_PREFIX + "X", isolate=["lxdbr0", "br/0"]))
    assert result.get("failed") and "isolate[1]" in result["msg"] and "'br/0'" in result["msg"], result
    assert iptables_save() == before and list(tmp_path.iterdir()) == []


def test_without_isolate_the_direct_path_is_back(box, outsider, lan, isolation):
    """The last isolate test: it leaves the forwards off (the fixture's teardown is then a no-op)."""
    a, ip_a = box["a"], box["ip"][box["a"]]
    args = isolation["args"]
    direct_lan, direct_a = "lan %d %s" % (NS_PORT, outsider.address), "%s %d %s" % (a, WEB_A, outsider.address)
    result = run_module("dnat", dict(args, isolate=[]))
    assert result["changed"] and result["isolate"] == []
    assert not any("isolate" in line for line in iptables_save() if ISO_PREFIX in line)
    with open(args["save_path"], encoding="utf-8") as handle:
        assert "isolate" not in handle.read()
    answers = probe_all((ask_from_ns, outsider, "tcp", lan.address, NS_PORT),
                        (ask_from_ns, outsider, "tcp", outsider.host_address, ISO_FORWARD_LAN),
                        (ask_from_ns, outsider, "tcp", ip_a, WEB_A, BLOCKED))
    assert answers[:2] == [direct_lan, direct_lan]
    assert answers[2] == (direct_a if isolation["lxd_open"] else "ERROR TimeoutError")
    result = run_module("dnat", dict(args, state="absent"))
    assert result["changed"] and not result.get("failed"), result
    assert iptables_save() == isolation["before"]
    assert ask_from_ns(outsider, "tcp", lan.address, NS_PORT) == direct_lan


# ---- owners: boxes side by side on one host ----------------------------------------------------
# Throw-away owners of this run: their prefixes are derived (no chain_prefix given), their files
# are under tmp.
OWNER_A, OWNER_B, OWNER_C = ("%s-own-%s" % (RUN_PREFIX, x) for x in "abc")
OWN_A, OWN_B = BASE + 10, BASE + 11   # host ports: A -> a:WEB_A; B -> b:WEB_B (tcp), a:UDP (udp)


def owner_args(tmp, owner, forwards, **extra):
    return dict(dict(owner=owner, forwards=forwards, save_path=str(tmp / "dnat.rules"),
                     restore_script=str(tmp / "restore"), sysctl_file=str(tmp / "ip_forward.conf")), **extra)


def lines_of(prefix):
    """iptables-save's lines that name a prefix's chains (its chains, rules and jumps)."""
    return [line for line in iptables_save() if re.search(r"\b%s_[A-Z]+\b" % prefix, line)]


def files_of(args):
    return {key: open(args[key], "rb").read() for key in ("save_path", "restore_script", "sysctl_file")}


@pytest.fixture(scope="module")
def two_owners(box, client, tmp_path_factory):
    """Two boxes' forwards side by side, each of its own owner; both gone at the end."""
    a_args = owner_args(tmp_path_factory.mktemp("owner-a"), OWNER_A,
                        [{"port": OWN_A, "target": box["a"], "target_port": WEB_A, "comment": "owner a"}])
    b_args = owner_args(tmp_path_factory.mktemp("owner-b"), OWNER_B,
                        [{"port": OWN_B, "target": box["b"], "target_port": WEB_B},
                         {"proto": "udp", "port": OWN_B, "target": box["a"], "target_port": UDP}])
    before = iptables_save()
    results = {}
    try:
        for key, args in (("a", a_args), ("b", b_args)):
            results[key] = run_module("dnat", args)
            assert results[key]["changed"] and not results[key].get("failed"), results[key]
        yield dict(a=a_args, b=b_args, results=results)
    finally:
        for args in (b_args, a_args):
            result = run_module("dnat", dict(args, state="absent"))
            assert not result.get("failed"), result
    assert iptables_save() == before


def test_two_owners_converge_side_by_side(box, client, two_owners):
    a_args, b_args, results = two_owners["a"], two_owners["b"], two_owners["results"]
    prefix_a, prefix_b = _dnat.owner_prefix(OWNER_A), _dnat.owner_prefix(OWNER_B)
    assert prefix_a == OWNER_A.upper().replace("-", "_") and prefix_a != prefix_b
    # what a role templates the boot unit from
    assert {k: results["a"][k] for k in ("owner", "chain_prefix", "save_path", "restore_script", "sysctl_file",
                                         "unit_name")} == dict(
        owner=OWNER_A, chain_prefix=prefix_a, save_path=a_args["save_path"], restore_script=a_args["restore_script"],
        sysctl_file=a_args["sysctl_file"], unit_name="onebox-dnat-%s.service" % OWNER_A)
    # the jumps say whose the chains are; so do the files
    for owner, prefix, args in ((OWNER_A, prefix_a, a_args), (OWNER_B, prefix_b, b_args)):
        jumps = [line for line in lines_of(prefix) if line.startswith("-A ") and line.split()[1] in
                 ("PREROUTING", "OUTPUT", "POSTROUTING", "FORWARD")]
        assert len(jumps) == 4 and all('--comment "homelab.onebox owner=%s"' % owner in line for line in jumps), jumps
        assert all(_dnat_rules.file_owner(text.decode()) == owner for text in files_of(args).values())
    # both forwards answer from outside
    assert probe_all((ask_from_ns, client, "tcp", client.host_address, OWN_A),
                     (ask_from_ns, client, "tcp", client.host_address, OWN_B),
                     (ask_from_ns, client, "udp", client.host_address, OWN_B)) == [
        "%s %d %s" % (box["a"], WEB_A, client.address), "%s %d %s" % (box["b"], WEB_B, client.address),
        "%s %d %s ping" % (box["a"], UDP, client.address)]
    # each converged: a second run of either changes nothing, in check mode neither
    for args in (a_args, b_args):
        assert run_module("dnat", args)["changed"] is False
        assert run_module("dnat", args, check=True, diff=True)["changed"] is False


def test_a_port_of_another_owner_is_refused(box, two_owners, applied, tmp_path):
    """Same proto and a port range that meets another owner's: refused before anything changes,
    in check mode too, naming the field, the port and the owner."""
    before = iptables_save()
    cases = [
        ([{"port": 9000, "target": "10.87.0.250"}, {"port": "%d-%d" % (OWN_A - 1, OWN_A), "target": box["a"]}],
         "forwards[1].port", "'%d-%d'" % (OWN_A - 1, OWN_A), "owner %s" % OWNER_A),
        ([{"proto": "udp", "port": OWN_B, "target": box["a"]}], "forwards[0].port", str(OWN_B), "owner %s" % OWNER_B),
        # the forwards of `applied` were written without owner
        ([{"port": WEB_A, "target": box["a"]}], "forwards[0].port", str(WEB_A),
         "owner unknown (chains %s_*)" % PREFIX),
    ]
    for forwards, field, value, owner in cases:
        for check in (True, False):
            result = run_module("dnat", owner_args(tmp_path, OWNER_C, forwards), check=check)
            assert result.get("failed"), result
            assert field in result["msg"] and value in result["msg"] and owner in result["msg"], result["msg"]
            assert "already forwarded" in result["msg"]
            assert iptables_save() == before
            assert list(tmp_path.iterdir()) == []
    # the other protocol on the same port is no conflict
    args = owner_args(tmp_path, OWNER_C, [{"proto": "udp", "port": OWN_A, "target": box["a"], "target_port": UDP}])
    try:
        result = run_module("dnat", args)
        assert result["changed"] and not result.get("failed"), result
    finally:
        assert not run_module("dnat", dict(args, state="absent")).get("failed")
    assert iptables_save() == before


def test_chains_and_files_of_another_owner_are_refused(two_owners, tmp_path):
    a_args = two_owners["a"]
    prefix_a = _dnat.owner_prefix(OWNER_A)
    before, files_a = iptables_save(), files_of(a_args)
    for state in ("present", "absent"):  # a teardown by mistake is refused too
        result = run_module("dnat", owner_args(tmp_path, OWNER_C, [], chain_prefix=prefix_a, state=state))
        assert result.get("failed"), result
        assert "chain_prefix" in result["msg"]
        assert "chain prefix %s belongs to owner %s" % (prefix_a, OWNER_A) in result["msg"], result["msg"]
        # a run without owner does not take them either
        result = run_module("dnat", dict(chain_prefix=prefix_a, state=state, save_path="", sysctl_file=""))
        assert result.get("failed") and "belongs to owner %s" % OWNER_A in result["msg"], result
        for key in ("save_path", "restore_script", "sysctl_file"):
            result = run_module("dnat", dict(owner_args(tmp_path, OWNER_C, []), state=state, **{key: a_args[key]}))
            assert result.get("failed") and key in result["msg"] and "owner %s" % OWNER_A in result["msg"], result
    assert iptables_save() == before and files_of(a_args) == files_a


def test_removing_one_owner_leaves_the_other(box, client, two_owners):
    a_args, b_args = two_owners["a"], two_owners["b"]
    prefix_a, prefix_b = _dnat.owner_prefix(OWNER_A), _dnat.owner_prefix(OWNER_B)
    lines_a, files_a = lines_of(prefix_a), files_of(a_args)
    assert lines_a and lines_of(prefix_b)

    result = run_module("dnat", dict(b_args, state="absent"), check=True, diff=True)
    assert result["changed"] and result["diff"][0]["after"] == "" and prefix_b in result["diff"][0]["before"]
    assert lines_of(prefix_b) and os.path.exists(b_args["save_path"])  # check mode changed nothing
    result = run_module("dnat", dict(b_args, state="absent"))
    assert result["changed"] and not result.get("failed"), result

    assert lines_of(prefix_b) == []
    assert not any(os.path.exists(b_args[k]) for k in ("save_path", "restore_script", "sysctl_file"))
    assert lines_of(prefix_a) == lines_a and files_of(a_args) == files_a  # byte-identical
    assert probe_all((ask_from_ns, client, "tcp", client.host_address, OWN_A),
                     (ask_from_ns, client, "tcp", client.host_address, OWN_B)) == [
        "%s %d %s" % (box["a"], WEB_A, client.address), "ERROR ConnectionRefusedError"]
    assert run_module("dnat", a_args)["changed"] is False
    assert run_module("dnat", dict(b_args, state="absent"))["changed"] is False


def test_an_owner_takes_over_chains_written_without_owner(tmp_path):
    """The upgrade of a box of 0.1: its chains, whose jumps name no owner, become its owner's in one
    run (jumps rewritten, none twice); then a run without owner no longer touches them."""
    prefix = PREFIX + "U"
    owner = "%s-own-u" % RUN_PREFIX
    before = iptables_save()
    legacy = args_for(tmp_path, [{"port": BASE + 12, "target": "10.87.0.250"}], chain_prefix=prefix)
    owned = dict(legacy, owner=owner)
    try:
        assert run_module("dnat", legacy)["changed"]
        assert all('--comment "homelab.onebox" -j %s_' % prefix in line
                   for line in lines_of(prefix) if line.split()[1] in ("PREROUTING", "OUTPUT", "POSTROUTING", "FORWARD"))
        chains = [line for line in lines_of(prefix) if line.startswith("-A %s_" % prefix)]
        result = run_module("dnat", owned, check=True, diff=True)
        assert result["changed"] and 'owner=%s' % owner in result["diff"][0]["after"], result
        result = run_module("dnat", owned)
        assert result["changed"] and not result.get("failed"), result
        jumps = [line for line in lines_of(prefix) if not line.startswith((":", "-A %s_" % prefix))]
        assert sorted(jumps) == sorted('-A %s -m comment --comment "homelab.onebox owner=%s" -j %s_%s'
                                       % (builtin, owner, prefix, builtin)
                                       for builtin in ("PREROUTING", "OUTPUT", "POSTROUTING", "FORWARD"))
        assert [line for line in lines_of(prefix) if line.startswith("-A %s_" % prefix)] == chains
        assert run_module("dnat", owned)["changed"] is False
        result = run_module("dnat", legacy)
        assert result.get("failed") and "belongs to owner %s" % owner in result["msg"], result
    finally:
        assert not run_module("dnat", dict(owned, state="absent")).get("failed")
    assert iptables_save() == before


# ---- the host's own listeners --------------------------------------------------------------------
# Sockets of a test process on the host, on ports the kernel picks: "tcp:0.0.0.0", "udp:0.0.0.0",
# "tcp:127.0.0.1". Prints the ports as JSON, then waits to be killed.
LISTENER = r'''
import json, socket, sys, time
sockets = []
for spec in sys.argv[1:]:
    proto, host = spec.split(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.bind((host, 0))
    if proto == "tcp":
        s.listen(8)
    sockets.append(s)
print(json.dumps([s.getsockname()[1] for s in sockets]), flush=True)
time.sleep(600)
'''


@contextlib.contextmanager
def host_listeners(*specs):
    """(process, [port per spec]) of a listening test process, killed by its PID at the end."""
    proc = subprocess.Popen([sys.executable, "-c", LISTENER] + list(specs), stdout=subprocess.PIPE, text=True)
    try:
        yield proc, json.loads(proc.stdout.readline())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()


def test_a_forward_over_a_port_the_host_listens_on(box, client, tmp_path):
    owner = "%s-own-l" % RUN_PREFIX
    with host_listeners("tcp:0.0.0.0", "udp:0.0.0.0", "tcp:127.0.0.1") as (proc, (tcp, udp, loopback)):
        before = iptables_save()
        # refused (check mode too), naming the field, the port, what listens
        for forwards, field, value, listens in (
                ([{"port": tcp, "target": box["a"], "target_port": WEB_A}], "forwards[0].port", str(tcp),
                 "tcp 0.0.0.0:%d" % tcp),
                ([{"port": 9000, "target": "10.87.0.250"}, {"port": "%d-%d" % (tcp - 1, tcp + 1), "target": box["a"]}],
                 "forwards[1].port", "'%d-%d'" % (tcp - 1, tcp + 1), "tcp 0.0.0.0:%d" % tcp),
                ([{"proto": "udp", "port": udp, "target": box["a"], "target_port": UDP}], "forwards[0].port", str(udp),
                 "udp 0.0.0.0:%d" % udp)):
            for check in (True, False):
                result = run_module("dnat", owner_args(tmp_path, owner, forwards), check=check)
                assert result.get("failed"), result
                assert field in result["msg"] and value in result["msg"], result["msg"]
                assert "listens on %s (" % listens in result["msg"] and "pid %d)" % proc.pid in result["msg"], result["msg"]
                assert "allow_host_listener" in result["msg"]
                assert iptables_save() == before and list(tmp_path.iterdir()) == []

        # a listener on loopback only does not block: the forward never sees its traffic
        args = owner_args(tmp_path, owner, [{"port": loopback, "target": box["a"], "target_port": WEB_A}])
        try:
            assert run_module("dnat", args)["changed"]
        finally:
            assert not run_module("dnat", dict(args, state="absent")).get("failed")
        assert iptables_save() == before

        # the forward that means it: accepted, and it takes the port's traffic from outside
        args = owner_args(tmp_path, owner, [{"port": tcp, "target": box["a"], "target_port": WEB_A,
                                             "allow_host_listener": True},
                                            {"proto": "udp", "port": udp, "target": box["a"], "target_port": UDP,
                                             "allow_host_listener": True}])
        try:
            result = run_module("dnat", args, check=True, diff=True)
            assert result["changed"] and not result.get("failed") and iptables_save() == before, result
            result = run_module("dnat", args)
            assert result["changed"] and not result.get("failed"), result
            assert result["forwards"][0]["allow_host_listener"] is True
            assert run_module("dnat", args)["changed"] is False
            assert probe_all((ask_from_ns, client, "tcp", client.host_address, tcp),
                             (ask_from_ns, client, "udp", client.host_address, udp)) == [
                "%s %d %s" % (box["a"], WEB_A, client.address), "%s %d %s ping" % (box["a"], UDP, client.address)]
        finally:
            assert not run_module("dnat", dict(args, state="absent")).get("failed")
        assert iptables_save() == before
    # the listener gone, the same forward needs no word
    result = run_module("dnat", owner_args(tmp_path, owner, [{"port": tcp, "target": box["a"]}]), check=True)
    assert result["changed"] and not result.get("failed"), result


def test_lxd_dns_on_the_bridge_is_not_forwarded(tmp_path):
    """LXD's dnsmasq listens on the bridge's address, port 53: a forward of UDP 53 would take the
    containers' DNS."""
    listeners = _dnat_claims.parse_proc_net(open("/proc/net/udp", encoding="ascii").read(), "udp", sys.byteorder)
    dns = [l for l in listeners if l.port == 53 and not l.address.is_loopback]
    # The daemon's bridge always has its dnsmasq: none is a broken set-up, not a reason to skip.
    assert dns, "nothing on this host serves DNS on a non-loopback address: is the daemon's bridge up?"
    before = iptables_save()
    result = run_module("dnat", owner_args(tmp_path, "%s-own-d" % RUN_PREFIX,
                                           [{"proto": "udp", "port": 53, "target": "10.87.0.250"}]))
    assert result.get("failed") and "forwards[0].port" in result["msg"], result
    # Named by one of them (with Incus beside LXD, each bridge has its own dnsmasq).
    assert any("listens on udp %s:53" % listener.address in result["msg"] for listener in dns), result["msg"]
    assert iptables_save() == before and list(tmp_path.iterdir()) == []


# ---- the role -----------------------------------------------------------------------------
ROLE_PLAY = """
- hosts: all
  gather_facts: false
  roles:
    - role: homelab.onebox.port_forward
"""


def test_port_forward_role(box, client, user_rules, tmp_path):
    """Two boxes' forwards through the role: chains, files and boot unit of each owner's own (the
    unit named by the module's result); removing one leaves the other as it was."""
    playbook = tmp_path / "play.yml"
    playbook.write_text(ROLE_PLAY)
    before = iptables_save()
    owner, other = "%s-role-a" % RUN_PREFIX, "%s-role-b" % RUN_PREFIX

    def variables(who, tmp):
        return dict(
            onebox_owner=who, onebox_forward_save_path=str(tmp / "etc" / "dnat.rules"),
            onebox_forward_restore_script=str(tmp / "sbin" / "restore"), onebox_forward_sysctl_file=str(tmp / "sysctl.conf"),
            onebox_forward_systemd=True, onebox_forward_unit_dir=str(tmp_path), onebox_forward_unit_enable=False)

    first = dict(variables(owner, tmp_path / "a"),
                 onebox_services=[{"name": box["a"], "forwards": [{"port": UNDECLARED, "target_port": WEB_A, "comment": "role"}]},
                                  {"name": box["b"]}],
                 onebox_forward_extra=[{"proto": "udp", "port": UNDECLARED, "target": box["ip"][box["a"]], "target_port": UDP}])
    second = dict(variables(other, tmp_path / "b"),
                  onebox_forward_extra=[{"port": OWN_B + 100, "target": box["ip"][box["b"]], "target_port": WEB_B}])

    def converge(values, **extra):
        rc, out = run_playbook(str(playbook), dict(values, **extra))
        assert rc == 0, json.dumps(out)[-3000:]
        return out["stats"]["localhost"]["changed"]

    prefix = _dnat.owner_prefix(owner)
    unit, other_unit = tmp_path / ("onebox-dnat-%s.service" % owner), tmp_path / ("onebox-dnat-%s.service" % other)
    try:
        assert converge(first) > 0
        # the chains are the owner's (derived), the bridge isolated by default
        assert ["-A %s_FORWARD %s" % (prefix, body) for body in _dnat_rules.isolate_rules(BRIDGE)] == \
            [line for line in iptables_save() if line.startswith("-A %s_FORWARD !" % prefix)]
        assert ask_from_ns(client, "tcp", client.host_address, UNDECLARED) == "%s %d %s" % (box["a"], WEB_A, client.address)
        assert ask_from_ns(client, "udp", client.host_address, UNDECLARED).startswith("%s %d " % (box["a"], UDP))
        text = unit.read_text()
        assert "ExecStart=%s" % first["onebox_forward_restore_script"] in text
        assert "ConditionPathExists=%s" % first["onebox_forward_save_path"] in text
        assert "chains %s_*" % prefix in text and "of %s" % owner in text
        assert converge(first) == 0

        assert converge(second) > 0
        assert other_unit.exists() and "ExecStart=%s" % second["onebox_forward_restore_script"] in other_unit.read_text()
        assert ask_from_ns(client, "tcp", client.host_address, OWN_B + 100).startswith(box["b"])
        lines, unit_text = lines_of(prefix), unit.read_text()
        converge(second, onebox_forward_state="absent")
        assert not other_unit.exists() and lines_of(_dnat.owner_prefix(other)) == []
        assert lines_of(prefix) == lines and unit.read_text() == unit_text
        assert ask_from_ns(client, "tcp", client.host_address, UNDECLARED).startswith(box["a"])
        assert converge(first) == 0
    finally:
        converge(second, onebox_forward_state="absent")
        converge(first, onebox_forward_state="absent")
    assert iptables_save() == before
    assert not unit.exists() and not (tmp_path / "a" / "etc" / "dnat.rules").exists()
    assert ask_from_ns(client, "tcp", client.host_address, UNDECLARED).startswith("ERROR")
