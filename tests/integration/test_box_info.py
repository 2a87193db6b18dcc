"""homelab.onebox.box_info and playbooks/status.yml against a converged box: real containers, nginx in
the proxy with an HTTPS site (a self-signed certificate from the proxy's TLS agent), this host's
iptables, a backup of one service by the real agent into a restic repository in a temporary directory.

The box has its own owner, chains and files: a static site with a domain (HTTPS) and a volume, a
pool of two behind a domain, a path route under the site's domain and a host port of the proxy, and
a plain service with a UDP and a TCP forward and limits. It forwards 80 and 443, so no other box may
at the same time (the example box is torn down before the suite, as Molecule leaves it). Everything
it makes is removed at the end, even when a test fails."""
from __future__ import annotations

import html
import json
import os
import random
import re
import shutil
import subprocess
import time

import pytest

from conftest import CLI, ROOT, RUN_PREFIX, ok, run_module, run_playbook

OWNER = "%s-bi" % RUN_PREFIX
SITE = "%s-bi-site" % RUN_PREFIX
POOL = "%s-bi-pool" % RUN_PREFIX
MEMBERS = ["%s-1" % POOL, "%s-2" % POOL]
ECHO = "%s-bi-echo" % RUN_PREFIX
PROXY = "%s-proxy" % OWNER
PREFIX = "OBI%s" % RUN_PREFIX[1:].upper()
SITE_DOMAIN = "site.%s.test" % RUN_PREFIX
POOL_DOMAIN = "pool.%s.test" % RUN_PREFIX
PORT = random.randrange(39000, 39900, 10)  # the pool's host port; PORT+1 udp, PORT+2 tcp to the echo's 8080
BACKUP_CONFIG = "/etc/onebox/backup-%s" % OWNER
BACKUP_STATE = "/var/lib/onebox/backup-%s" % OWNER
BACKUP_LOG = "/var/log/onebox-backup-%s.log" % OWNER
BACKUP_UNITS = ["/etc/systemd/system/onebox-backup-%s.%s" % (OWNER, kind) for kind in ("service", "timer")]

SERVICES = [
    {"name": SITE, "kind": "static", "domains": [SITE_DOMAIN], "tls": "self_signed", "backup": False,
     "files": [{"path": "/var/www/html/index.html", "content": "site\n"}],
     "volumes": [{"name": "data", "path": "/srv/data"}]},
    {"name": POOL, "kind": "pool", "count": 2, "method": "least_conn", "domains": [POOL_DOMAIN], "host_port": PORT,
     "routes": [{"domain": SITE_DOMAIN, "path": "/pool/"}], "backup": False,
     "files": [{"path": "/var/www/html/index.html", "content": "@INSTANCE@\n"}]},
    {"name": ECHO, "kind": "plain", "memory": "256MiB", "cpus": "1",
     "forwards": [{"proto": "udp", "port": PORT + 1}, {"proto": "tcp", "port": PORT + 2, "target_port": 8080}]},
]


def iptables_save():
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, timeout=30, check=True).stdout
    return [re.sub(r"\[\d+:\d+\]$", "[0:0]", line) for line in out.splitlines() if not line.startswith("#")]


def owned(lxd):
    return sorted((i["name"], i["status"]) for i in lxd.instances()
                  if (i.get("config") or {}).get("user.onebox.owner") == OWNER)


def proxy_files():
    return subprocess.run([CLI, "exec", PROXY, "--", "sh", "-c", "cd /etc/nginx/conf.d && cat *.conf"],
                          capture_output=True, text=True, timeout=60, check=True).stdout


