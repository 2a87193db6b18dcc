"""_instance: parsing an instance's options, the body that creates it, the patch, the views."""
import pytest

from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._instance import (
    IMAGE_KEY, InstanceSpec, own_config, parse_instance, to_lxd_value)
from unit.fake_lxd import FakeLxd


def params(**overrides):
    base = {k: spec.get("default") for k, spec in InstanceSpec.argument_spec().items()}
    base.update(name="web1")
    base.update(overrides)
    return base


def lookups():
    """The read-only look-ups create_body/patch_body make: an image, an instance to copy, the bridge."""
    return FakeLxd(["base"], images=("onebox-debian12",),
                   networks={"lxdbr0": {"name": "lxdbr0", "config": {"ipv4.address": "10.87.0.1/24"}}})


# ---- config normalisation -----------------------------------------------------------------
def test_values_become_the_strings_lxd_stores():
    assert [to_lxd_value(x) for x in (True, False, 3, "x", None)] == ["true", "false", "3", "x", ""]
    spec = parse_instance(params(config={"a": True, "b": 3}, devices={"eth1": {"type": "nic", "mtu": 1500}}))
    assert spec.config == {"a": "true", "b": "3"} and spec.devices == {"eth1": {"type": "nic", "mtu": "1500"}}


def test_typed_options_map_to_lxd_keys():
    spec = parse_instance(params(memory="512MiB", cpus="0-1", autostart=True, autostart_priority=10,
                                 autostart_delay=5, config={"security.nesting": True}))
    assert spec.config == {"limits.memory": "512MiB", "limits.cpu": "0-1", "boot.autostart": "true",
                           "boot.autostart.priority": "10", "boot.autostart.delay": "5",
                           "security.nesting": "true"}


def test_memory_swap_uses_the_hosts_cgroup_version():
    v1 = parse_instance(params(memory="512MiB", memory_swap="1GiB"), cgroup2=False)
    assert v1.config["raw.lxc"] == "lxc.cgroup.memory.memsw.limit_in_bytes = %d" % 1024 ** 3
    v2 = parse_instance(params(memory="512MiB", memory_swap="1GiB"), cgroup2=True)
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
        parse_instance(params(**overrides), cgroup2=False)
    assert err.value.field == field


# ---- create body and diff ------------------------------------------------------------------
def test_create_body_from_alias_with_static_address():
    spec = parse_instance(params(image="onebox-debian12", ipv4_address="10.87.0.11", memory="1GiB"))
    body = spec.create_body(lookups())
    assert body["source"] == {"type": "image", "alias": "onebox-debian12"}
    assert body["devices"]["eth0"] == {"type": "nic", "name": "eth0", "network": "lxdbr0", "ipv4.address": "10.87.0.11"}
    assert body["config"] == {"limits.memory": "1GiB"}
    assert "profiles" not in body  # LXD applies its default profile


def test_create_body_rejects_unknown_image_and_source():
    with pytest.raises(ValidationError, match="image: invalid value 'nope'"):
        parse_instance(params(image="nope")).create_body(lookups())
    with pytest.raises(ValidationError, match="copy_from"):
        parse_instance(params(copy_from="ghost")).create_body(lookups())
    with pytest.raises(ValidationError, match="give image or copy_from"):
        parse_instance(params()).create_body(lookups())


def test_create_body_copy():
    body = parse_instance(params(copy_from="base/snap0")).create_body(lookups())
    assert body["source"] == {"type": "copy", "source": "base/snap0", "instance_only": True}


def test_static_address_outside_subnet_is_refused():
    for address in ("10.88.0.5", "10.87.0.1", "10.87.0.255"):
        with pytest.raises(ValidationError, match="ipv4_address"):
            parse_instance(params(image="onebox-debian12", ipv4_address=address)).create_body(lookups())


CURRENT = {
    "name": "web1", "status": "Running", "profiles": ["default"], "ephemeral": False,
    "config": {"limits.memory": "512MiB", "image.os": "debian", "volatile.eth0.hwaddr": "00:16:3e:00:00:01",
               "volatile.idmap.current": "[]"},
    "devices": {"eth0": {"type": "nic", "name": "eth0", "network": "lxdbr0", "ipv4.address": "10.87.0.11"}},
}


def test_no_change_when_declared_matches():
    spec = parse_instance(params(memory="512MiB", ipv4_address="10.87.0.11"))
    assert spec.patch_body(CURRENT, lookups()) == {}


def test_patch_holds_only_what_differs_and_never_volatile():
    spec = parse_instance(params(memory="1GiB", autostart=True, ipv4_address="10.87.0.11"))
    patch = spec.patch_body(CURRENT, lookups())
    assert patch == {"config": {"limits.memory": "1GiB", "boot.autostart": "true"}}
    assert not any(k.startswith("volatile.") for k in patch["config"])


