"""Figures for lxd_instance, lxd_instances and _lxd.py on this machine (not a test: it prints).

  .venv/bin/python tests/bench/lxd_bench.py [--runs 3]

- one container created, started and addressed by lxd_instance (one module run, ansible included)
- a no-change run of 8 declared containers, as 8 lxd_instance tasks and as one lxd_instances
  task: whole playbook, and minus an empty playbook (ansible-playbook's start-up)
- exec round trip through _lxd.py (median of 200) and through the `lxc exec` CLI
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
from conftest import ansible_env, delete_instance_quietly, run_module  # noqa: E402  pylint: disable=wrong-import-position
from ansible_collections.homelab.onebox.plugins.module_utils._lxd import LxdClient  # noqa: E402

IMAGE = "onebox-debian12"
PLAYBOOKS = {
    "empty": "[{hosts: localhost, gather_facts: false, tasks: []}]",
    "tasks": """
- hosts: localhost
  gather_facts: false
  tasks:
    - homelab.onebox.lxd_instance: {name: "{{ item.name }}", image: "{{ item.image }}"}
      loop: "{{ items }}"
""",
    "set": """
- hosts: localhost
  gather_facts: false
  tasks:
    - homelab.onebox.lxd_instances: {instances: "{{ items }}"}
""",
}


def figure(label, samples, unit="s"):
    vals = [s * (1000 if unit == "ms" else 1) for s in samples]
    print("%-60s median %7.2f %s  (min %.2f, max %.2f, n=%d)"
          % (label, statistics.median(vals), unit, min(vals), max(vals), len(vals)))


def playbook_time(path, names):
    items = [{"name": name, "image": IMAGE} for name in names]
    cmd = [os.path.join(ROOT, ".venv/bin/ansible-playbook"), "-i", "localhost,", "-c", "local",
           "-e", "ansible_python_interpreter=%s" % sys.executable, "-e", json.dumps({"items": items}), path]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=ansible_env(), capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    stats = json.loads(proc.stdout)["stats"].get("localhost", {"failures": 0, "changed": 0})
    if proc.returncode or stats["failures"]:
        raise SystemExit("playbook failed: %s" % proc.stdout[-2000:])
    return elapsed, stats["changed"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    lxd = LxdClient(timeout=60)
    env = lxd.server["environment"]
    print("cores: %d, storage pool driver: %s, LXD %s, load average %.2f"
          % (os.cpu_count(), env["storage"], env["server_version"], os.getloadavg()[0]))
    prefix = "bench-%s" % uuid.uuid4().hex[:4]
    names = ["%s-%d" % (prefix, i) for i in range(8)]
    singles = ["%s-one%d" % (prefix, r) for r in range(args.runs)]
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for key, text in PLAYBOOKS.items():
            paths[key] = os.path.join(tmp, key + ".yml")
            with open(paths[key], "w") as handle:
                handle.write(text)
        try:
            create = []
            for name in singles:
                started = time.monotonic()
                result = run_module("lxd_instance", {"name": name, "image": IMAGE})
                create.append(time.monotonic() - started)
                assert result["addresses"], result
                delete_instance_quietly(lxd, name)
            figure("lxd_instance: create + start + IPv4, one container", create)

            elapsed, changed = playbook_time(paths["set"], names)
            print("%-60s %7.2f s  (changed=%d)" % ("8 containers cold, one lxd_instances task", elapsed, changed))
            for key, label in (("tasks", "8 lxd_instance tasks"), ("set", "one lxd_instances task for 8")):
                full, empty = [], []
                for _run in range(args.runs):
                    elapsed, changed = playbook_time(paths[key], names)
                    assert changed == 0, "not idempotent"
                    full.append(elapsed)
                    empty.append(playbook_time(paths["empty"], [])[0])
                figure("no-change, %s: whole playbook" % label, full)
                figure("no-change, %s: minus ansible-playbook start-up" % label, [f - e for f, e in zip(full, empty)])

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
                subprocess.run(["lxc", "exec", names[0], "--", "echo", str(index)], capture_output=True,
                               check=True, timeout=30)
                cli.append(time.monotonic() - started)
            figure("exec round trip, lxc exec CLI (50 sequential)", cli, "ms")
        finally:
            lxd.close()
            for name in names + singles:
                delete_instance_quietly(lxd, name)


if __name__ == "__main__":
    main()
