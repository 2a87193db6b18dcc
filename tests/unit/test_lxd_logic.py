"""Pure logic of _lxd.py: socket discovery, config normalisation, the instance diff."""
import pytest

from ansible_collections.homelab.onebox.plugins.module_utils._dhcp import Lease
from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError, ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._lxd import (
    InstanceSpec, LxdClient, LxdError, endpoint_from_url, find_socket, normalise_config, own_config)


def params(**overrides):
    base = {k: spec.get("default") for k, spec in InstanceSpec.argument_spec().items()}
    base.update(name="web1")
    base.update(overrides)
    return base


class FakeLookups:
    """Stands in for the three read-only look-ups create_body/patch_body make."""

    def __init__(self, aliases=("onebox-debian12",), instances=("base",)):
        self.aliases, self.instances = set(aliases), set(instances)

    def image_alias(self, alias):
        return {"name": alias, "target": "f" * 64} if alias in self.aliases else None

    def image(self, fingerprint):
        return None

    def instance(self, name):
        return {"name": name} if name in self.instances else None

    def profile(self, name):
        return {"devices": {"eth0": {"type": "nic", "network": "lxdbr0", "name": "eth0"}}} if name == "default" else None

    def network(self, name):
        return {"config": {"ipv4.address": "10.87.0.1/24"}} if name == "lxdbr0" else None


# ---- socket discovery and errors ----------------------------------------------------------
def test_find_socket_order_prefers_lxd_dir_then_debian_snap_incus():
    present = {"/custom/unix.socket", "/var/snap/lxd/common/lxd/unix.socket", "/var/lib/incus/unix.socket"}
    assert find_socket({"LXD_DIR": "/custom"}, present.__contains__) == "/custom/unix.socket"
    assert find_socket({}, present.__contains__) == "/var/snap/lxd/common/lxd/unix.socket"
    assert find_socket({}, {"/var/lib/incus/unix.socket"}.__contains__) == "/var/lib/incus/unix.socket"
    assert find_socket({}, set().__contains__) is None


def test_endpoint_forms():
    exists = {"/var/lib/lxd/unix.socket"}.__contains__
    assert endpoint_from_url(None, {}, exists) == "/var/lib/lxd/unix.socket"
    assert endpoint_from_url("unix:/var/lib/lxd/unix.socket", {}, exists) == "/var/lib/lxd/unix.socket"
    assert endpoint_from_url("https://lxd.example:8443", {}, exists) == "https://lxd.example:8443"
    with pytest.raises(LxdError, match="no LXD socket found"):
        endpoint_from_url(None, {}, set().__contains__)
    with pytest.raises(LxdError, match="does not exist"):
        endpoint_from_url("/nope.sock", {}, exists)
    with pytest.raises(LxdError, match="lxd_url"):
        endpoint_from_url("ftp://x", {}, exists)


def test_lxd_error_is_the_collection_error():
    assert issubclass(LxdError, OneboxError) and issubclass(ValidationError, OneboxError)


def test_connect_failure_becomes_lxd_error(tmp_path):
    sock = tmp_path / "dead.socket"
    sock.write_text("")  # exists, but nothing listens
    with pytest.raises(LxdError, match="cannot connect to LXD"):
        LxdClient(url=str(sock), timeout=2)


def test_ipv4_addresses_skip_loopback_and_link_scope():
    state = {"network": {
        "lo": {"addresses": [{"family": "inet", "address": "127.0.0.1", "scope": "local"}]},
        "eth0": {"addresses": [{"family": "inet", "address": "10.87.0.5", "scope": "global"},
                               {"family": "inet6", "address": "fe80::1", "scope": "link"}]}}}
    assert LxdClient.ipv4_addresses(None, state) == ["10.87.0.5"]
    assert LxdClient.ipv4_addresses(None, state, nic="eth1") == []
    assert LxdClient.ipv4_addresses(None, None) == []


# ---- config normalisation -----------------------------------------------------------------
def test_values_become_the_strings_lxd_stores():
    assert normalise_config({"a": True, "b": False, "c": 3, "d": "x"}) == {"a": "true", "b": "false", "c": "3", "d": "x"}


