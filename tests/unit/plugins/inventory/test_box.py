"""The box inventory plugin against a fake daemon listing: only containers with an owner's mark,
the groups and variables _box_hosts gives (as the role), the filters, the connection's variables,
the constructed options, and a clash failing the inventory."""
import pytest
import yaml

from ansible import constants as C
from ansible.errors import AnsibleParserError
from ansible.inventory.data import InventoryData
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import fragment_loader
from ansible.utils.plugin_docs import add_fragments

from ansible_collections.homelab.onebox.plugins.inventory import box as box_plugin
from ansible_collections.homelab.onebox.plugins.inventory.box import InventoryModule
from ansible_collections.homelab.onebox.plugins.module_utils import _box_hosts
from ansible_collections.homelab.onebox.plugins.module_utils._box import parse_box
from ansible_collections.homelab.onebox.plugins.module_utils._instance_set import OWNER_KEY
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError

SHOP = [{"name": "app", "command": "python3 /srv/app.py", "port": 8000, "domains": ["shop.example.test"]},
        {"name": "web", "kind": "pool", "count": 2, "host_port": 8080},
        {"name": "db", "kind": "internal"}]
BLOG = [{"name": "blog", "domains": ["blog.example.test"]}]


def listed(name, config, status="Running", address=None, static=None, kind="container"):
    network = {"lo": {"addresses": [{"family": "inet", "address": "127.0.0.1", "scope": "local"}]}}
    if address:
        network["eth0"] = {"addresses": [{"family": "inet", "address": address, "scope": "global"},
                                         {"family": "inet6", "address": "fd42::1", "scope": "global"}]}
    devices = {"eth0": {"type": "nic", "ipv4.address": static}} if static else {}
    return {"name": name, "type": kind, "status": status, "config": config, "devices": devices,
            "state": {"status": status, "network": network if status == "Running" else None}}


def box_listing(services, owner, **kwargs):
    return [listed(item["name"], dict(item["config"], **{OWNER_KEY: owner}), **kwargs)
            for item in parse_box(services, {"owner": owner}).instances()]


LISTING = (box_listing(SHOP, "shop", address="10.0.0.7")
           + box_listing(BLOG, "blog", status="Stopped", static="10.0.0.9")
           + [listed("by-hand", {"user.onebox.service": "app"}), listed("plain", {}),
              listed("vm", {OWNER_KEY: "shop"}, kind="virtual-machine")])


class FakeClient:
    def __init__(self, listing):
        self.listing, self.calls = listing, []

    def instances(self, state=False):
        self.calls.append(state)
        return self.listing


def plugin_loaded():
    """The plugin with its options as Ansible's loader gives them (its documentation and the
    constructed fragment), without the collection loader the unit tests do not install."""
    doc = yaml.safe_load(box_plugin.DOCUMENTATION)
    add_fragments(doc, box_plugin.__file__, fragment_loader=fragment_loader)
    C.config.initialize_plugin_configuration_definitions("inventory", InventoryModule.NAME, doc["options"])
    plugin = InventoryModule()
    plugin._load_name = InventoryModule.NAME
    return plugin


def inventory(tmp_path, text, listing=LISTING, name="box.onebox.yml"):
    path = tmp_path / name
    path.write_text("plugin: homelab.onebox.box\n" + text)
    plugin = plugin_loaded()
    assert plugin.verify_file(str(path))
    client = FakeClient(listing)
    plugin._client = lambda: client
    data = InventoryData()
    plugin.parse(data, DataLoader(), str(path), cache=False)
    assert client.calls == [True]   # one request, with the state (addresses, status)
    return data


def members(data, group):
    return sorted(host.name for host in data.groups[group].get_hosts()) if group in data.groups else []


