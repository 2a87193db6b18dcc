"""The box's cost on this machine, as one table (not a test: it measures and prints).

    tests/bench/run [--runs 3] [--scale 50 [--scale 150] | --scale 50,150] [--skip-scale | --only-scale | --only-tls | --only-backup
                    | --only-files | --only-rolling | --only-daemons | --only-connection]

Figures (each the median of --runs runs, with min and max):
- the reference box (inventory.example, base image present): cold converge from nothing,
  no-change re-run, one-service change (the app's environment), teardown;
- the floor: LXD alone creating and starting the same containers and handing them addresses,
  measured the way the box works (through LxdClient, as many at once as the box module's
  ``parallel``), in the same run;
- scale, for each --scale N: a generated box of N static services (one container, one site and
  two TCP forwards each, plus the proxy): cold, no-change, one change, teardown, and the floor of
  its N + 1 containers;
- HTTPS: the reference box with TLS on its 4 domains against pebble (tests/acme.py), cold and
  no-change, next to the same box without TLS; a forced renewal of its certificates;
- backups: the reference box's containers and volumes exported by LXD alone, against its first
  and second (incremental) backup run by the agent, and one small service restored;
- files from the controller (--only-files): a 20 MiB artifact and a 1,000-file tree pushed into
  one container through the box module (ansible's start-up included), first and unchanged run,
  next to the same box without them;
- a rolling change (--only-rolling): a 3-member pool's page changed one member at a time, and the
  no-change run of the same box;
- LXD and Incus side by side (--only-daemons, tests/bench/daemons_bench.py): the reference box's
  rows on each daemon of this host in one run, exec round trip over each socket and over HTTPS;
- roles inside the containers (--only-connection, tests/bench/connection_bench.py): a play of 40
  small tasks on 3 containers through homelab.onebox.lxd, next to local and community.general.lxd;
- exec round trip through _lxd.py (median of 200);
- dnat with 200 forwards and nginx_site with 100 sites: the module's own time, no-change and
  one change (python + module, without ansible's start-up).
It tears down the example box first and leaves none of its own objects behind. With --only-scale
it measures the scale rows only and leaves the example box (and any other box) alone: the scale
box has its own owner, proxy, chains and files.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [os.path.join(ROOT, "tests"), os.path.join(ROOT, "tests", "integration"),
                os.path.join(ROOT, "tests", "bench"), os.path.join(ROOT, ".collections")]

from conftest import ansible_env, delete_instance_quietly, run_module  # noqa: E402  pylint: disable=wrong-import-position
from ansible_collections.homelab.onebox.plugins.module_utils._lxd import LxdClient  # noqa: E402
from ansible_collections.homelab.onebox.plugins.modules.box import ARGUMENT_SPEC as BOX_SPEC  # noqa: E402
import connection_bench  # noqa: E402
import daemons_bench  # noqa: E402
import dnat_bench  # noqa: E402
import nginx_bench  # noqa: E402
import nginx_env  # noqa: E402

IMAGE = "onebox-debian12"
# How many containers the box module works on at once; the floor does the same, so cold / floor
# compares the box's work with LXD's alone, not with a different schedule (LXD given all of them
# at once is another measurement).
PARALLEL = BOX_SPEC["parallel"]["default"]
ROWS = []
TIMELINES = []


def row(figure, samples, target=None, unit="s"):
    scale = 1000.0 if unit == "ms" else 1.0
    values = [s * scale for s in samples]
    ROWS.append((figure, statistics.median(values), min(values), max(values), len(values), unit, target or ""))
    print("  %-52s %8.2f %s" % (figure, statistics.median(values), unit), flush=True)


def playbook(inventory, path, extra=None, timeline=None, env=None):
    """(seconds, changed count) of one ansible-playbook run; fails loudly on a failed run. With
    ``timeline`` (a list), appends the run's phases to it: (what, start, seconds), from the
    command's start (ansible's start-up, each task, the end). ``env``: the run's environment
    (ansible_env()'s by default)."""
    cmd = [os.path.join(ROOT, ".venv", "bin", "ansible-playbook"), "-i", inventory, path]
    if extra:
        cmd += ["-e", json.dumps(extra)]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env or ansible_env(), capture_output=True, text=True, check=False,
                          timeout=1800)
    elapsed = time.monotonic() - started
    try:
        stats = json.loads(proc.stdout)["stats"]["localhost"]
    except (ValueError, KeyError):
        raise SystemExit("%s gave no result:\n%s\n%s" % (path, proc.stdout[-3000:], proc.stderr[-3000:]))
    if proc.returncode or stats["failures"]:
        raise SystemExit("%s failed:\n%s" % (path, proc.stdout[-3000:]))
    if timeline is not None:
        timeline.extend(phases(started, elapsed, json.loads(proc.stdout)["plays"]))
    return elapsed, stats["changed"]