def test_typed_options_map_to_lxd_keys():
    spec = InstanceSpec.from_params(params(memory="512MiB", cpus="0-1", autostart=True, autostart_priority=10,
                                           autostart_delay=5, config={"security.nesting": True}))
    assert spec.config == {"limits.memory": "512MiB", "limits.cpu": "0-1", "boot.autostart": "true",
                           "boot.autostart.priority": "10", "boot.autostart.delay": "5",
                           "security.nesting": "true"}


def test_memory_swap_uses_the_hosts_cgroup_version():
    v1 = InstanceSpec.from_params(params(memory="512MiB", memory_swap="1GiB"), cgroup2=False)
    assert v1.config["raw.lxc"] == "lxc.cgroup.memory.memsw.limit_in_bytes = %d" % 1024 ** 3
    v2 = InstanceSpec.from_params(params(memory="512MiB", memory_swap="1GiB"), cgroup2=True)
    assert v2.config["raw.lxc"] == "lxc.cgroup2.memory.swap.max = %d" % (512 * 1024 ** 2)


@pytest.mark.parametrize("overrides,field", [
    (dict(name="1bad"), "name"),
    (dict(name="bad;name"), "name"),
    (dict(name="web\n"), "name"),
    (dict(memory="lots"), "memory"),
    (dict(memory="512MiB", memory_swap="256MiB"), "memory_swap"),
    (dict(memory="50%", memory_swap="1GiB"), "memory"),
    (dict(cpus="many"), "cpus"),
    (dict(config={"volatile.eth0.hwaddr": "x"}), "config"),
    (dict(config={"limits.memory": "1GiB"}, memory="512MiB"), "config"),
    (dict(devices={"eth1": {"network": "lxdbr0"}}), "devices.eth1"),
    (dict(ipv4_address="10.87.0.300"), "ipv4_address"),
    (dict(ipv4_address="10.87.0.5", devices={"eth0": {"type": "nic"}}), "ipv4_address"),
    (dict(autostart_priority=-1), "autostart_priority"),
    (dict(wait_timeout=0), "wait_timeout"),
    (dict(copy_from="bad name"), "copy_from"),
])
def test_bad_input_names_the_field(overrides, field):
    with pytest.raises(ValidationError) as err:
        InstanceSpec.from_params(params(**overrides), cgroup2=False)
    assert err.value.field == field


# ---- create body and diff ------------------------------------------------------------------
def test_create_body_from_alias_with_static_address():
    spec = InstanceSpec.from_params(params(image="onebox-debian12", ipv4_address="10.87.0.11", memory="1GiB"))
    body = spec.create_body(FakeLookups())
    assert body["source"] == {"type": "image", "alias": "onebox-debian12"}
    assert body["devices"]["eth0"] == {"type": "nic", "name": "eth0", "network": "lxdbr0", "ipv4.address": "10.87.0.11"}
    assert body["config"] == {"limits.memory": "1GiB"}
    assert "profiles" not in body  # LXD applies its default profile


def test_create_body_rejects_unknown_image_and_source():
    with pytest.raises(ValidationError, match="image: invalid value 'nope'"):
        InstanceSpec.from_params(params(image="nope")).create_body(FakeLookups())
    with pytest.raises(ValidationError, match="copy_from"):
        InstanceSpec.from_params(params(copy_from="ghost")).create_body(FakeLookups())
    with pytest.raises(ValidationError, match="give image or copy_from"):
        InstanceSpec.from_params(params()).create_body(FakeLookups())


def test_create_body_copy():
    body = InstanceSpec.from_params(params(copy_from="base/snap0")).create_body(FakeLookups())
    assert body["source"] == {"type": "copy", "source": "base/snap0", "instance_only": True}


def test_static_address_outside_subnet_is_refused():
    for address in ("10.88.0.5", "10.87.0.1", "10.87.0.255"):
        with pytest.raises(ValidationError, match="ipv4_address"):
            InstanceSpec.from_params(params(image="onebox-debian12", ipv4_address=address)).create_body(FakeLookups())


CURRENT = {
    "name": "web1", "status": "Running", "profiles": ["default"], "ephemeral": False,
    "config": {"limits.memory": "512MiB", "image.os": "debian", "volatile.eth0.hwaddr": "00:16:3e:00:00:01",
               "volatile.idmap.current": "[]"},
    "devices": {"eth0": {"type": "nic", "name": "eth0", "network": "lxdbr0", "ipv4.address": "10.87.0.11"}},
}


