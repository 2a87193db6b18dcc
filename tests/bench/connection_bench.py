"""The rows of roles inside the containers (box_bench.py --only-connection): one play of 40 small
tasks (20 ``command`` and 20 ``copy`` of a few bytes, gather_facts false) on 3 containers of its
own, run through

- (a) homelab.onebox.lxd, the collection's connection (exec over the daemon's API, pipelining on
  by default);
- (b) ``ansible_connection: local`` on 3 inventory hosts that are all this machine: Ansible's own
  floor here (what the play costs with no connection at all), with pipelining on as (a) has it;
- (c) community.general.lxd (the ``lxc`` CLI) from the ``ansible`` package of PyPI, installed
  by this bench into a virtual environment of its own (VENV; never a dependency of the
  collection), for comparison only, with pipelining on too;

and (b) with Ansible's defaults (no pipelining), which was as fast or faster here, and (a) without
pipelining (a0). Before the plays: one command through the broker (in this process), through its
agent and as an exec of its own (the path without python3 or over https), median of 200. Each mode runs
``runs`` times, one run of each after the other (the same load for all), in an order rotated at
each run (so no mode always follows the same one), every copy's content new each run (so every
task changes something). The ratio of (a) to the faster local mode, Ansible's floor, has a
target: 1.15 at most (issue 17); (a)/(b) is printed too. Also printed: the median time of a
command task and of a copy task in each mode (the callback's task durations), the breakdown when
the ratio misses. (community.general.lxd without pipelining took 142-149 s where (a) took
60-139 s, in a busy run: left out, it only lengthened the bench.)

The 3 containers (CONTAINERS, from IMAGE) are made at the start and deleted at the end, also on a
failure; the local hosts write into a temporary directory, removed too."""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

from conftest import ROOT, ansible_env, delete_instance_quietly
from ansible_collections.homelab.onebox.plugins.module_utils._lxd import LxdClient, LxdError
from ansible_collections.homelab.onebox.plugins.plugin_utils import _lxd_broker as broker

IMAGE = "onebox-debian12"
CONTAINERS = 3
TASKS = 20  # of each kind: 20 command + 20 copy
TARGET = 1.15
# The comparison's own Ansible, from PyPI, in a venv of its own (kept between runs: ~550 MB).
VENV = "/var/cache/onebox-bench/ansible-venv"
PYPI_ANSIBLE = "ansible==12.3.0"  # ansible-core 2.19.14, as the collection's .venv
OURS = os.path.join(ROOT, ".venv", "bin", "ansible-playbook")
THEIRS = os.path.join(VENV, "bin", "ansible-playbook")
CONTAINER_DEST = "/tmp/onebox-bench"

# mode -> (label, ansible-playbook, connection, pipelining given in the environment or None)
MODES = {
    "a": ("(a) homelab.onebox.lxd", OURS, "homelab.onebox.lxd", None),
    "b": ("(b) local (Ansible's floor), pipelining", OURS, "local", True),
    "c": ("(c) community.general.lxd (lxc CLI), pipelining", THEIRS, "community.general.lxd", True),
    "b0": ("(b0) local, Ansible's defaults (no pipelining)", OURS, "local", False),
    "a0": ("(a0) homelab.onebox.lxd, no pipelining", OURS, "homelab.onebox.lxd", False),
}


def play():
    """The play: TASKS command tasks and TASKS copy tasks, one after the other."""
    tasks = []
    for index in range(1, TASKS + 1):
        tasks.append({"name": "command %d" % index, "ansible.builtin.command": {"argv": ["echo", str(index)]}})
        tasks.append({"name": "copy %d" % index, "ansible.builtin.copy": {
            "content": "{{ bench_run }} %d\n" % index, "dest": "{{ bench_dest }}/file-%d" % index, "mode": "0644"}})
    return [{"name": "connection bench", "hosts": "all", "gather_facts": False, "tasks": tasks}]


def inventory(mode, containers, local_root):
    connection = MODES[mode][2]
    if connection == "local":
        hosts = {"local-%d" % index: {"bench_dest": os.path.join(local_root, "local-%d" % index)}
                 for index in range(1, CONTAINERS + 1)}
        python = sys.executable
    else:
        hosts = {name: {"bench_dest": CONTAINER_DEST} for name in containers}
        python = "/usr/bin/python3"
    group = {"ansible_connection": connection, "ansible_python_interpreter": python}
    if connection == "homelab.onebox.lxd" and MODES[mode][3] is not None:  # its own option (no ANSIBLE_PIPELINING)
        group["onebox_lxd_pipelining"] = MODES[mode][3]
    return {"all": {"hosts": hosts, "vars": group}}


def ensure_venv():
    """The comparison's Ansible from PyPI, in VENV (made once: python3 -m venv, pip install)."""
    if not os.path.exists(THEIRS):
        python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
        print("making %s (%s from PyPI, for comparison only)" % (VENV, PYPI_ANSIBLE), flush=True)
        subprocess.run([python, "-m", "venv", VENV], check=True, timeout=300)
        subprocess.run([os.path.join(VENV, "bin", "pip"), "install", "-q", PYPI_ANSIBLE], check=True, timeout=1800)
    return [subprocess.run([binary, "--version"], capture_output=True, text=True, check=True, timeout=60).stdout.splitlines()[0]
            for binary in (OURS, THEIRS)]