def phases(started, elapsed, plays):
    """Where one run's time goes: ansible's start-up (to the first task), each task that ran (the
    callback stamps each task's start, on the same monotonic clock), then the end (stats, exit)."""
    tasks = [(t["task"]["name"], t["task"]["started"] - started, t["task"].get("duration", 0.0))
             for play in plays for t in play["tasks"]]
    out, cursor = [], 0.0
    for name, start, seconds in tasks:
        if start - cursor > 0.005:
            out.append(("ansible between tasks" if out else "ansible-playbook start-up", cursor, start - cursor))
        out.append((name, start, seconds))
        cursor = start + seconds
    out.append(("end of the run (stats, exit)", cursor, elapsed - cursor))
    return out


def print_timeline(label, timeline):
    print("\n%s, where the time goes (offset from the command's start, seconds):" % label)
    for name, start, seconds in timeline:
        print("  %6.2f  %5.2f  %s" % (start, seconds, name))


def box_figures(label, inventory, runs, change_vars, targets, extra=None, env=None):
    """Cold, no-change, one change, teardown of the box an inventory describes (``extra``: extra
    variables of every run; ``env``: their environment)."""
    site, teardown = "site.yml", "playbooks/teardown.yml"
    extra = extra or {}
    playbook(inventory, teardown, env=env)
    cold, nochange, change, down, timelines = [], [], [], [], []
    try:
        for run in range(runs):
            cold.append(playbook(inventory, site, extra, env=env)[0])
            timelines.append([])
            elapsed, changed = playbook(inventory, site, extra, timeline=timelines[-1], env=env)
            assert changed == 0, "%s: second converge changed %d" % (label, changed)
            nochange.append(elapsed)
            elapsed, changed = playbook(inventory, site, dict(extra, **change_vars(run)), env=env)
            assert changed >= 1, "%s: the one-service change changed nothing" % label
            change.append(elapsed)
            down.append(playbook(inventory, teardown, env=env)[0])
    except BaseException:
        playbook(inventory, teardown, env=env)  # leave nothing behind, then report the failure
        raise
    median_run = sorted(range(len(nochange)), key=nochange.__getitem__)[len(nochange) // 2]
    TIMELINES.append(("%s, the median no-change run (%.2f s)" % (label, nochange[median_run]), timelines[median_run]))
    row("%s: cold converge" % label, cold, targets.get("cold"))
    row("%s: no-change re-run" % label, nochange, targets.get("nochange"))
    row("%s: one-service change" % label, change, targets.get("change"))
    row("%s: teardown" % label, down, targets.get("teardown"))
    return cold


def floor(lxd, running, stopped, runs):
    """LXD alone: create every container, start the running ones, wait for their addresses;
    through LxdClient (the box's API client), PARALLEL at once (each worker holds its container
    until it has its address, as a worker of the box does)."""
    samples = []
    for _run in range(runs):
        prefix = "floor-%s" % uuid.uuid4().hex[:4]
        names = ["%s-%d" % (prefix, i) for i in range(running + stopped)]

        def make(index_name):
            index, name = index_name
            lxd.create_instance({"name": name, "type": "container", "source": {"type": "image", "alias": IMAGE}})
            if index < running:
                lxd.change_state(name, "start")
                lxd.wait_ipv4(name, timeout=120)

        try:
            started = time.monotonic()
            with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
                list(pool.map(make, enumerate(names)))
            samples.append(time.monotonic() - started)
        finally:
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(lambda name: delete_instance_quietly(lxd, name), names))
    return samples


