"""_addresses: the network of eth0, ``auto`` addresses, stale DHCP leases (against the fake LXD)."""
import pytest

from ansible_collections.homelab.onebox.plugins.module_utils import _addresses, _dhcp
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._instance import parse_instance
from ansible_collections.homelab.onebox.plugins.module_utils._lxd import LxdError
from unit.fake_lxd import FakeLxd

NETWORKS = {"lxdbr0": {"name": "lxdbr0", "config": {"ipv4.address": "10.87.0.1/24"}}}


def spec(name, ipv4_address="auto"):
    return parse_instance({"name": name, "ipv4_address": ipv4_address})


def bridge(tmp_path, api=(), left=(), instances=()):
    """A fake daemon whose bridge's API lists ``api`` leases and whose dnsmasq file also holds
    ``left`` (machines that are gone); lease i has MAC 00:16:3e:00:00:0i."""
    lxd = FakeLxd(instances, networks=NETWORKS)
    lxd.leases["lxdbr0"] = list(api)
    lxd.local_dir = str(tmp_path)
    path = tmp_path / "networks" / "lxdbr0" / "dnsmasq.leases"
    path.parent.mkdir(parents=True)
    path.write_text("".join("0 00:16:3e:00:00:%02x %s * *\n" % (i, a) for i, a in enumerate(list(api) + list(left))))
    return lxd


def test_auto_address_keeps_an_existing_static_one_and_skips_used_ones(tmp_path):
    specs = [spec(n) for n in ("old", "new1", "new2")] + [spec("fixed", "10.87.0.12")]
    current = {
        "old": {"devices": {"eth0": {"type": "nic", "ipv4.address": "10.87.0.50"}},
                "expanded_devices": {"eth0": {"type": "nic", "ipv4.address": "10.87.0.50"}}},
        "other": {"expanded_devices": {"eth0": {"type": "nic", "ipv4.address": "10.87.0.10"}}},
    }
    _addresses.assign_addresses(bridge(tmp_path, api=["10.87.0.11"]), specs, current)
    assert [s.ipv4_address for s in specs] == ["10.87.0.50", "10.87.0.13", "10.87.0.14", "10.87.0.12"]


def test_auto_address_full_subnet_is_an_error(tmp_path):
    with pytest.raises(LxdError, match="no free address"):
        _addresses.assign_addresses(bridge(tmp_path, api=["10.87.0.%d" % i for i in range(2, 255)]), [spec("late")], {})


def test_auto_address_skips_a_lease_left_by_a_machine_that_is_gone(tmp_path):
    # LXD's API no longer lists it, but dnsmasq gives the address to nobody until it runs out.
    new = spec("new")
    _addresses.assign_addresses(bridge(tmp_path, left=["10.87.0.10", "10.87.0.11"]), [new], {})
    assert new.ipv4_address == "10.87.0.12"


def test_eth0_network_is_the_declared_one_or_the_profiles():
    lxd = FakeLxd(networks=dict(NETWORKS, other={"name": "other", "config": {}}))
    assert _addresses.eth0_network(lxd, None, ["default"])[0] == "lxdbr0"
    assert _addresses.eth0_network(lxd, "other", ["default"])[0] == "other"
    with pytest.raises(LxdError, match="unknown network 'nope'"):
        _addresses.eth0_network(lxd, "nope", None)
    with pytest.raises(LxdError, match="no eth0 NIC in profiles"):
        _addresses.eth0_network(FakeLxd(profiles={"bare": {"devices": {}}}), None, ["bare"])


@pytest.mark.parametrize("address", ["10.88.0.5", "10.87.0.1", "10.87.0.0", "10.87.0.255"])
def test_static_nic_is_a_host_of_the_subnet_not_its_gateway(address):
    with pytest.raises(ValidationError, match="ipv4_address.*subnet 10.87.0.0/24"):
        _addresses.static_nic(FakeLxd(networks=NETWORKS), address, None, None)
    assert _addresses.static_nic(FakeLxd(networks=NETWORKS), "10.87.0.9", None, None) == {
        "type": "nic", "name": "eth0", "network": "lxdbr0", "ipv4.address": "10.87.0.9"}


def test_a_lease_of_the_container_itself_is_kept(tmp_path):
    lxd = bridge(tmp_path, left=["10.87.0.20"],
                 instances=[{"name": "web", "config": {"volatile.eth0.hwaddr": "00:16:3E:00:00:00"}}])
    assert _addresses.release_stale_lease(lxd, "lxdbr0", "10.87.0.20", "web") is False


def test_a_lease_of_another_container_is_an_error_naming_it(tmp_path):
    lxd = bridge(tmp_path, left=["10.87.0.20"],
                 instances=[{"name": "holder", "config": {"volatile.eth0.hwaddr": "00:16:3e:00:00:00"}}])
    with pytest.raises(LxdError, match="10.87.0.20 is leased .* to instance holder"):
        _addresses.release_stale_lease(lxd, "lxdbr0", "10.87.0.20", "web")


def test_a_lease_of_a_machine_gone_is_released_to_the_bridge(tmp_path, monkeypatch):
    lxd = bridge(tmp_path, left=["10.87.0.20", "10.87.0.21"])
    sent = []

    def release(lease, interface, server):
        sent.append((lease.address, interface, server))
        path = _dhcp.lease_file(str(tmp_path), "lxdbr0")  # what dnsmasq does on a DHCPRELEASE
        with open(path) as handle:
            kept = [line for line in handle if lease.address + " " not in line]
        with open(path, "w") as handle:
            handle.writelines(kept)

    monkeypatch.setattr(_dhcp, "send_release", release)
    assert _addresses.release_stale_lease(lxd, "lxdbr0", "10.87.0.20", "web") is True
    assert sent == [("10.87.0.20", "lxdbr0", "10.87.0.1")]
    assert [held.address for held in _addresses.dnsmasq_leases(lxd, "lxdbr0")] == ["10.87.0.21"]
    assert _addresses.release_stale_lease(lxd, "lxdbr0", "10.87.0.30", "web") is False  # no lease: nothing to do


def test_a_daemon_elsewhere_has_no_lease_file_to_read():
    assert _addresses.dnsmasq_leases(FakeLxd(), "lxdbr0") == []