def test_patch_device_profiles_ephemeral():
    spec = parse_instance(params(ipv4_address="10.87.0.12", profiles=["default", "web"], ephemeral=True))
    patch = spec.patch_body(CURRENT, lookups())
    assert patch["devices"]["eth0"]["ipv4.address"] == "10.87.0.12"
    assert patch["profiles"] == ["default", "web"] and patch["ephemeral"] is True


def test_view_shows_only_managed_keys_and_hides_volatile():
    spec = parse_instance(params(memory="1GiB"))
    assert spec.view(CURRENT)["config"] == {"limits.memory": "512MiB"}
    everything = parse_instance(params()).view(CURRENT)["config"]
    assert everything == {"limits.memory": "512MiB", "image.os": "debian"}
    assert own_config(CURRENT["config"]) == everything


def test_predicted_after_patch_merges():
    after = InstanceSpec.predicted_after_patch(CURRENT, {"config": {"limits.memory": "1GiB"}})
    assert after["config"]["limits.memory"] == "1GiB" and after["config"]["image.os"] == "debian"
    assert CURRENT["config"]["limits.memory"] == "512MiB"  # not mutated


# ---- the recorded image, the owned devices ---------------------------------------------------------
def test_a_recorded_image_that_differs_is_the_one_replaced():
    spec = parse_instance(params(image="new", config={IMAGE_KEY: "new"}))
    assert spec.replaced_image({"config": {IMAGE_KEY: "old"}}) == "old"
    assert spec.replaced_image({"config": {IMAGE_KEY: "new"}}) is None
    assert spec.replaced_image({"config": {}}) is None          # made before the record: written in place
    assert spec.replaced_image(None) is None
    assert spec.patch_body({"config": {}}, lookups()) == {"config": {IMAGE_KEY: "new"}}
    # a spec that records nothing never replaces anything
    assert parse_instance(params(image="new")).replaced_image({"config": {IMAGE_KEY: "old"}}) is None


VOLUMES = {"vol-data": {"type": "disk", "pool": "default", "source": "box-web-data", "path": "/data"},
           "vol-old": {"type": "disk", "pool": "default", "source": "box-web-old", "path": "/old"},
           "eth0": CURRENT["devices"]["eth0"], "gpu": {"type": "gpu"}}


def test_owned_devices_no_longer_declared_are_stale_and_a_put_removes_them():
    spec = parse_instance(params(devices={"vol-data": dict(VOLUMES["vol-data"], readonly=True)}))
    current = dict(CURRENT, devices=VOLUMES, architecture="x86_64", profiles=["default"], description="")
    assert spec.stale_devices(current) == []     # only a spec that owns a prefix removes anything
    spec.owned_devices = "vol-"
    assert spec.stale_devices(current) == ["vol-old"]
    patch = spec.patch_body(current, lookups())
    assert patch == {"devices": {"vol-data": dict(VOLUMES["vol-data"], readonly="true")}}
    body = spec.put_body(current, patch, spec.stale_devices(current))
    # everything else sent back as it is (volatile keys too: LXD keeps them), the stale device left out
    assert body["config"] == CURRENT["config"] and body["architecture"] == "x86_64" and body["ephemeral"] is False
    assert set(body["devices"]) == {"vol-data", "eth0", "gpu"} and body["devices"]["vol-data"]["readonly"] == "true"
    assert set(spec.view(current)["devices"]) == {"vol-data", "vol-old"}   # the diff shows the one that goes
    after = InstanceSpec.predicted_after_put(current, body)
    assert set(after["devices"]) == {"vol-data", "eth0", "gpu"} and set(current["devices"]) == set(VOLUMES)


def test_following_its_alias_an_instance_made_from_another_image_is_replaced():
    spec = parse_instance(params(image="base", config={IMAGE_KEY: "base"}))
    made_from = {"config": {IMAGE_KEY: "base", "volatile.base_image": "a" * 64}}
    assert spec.why_replaced(made_from) is None          # not followed: a moved alias changes nothing
    spec.image_fingerprint = "b" * 64
    assert spec.why_replaced(made_from) == "image base (%s) -> base (%s)" % ("a" * 12, "b" * 12)
    spec.image_fingerprint = "a" * 64
    assert spec.why_replaced(made_from) is None          # made from the alias's image: kept
    assert spec.why_replaced(None) is None
    # A new image named in the description is the reason, whatever the alias.
    spec.image_fingerprint = "b" * 64
    assert spec.why_replaced({"config": {IMAGE_KEY: "old", "volatile.base_image": "b" * 64}}) == \
        "image old -> base (%s)" % ("b" * 12)
