"""The box's containers as inventory hosts: groups, variables, names made group names, collisions
refused naming both, the proxy, and the marks a container records read back alike."""
import json
import os

import pytest
import yaml

from ansible_collections.homelab.onebox.plugins.module_utils import _box_hosts
from ansible_collections.homelab.onebox.plugins.module_utils._box import parse_box
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._instance_set import OWNER_KEY

SITE = {"name": "site-a", "domains": ["a.example.test"]}
APP = {"name": "app", "command": ["python3", "/srv/app.py"], "port": 8000, "domains": ["app.example.test"],
       "host_port": 8080}
JENKINS = {"name": "jenkins", "command": "python3 /srv/j.py", "port": 8081,
           "routes": [{"domain": "app.example.test", "path": "/jenkins/"}]}
POOL = {"name": "web", "kind": "pool", "count": 2, "domains": ["pool.example.test"]}
VPN = {"name": "vpn", "kind": "plain", "command": "/usr/sbin/vpn", "forwards": [{"proto": "udp", "port": 51820}, {"port": "5000-5001"}]}
DB = {"name": "db", "kind": "internal", "command": ["python3", "/srv/db.py"], "port": 5432}


def hosts(services, owner="my-box", addresses=None):
    box = parse_box(services, {"owner": owner})
    return {h["name"]: _box_hosts.inventory_host(h, (addresses or {}).get(h["name"])) for h in box.hosts}


def test_groups_of_every_kind_and_the_proxy():
    found = hosts([SITE, APP, JENKINS, POOL, VPN, DB])
    assert list(found) == ["site-a", "app", "jenkins", "web-1", "web-2", "vpn", "db", "my-box-proxy"]
    assert found["web-2"]["groups"] == ["onebox", "onebox_owner_my_box", "onebox_kind_pool", "onebox_web"]
    assert found["site-a"]["groups"] == ["onebox", "onebox_owner_my_box", "onebox_kind_static", "onebox_site_a"]
    assert found["db"]["groups"][2:] == ["onebox_kind_internal", "onebox_db"]
    assert found["vpn"]["groups"][2:] == ["onebox_kind_plain", "onebox_vpn"]
    # the proxy: no service, so no service group
    assert found["my-box-proxy"]["groups"] == ["onebox", "onebox_owner_my_box", "onebox_kind_proxy"]


def test_variables_as_described_with_the_address():
    found = hosts([APP, JENKINS, VPN, DB], addresses={"app": "10.0.0.5"})
    assert found["app"]["vars"] == {
        "onebox_owner": "my-box", "onebox_service": "app", "onebox_kind": "app", "onebox_domains": ["app.example.test"],
        "onebox_routes": [], "onebox_port": 8000, "onebox_host_port": 8080, "onebox_forwards": [],
        "onebox_address": "10.0.0.5"}
    assert found["jenkins"]["vars"]["onebox_routes"] == [
        {"domain": "app.example.test", "path": "/jenkins/", "strip_prefix": False}]
    assert found["vpn"]["vars"]["onebox_forwards"] == [{"proto": "udp", "port": 51820}, {"proto": "tcp", "port": "5000-5001"}]
    assert found["vpn"]["vars"]["onebox_port"] is None and found["vpn"]["vars"]["onebox_address"] is None
    proxy = found["my-box-proxy"]["vars"]
    assert proxy["onebox_service"] is None and proxy["onebox_kind"] == "proxy" and proxy["onebox_domains"] == []
    assert proxy["onebox_port"] is None and proxy["onebox_owner"] == "my-box"


def test_a_box_without_http_has_no_proxy_host():
    assert list(hosts([VPN, DB])) == ["vpn", "db"]


@pytest.mark.parametrize("value, group", [
    ("web", "onebox_web"), ("Web-2", "onebox_Web_2"), ("a.b c", "onebox_a_b_c"), ("ä", "onebox__")])
def test_names_are_made_group_names(value, group):
    assert _box_hosts.group_name(value) == group