def run_play(mode, tmp, containers, run):
    """(seconds, {task kind: [durations]}) of one run of the play in ``mode``; fails loudly unless
    every host ran every task, each one changed."""
    label, binary, _connection, pipelining = MODES[mode]
    path = os.path.join(tmp, "inventory-%s.yml" % mode)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(inventory(mode, containers, os.path.join(tmp, "local")), handle)
    env = ansible_env()
    if pipelining is not None:
        env["ANSIBLE_PIPELINING"] = "1" if pipelining else "0"
    cmd = [binary, "-i", path, os.path.join(tmp, "play.yml"), "-e", json.dumps({"bench_run": "%d-%s" % (run, mode)})]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=1800)
    elapsed = time.monotonic() - started
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        raise SystemExit("%s: no JSON (rc %d)\n%s\n%s" % (label, proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:]))
    expected = {"ok": 2 * TASKS, "changed": 2 * TASKS, "failures": 0, "unreachable": 0}
    for host, stats in out["stats"].items():
        if {key: stats[key] for key in expected} != expected or proc.returncode:
            raise SystemExit("%s: %s ran %s, not %s (rc %d)\n%s"
                             % (label, host, stats, expected, proc.returncode, proc.stderr[-3000:]))
    if len(out["stats"]) != CONTAINERS:
        raise SystemExit("%s: %d hosts ran, not %d" % (label, len(out["stats"]), CONTAINERS))
    durations = {"command": [], "copy": []}
    for task in out["plays"][0]["tasks"]:
        durations[task["task"]["name"].split()[0]].append(task["task"]["duration"])
    return elapsed, durations


class OwnExecs(broker.Broker):
    """A broker that starts no agent: each command an exec of its own (no python3, or https)."""

    def agent(self, name, user=None, start=True):
        return None


def command_figures(lxd, container, row, samples=200):
    """One command (``true``, and ``cat`` of a module's 150 KB) through the broker in this
    process: through its agent, and as an exec of its own; the median of ``samples``, in ms."""
    module = os.urandom(150 * 1024)
    for label, kind in (("through the agent", broker.Broker), ("as an exec of its own", OwnExecs)):
        one = kind({}, lambda options: lxd, LxdError)
        for what, command, stdin in (("true", "true", None), ("cat >/dev/null, 150 KB of input", "cat >/dev/null", module)):
            request = {"op": "exec", "name": container, "command": command, "timeout": 60, "stdin": broker.to_b64(stdin)}
            one.handle(request)  # the agent started, the state read
            times = []
            for sample in range(samples):
                started = time.monotonic()
                answer = one.handle(request)
                times.append(time.monotonic() - started)
                assert answer["ok"] and answer["rc"] == 0, answer
            row("one command (%s) %s, median of %d" % (what, label, samples), times, unit="ms")
        one.close()


def connection_figures(runs, row, ratio_row):
    """The rows: each mode's seconds (``row``, box_bench's), the ratio (a)/(b) (``ratio_row``:
    figure, value, target) and the median task times of each mode, printed."""
    versions = ensure_venv()
    print("ansible-playbook: %s (a, b); %s (c)" % tuple(versions), flush=True)
    lxd = LxdClient(timeout=120)
    prefix = "bench-conn-%s" % uuid.uuid4().hex[:4]
    containers = ["%s-%d" % (prefix, index) for index in range(1, CONTAINERS + 1)]
    tmp = tempfile.mkdtemp(prefix="onebox-connection-bench-")
    try:
        for name in containers:
            lxd.create_instance({"name": name, "type": "container", "source": {"type": "image", "alias": IMAGE}})
            lxd.change_state(name, "start")
        for name in containers:
            lxd.wait_ipv4(name, timeout=60)  # booted (its address is the sign), so systemd's start-up is not measured
            lxd.run(name, ["mkdir", "-p", CONTAINER_DEST])
        command_figures(lxd, containers[0], row)
        for index in range(1, CONTAINERS + 1):
            os.makedirs(os.path.join(tmp, "local", "local-%d" % index))
        with open(os.path.join(tmp, "play.yml"), "w", encoding="utf-8") as handle:
            json.dump(play(), handle)
        seconds = {mode: [] for mode in MODES}
        tasks = {mode: {"command": [], "copy": []} for mode in MODES}
        order = list(MODES)
        for run in range(1, runs + 1):
            for mode in order[run - 1:] + order[:run - 1]:
                elapsed, durations = run_play(mode, tmp, containers, run)
                seconds[mode].append(elapsed)
                for kind, values in durations.items():
                    tasks[mode][kind].extend(values)
                print("  run %d %-62s %6.2f s" % (run, MODES[mode][0], elapsed), flush=True)
        for mode in MODES:
            row("%d tasks on %d hosts: %s" % (2 * TASKS, CONTAINERS, MODES[mode][0]), seconds[mode],
                "<= %.2f x local" % TARGET if mode == "a" else None)
        median = {mode: statistics.median(values) for mode, values in seconds.items()}
        floor = min("b", "b0", key=median.get)
        ratio = median["a"] / median[floor]
        ratio_row("(a) homelab.onebox.lxd / (b) local, pipelining", median["a"] / median["b"], "")
        ratio_row("(a) homelab.onebox.lxd / %s (the faster local)" % floor, ratio, "<= %.2f" % TARGET)
        print("\nper task (median of every run's tasks, the 3 hosts at once):\n| mode | command | copy |\n|---|---|---|")
        for mode in MODES:
            medians = [1000 * statistics.median(tasks[mode][kind]) for kind in ("command", "copy")]
            print("| %s | %.0f ms | %.0f ms |" % (MODES[mode][0], medians[0], medians[1]))
        print("(a)/%s = %.2f: %s the target (<= %.2f)" % (floor, ratio, "within" if ratio <= TARGET else "MISSES", TARGET),
              flush=True)
        return ratio
    finally:
        for name in containers:
            delete_instance_quietly(lxd, name)
        lxd.close()
        shutil.rmtree(tmp, ignore_errors=True)