def test_no_change_when_declared_matches():
    spec = InstanceSpec.from_params(params(memory="512MiB", ipv4_address="10.87.0.11"))
    assert spec.patch_body(CURRENT, FakeLookups()) == {}


def test_patch_holds_only_what_differs_and_never_volatile():
    spec = InstanceSpec.from_params(params(memory="1GiB", autostart=True, ipv4_address="10.87.0.11"))
    patch = spec.patch_body(CURRENT, FakeLookups())
    assert patch == {"config": {"limits.memory": "1GiB", "boot.autostart": "true"}}
    assert not any(k.startswith("volatile.") for k in patch["config"])


def test_patch_device_profiles_ephemeral():
    spec = InstanceSpec.from_params(params(ipv4_address="10.87.0.12", profiles=["default", "web"], ephemeral=True))
    patch = spec.patch_body(CURRENT, FakeLookups())
    assert patch["devices"]["eth0"]["ipv4.address"] == "10.87.0.12"
    assert patch["profiles"] == ["default", "web"] and patch["ephemeral"] is True


def test_view_shows_only_managed_keys_and_hides_volatile():
    spec = InstanceSpec.from_params(params(memory="1GiB"))
    assert spec.view(CURRENT)["config"] == {"limits.memory": "512MiB"}
    everything = InstanceSpec.from_params(params()).view(CURRENT)["config"]
    assert everything == {"limits.memory": "512MiB", "image.os": "debian"}
    assert own_config(CURRENT["config"]) == everything


def test_predicted_after_patch_merges():
    after = InstanceSpec.predicted_after_patch(CURRENT, {"config": {"limits.memory": "1GiB"}})
    assert after["config"]["limits.memory"] == "1GiB" and after["config"]["image.os"] == "debian"
    assert CURRENT["config"]["limits.memory"] == "512MiB"  # not mutated


class FakeNetworkLookups(FakeLookups):
    """``leases``: what LXD's API lists; ``left``: leases in dnsmasq's file of machines that are gone."""

    def __init__(self, leases=(), left=()):
        super().__init__()
        self.leases, self.left = list(leases), list(left)

    def network_leases(self, name):
        return [{"address": "10.87.0.1", "type": "gateway"}] + [{"address": a, "type": "dynamic"} for a in self.leases]

    def dnsmasq_leases(self, name):
        return [Lease(0, "00:16:3e:00:00:%02x" % i, a, None, None) for i, a in enumerate(self.leases + self.left)]


def test_auto_address_keeps_an_existing_static_one_and_skips_used_ones():
    from ansible_collections.homelab.onebox.plugins.module_utils._lxd import assign_addresses
    specs = [InstanceSpec.from_params(params(name=n, ipv4_address="auto")) for n in ("old", "new1", "new2")]
    specs.append(InstanceSpec.from_params(params(name="fixed", ipv4_address="10.87.0.12")))
    current = {
        "old": {"devices": {"eth0": {"type": "nic", "ipv4.address": "10.87.0.50"}},
                "expanded_devices": {"eth0": {"type": "nic", "ipv4.address": "10.87.0.50"}}},
        "other": {"expanded_devices": {"eth0": {"type": "nic", "ipv4.address": "10.87.0.10"}}},
    }
    assign_addresses(FakeNetworkLookups(leases=["10.87.0.11"]), specs, current)
    assert [s.ipv4_address for s in specs] == ["10.87.0.50", "10.87.0.13", "10.87.0.14", "10.87.0.12"]


def test_auto_address_full_subnet_is_an_error():
    from ansible_collections.homelab.onebox.plugins.module_utils._lxd import assign_addresses
    leases = ["10.87.0.%d" % i for i in range(2, 255)]
    spec = InstanceSpec.from_params(params(name="late", ipv4_address="auto"))
    with pytest.raises(LxdError, match="no free address"):
        assign_addresses(FakeNetworkLookups(leases=leases), [spec], {})


def test_auto_address_skips_a_lease_left_by_a_machine_that_is_gone():
    # LXD's API no longer lists it, but dnsmasq gives the address to nobody until it runs out.
    from ansible_collections.homelab.onebox.plugins.module_utils._lxd import assign_addresses
    spec = InstanceSpec.from_params(params(name="new", ipv4_address="auto"))
    assign_addresses(FakeNetworkLookups(left=["10.87.0.10", "10.87.0.11"]), [spec], {})
    assert spec.ipv4_address == "10.87.0.12"