def test_a_service_named_like_a_kinds_group_is_refused_naming_both():
    with pytest.raises(ValidationError) as err:
        parse_box([DB, dict(VPN, name="kind-app")])
    assert err.value.field == "services[kind-app].name" and err.value.value == "kind-app"
    assert "onebox_kind_app" in err.value.reason and "the kind app" in err.value.reason
    # every kind's group is taken, whether the box has one or not
    with pytest.raises(ValidationError) as err:
        parse_box([dict(VPN, name="kind-proxy")])
    assert "the kind proxy" in err.value.reason


def test_a_service_named_like_the_owners_group_is_refused():
    with pytest.raises(ValidationError) as err:
        parse_box([dict(DB, name="owner-shop")], {"owner": "shop"})
    assert err.value.field == "services[owner-shop].name" and "the owner shop" in err.value.reason
    assert parse_box([dict(DB, name="owner-shop")], {"owner": "other"}).hosts  # another owner's name is free here


def test_two_services_making_one_group_are_refused_naming_both():
    # Service names are instance names (no _), so two boxes' marks are what can meet so.
    one = dict(_box_hosts.from_marks("x1", {OWNER_KEY: "a", _box_hosts.SERVICE_KEY: "a-b"}))
    two = dict(_box_hosts.from_marks("x2", {OWNER_KEY: "b", _box_hosts.SERVICE_KEY: "a_b"}))
    with pytest.raises(ValidationError) as err:
        _box_hosts.check_groups([one, two])
    assert err.value.field == "service a_b" and "onebox_a_b" in err.value.reason and "service a-b" in err.value.reason
    # one service name in two boxes is one group
    _box_hosts.check_groups([one, dict(two, service="a-b")])


def test_the_marks_read_back_give_the_same_host():
    box = parse_box([SITE, APP, JENKINS, POOL, VPN, DB], {"owner": "my-box"})
    for item in box.instances():
        config = dict(item["config"], **{OWNER_KEY: "my-box"})
        back = _box_hosts.from_marks(item["name"], config)
        described = next(h for h in box.hosts if h["name"] == item["name"])
        assert _box_hosts.inventory_host(back, "10.1.1.1") == _box_hosts.inventory_host(described, "10.1.1.1")
    proxy = next(i for i in box.instances() if i["name"] == "my-box-proxy")
    assert _box_hosts.SERVICE_KEY not in proxy["config"]   # LXD drops a key set to "": it would never match
    assert json.loads(proxy["config"][_box_hosts.HOST_KEY])["kind"] == "proxy"


def test_marks_are_stable_text():
    one = parse_box([VPN], {"owner": "o"}).instances()[0]["config"][_box_hosts.HOST_KEY]
    assert one == parse_box([dict(reversed(list(VPN.items())))], {"owner": "o"}).instances()[0]["config"][_box_hosts.HOST_KEY]
    assert " " not in one


@pytest.mark.parametrize("config", [
    {}, {_box_hosts.HOST_KEY: "not json"}, {_box_hosts.HOST_KEY: "[1]"},
    {_box_hosts.HOST_KEY: '{"kind": "nonsense", "domains": "x", "port": 80}'}])
def test_a_container_with_the_owner_alone_or_an_unreadable_mark(config):
    host = _box_hosts.from_marks("old", dict(config, **{OWNER_KEY: "o"}))
    found = _box_hosts.inventory_host(host)
    assert found["groups"] == ["onebox", "onebox_owner_o"]
    assert found["vars"]["onebox_kind"] is None and found["vars"]["onebox_domains"] == []
    assert found["vars"]["onebox_service"] is None


def test_no_owner_mark_is_no_host():
    assert _box_hosts.from_marks("x", {_box_hosts.SERVICE_KEY: "web"}) is None
    assert _box_hosts.from_marks("x", None) is None


def test_the_box_role_adds_every_variable_of_a_host():
    """The role's add_host names each variable (a templated args dict is unsafe): it must name them all."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
    with open(os.path.join(root, "roles", "box", "tasks", "converge.yml"), encoding="utf-8") as handle:
        tasks = yaml.safe_load(handle)
    added = next(t for t in tasks if "ansible.builtin.add_host" in t)["ansible.builtin.add_host"]
    described = set(_box_hosts.host_vars(_box_hosts.from_marks("x", {OWNER_KEY: "o"})))
    assert {key for key in added if key.startswith("onebox_") and not key.startswith("onebox_lxd_")} == described
    assert all(added[key] == "{{ item.vars.%s }}" % key for key in described)
