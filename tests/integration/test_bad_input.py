"""Bad input fails before anything changes, naming the field and the value: a table of kinds
across the box description and every module, each run through real ansible against a converged
box, with LXD's instances, `iptables-save` and the proxy's `nginx -T` compared before and after."""
from __future__ import annotations

import json
import os
import random
import socket
import subprocess

import pytest

from conftest import RUN_PREFIX, delete_instance_quietly, run_module

OWNER = "%s-bi" % RUN_PREFIX
WEB = "%s-bi-web" % RUN_PREFIX
PROXY = "%s-proxy" % OWNER
PREFIX = "OBI%s" % RUN_PREFIX[1:].upper()
PORT = random.randrange(45000, 50000, 10)
GOOD = {"name": WEB, "kind": "static", "host_port": PORT,
        "files": [{"path": "/var/www/html/index.html", "content": "bad input box\n"}]}


def listener():
    """A socket on all addresses of the host, as a service of the host's own would listen."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", 0))
    sock.listen(1)
    return sock


HOST_LISTENER = listener()
LISTENING = HOST_LISTENER.getsockname()[1]


def svc(**keys):
    """One more service beside the good one."""
    return dict({"name": "%s-bi-x" % RUN_PREFIX}, **keys)


X = "services[%s-bi-x]" % RUN_PREFIX

# (label, description services added to the good one, field named, value named)
DESCRIPTION = [
    ("name missing", [{"kind": "static"}], "services[1].name", "None"),
    ("name unsafe", [svc(name="bad;name")], "services[1].name", "bad;name"),
    ("name starts with a digit", [svc(name="1web")], "services[1].name", "1web"),
    ("name too long", [svc(name="a" * 64)], "services[1].name", "a" * 64),
    ("name twice", [svc(name=WEB)], "services[%s].name" % WEB, WEB),
    ("unknown key", [svc(colour="red")], X + ".colour", "red"),
    ("kind", [svc(kind="vm")], X + ".kind", "vm"),
    ("domain with an empty label", [svc(domains=["a..example.org"])], X + ".domains[0]", "a..example.org"),
    ("domain with a space", [svc(domains=["a b.example.org"])], X + ".domains[0]", "a b.example.org"),
    ("wildcard inside a domain", [svc(domains=["www.*.example.org"])], X + ".domains[0]", "www.*.example.org"),
    ("domain claimed twice", [svc(domains=["d.example.test"]), dict(svc(domains=["d.example.test"]), name="%s-bi-y" % RUN_PREFIX)],
     "services[%s-bi-y].domains[0]" % RUN_PREFIX, "d.example.test"),
    ("route path without /", [svc(port=8080, command=["/bin/true"], routes=[{"domain": "r.example.test", "path": "jenkins/"}])],
     X + ".routes[0].path", "jenkins/"),
    ("route without domain", [svc(port=8080, command=["/bin/true"], routes=[{"path": "/x/"}])], X + ".routes[0].domain", "None"),
    ("port 0", [svc(port=0, domains=["p.example.test"])], X + ".port", "0"),
    ("port a word", [svc(port="http", domains=["p.example.test"])], X + ".port", "http"),
    ("host_port out of range", [svc(host_port=70000)], X + ".host_port", "70000"),
    ("host_port twice", [svc(host_port=PORT)], X + ".host_port", str(PORT)),
    ("host_port the host listens on", [svc(host_port=LISTENING)], X, str(LISTENING)),
    ("forward range backwards", [svc(kind="plain", forwards=[{"port": "9000-8000"}])], X + ".forwards[0].port", "9000-8000"),
    ("forward proto", [svc(kind="plain", forwards=[{"proto": "icmp", "port": 9000}])], X + ".forwards[0].proto", "icmp"),
    ("forward unknown key", [svc(kind="plain", forwards=[{"port": 9000, "to": 1}])], X + ".forwards[0].to", "1"),
    ("forward of a port the host listens on", [svc(kind="plain", forwards=[{"port": LISTENING}])], X, str(LISTENING)),
    ("pool of none", [svc(kind="pool", count=0, domains=["pool.example.test"])], X + ".count", "0"),
    ("count outside a pool", [svc(count=2)], X + ".count", "2"),
    ("pool method", [svc(kind="pool", count=2, method="random", domains=["pool.example.test"])], X + ".method", "random"),
    ("memory without a unit", [svc(memory=256)], X + ".memory", "256"),
    ("memory below a bootable minimum", [svc(memory="4MiB")], X + ".memory", "4MiB"),
    ("memory a word", [svc(memory="lots")], X + ".memory", "lots"),
    ("RAM+swap below RAM", [svc(memory="256MiB", memory_swap="128MiB")], X + ".memory_swap", "128MiB"),
    ("more CPUs than the host", [svc(cpus="99")], X + ".cpus", "99"),
    ("a CPU set beyond the host", [svc(cpus="0-63")], X + ".cpus", "0-63"),
    ("cpus a word", [svc(cpus="two")], X + ".cpus", "two"),
    ("boot priority below 0", [svc(boot={"priority": -1})], X + ".boot.priority", "-1"),
    ("boot unknown key", [svc(boot={"order": 1})], X + ".boot", "order"),
    ("file path relative", [svc(files=[{"path": "etc/x", "content": ""}])], X + ".files[0].path", "etc/x"),
    ("file path with ..", [svc(files=[{"path": "/etc/../x", "content": ""}])], X + ".files[0].path", "/etc/../x"),
    ("file content not text", [svc(files=[{"path": "/etc/x", "content": 42}])], X + ".files[0].content", "42"),
    ("file mode", [svc(files=[{"path": "/etc/x", "content": "", "mode": "0999"}])], X + ".files[0].mode", "0999"),
    ("file owner", [svc(files=[{"path": "/etc/x", "content": "", "owner": "Root!"}])], X + ".files[0].owner", "Root!"),
    ("user", [svc(command=["/bin/sleep", "1000"], user="Bad User")], X + ".user", "Bad User"),
    ("environment name", [svc(command=["/bin/sleep", "1000"], environment={"1BAD": "s3cr3t-1"})], X, "1BAD"),
    ("environment value with a newline", [svc(command=["/bin/sleep", "1000"], environment={"K": "s3cr3t\nline"})], X, "K"),
    ("command empty", [svc(command=[])], X + ".command", "[]"),
    ("working_directory relative", [svc(command=["/bin/sleep", "1"], working_directory="srv")], X + ".working_directory", "srv"),
    ("package name", [svc(packages=["bad pkg"])], X + ".packages[0]", "bad pkg"),
    ("image", [svc(image="bad image")], X + ".image", "bad image"),
    ("proxy setting", [svc(port=8080, command=["/bin/true"], domains=["ps.example.test"], proxy={"read_timeout": "soon"})],
     "read_timeout", "soon"),
    ("adopt not a boolean", [svc(adopt="yes")], X + ".adopt", "yes"),
    ("allow_host_listener not a boolean", [svc(kind="plain", forwards=[{"port": 9000}], allow_host_listener="yes")],
     X + ".allow_host_listener", "yes"),
    ("allow_host_listener without a host port", [svc(allow_host_listener=True)], X + ".allow_host_listener", "True"),
    ("tls mode", [svc(domains=["t.example.test"], tls="https")], X + ".tls.mode", "https"),
    ("tls acme without the box's tls options", [svc(domains=["t.example.test"], tls="acme")], X + ".tls.mode", "acme"),
    ("tls provided certificate not PEM", [svc(domains=["t.example.test"], tls={"mode": "provided", "certificate": "x",
                                                                               "key": "y"})],
     X + ".tls.certificate", "********"),
    ("tls without domains", [svc(tls="self_signed")], X + ".tls", "self_signed"),
    ("volume path relative", [svc(volumes=[{"name": "data", "path": "srv/data"}])], X + ".volumes[0].path", "srv/data"),
    ("volume name unsafe", [svc(volumes=[{"name": "Da_ta", "path": "/srv/data"}])], X + ".volumes[0].name", "Da_ta"),
    ("volume size a word", [svc(volumes=[{"name": "data", "path": "/srv/data", "size": "big"}])], X + ".volumes[0].size", "big"),
    ("volume unknown key", [svc(volumes=[{"name": "data", "path": "/srv/data", "mode": "rw"}])], X + ".volumes[0].mode", "rw"),
    ("volume path twice", [svc(volumes=[{"name": "a", "path": "/srv/d"}, {"name": "b", "path": "/srv/d"}])],
     X + ".volumes[1].path", "/srv/d"),
    ("volume not shared on a pool", [svc(kind="pool", count=2, domains=["vp.example.test"],
                                         volumes=[{"name": "data", "path": "/srv/data"}])], X + ".volumes[0].shared", "False"),
    ("backup not a boolean", [svc(backup="sometimes")], X + ".backup", "sometimes"),
    ("backup_command empty", [svc(backup_command="")], X + ".backup_command", ""),
    ("state", [svc(state="gone")], X + ".state", "gone"),
    ("purge on a service that stays", [svc(purge=True)], X + ".purge", "True"),
]


def snapshot(lxd):
    instances = sorted((i["name"], i["status"], json.dumps(i.get("config"), sort_keys=True),
                        json.dumps(i.get("devices"), sort_keys=True)) for i in lxd.instances())
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, timeout=30, check=True).stdout
    rules = [line.split(" [")[0] for line in rules.splitlines() if not line.startswith("#")]
    volumes = sorted((v["name"], json.dumps(v.get("config"), sort_keys=True)) for v in lxd.custom_volumes("default"))
    files = sorted(os.path.join(top, name) for top, _dirs, names in os.walk("/etc/onebox") for name in names)
    return instances, rules, lxd.run(PROXY, ["nginx", "-T"], timeout=30), volumes, files


@pytest.fixture(scope="module")
def box_args(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    return {"owner": OWNER, "services": [GOOD],
            "forwards": {"chain_prefix": PREFIX, "save_path": str(tmp / "dnat.rules"),
                         "restore_script": str(tmp / "restore"), "sysctl_file": str(tmp / "ip_forward.conf")}}


@pytest.fixture(scope="module")
def box(lxd, box_args):
    try:  # a converge that fails half-way has made containers too: always torn down
        result = run_module("box", box_args, timeout=600)
        assert not result.get("failed"), json.dumps(result)[-3000:]
        yield result
    finally:
        delete_instance_quietly(lxd, "%s-bi-m" % RUN_PREFIX)  # made only if a refusal failed
        assert not run_module("box", dict(box_args, state="absent")).get("failed")


def refused(lxd, module, args, field, value):
    before = snapshot(lxd)
    result = run_module(module, args)
    assert result.get("failed"), result
    assert field in result["msg"] and value in result["msg"], (field, value, result["msg"])
    assert "unexpected error" not in result["msg"], result["msg"]
    assert snapshot(lxd) == before, "%s changed something" % module


@pytest.mark.parametrize("bad, field, value", [case[1:] for case in DESCRIPTION], ids=[case[0] for case in DESCRIPTION])
def test_description(lxd, box, box_args, bad, field, value):
    refused(lxd, "box", dict(box_args, services=[GOOD] + bad), field, value)


def _modules():
    name = "%s-bi-m" % RUN_PREFIX
    nginx = {"instance": PROXY, "sites": [{"name": "bad-input", "server_names": ["s.example.test"], "listen": ["80"],
                                           "locations": [{"path": "/", "status": 404}]}]}
    dnat = {"owner": OWNER, "chain_prefix": PREFIX, "save_path": "/nonexistent/dnat.rules", "restore_script": "",
            "forwards": [{"port": PORT + 1, "target": WEB}]}

    def site(**keys):
        return dict(nginx, sites=[dict(nginx["sites"][0], **keys)])

    def fwd(**keys):
        return dict(dnat, forwards=[dict(dnat["forwards"][0], **keys)])

    def backup(**keys):  # a directory that does not exist: a refusal comes before any repository is made
        options = dict({"password": "bad-input-pw", "targets": [{"name": "disk", "repository": "/nonexistent/%s" % RUN_PREFIX}]},
                       **keys)
        return {"owner": OWNER, "services": [GOOD], "backup": {k: val for k, val in options.items() if val is not None}}

    return [
        ("lxd_instance name", "lxd_instance", {"name": "bad_name", "image": "onebox-debian12"}, "name", "bad_name"),
        ("lxd_instance memory without a unit", "lxd_instance", {"name": name, "image": "onebox-debian12", "memory": "256"},
         "memory", "256"),
        ("lxd_instance more CPUs than the host", "lxd_instance", {"name": name, "image": "onebox-debian12", "cpus": "64"},
         "cpus", "64"),
        ("lxd_instance address", "lxd_instance", {"name": name, "image": "onebox-debian12", "ipv4_address": "10.0.0.300"},
         "ipv4_address", "10.0.0.300"),
        ("lxd_instance state", "lxd_instance", {"name": name, "state": "paused"}, "state", "paused"),
        ("lxd_instance volatile config", "lxd_instance", {"name": name, "image": "onebox-debian12",
                                                          "config": {"volatile.x": "1"}}, "config", "volatile.x"),
        ("lxd_instances name twice", "lxd_instances", {"instances": [{"name": name, "image": "i"}, {"name": name, "image": "i"}]},
         "instances[1].name", name),
        ("lxd_instances prune without owner", "lxd_instances", {"instances": [], "prune": True}, "prune", "True"),
        ("lxd_instances taking the box's container", "lxd_instances", {"owner": "%s-other" % RUN_PREFIX,
                                                                       "instances": [{"name": WEB}]},
         "instances[0].name", OWNER),
        ("lxd_instances prune_max below 0", "lxd_instances", {"owner": OWNER, "prune": True, "prune_max": -1,
                                                              "instances": []}, "prune_max", "-1"),
        ("lxd_provision file mode", "lxd_provision", {"instances": [{"name": WEB, "files": [
            {"path": "/etc/x", "content": "", "mode": "0999"}]}]}, "instances[0].files[0].mode", "0999"),
        ("lxd_provision user", "lxd_provision", {"instances": [{"name": WEB, "users": [{"name": "Bad User"}]}]},
         "instances[0].users[0].name", "Bad User"),
        ("lxd_provision restart", "lxd_provision", {"instances": [{"name": WEB, "services": [
            {"name": "x", "command": ["/bin/true"], "restart": "sometimes"}]}]}, "restart", "sometimes"),
        ("lxd_provision unit name", "lxd_provision", {"instances": [{"name": WEB, "services": [{"name": "../x"}]}]},
         "instances[0].services[0].name", "../x"),
        ("lxd_provision package", "lxd_provision", {"instances": [{"name": WEB, "packages": ["Bad_Pkg"]}]},
         "instances[0].packages[0]", "Bad_Pkg"),
        ("lxd_provision environment name", "lxd_provision", {"instances": [{"name": WEB, "services": [
            {"name": "x", "command": ["/bin/true"], "environment": {"A-B": "1"}}]}]}, "environment", "A-B"),
        ("nginx_site server name", "nginx_site", site(server_names=["a;b"]), "server_names", "a;b"),
        ("nginx_site listen", "nginx_site", site(listen=["99999"]), "listen", "99999"),
        ("nginx_site location path", "nginx_site", site(locations=[{"path": "nopath", "status": 404}]), "path", "nopath"),
        ("nginx_site upstream method", "nginx_site",
         site(upstreams=[{"name": "u", "method": "fastest", "servers": ["10.0.0.1:80"]}]), "method", "fastest"),
        ("dnat target", "dnat", fwd(target="bad;name"), "forwards[0].target", "bad;name"),
        ("dnat port 0", "dnat", fwd(port=0), "forwards[0].port", "0"),
        ("dnat chain prefix", "dnat", dict(dnat, chain_prefix="lower"), "chain_prefix", "lower"),
        ("dnat isolate", "dnat", dict(dnat, isolate=["bad/if"]), "isolate[0]", "bad/if"),
        ("dnat source", "dnat", fwd(source=["300.1.1.1/8"]), "forwards[0].source[0]", "300.1.1.1/8"),
        ("dnat loopback host address", "dnat", fwd(host_address="127.0.0.1"), "forwards[0].host_address", "127.0.0.1"),
        ("dnat a port the host listens on", "dnat", fwd(port=LISTENING), "forwards[0]", str(LISTENING)),
        ("box parallel 0", "box", {"services": [GOOD], "owner": OWNER, "parallel": 0}, "parallel", "0"),
        ("box owner", "box", {"services": [GOOD], "owner": "bad owner"}, "owner", "bad owner"),
        ("lock_timeout below 0", "box", {"services": [GOOD], "owner": OWNER, "lock_timeout": -1}, "lock_timeout", "-1"),
        ("box tls e-mail", "box", {"services": [GOOD], "owner": OWNER, "tls": {"email": "admin"}}, "tls.email", "admin"),
        ("box tls directory not https", "box", {"services": [GOOD], "owner": OWNER, "tls": {"directory": "http://acme.test/d"}},
         "tls.directory", "http://acme.test/d"),
        ("box tls wildcard without DNS-01", "box",
         {"services": [GOOD, svc(domains=["*.w.example.test"])], "owner": OWNER, "tls": {}},
         X + ".domains[0]", "*.w.example.test"),
        ("box part unknown", "box", {"services": [GOOD], "owner": OWNER, "parts": ["containers", "volumes"]},
         "parts", "volumes"),
        ("backup schedule systemd does not read", "backup", backup(schedule="every tuesday-ish"), "backup.schedule",
         "every tuesday-ish"),
        ("backup drill schedule systemd does not read", "backup", backup(drill_schedule="now and then"),
         "backup.drill_schedule", "now and then"),
        ("backup target repository relative", "backup", backup(targets=[{"name": "disk", "repository": "rel/dir"}]),
         "backup.targets[0].repository", "rel/dir"),
        ("backup target name", "backup", backup(targets=[{"name": "Disk!", "repository": "/nonexistent/r"}]),
         "backup.targets[0].name", "Disk!"),
        ("backup target environment name", "backup",
         backup(targets=[{"name": "s3", "repository": "s3:http://127.0.0.1:1/b/p", "environment": {"HOME": "/"}}]),
         "backup.targets[0].environment.HOME", "(hidden)"),
        ("backup retention unknown", "backup", backup(retention={"dayly": 3}), "backup.retention.dayly", "3"),
        ("backup retention keeping nothing", "backup", backup(retention={"daily": 0}), "backup.retention", "daily"),
        ("backup without a password", "backup", backup(password=None), "backup.targets[0].password", "None"),
        ("backup randomized_delay below 0", "backup", backup(randomized_delay=-1), "backup.randomized_delay", "-1"),
        ("backup object_timeout 0", "backup", backup(object_timeout=0), "backup.object_timeout", "0"),
        ("backup command_timeout 0", "backup", backup(command_timeout=0), "backup.command_timeout", "0"),
        ("backup parallel 0", "backup", backup(parallel=0), "backup.parallel", "0"),
        ("backup restore of nothing", "backup", dict(backup(), action="restore"), "restore_services", "[]"),
        ("backup over https", "backup", dict(backup(), lxd_url="https://127.0.0.1:8443"), "lxd_url", "https://127.0.0.1:8443"),
        ("box proxy site server name", "box", {"services": [GOOD], "owner": OWNER, "parts": ["sites"], "proxy": {
            "sites": [dict(nginx["sites"][0], server_names=["a;b"])]}}, "proxy.sites[0].server_names", "a;b"),
    ]


MODULES = _modules()


@pytest.mark.parametrize("module, args, field, value", [case[1:] for case in MODULES], ids=[case[0] for case in MODULES])
def test_module(lxd, box, module, args, field, value):
    refused(lxd, module, args, field, value)


def test_the_table_is_wide():
    """The issue asks for at least 40 kinds across the description and every module."""
    assert len(DESCRIPTION) + len(MODULES) >= 40
    assert {case[1] for case in MODULES} >= {"lxd_instance", "lxd_instances", "lxd_provision", "nginx_site", "dnat", "box",
                                             "backup"}
