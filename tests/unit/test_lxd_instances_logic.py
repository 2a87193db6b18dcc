"""lxd_instances' pure parts: item validation (field paths), ownership marks, copy ordering."""
import pytest

from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError, ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._instance_set import OWNER_KEY, item_specs, waves


def test_items_get_defaults_and_owner_mark():
    specs = item_specs([{"name": "web1", "image": "img", "memory": "256MiB"}], owner="box")
    assert specs[0].state == "started" and specs[0].wait_timeout == 60
    assert specs[0].config == {"limits.memory": "256MiB", OWNER_KEY: "box"}


def test_bad_item_names_its_index_and_field():
    with pytest.raises(ValidationError) as err:
        item_specs([{"name": "ok", "image": "i"}, {"name": "bad;name", "image": "i"}], owner=None)
    assert err.value.field == "instances[1].name" and "bad;name" in err.value.msg


def test_type_errors_name_the_item():
    with pytest.raises(OneboxError, match=r"instances\[0\] \(web\).*state"):
        item_specs([{"name": "web", "state": "paused"}], owner=None)
    with pytest.raises(OneboxError, match=r"instances\[0\].*unsupported parameter|instances\[0\].*colour"):
        item_specs([{"name": "web", "colour": "red"}], owner=None)


def test_duplicate_names_rejected():
    with pytest.raises(ValidationError, match="declared twice"):
        item_specs([{"name": "a", "image": "i"}, {"name": "a", "image": "i"}], owner=None)


def test_owner_key_cannot_be_overridden():
    with pytest.raises(ValidationError, match="set by owner"):
        item_specs([{"name": "a", "image": "i", "config": {OWNER_KEY: "other"}}], owner="box")


def test_copies_wait_for_their_declared_source():
    specs = item_specs([{"name": "web2", "copy_from": "web1"}, {"name": "web1", "copy_from": "base"},
                        {"name": "base", "image": "i"}, {"name": "db", "image": "i"}], owner=None)
    order = [[s.name for s in wave] for wave in waves(specs)]
    assert order == [["base", "db"], ["web1"], ["web2"]]


def test_copy_cycle_is_an_error():
    specs = item_specs([{"name": "a", "copy_from": "b"}, {"name": "b", "copy_from": "a"}], owner=None)
    with pytest.raises(ValidationError, match="cycle"):
        waves(specs)


# ---- what an owned set refuses before any change (InstanceSet.read) --------------------------
class FakeLxd:
    """The two reads InstanceSet.read makes before it plans: the instances, the host's CPUs."""

    def __init__(self, instances, cpus=2):
        self._instances, self._cpus = instances, cpus

    def instances(self, state=False):
        return [dict(inst) for inst in self._instances]

    def host_cpus(self):
        return self._cpus


def existing(name, owner=None):
    return {"name": name, "status": "Running", "config": {OWNER_KEY: owner} if owner else {}, "devices": {}}


def owned_set(items, instances, owner="box", **kwargs):
    from ansible_collections.homelab.onebox.plugins.module_utils._instance_set import InstanceSet
    return InstanceSet(FakeLxd(instances), item_specs(items, owner=owner), owner=owner, prune=True, **kwargs)


@pytest.mark.parametrize("mark, whose", [(None, "carries no owner mark"), ("other", "belongs to owner other")])
def test_a_container_without_the_mark_is_never_taken_over(mark, whose):
    instance_set = owned_set([{"name": "web", "image": "i"}], [existing("web", mark)])
    with pytest.raises(ValidationError) as err:
        instance_set.read()
    assert err.value.field == "instances[0].name" and whose in err.value.msg and "adopt" in err.value.msg


def test_adopt_takes_it_over_and_the_mark_is_a_change():
    instance_set = owned_set([{"name": "web", "image": "i", "adopt": True}], [existing("web", "other")])
    instance_set.read()
    assert instance_set.specs[0].config[OWNER_KEY] == "box"
    assert instance_set.specs[0].patch_body(existing("web", "other"), None) == {"config": {OWNER_KEY: "box"}}


def test_adopt_is_an_option_of_owned_sets_only():
    with pytest.raises(OneboxError, match="adopt"):
        item_specs([{"name": "web", "image": "i", "adopt": True}], owner=None)


def test_own_containers_and_strangers_not_declared_are_fine():
    instance_set = owned_set([{"name": "web", "image": "i"}],
                             [existing("web", "box"), existing("hand-made"), existing("theirs", "other")])
    instance_set.read()
    assert instance_set.doomed == []


@pytest.mark.parametrize("owned, declared, refused", [
    (10, 9, False),   # one goes: always allowed
    (10, 8, False),   # two of ten: not more than half
    (3, 1, True),     # two of three: more than one and more than half
    (10, 0, True),    # the description lost: everything would go
    (2, 0, True),
    (1, 0, False),    # the last one of a box of one
])
def test_prune_guard_default_limit(owned, declared, refused):
    names = ["c%d" % i for i in range(owned)]
    instance_set = owned_set([{"name": n, "image": "i"} for n in names[:declared]],
                             [existing(n, "box") for n in names] + [existing("stranger")])
    if refused:
        with pytest.raises(ValidationError) as err:
            instance_set.read()
        assert err.value.field == "prune" and err.value.value == names[declared:]
        assert "prune_confirm" in err.value.msg and "teardown" in err.value.msg
    else:
        instance_set.read()
        assert [s.name for s in instance_set.doomed] == names[declared:]


def test_prune_guard_confirm_and_max():
    names = ["c%d" % i for i in range(4)]
    current = [existing(n, "box") for n in names]
    assert len(owned_set([], current, prune_confirm=True).read()) == 4
    with pytest.raises(ValidationError, match="prune_max 2"):
        owned_set([{"name": "c0", "image": "i"}], current, prune_max=2).read()
    assert owned_set([{"name": "c0", "image": "i"}, {"name": "c1", "image": "i"}], current, prune_max=2).read()
    with pytest.raises(ValidationError, match="prune_max 0"):
        owned_set([{"name": n, "image": "i"} for n in names[1:]], current, prune_max=0).read()


def test_cpus_beyond_the_host_are_refused_by_name():
    instance_set = owned_set([{"name": "web", "image": "i", "cpus": "4"}], [])
    with pytest.raises(ValidationError) as err:
        instance_set.read()
    assert err.value.field == "instances[0].cpus" and err.value.value == "4"
    owned_set([{"name": "web", "image": "i", "cpus": "0-1"}], []).read()
