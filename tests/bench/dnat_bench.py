"""How long homelab.onebox.dnat takes with many forwards (not a test; run as root on the test machine):

    .venv/bin/python tests/bench/dnat_bench.py [--forwards 200] [--runs 5] [--instance NAME]

Prints, for N forwards: the first apply, a run with nothing to change, and a run that changes one
forward. "module" is the module's own process (python start, imports, reading iptables-save,
diffing, the one iptables-restore) run the way Ansible runs it on the host, without the
controller's overhead; "ansible" adds the controller (`ansible localhost -m ...`, one run).
For scale, it also times what a per-rule approach pays: one `iptables -C` for each rule.

Uses chains OBBENCH_* and files in a temporary directory, and removes them at the end (checking
iptables-save is as it was). Targets are addresses on the LXD bridge (nothing is sent to them), or
with --instance, an existing instance with a static address (resolved through LXD once per run).
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(ROOT, ".collections")
sys.path[:0] = [os.path.join(ROOT, "tests"), COLLECTIONS]

from conftest import ansible_env, run_module  # noqa: E402  pylint: disable=wrong-import-position
from ansible_collections.homelab.onebox.plugins.module_utils import _dnat_rules  # noqa: E402

PREFIX = "OBBENCH"
MODULE = "ansible_collections.homelab.onebox.plugins.modules.dnat"


def iptables_save():
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, timeout=60, check=True).stdout
    return [line.split(" [")[0] for line in out.splitlines() if not line.startswith("#")]


def module_run(args):
    """Seconds the module's own process takes, and its result."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, handle)
    env = dict(ansible_env(), PYTHONPATH=COLLECTIONS)
    try:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", MODULE, handle.name], capture_output=True, text=True,
                              env=env, timeout=120, check=False)
        elapsed = time.perf_counter() - start
    finally:
        os.unlink(handle.name)
    result = json.loads(proc.stdout)
    if result.get("failed"):
        raise SystemExit("module failed: %s" % result.get("msg"))
    return elapsed, result


def bridge_addresses(count):
    out = subprocess.run(["lxc", "network", "get", "lxdbr0", "ipv4.address"], capture_output=True, text=True,
                         timeout=30, check=True).stdout.strip()
    hosts = ipaddress.IPv4Interface(out).network.hosts()
    next(hosts)
    return [str(next(hosts)) for _index in range(count)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--forwards", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--instance", help="an instance with a static address to target")
    opts = parser.parse_args()

    targets = [opts.instance] if opts.instance else bridge_addresses(4)
    forwards = [{"port": 30000 + i, "target": targets[i % len(targets)], "target_port": 8000 + i % 50,
                 "comment": "bench %d" % i} for i in range(opts.forwards - 1)]
    forwards.append({"proto": "udp", "port": "40000-40009", "target": targets[0]})
    tmp = tempfile.mkdtemp(prefix="dnat-bench-")
    args = dict(forwards=forwards, chain_prefix=PREFIX, save_path=os.path.join(tmp, "dnat.rules"),
                restore_script=os.path.join(tmp, "restore"), sysctl_file=os.path.join(tmp, "sysctl.conf"))
    before = iptables_save()
    try:
        first, result = module_run(args)
        assert result["changed"]
        rules = sum(1 for line in result["rules"].splitlines() if line.startswith("-A %s_" % PREFIX))
        print("%d forwards -> %d rules in the collection's chains (backend %s)"
              % (len(forwards), rules, result["backend"]))
        print("first apply:                  module %.3f s" % first)

        times = []
        for _run in range(opts.runs):
            elapsed, result = module_run(args)
            assert not result["changed"]
            times.append(elapsed)
        print("no change:  median of %d runs: module %.3f s (min %.3f, max %.3f)"
              % (opts.runs, statistics.median(times), min(times), max(times)))

        times = []
        for i in range(opts.runs):
            changed = [dict(f) for f in forwards]
            changed[7]["target_port"] = 9000 + i  # one forward differs from what is loaded
            elapsed, result = module_run(dict(args, forwards=changed))
            assert result["changed"]
            times.append(elapsed)
        print("one change: median of %d runs: module %.3f s (min %.3f, max %.3f)"
              % (opts.runs, statistics.median(times), min(times), max(times)))

        start = time.perf_counter()
        assert run_module("dnat", args)["changed"]
        one_change = time.perf_counter() - start
        start = time.perf_counter()
        assert not run_module("dnat", args)["changed"]
        no_change = time.perf_counter() - start
        print("through ansible (controller included, one run): no change %.2f s, one change %.2f s"
              % (no_change, one_change))

        state = _dnat_rules.parse_save(subprocess.run(["iptables-save"], capture_output=True, text=True,
                                                      check=True, timeout=60).stdout, PREFIX)
        checks = [(table, chain, body) for (table, chain), bodies in state.chains.items() for body in bodies]
        start = time.perf_counter()
        for table, chain, body in checks:
            subprocess.run(["iptables", "-w", "10", "-t", table, "-C", chain] + shlex.split(body),
                           capture_output=True, timeout=30, check=True)
        print("for scale, a per-rule check (`iptables -C` for each of the %d rules): %.3f s"
              % (len(checks), time.perf_counter() - start))
    finally:
        elapsed, result = module_run(dict(args, state="absent"))
        shutil.rmtree(tmp)
        print("removed (module %.3f s); iptables-save as before: %s" % (elapsed, iptables_save() == before))


if __name__ == "__main__":
    main()
