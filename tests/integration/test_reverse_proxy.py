"""The reverse_proxy role converged for real: a proxy container, backends in a second container,
requests from the host to the proxy's address."""
from __future__ import annotations

import pytest
import yaml

import nginx_env as ne
from conftest import run_playbook


class Backends:
    """Just what nginx_env.LxdBackend needs."""

    def __init__(self, lxd, name):
        self.lxd = lxd
        self.backend_instance = name
        self.backend_address = ne.launch(lxd, name)


@pytest.fixture
def backends(lxd, instance_names):
    return Backends(lxd, instance_names("back"))


def converge(tmp_path, proxy, sites):
    playbook = tmp_path / "proxy.yml"
    playbook.write_text(yaml.safe_dump([{
        "hosts": "localhost", "gather_facts": False,
        "roles": [{"role": "homelab.onebox.reverse_proxy",
                   "vars": {"onebox_proxy_instance": proxy, "onebox_proxy_autostart": False,
                            "onebox_proxy_sites": sites}}]}]))
    rc, out = run_playbook(str(playbook))
    stats = out["stats"]["localhost"]
    assert rc == 0 and stats["failures"] == 0, [
        t["hosts"]["localhost"].get("msg") for t in out["plays"][0]["tasks"] if t["hosts"]["localhost"].get("failed")]
    return stats


def test_role_proxies_by_domain_with_default_404_logs_and_prune(lxd, instance_names, backends, tmp_path):
    proxy = instance_names("proxy")
    app = ne.LxdBackend(backends, "app", 9001)
    other = ne.LxdBackend(backends, "other", 9002)
    app.start()
    other.start()
    sites = [
        {"name": "app", "server_names": ["app.test"],
         "locations": [{"path": "/", "backend": "http://%s" % app.upstream}]},
        {"name": "other", "server_names": ["other.test"],
         "locations": [{"path": "/", "backend": "http://%s" % other.upstream}]},
    ]
    stats = converge(tmp_path, proxy, sites)
    assert stats["changed"] == 1   # one box call: the container, nginx in it, the sites
    address = lxd.wait_ipv4(proxy)[0][0]

    def name_of(host):
        resp = ne.request(address, 80, host)
        return resp.json()["name"] if resp.status == 200 else resp.status

    ne.until(lambda: name_of("app.test") == "app")
    assert name_of("other.test") == "other"
    unknown = ne.request(address, 80, "unknown.test")
    assert unknown.status == 404 and '"name"' not in unknown.body
    assert lxd.pull_file(proxy, "/var/log/nginx/app.access.log") is not None
    assert lxd.pull_file(proxy, "/var/log/nginx/other.error.log") is not None

    # a second converge changes nothing
    assert converge(tmp_path, proxy, sites)["changed"] == 0

    # a dropped site is pruned; a hand-written file beside it survives
    lxd.push_file(proxy, "/etc/nginx/conf.d/hand.conf", "# hand-written\n")
    stats = converge(tmp_path, proxy, sites[:1])
    assert stats["changed"] == 1
    assert lxd.pull_file(proxy, "/etc/nginx/conf.d/other.conf") is None
    assert lxd.pull_file(proxy, "/etc/nginx/conf.d/hand.conf") == b"# hand-written\n"
    ne.until(lambda: name_of("other.test") == 404)
    assert name_of("app.test") == "app"