@pytest.fixture(scope="module")
def box(tmp_path_factory, lxd):
    """The box converged and one backup of ECHO taken; everything removed at the end."""
    tmp = tmp_path_factory.mktemp("box_info")
    forwards = {"chain_prefix": PREFIX, "save_path": str(tmp / "dnat.rules"), "restore_script": str(tmp / "restore"),
                "sysctl_file": str(tmp / "ip_forward.conf")}
    box_args = {"owner": OWNER, "services": SERVICES, "forwards": forwards}
    backup = {"password": "pw-%s" % RUN_PREFIX, "schedule": "*-*-* 03:00:00",
              "targets": [{"name": "disk", "repository": str(tmp / "repo")}]}
    backup_args = {"owner": OWNER, "services": SERVICES, "backup": backup}
    inventory = tmp / "inventory.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": os.path.join(ROOT, ".venv", "bin", "python"),
        "onebox_owner": OWNER, "onebox_services": SERVICES, "onebox_forward_chain_prefix": PREFIX}}}}))
    started = time.monotonic()
    try:
        built = ok(run_module("box", box_args, timeout=900))
        converged = time.monotonic() - started
        ok(run_module("backup", backup_args, timeout=600))
        ok(run_module("backup", dict(backup_args, action="backup", restore_services=[ECHO]), timeout=900))
        yield {"addresses": {name: found[0] for name, found in built["addresses"].items()}, "tmp": tmp,
               "inventory": str(inventory), "args": {"owner": OWNER, "services": SERVICES,
                                                     "forwards": {"chain_prefix": PREFIX}},
               "converged": converged, "ready": time.monotonic() - started}
    finally:
        gone = run_module("backup", dict(backup_args, state="absent"))
        assert not gone.get("failed"), gone
        gone = run_module("box", dict(box_args, state="absent", purge=True), timeout=600)
        assert not gone.get("failed"), gone
        assert owned(lxd) == []
        for path in (BACKUP_STATE, "/tmp/%s-cache" % OWNER):
            shutil.rmtree(path, ignore_errors=True)
        if os.path.exists(BACKUP_LOG):
            os.unlink(BACKUP_LOG)
        assert not any(os.path.exists(p) for p in BACKUP_UNITS + [BACKUP_CONFIG])


@pytest.fixture(scope="module")
def info(box):
    started = time.monotonic()
    result = ok(run_module("box_info", box["args"]), changed=False)
    result["seconds"] = time.monotonic() - started
    print("\nbox converged in %.1f s (with its backup %.1f s); box_info run in %.2f s\n%s"
          % (box["converged"], box["ready"], result["seconds"], "\n".join(result["table"])))
    return result


def rows(table):
    """The table's rows as lists of cells, cut at the header's column starts."""
    header = table[1]
    starts = [m.start(1) for m in re.finditer(r"(?:^|  )(\S)", header)]
    ends = starts[1:] + [None]
    names = [header[a:b].strip() for a, b in zip(starts, ends)]
    out = []
    for line in table[3:]:
        if not line.startswith(" ") and line[starts[1] - 2:starts[1]] != "  ":
            break  # the footer: prose, not columns
        out.append({name: line[a:b].strip() for name, a, b in zip(names, starts, ends)})
    return names, out


def test_reading_changes_nothing_in_check_mode_or_not(box, info, lxd):
    before = (owned(lxd), iptables_save(), proxy_files())
    checked = ok(run_module("box_info", box["args"], check=True), changed=False)
    assert (owned(lxd), iptables_save(), proxy_files()) == before
    assert [s["name"] for s in checked["services"]] == [s["name"] for s in info["services"]]


