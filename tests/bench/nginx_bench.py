"""Time nginx_site with 100 sites: a no-change run and a run that changes one site.

Not a test. Run from the repository root:  .venv/bin/python tests/bench/nginx_bench.py [--lxd]

  module  the module alone (python running nginx_site with its arguments in a file: what the
          module costs, without ansible's start-up), against our own nginx on loopback;
  role    with --lxd, `ansible-playbook` of the reverse_proxy role against a fresh container
          (whole run, ansible start-up included), plus the module alone against that container.
Prints seconds, and whether nginx was tested/reloaded (changed=true means one nginx -T and one
reload; changed=false means neither).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import conftest  # noqa: E402  (puts the collection on sys.path)
import nginx_env as ne  # noqa: E402

N = 100


def sites(listen, changed=None):
    out = []
    for i in range(N):
        out.append({"name": "site%03d" % i, "server_names": ["site%03d.test" % i, "www.site%03d.test" % i],
                    "listen": [listen],
                    "locations": [{"path": "/", "backend": "http://127.0.0.1:%d" % (9000 + i % 10)},
                                  {"path": "/static/", "root": "/srv/site%03d" % i}],
                    "proxy": {"read_timeout": "%ds" % (120 if changed == i else 60)}})
    return out


def run_module_direct(args):
    """The module as ansible runs it, minus ansible: python + module + args file."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, handle)
    env = dict(os.environ, PYTHONPATH=conftest.COLLECTIONS)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "ansible_collections.homelab.onebox.plugins.modules.nginx_site",
                           handle.name], capture_output=True, text=True, env=env, timeout=600, check=False)
    elapsed = time.monotonic() - start
    os.unlink(handle.name)
    result = json.loads(proc.stdout)
    if result.get("failed"):
        raise SystemExit("module failed: %s" % result.get("msg"))
    return elapsed, result


def report(label, elapsed, result):
    print("%-44s %6.2f s  changed=%s reloaded=%s" % (label, elapsed, result.get("changed"), result.get("reloaded")))


def bench_host():
    env = ne.HostEnv()
    try:
        base = env.module_args(prune=True)
        report("module, host nginx, create %d sites" % N, *run_module_direct(dict(base, sites=sites(env.listen))))
        report("module, host nginx, no change", *run_module_direct(dict(base, sites=sites(env.listen))))
        report("module, host nginx, one site changed", *run_module_direct(dict(base, sites=sites(env.listen, 42))))
    finally:
        env.close()


def bench_lxd():
    from ansible_collections.homelab.onebox.plugins.module_utils._lxd import LxdClient
    lxd = LxdClient(timeout=60)
    name = "%s-bench-%s" % (conftest.RUN_PREFIX, uuid.uuid4().hex[:4])
    tmp = tempfile.mkdtemp()
    try:
        def role(label, site_list):
            path = os.path.join(tmp, "play.yml")
            with open(path, "w") as handle:
                json.dump([{"hosts": "localhost", "gather_facts": False, "roles": [{
                    "role": "homelab.onebox.reverse_proxy",
                    "vars": {"onebox_proxy_instance": name, "onebox_proxy_autostart": False,
                             "onebox_proxy_sites": site_list}}]}], handle)
            start = time.monotonic()
            rc, out = conftest.run_playbook(path)
            elapsed = time.monotonic() - start
            tasks = out["plays"][0]["tasks"]
            site_task = tasks[-1]["hosts"]["localhost"]
            if rc != 0:
                raise SystemExit("role failed: %s" % [t["hosts"]["localhost"].get("msg") for t in tasks])
            print("%-44s %6.2f s  changed tasks=%d, sites task changed=%s reloaded=%s" % (
                label, elapsed, out["stats"]["localhost"]["changed"], site_task.get("changed"),
                site_task.get("reloaded")))

        role("role, container, create %d sites" % N, sites("80"))
        role("role, container, no change", sites("80"))
        role("role, container, one site changed", sites("80", 7))
        base = {"instance": name, "prune": True, "log_dir": "/var/log/nginx"}
        default = {"name": "000-default", "server_names": ["_"], "default_server": True, "listen": ["80"],
                   "locations": [{"path": "/", "status": 404}]}
        report("module, container, no change", *run_module_direct(dict(base, sites=[default] + sites("80", 7))))
        report("module, container, one site changed", *run_module_direct(dict(base, sites=[default] + sites("80", 8))))
    finally:
        conftest.delete_instance_quietly(lxd, name)
        subprocess.run(["rm", "-rf", tmp], check=False)


if __name__ == "__main__":
    bench_host()
    if "--lxd" in sys.argv:
        bench_lxd()
