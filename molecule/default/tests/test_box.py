"""Verify the example box (inventory.example) from outside, after converge and idempotence."""
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
from box_client import http_get, tcp_ping, udp_echo, wait_for  # noqa: E402

POOL = {"web-1", "web-2", "web-3"}
SHOP_SETUP_STEPS = 5  # inventory.example: the shop's setup steps


@pytest.mark.parametrize("domain,expected", [
    ("site-a.example.test", "<h1>Site A</h1>"),
    ("site-b.example.test", "<h1>Site B</h1>"),
    ("app.example.test", "app hello from app path=/"),
])
def test_each_domain_answers_with_its_own_service(client, domain, expected):
    status, body = http_get(client, domain)
    assert status == 200 and body.startswith(expected), (status, body)


def shop_visits(client):
    """The shop's front page: (status, the count of visits its database holds, this one included)."""
    status, body = http_get(client, "shop.example.test")
    return status, int(body.split("visits=")[1]) if status == 200 and "visits=" in body else body


def test_shop_answers_by_its_domain_from_its_database_on_its_volume(client, lxd):
    assert http_get(client, "shop.example.test", "/health/") == (200, "ok\n")
    (status, before), (again, after) = shop_visits(client), shop_visits(client)
    # Each visit is a row written by the front page: the migrated table, written and read back.
    assert status == again == 200 and after == before + 1, (status, before, again, after)
    assert lxd.instance("shop")["devices"]["vol-data"]["path"] == "/var/lib/shop"
    owner = lxd.run("shop", ["stat", "-c", "%U", "/var/lib/shop/db.sqlite3"], timeout=10).strip()
    workers = set(lxd.run("shop", ["ps", "-o", "user=", "-C", "gunicorn"], timeout=10).split())
    assert owner == "shop" and workers == {"shop"}, (owner, workers)


def test_shop_setup_ran_once_not_again_on_the_second_converge(lxd):
    """Each setup step writes its stamp when it runs. The first converge ran them all, then (the
    shop healthy) wrote the proxy's site of shop.example.test; the second (idempotence) changed
    nothing, so no stamp may be newer than that site file."""
    stamps = lxd.run("shop", ["find", "/var/lib/onebox/setup", "-name", "shop.*", "-printf", "%T@ %f\n"],
                     timeout=10).split("\n")
    stamps = {name: float(when) for when, name in (line.split() for line in stamps if line.strip())}
    site = lxd.run("onebox-example-proxy", ["sh", "-c", "find $(grep -rl 'server_name shop.example.test' "
                                            "/etc/nginx) -printf '%T@\n'"], timeout=10).split()
    assert len(stamps) == SHOP_SETUP_STEPS, stamps
    assert len(site) == 1, site
    assert max(stamps.values()) < float(site[0]), "a setup step ran after the shop's site was written: %s" % stamps


def test_unknown_domain_gets_404_not_another_service(client):
    status, body = http_get(client, "nobody.example.test")
    assert status == 404
    assert "Site" not in body and "app" not in body


def test_path_route_reaches_its_service_with_the_path(client):
    status, body = http_get(client, "app.example.test", "/jenkins/job/1")
    assert status == 200 and body.startswith("jenkins jenkins path=/jenkins/job/1"), body


def test_app_runs_as_non_root(client, lxd):
    status, body = http_get(client, "app.example.test")
    uid = int(body.split("uid=")[1])
    assert status == 200 and uid != 0
    ps = lxd.run("app", ["ps", "-o", "user=", "-C", "python3"], timeout=10).split()
    assert ps and set(ps) == {"app"}


def test_internal_db_reached_by_the_app_by_name_never_from_outside(client, lxd):
    status, body = http_get(client, "app.example.test", "/db")
    assert (status, body.strip()) == (200, "db ok")
    assert tcp_ping(client, client.host_address, 5432) is None, "port 5432 is forwarded"
    db_address = lxd.ipv4_addresses(lxd.instance_state("db"))[0]
    assert lxd.run("app", ["getent", "hosts", "db"], timeout=10).split()[0] == db_address


def pool_members_seen(client, requests, host="pool.example.test", port=80):
    """(members that answered, failed requests, requests slower than 1.5 s)."""
    seen, failures, slow = set(), 0, 0
    for _request in range(requests):
        started = time.monotonic()
        status, body = http_get(client, host, port=port)
        slow += time.monotonic() - started > 1.5
        if status == 200 and body.startswith("web "):
            seen.add(body.split()[1])
        else:
            failures += 1
    return seen, failures, slow


def test_pool_spreads_over_three_and_its_host_port(client):
    seen, failures, _slow = pool_members_seen(client, 12)
    assert failures == 0 and seen == POOL
    seen, failures, _slow = pool_members_seen(client, 9, host="anything", port=8000)
    assert failures == 0 and seen == POOL


def test_pool_keeps_answering_with_a_member_stopped_and_takes_it_back(client, lxd):
    lxd.change_state("web-2", "stop", force=True, timeout=30)
    try:
        seen, failures, slow = pool_members_seen(client, 15)
        assert failures == 0, "a stopped member cost the client failed requests"
        # Only the first try at the stopped member is paid (nginx then leaves it out for 10 s).
        assert slow <= 1, "%d of 15 requests were slow" % slow
        assert seen == POOL - {"web-2"}
    finally:
        # Back with its address even when an assertion failed, so later tests see the whole box.
        lxd.change_state("web-2", "start", timeout=30)
        lxd.wait_ipv4("web-2", timeout=30)
    # nginx retries a failed member after fail_timeout (10 s): it must rejoin within a bound.
    back = wait_for(lambda: "web-2" in pool_members_seen(client, 6)[0], timeout=40)
    assert back, "web-2 did not rejoin the pool"


def test_udp_forward_reaches_the_vpn_container(client):
    assert udp_echo(client, 51820, "hello") == "vpn hello"


def test_limits_and_boot_order_are_the_declared_ones(lxd):
    app = lxd.instance("app")["config"]
    assert app["limits.memory"] == "256MiB" and app["limits.cpu"] == "1"
    assert app["boot.autostart"] == "true" and app["boot.autostart.priority"] == "50"
    assert app["boot.autostart.delay"] == "2"
    db = lxd.instance("db")["config"]
    assert db["boot.autostart.priority"] == "90" and db["boot.autostart.delay"] == "3"
    limit = int(lxd.run("app", ["cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"], timeout=10)
                if lxd.exec("app", ["test", "-e", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]).rc == 0
                else lxd.run("app", ["cat", "/sys/fs/cgroup/memory.max"], timeout=10))
    assert limit == 256 * 1024 ** 2


def test_every_container_has_a_static_address(lxd):
    for name in ("site-a", "site-b", "app", "jenkins", "web-1", "web-2", "web-3", "vpn", "db", "shop",
                 "onebox-example-proxy"):
        static = lxd.instance(name)["devices"]["eth0"]["ipv4.address"]
        assert lxd.ipv4_addresses(lxd.instance_state(name)) == [static], name


def test_app_service_comes_back_after_being_killed(client, lxd):
    def app_pid():
        result = lxd.exec("app", ["pgrep", "-u", "app", "-f", "/srv/app/app.py"], timeout=10)
        return result.stdout.split()[0] if result.rc == 0 and result.stdout.split() else None

    def restarted():
        pid = app_pid()
        return pid if pid and pid != before else None

    before = app_pid()
    assert before
    lxd.run("app", ["kill", "-9", before], timeout=10)
    assert wait_for(restarted, timeout=15), "systemd did not restart the app"
    assert wait_for(lambda: http_get(client, "app.example.test")[0] == 200, timeout=15)