def scale_inventory(tmp, count):
    """A box of COUNT static services, each one container, one site and two TCP forwards. Its own
    owner, proxy, forward chains and files (in ``tmp``), so it lives beside another box on the
    host (the example box, a developer's) without touching it."""
    inventory = os.path.join(tmp, "inventory")
    os.makedirs(os.path.join(inventory, "group_vars"))
    with open(os.path.join(inventory, "hosts.yml"), "w") as handle:
        json.dump({"all": {"hosts": {"localhost": {"ansible_connection": "local",
                                                   "ansible_python_interpreter": sys.executable}}}}, handle)
    services = [{"name": "sc%02d" % i, "kind": "static", "domains": ["sc%02d.bench.test" % i],
                 "forwards": [{"port": 21000 + 2 * i, "target_port": 80}, {"port": 21001 + 2 * i, "target_port": 80}],
                 "files": [{"path": "/var/www/html/index.html",
                            "content": "sc%02d {{ bench_marker | default('a') }}\n" % i if i == 0 else "sc%02d\n" % i}]}
                for i in range(count)]
    with open(os.path.join(inventory, "group_vars", "all.yml"), "w") as handle:
        json.dump({"onebox_owner": "onebox-bench", "onebox_proxy_instance": "bench-proxy",
                   "onebox_services": services, "onebox_box_parallel": PARALLEL,
                   "onebox_forward_chain_prefix": "OBSCALE",
                   "onebox_forward_save_path": os.path.join(tmp, "dnat.rules"),
                   "onebox_forward_restore_script": os.path.join(tmp, "dnat-restore"),
                   "onebox_forward_sysctl_file": os.path.join(tmp, "ip-forward.conf"),
                   "onebox_forward_systemd": False}, handle)
    return inventory