def test_the_table_has_every_container_with_its_state_address_limits_and_what_reaches_it(box, info):
    table = info["table"]
    names, found = rows(table)
    assert names == ["SERVICE", "CONTAINER", "STATE", "ADDRESS", "LIMITS", "UPTIME", "REACHED AT", "CERTIFICATE",
                     "LAST BACKUP"]
    containers = {row["CONTAINER"]: row for row in found if row["CONTAINER"]}
    assert sorted(containers) == sorted([SITE, ECHO, PROXY] + MEMBERS)
    for name, row in containers.items():
        assert row["STATE"] == "Running" and row["ADDRESS"] == box["addresses"][name], row
        assert re.fullmatch(r"\d+[dhms]( \d+[hms])?", row["UPTIME"]), row
    assert containers[ECHO]["LIMITS"] == "cpu 1, mem 256MiB" and containers[SITE]["LIMITS"] == "-"
    service_of = {row["CONTAINER"]: row["SERVICE"] for row in found if row["SERVICE"]}
    assert service_of == {SITE: SITE, MEMBERS[0]: POOL, ECHO: ECHO, PROXY: "proxy"}
    reached = {}
    current = None
    for row in found:
        current = row["SERVICE"] or current
        if row["REACHED AT"]:
            reached.setdefault(current, []).append((row["REACHED AT"], row["CERTIFICATE"]))
    expiry = re.compile(r"self_signed \d{4}-\d\d-\d\d \(36[45] d\)")
    assert [r[0] for r in reached[SITE]] == ["https://%s/" % SITE_DOMAIN] and expiry.fullmatch(reached[SITE][0][1])
    assert [r[0] for r in reached[POOL]] == [
        "http://%s/" % POOL_DOMAIN, "https://%s/pool/" % SITE_DOMAIN, "host tcp/%d -> proxy -> :80" % PORT]
    assert [r[0] for r in reached[ECHO]] == ["host udp/%d" % (PORT + 1), "host tcp/%d -> :8080" % (PORT + 2)]
    assert [r[0] for r in reached["proxy"]] == ["host tcp/80", "host tcp/443", "host tcp/%d" % PORT]
    backups = {row["SERVICE"]: row["LAST BACKUP"] for row in found if row["SERVICE"]}
    assert backups[SITE] == backups[POOL] == "not backed up" and backups["proxy"] == "never"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d ok", backups[ECHO]), backups
    assert table[0].startswith("box %s (LXD " % OWNER) or table[0].startswith("box %s (Incus " % OWNER)
    assert "3 services, 5 containers (5 running), 2 domains, 5 forwards" in table[0]
    assert table[-1] == "as described: every container, domain and forward of the description is there, and nothing else"


def test_the_data_says_the_same(box, info):
    services = {s["name"]: s for s in info["services"]}
    site, pool, echo = services[SITE], services[POOL], services[ECHO]
    assert site["containers"][0]["volumes"] == [{"name": "%s-%s-data" % (OWNER, SITE), "path": "/srv/data", "readonly": False}]
    assert site["domains"][0]["certificate"]["mode"] == "self_signed" and site["domains"][0]["certificate"]["days_left"] >= 364
    assert [c["name"] for c in pool["containers"]] == MEMBERS and pool["kind"] == "pool"
    assert {e["url"]: e["containers"] for e in pool["domains"]} == {
        "http://%s/" % POOL_DOMAIN: MEMBERS, "https://%s/pool/" % SITE_DOMAIN: MEMBERS}
    assert [(f["proto"], f["port"], f["target_port"], f["address"]) for f in echo["forwards"]] == [
        ("udp", str(PORT + 1), str(PORT + 1), box["addresses"][ECHO]), ("tcp", str(PORT + 2), "8080", box["addresses"][ECHO])]
    assert echo["backup"]["ok"] is True and echo["backup"]["age_seconds"] < 900
    assert info["proxy"]["name"] == PROXY and info["unreached_forwards"] == [] and info["unreached_routes"] == []
    assert all(not names for names in info["differences"].values()), info["differences"]


def test_the_picture_draws_each_domain_to_the_proxy_to_its_containers_and_each_port_to_its_container(box, info):
    graph, dot = info["graph"], info["dot"]
    nodes = {n["id"] for n in graph["nodes"]}
    assert nodes == ({"domain:" + SITE_DOMAIN, "domain:" + POOL_DOMAIN, "proxy:" + PROXY}
                     | {"container:" + name for name in [SITE, ECHO] + MEMBERS}
                     | {"port:tcp/80", "port:tcp/443", "port:tcp/%d" % PORT, "port:udp/%d" % (PORT + 1),
                        "port:tcp/%d" % (PORT + 2)})
    edges = {(e["from"], e["to"]): e["label"] for e in graph["edges"]}
    expected = {("domain:" + SITE_DOMAIN, "proxy:" + PROXY): "https", ("domain:" + POOL_DOMAIN, "proxy:" + PROXY): "http",
                ("proxy:" + PROXY, "container:" + SITE): "%s/" % SITE_DOMAIN,
                ("port:tcp/80", "proxy:" + PROXY): "", ("port:tcp/443", "proxy:" + PROXY): "",
                ("port:tcp/%d" % PORT, "proxy:" + PROXY): "",
                ("port:udp/%d" % (PORT + 1), "container:" + ECHO): "",
                ("port:tcp/%d" % (PORT + 2), "container:" + ECHO): ":8080"}
    for member in MEMBERS:
        expected[("proxy:" + PROXY, "container:" + member)] = "%s/\n%s/pool/\ntcp/%d" % (POOL_DOMAIN, SITE_DOMAIN, PORT)
    assert edges == expected
    for (src, dst), label in expected.items():
        # The DOT text has each: a port's edge written from its container with dir=back (ports on the right).
        line = ('"%s" -> "%s" [dir=back' % (dst, src)) if src.startswith("port:") else '"%s" -> "%s" [' % (src, dst)
        assert line in dot, (src, dst)


