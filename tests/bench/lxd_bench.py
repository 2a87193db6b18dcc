#!/usr/bin/env python3
"""Figures for lxd_instance and _lxd.py on this machine (not a test: prints, asserts nothing).

  .venv/bin/python tests/bench/lxd_bench.py [--runs 3]

- exec round trip through _lxd.py: median of 200 sequential execs (and of the `lxc exec` CLI)
- one container created, started and addressed by lxd_instance (module run, ansible included)
- a no-change run of 8 declared instances: playbook time minus the same playbook with an empty
  loop, i.e. the module calls without ansible-playbook's start-up
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from conftest import ansible_env, run_module  # noqa: E402  pylint: disable=wrong-import-position
from ansible_collections.homelab.onebox.plugins.module_utils._lxd import LxdClient  # noqa: E402

IMAGE = "onebox-debian12"
PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - homelab.onebox.lxd_instance: {name: "{{ item }}", image: %s}
      loop: "{{ names }}"
""" % IMAGE


def figure(label, samples, unit="s"):
    scale = 1000 if unit == "ms" else 1
    vals = [s * scale for s in samples]
    print("%-58s median %8.1f %s  (min %.1f, max %.1f, n=%d)" % (label, statistics.median(vals), unit,
                                                               min(vals), max(vals), len(vals)))


def playbook_time(path, names):
    cmd = [os.path.join(ROOT, ".venv/bin/ansible-playbook"), "-i", "localhost,", "-c", "local",
           "-e", "ansible_python_interpreter=%s" % sys.executable, "-e", json.dumps({"names": names}), path]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=ansible_env(), capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    stats = json.loads(proc.stdout)["stats"]["localhost"]
    if proc.returncode or stats["failures"]:
        raise SystemExit("playbook failed: %s" % proc.stdout[-2000:])
    return elapsed, stats["changed"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    lxd = LxdClient(timeout=60)
    prefix = "bench-%s" % uuid.uuid4().hex[:4]
    print("cores: %d, storage: %s, LXD %s" % (os.cpu_count(), lxd.server["environment"]["storage"],
                                              lxd.server["environment"]["server_version"]))
    names = ["%s-%d" % (prefix, i) for i in range(8)]
    try:
        create = []
        for run in range(args.runs):
            name = "%s-one%d" % (prefix, run)
            started = time.monotonic()
            result = run_module("lxd_instance", {"name": name, "image": IMAGE})
            create.append(time.monotonic() - started)
            assert result["addresses"], result
            lxd.change_state(name, "stop", force=True)
            lxd.delete_instance(name)
        figure("lxd_instance: create + start + IPv4 (one container)", create)

        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as handle:
            handle.write(PLAYBOOK)
        elapsed, changed = playbook_time(handle.name, names)
        print("%-58s %8.1f s  (changed=%d)" % ("8 instances cold (playbook, parallel=no)", elapsed, changed))
        full, empty = [], []
        for _ in range(args.runs):
            elapsed, changed = playbook_time(handle.name, names)
            assert changed == 0
            full.append(elapsed)
            empty.append(playbook_time(handle.name, [])[0])
        figure("no-change run of 8 instances (whole playbook)", full)
        figure("no-change run of 8 instances (module calls only)", [f - e for f, e in zip(full, empty)])

        ours = []
        for index in range(200):
            started = time.monotonic()
            out = lxd.exec(names[0], ["echo", str(index)], timeout=10).stdout
            ours.append(time.monotonic() - started)
            assert out == "%d\n" % index
        figure("exec round trip, _lxd.py (200 sequential)", ours, "ms")
        cli = []
        for index in range(50):
            started = time.monotonic()
            subprocess.run(["lxc", "exec", names[0], "--", "echo", str(index)], capture_output=True, check=True, timeout=30)
            cli.append(time.monotonic() - started)
        figure("exec round trip, lxc exec CLI (50 sequential)", cli, "ms")
    finally:
        for name in names + ["%s-one%d" % (prefix, r) for r in range(args.runs)]:
            if lxd.instance(name) is not None:
                lxd.change_state(name, "stop", force=True) if lxd.instance(name)["status"] == "Running" else None
                lxd.delete_instance(name)
        os.unlink(handle.name) if "handle" in locals() else None


if __name__ == "__main__":
    main()