def test_only_marked_containers_grouped_as_the_role_groups_them(tmp_path):
    data = inventory(tmp_path, "")
    assert sorted(data.hosts) == ["app", "blog", "blog-proxy", "db", "shop-proxy", "web-1", "web-2"]
    assert members(data, "onebox_owner_shop") == ["app", "db", "shop-proxy", "web-1", "web-2"]
    assert members(data, "onebox_web") == ["web-1", "web-2"] and members(data, "onebox_kind_pool") == ["web-1", "web-2"]
    assert members(data, "onebox_kind_proxy") == ["blog-proxy", "shop-proxy"]
    assert members(data, "onebox") == sorted(data.hosts)
    # the same groups and variables as the box role (both from _box_hosts), plus the connection
    box = parse_box(SHOP, {"owner": "shop"})
    for host in box.hosts:
        wanted = _box_hosts.inventory_host(host, "10.0.0.7")
        assert sorted(g.name for g in data.hosts[host["name"]].groups) == sorted(wanted["groups"])
        assert data.hosts[host["name"]].vars == dict(wanted["vars"], ansible_connection="homelab.onebox.lxd",
                                                     inventory_file=data.hosts[host["name"]].vars["inventory_file"],
                                                     inventory_dir=data.hosts[host["name"]].vars["inventory_dir"])


def test_a_stopped_container_has_its_static_address(tmp_path):
    data = inventory(tmp_path, "")
    assert data.hosts["blog"].vars["onebox_address"] == "10.0.0.9"
    assert data.hosts["web-1"].vars["onebox_address"] == "10.0.0.7"


def test_filters(tmp_path):
    assert sorted(inventory(tmp_path, "owners: [blog]\n").hosts) == ["blog", "blog-proxy"]
    assert sorted(inventory(tmp_path, "services: [web, blog]\n").hosts) == ["blog", "web-1", "web-2"]
    assert sorted(inventory(tmp_path, "states: [stopped]\n").hosts) == ["blog", "blog-proxy"]
    assert sorted(inventory(tmp_path, "owners: [shop]\nstates: [Running]\nservices: [db]\n").hosts) == ["db"]
    assert inventory(tmp_path, "owners: [nobody]\n").hosts == {}


def test_a_misspelled_state_fails_naming_it_before_the_daemon_is_read():
    with pytest.raises(ValidationError) as err:
        box_plugin.check_states(["Running", "Runing"])
    assert "states[1]" in str(err.value) and "Runing" in str(err.value)
    box_plugin.check_states(["running", "STOPPED"])


def test_the_daemon_as_configured_reaches_the_connection(tmp_path):
    data = inventory(tmp_path, "url: https://box.test:8443\nverify: false\nproject: boxes\nowners: [blog]\n")
    assert {k: v for k, v in data.hosts["blog"].vars.items() if k.startswith(("onebox_lxd", "ansible_conn"))} == {
        "ansible_connection": "homelab.onebox.lxd", "onebox_lxd_url": "https://box.test:8443",
        "onebox_lxd_verify": False, "onebox_lxd_project": "boxes"}


def test_constructed_options(tmp_path):
    data = inventory(tmp_path, "owners: [shop]\nstrict: true\ncompose:\n  url: \"'http://' ~ onebox_address\"\n"
                               "groups:\n  reached: onebox_domains | length > 0 or onebox_host_port is not none\n"
                               "keyed_groups:\n  - {key: onebox_kind, prefix: k}\n")
    assert data.hosts["app"].vars["url"] == "http://10.0.0.7"
    assert members(data, "reached") == ["app", "web-1", "web-2"]
    assert members(data, "k_internal") == ["db"]


def test_a_container_made_before_the_marks_is_listed_with_its_owner_alone(tmp_path):
    data = inventory(tmp_path, "", listing=[listed("old", {OWNER_KEY: "shop"})])
    assert sorted(g.name for g in data.hosts["old"].groups) == ["onebox", "onebox_owner_shop"]
    assert data.hosts["old"].vars["onebox_kind"] is None


def test_two_names_making_one_group_fail_the_inventory_naming_both(tmp_path):
    clash = box_listing([{"name": "owner-shop", "kind": "internal"}], "other")
    with pytest.raises(AnsibleParserError) as err:
        inventory(tmp_path, "", listing=LISTING + clash)
    assert "owner-shop" in str(err.value) and "the owner shop" in str(err.value)
    assert "owner-shop" in inventory(tmp_path, "owners: [other]\n", listing=LISTING + clash).hosts


@pytest.mark.parametrize("name, ok", [("box.onebox.yml", True), ("box.onebox.yaml", True), ("box.yml", False),
                                      ("onebox.yml", False)])
def test_verify_file(tmp_path, name, ok):
    path = tmp_path / name
    path.write_text("plugin: homelab.onebox.box\n")
    assert InventoryModule().verify_file(str(path)) is ok