def test_a_stopped_member_and_a_container_not_described_are_said(box, lxd, instance_names):
    stray = instance_names("bi")
    subprocess.run([CLI, "launch", "onebox-debian12", stray, "-c", "user.onebox.owner=%s" % OWNER],
                   check=True, capture_output=True, timeout=300)
    subprocess.run([CLI, "stop", "--force", MEMBERS[1]], check=True, capture_output=True, timeout=120)
    try:
        result = ok(run_module("box_info", box["args"]), changed=False)
    finally:
        subprocess.run([CLI, "start", MEMBERS[1]], check=True, capture_output=True, timeout=120)
        subprocess.run([CLI, "delete", "--force", stray], check=True, capture_output=True, timeout=120)
    assert result["differences"]["stopped_containers"] == [MEMBERS[1]]
    assert result["differences"]["undescribed_containers"] == [stray]
    assert "described but not running: %s" % MEMBERS[1] in result["table"]
    assert "containers of the owner not described: %s" % stray in result["table"]
    _names, found = rows(result["table"])
    states = {row["CONTAINER"]: (row["STATE"], row["UPTIME"]) for row in found if row["CONTAINER"]}
    assert states[MEMBERS[1]] == ("Stopped", "-") and states[stray][0] == "Running"
    assert {"service": "%s (not described)" % stray} == {"service": next(
        row["SERVICE"] for row in found if row["CONTAINER"] == stray)}
    stopped = next(n for n in result["graph"]["nodes"] if n["id"] == "container:" + MEMBERS[1])
    assert stopped["state"] == "Stopped" and 'style="filled,dashed"' in result["dot"]


def test_without_the_description_the_pool_is_still_one_service(box):
    result = ok(run_module("box_info", {"owner": OWNER}), changed=False)
    assert sorted(s["name"] for s in result["services"]) == sorted([SITE, POOL, ECHO])
    assert [c["name"] for s in result["services"] if s["name"] == POOL for c in s["containers"]] == MEMBERS
    assert result["differences"] is None and len(result["forwards"]) == 5  # the chains found by the owner on their jumps


def test_the_status_playbook_prints_the_table_and_draws_the_picture(box, info):
    picture = box["tmp"] / "status" / "box.svg"
    picture.parent.mkdir()
    for check in (True, False):
        before = iptables_save()
        rc, out = run_playbook(os.path.join(ROOT, "playbooks", "status.yml"), {"onebox_status_picture": str(picture)},
                               check=check, inventory=box["inventory"], timeout=300)
        assert rc == 0, json.dumps(out)[-3000:]
        assert iptables_save() == before and out["stats"]["localhost"]["changed"] == 0
        tasks = {t["task"]["name"]: t["hosts"]["localhost"] for t in out["plays"][0]["tasks"]}
        shown = tasks["The box"]["msg"]
        # This project's ansible.cfg prints results as YAML: the table is one block of text.
        lines = shown.splitlines()
        assert lines[1:3] == info["table"][1:3] and len(lines) == len(info["table"])
        assert tasks["Where the picture is"]["msg"] == "%s and %s" % (picture, picture.with_suffix(".png"))
        svg = html.unescape(picture.read_text())  # Graphviz writes a hyphen as &#45;
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg
        for name in (SITE_DOMAIN, POOL_DOMAIN, PROXY, SITE, ECHO, "host udp/%d" % (PORT + 1)) + tuple(MEMBERS):
            assert ">%s</text>" % name in svg, name
        assert picture.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        picture.unlink()
        picture.with_suffix(".png").unlink()