def module_figures(runs):
    """dnat at 200 forwards and nginx_site at 100 sites: the module's own time."""
    tmp = tempfile.mkdtemp()
    try:
        targets = dnat_bench.bridge_addresses(200)
        forwards = [{"port": 30000 + i, "target": targets[i], "target_port": 80} for i in range(200)]
        args = {"forwards": forwards, "chain_prefix": "OBBENCH", "save_path": os.path.join(tmp, "dnat.rules"),
                "restore_script": os.path.join(tmp, "restore"), "sysctl_file": os.path.join(tmp, "sysctl.conf")}
        dnat_bench.module_run(args)
        nochange, change = [], []
        for run in range(runs):
            nochange.append(dnat_bench.module_run(args)[0])
            forwards[7] = dict(forwards[7], target_port=81 + run)
            change.append(dnat_bench.module_run(dict(args, forwards=forwards))[0])
        dnat_bench.module_run(dict(args, state="absent"))
        row("dnat, 200 forwards: no-change (module)", nochange, "< 1 s")
        row("dnat, 200 forwards: one change (module)", change, "< 1 s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    env = nginx_env.HostEnv()
    try:
        base = env.module_args(prune=True)
        nginx_bench.run_module_direct(dict(base, sites=nginx_bench.sites(env.listen)))
        nochange, change = [], []
        for run in range(runs):
            nochange.append(nginx_bench.run_module_direct(dict(base, sites=nginx_bench.sites(env.listen)))[0])
            change.append(nginx_bench.run_module_direct(dict(base, sites=nginx_bench.sites(env.listen, run)))[0])
        row("nginx_site, 100 sites: no-change (module)", nochange, "< 2 s")
        row("nginx_site, 100 sites: one change (module)", change)
    finally:
        env.close()


def scale_figures(lxd, count, runs):
    """The rows of a box of COUNT services, then the floor of its COUNT + 1 containers (the proxy)."""
    tmp = tempfile.mkdtemp()
    try:
        label = "%d services" % count
        cold = box_figures(label, scale_inventory(tmp, count), runs, lambda run: {"bench_marker": "r%d" % run},
                           {"nochange": "<= 2.5 s"} if count <= 50 else {})
        samples = floor(lxd, count + 1, 0, runs)
        row("floor: LXD alone, %d containers, %d at once" % (count + 1, PARALLEL), samples)
        ROWS.append(("%s cold / floor" % label, statistics.median(cold) / statistics.median(samples), 0, 0, 1, "x", ""))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def tls_figures(runs):
    """The reference box with HTTPS on every domain against pebble (an ACME server in a client
    namespace, tests/acme.py), next to the same box without: cold converge (4 certificates
    ordered; the teardown between runs purges them), no-change re-run; and a forced renewal of
    them all, from its start to the new certificates served."""
    from acme import Pebble  # noqa: E402  pylint: disable=import-outside-toplevel
    from netns import Netns  # noqa: E402  pylint: disable=import-outside-toplevel
    reference, site, teardown = "inventory.example", "site.yml", "playbooks/teardown.yml"
    proxy = "onebox-example-proxy"
    with Netns("bench") as ns, Pebble(ns) as acme:
        acme.start()
        tls = {"onebox_tls": {"email": "bench@example.test", "directory": acme.directory_url, "ca_bundle": acme.ca_pem}}
        purge = {"onebox_purge": True}
        figures = {key: [] for key in ("plain cold", "plain no-change", "tls cold", "tls no-change", "renewal")}
        playbook(reference, teardown, purge)
        try:
            for _run in range(runs):
                figures["plain cold"].append(playbook(reference, site)[0])
                figures["plain no-change"].append(playbook(reference, site)[0])
                playbook(reference, teardown, purge)
                orders = len(acme.orders())
                figures["tls cold"].append(playbook(reference, site, tls)[0])
                assert len(acme.orders()) - orders == 4, "the TLS cold converge ordered %d" % (len(acme.orders()) - orders)
                elapsed, changed = playbook(reference, site, tls)
                assert changed == 0, "TLS no-change run changed %d" % changed
                figures["tls no-change"].append(elapsed)
                started = time.monotonic()
                subprocess.run(["lxc", "exec", proxy, "--", "/usr/local/sbin/onebox-tls", "renew", "--force"],
                               check=True, capture_output=True, timeout=600)
                figures["renewal"].append(time.monotonic() - started)
                assert len(acme.orders()) - orders == 8, "the forced renewal did not order 4"
                playbook(reference, teardown, purge)
        except BaseException:
            playbook(reference, teardown, purge)
            raise
    row("reference box without TLS: cold converge", figures["plain cold"])
    row("reference box, TLS on its 4 domains (pebble): cold converge", figures["tls cold"], "<= +5 s")
    row("reference box without TLS: no-change re-run", figures["plain no-change"])
    row("reference box, TLS: no-change re-run", figures["tls no-change"], "no slower")
    row("forced renewal of the 4 certificates, start to served", figures["renewal"])


def backup_figures(runs):
    """The reference box's backups (its onebox_backup pointed at a fresh directory repository each
    run): every container and volume exported by LXD alone (``lxc export`` / ``lxc storage volume
    export``, gzip as LXD does by default, two at once as the agent works), against the agent's
    first run into the empty repository and a second, incremental one (seconds and bytes the
    repository grew); then one small service (site-a) restored over itself, from the restore's
    start to its page answering through the proxy again."""
    import urllib.request  # pylint: disable=import-outside-toplevel
    reference, site = "inventory.example", "site.yml"
    agent = ["/usr/local/sbin/onebox-backup", "--config", "/etc/onebox/backup-onebox-example/config.json"]
    playbook(reference, site)
    config = json.load(open(agent[2], encoding="utf-8"))
    objects = [("instance", c) for s in config["services"] for c in s["containers"]]
    objects += [("volume", v) for s in config["services"] for v in s["volumes"]
                if subprocess.run(["lxc", "storage", "volume", "show", "default", v], capture_output=True, check=False).returncode == 0]
    figures = {key: [] for key in ("lxd", "lxd bytes", "first", "first bytes", "second", "second bytes", "restore")}

    def size(path):
        return sum(os.path.getsize(os.path.join(top, n)) for top, _d, names in os.walk(path) for n in names)

    proxy_ip = subprocess.run(["lxc", "list", "^onebox-example-proxy$", "-c", "4", "--format", "csv"],
                              capture_output=True, text=True, check=True).stdout.split()[0]

    def answers():  # through the proxy, as the forward of port 80 takes a client to it
        request = urllib.request.Request("http://%s/" % proxy_ip, headers={"Host": "site-a.example.test"})
        try:
            return urllib.request.urlopen(request, timeout=2).status == 200
        except OSError:
            return False

    for _run in range(runs):
        tmp = tempfile.mkdtemp(prefix="onebox-bench-backup-")
        try:
            def export(obj):
                kind, name = obj
                out = os.path.join(tmp, "%s-%s.tar.gz" % (kind, name))
                argv = ["lxc", "export", name, out, "--instance-only"] if kind == "instance" else \
                    ["lxc", "storage", "volume", "export", "default", name, out]
                subprocess.run(argv, check=True, capture_output=True, timeout=1800)
                return os.path.getsize(out)
            started = time.monotonic()
            with ThreadPoolExecutor(max_workers=config.get("parallel", 2)) as pool:
                exported = sum(pool.map(export, objects))
            figures["lxd"].append(time.monotonic() - started)
            figures["lxd bytes"].append(exported / 1e6)
            for name in os.listdir(tmp):
                os.unlink(os.path.join(tmp, name))
            repo = os.path.join(tmp, "repo")
            playbook(reference, site, {"onebox_backup": {"password": "bench", "targets": [{"name": "local", "repository": repo}]}})
            for key in ("first", "second"):
                before = size(repo)
                started = time.monotonic()
                subprocess.run(agent + ["backup"], check=True, capture_output=True, timeout=3600)
                figures[key].append(time.monotonic() - started)
                figures[key + " bytes"].append((size(repo) - before) / 1e6)
            started = time.monotonic()
            subprocess.run(agent + ["restore", "--overwrite", "site-a"], check=True, capture_output=True, timeout=600)
            while not answers():
                assert time.monotonic() - started < 120, "site-a does not answer after its restore"
                time.sleep(0.05)
            figures["restore"].append(time.monotonic() - started)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    playbook(reference, site)  # the example's own backups again
    count = len(objects)
    row("LXD alone: lxc export of the box's %d containers and volumes (gzip)" % count, figures["lxd"])
    row("  their size", figures["lxd bytes"], unit="MB")
    row("backup of the box, first run into an empty repository", figures["first"])
    row("  the repository grew by", figures["first bytes"], unit="MB")
    ROWS.append(("first backup / LXD alone", statistics.median(figures["first"]) / statistics.median(figures["lxd"]),
                 0, 0, 1, "x", "<= 1.3"))
    row("backup of the box, second run (incremental)", figures["second"])
    row("  the repository grew by", figures["second bytes"], unit="MB")
    row("restore of site-a over itself, start to answering", figures["restore"], "< 15 s")


def files_figures(lxd, runs):
    """Files from the controller through the box module (an ad-hoc task, as the integration tests
    run it): one container of a box of its own, first without files (its no-change run is the
    baseline), then a 20 MiB random artifact added (first push, unchanged run), then a tree of
    1,000 small files (100 directories of 10, 200 bytes each) beside it (first push, unchanged
    run). Each run starts from the files removed from the container."""
    tmp = tempfile.mkdtemp()
    tag = uuid.uuid4().hex[:4]
    owner, name = "bench-files-%s" % tag, "bench-fi-%s" % tag
    artifact, tree = os.path.join(tmp, "app.bin"), os.path.join(tmp, "tree")
    with open(artifact, "wb") as out:
        out.write(os.urandom(20 * 1024 * 1024))
    for index in range(1000):
        where = os.path.join(tree, "d%02d" % (index // 10))
        os.makedirs(where, exist_ok=True)
        with open(os.path.join(where, "f%d.txt" % index), "w", encoding="utf-8") as out:
            out.write(("%d " % index * 100)[:200])

    def box(*files):
        started = time.monotonic()
        result = run_module("box", {"owner": owner, "parts": ["containers", "insides"],
                                    "services": [{"name": name, "kind": "internal", "files": list(files)}]}, timeout=600)
        assert not result.get("failed"), result.get("msg", result)
        return time.monotonic() - started, result["changed"]

    big, many = {"path": "/opt/bench/app.bin", "src": artifact}, {"path": "/srv/bench-tree", "src": tree}
    figures = {key: [] for key in ("none", "artifact", "artifact again", "tree", "tree again")}
    try:
        box()
        for _run in range(runs):
            lxd.run(name, ["rm", "-rf", "/opt/bench", "/srv/bench-tree"])
            figures["none"].append(box()[0])
            for key, files in (("artifact", (big,)), ("tree", (big, many))):
                elapsed, changed = box(*files)
                assert changed, "the first push of the %s changed nothing" % key
                figures[key].append(elapsed)
                elapsed, changed = box(*files)
                assert not changed, "the unchanged run of the %s changed something" % key
                figures[key + " again"].append(elapsed)
    finally:
        run_module("box", {"owner": owner, "state": "absent"})
        delete_instance_quietly(lxd, name)
        shutil.rmtree(tmp, ignore_errors=True)
    row("files: one container, no files: no-change (ansible)", figures["none"])
    row("files: a 20 MiB artifact, first push", figures["artifact"])
    row("files: a 20 MiB artifact, unchanged", figures["artifact again"])
    row("files: + a 1,000-file tree, first push", figures["tree"])
    row("files: artifact and 1,000-file tree, unchanged", figures["tree again"])


def rolling_figures(runs):
    """A rolling change through the box module (an ad-hoc task, ansible's start-up included): a
    box of its own with a 3-member static pool behind the proxy on a host port; its page changed
    (each member drained, its nginx restarted, connected to, put back), then the no-change run."""
    tmp = tempfile.mkdtemp()
    tag = uuid.uuid4().hex[:4]
    owner = "bench-roll-%s" % tag
    port = 41000 + int(tag, 16) % 8000

    def box(version, state="present"):
        args = {"owner": owner, "state": state, "proxy": {"name": "bench-rl-%s-proxy" % tag},
                "forwards": {"chain_prefix": "OBBR%s" % tag.upper(), "save_path": os.path.join(tmp, "rules"),
                             "restore_script": os.path.join(tmp, "restore"), "sysctl_file": os.path.join(tmp, "sysctl")}}
        if state == "present":
            args["services"] = [{"name": "bench-rl-%s" % tag, "kind": "pool", "count": 3, "host_port": port,
                                 "files": [{"path": "/var/www/html/index.html", "content": "%s @INSTANCE@\n" % version}]}]
        started = time.monotonic()
        result = run_module("box", args, timeout=600)
        assert not result.get("failed"), result.get("msg", result)
        return time.monotonic() - started, result

    change, nochange = [], []
    try:
        box("v0")
        for run in range(runs):
            elapsed, result = box("v%d" % (run + 1))
            assert len(result["healthy"]) == 3, "not every member rolled: %s" % result["healthy"]
            change.append(elapsed)
            elapsed, result = box("v%d" % (run + 1))
            assert not result["changed"], "the no-change run changed something"
            nochange.append(elapsed)
    finally:
        box(None, state="absent")
        shutil.rmtree(tmp, ignore_errors=True)
    row("rolling: a 3-member pool's page changed, one member at a time", change)
    row("rolling: the same box, no-change", nochange)


def scale_counts(text):
    """--scale's value: one count or several, comma-separated ("50,150")."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("%r: a number of services, or several separated by commas" % text)
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("%r: at least one service" % text)
    return counts


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scale", type=scale_counts, action="append",
                        help="services of the generated box (default 50); repeat it or give a list (50,150)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--skip-scale", action="store_true")
    which.add_argument("--only-scale", action="store_true",
                       help="the scale rows only: the example box and the host's other objects are left alone")
    which.add_argument("--only-tls", action="store_true",
                       help="the HTTPS rows only: the reference box with and without TLS against pebble")
    which.add_argument("--only-backup", action="store_true",
                       help="the backup rows only: the reference box backed up, against LXD's own export, and restored")
    which.add_argument("--only-files", action="store_true",
                       help="the rows of files from the controller: a 20 MiB artifact and a 1,000-file tree, pushed and unchanged")
    which.add_argument("--only-rolling", action="store_true",
                       help="the rows of a rolling change: a 3-member pool changed one member at a time")
    which.add_argument("--only-daemons", action="store_true",
                       help="LXD and Incus side by side: the reference box on each, exec over each socket and over HTTPS")
    which.add_argument("--only-connection", action="store_true",
                       help="roles inside the containers: 40 tasks on 3 containers through homelab.onebox.lxd, local "
                            "and community.general.lxd (from PyPI, in a venv of the bench's own)")
    args = parser.parse_args()
    only = args.only_backup or args.only_files or args.only_rolling or args.only_daemons or args.only_connection
    scales = [count for counts in args.scale or [[50]] for count in counts]
    lxd = LxdClient(timeout=120)
    env = lxd.server["environment"]
    print("machine: %d cores, LXD %s, storage pool driver %s, load average at start %.2f; the box and the floor "
          "work on %d containers at once"
          % (os.cpu_count(), env["server_version"], env["storage"], os.getloadavg()[0], PARALLEL), flush=True)

    if args.only_backup:
        backup_figures(args.runs)
    if args.only_files:
        files_figures(lxd, args.runs)
    if args.only_rolling:
        rolling_figures(args.runs)
    if args.only_daemons:
        daemons_bench.daemon_figures(args.runs, box_figures, playbook, row)
    if args.only_connection:
        connection_bench.connection_figures(
            args.runs, row, lambda figure, value, target: ROWS.append((figure, value, 0, 0, 1, "x", target)))
    if not (args.only_scale or only):
        tls_figures(args.runs)
    if not (args.only_scale or args.only_tls or only):
        reference = "inventory.example"
        cold = box_figures("reference box", reference, args.runs,
                           lambda run: {"onebox_example_greeting": "bench %d %s" % (run, uuid.uuid4().hex[:6])},
                           {"cold": "<= 1.3 x floor", "nochange": "<= 1.2 s", "change": "<= 4 s", "teardown": "<= 5 s"})
        # The example box: 10 running containers (2 sites, app, jenkins, 3 pool members, vpn, db, proxy).
        base_floor = floor(lxd, 10, 0, args.runs)
        row("floor: LXD alone, the reference box's 10 containers", base_floor)
        ROWS.append(("reference box cold / floor", statistics.median(cold) / statistics.median(base_floor),
                     0, 0, 1, "x", "<= 1.3"))

    if not (args.skip_scale or args.only_tls or only):
        for count in scales:
            scale_figures(lxd, count, args.runs)

    if not (args.only_scale or args.only_tls or only):
        name = "bench-exec-%s" % uuid.uuid4().hex[:4]
        lxd.create_instance({"name": name, "type": "container", "source": {"type": "image", "alias": IMAGE}})
        try:
            lxd.change_state(name, "start")
            lxd.wait_ipv4(name, timeout=60)
            samples = []
            for index in range(200):
                started = time.monotonic()
                assert lxd.exec(name, ["echo", str(index)], timeout=10).stdout == "%d\n" % index
                samples.append(time.monotonic() - started)
            row("exec round trip through _lxd.py (200)", samples, "<= 25 ms", unit="ms")
        finally:
            delete_instance_quietly(lxd, name)
        module_figures(args.runs)
    lxd.close()

    print("\n| figure | median | min | max | runs | target |\n|---|---|---|---|---|---|")
    for figure, median, low, high, count, unit, target in ROWS:
        if unit == "x":
            print("| %s | %.2f x | | | | %s |" % (figure, median, target))
        else:
            print("| %s | %.2f %s | %.2f | %.2f | %d | %s |" % (figure, median, unit, low, high, count, target))
    for label, timeline in TIMELINES:
        print_timeline(label, timeline)
    print("\n%d cores, storage pool driver %s, load average at end %.2f"
          % (os.cpu_count(), env["storage"], os.getloadavg()[0]))


if __name__ == "__main__":
    main()
