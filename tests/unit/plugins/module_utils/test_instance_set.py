"""_instance_set: parsing the items, ownership marks, the prune guard, and the orchestration of a
set (creation order, copies after their source, check mode, pruning, failures) against the fake LXD."""
from types import SimpleNamespace

import pytest

from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError, ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._instance_set import (
    OWNER_KEY, InstanceSet, parse_instances, warn_pruned, waves)
from ansible_collections.homelab.onebox.plugins.module_utils._lxd import LxdError
from unit.fake_lxd import FakeLxd


def test_items_get_defaults_and_owner_mark():
    specs = parse_instances([{"name": "web1", "image": "img", "memory": "256MiB"}], owner="box")
    assert specs[0].state == "started" and specs[0].wait_timeout == 60
    assert specs[0].config == {"limits.memory": "256MiB", OWNER_KEY: "box"}


def test_bad_item_names_its_index_and_field():
    with pytest.raises(ValidationError) as err:
        parse_instances([{"name": "ok", "image": "i"}, {"name": "bad;name", "image": "i"}], owner=None)
    assert err.value.field == "instances[1].name" and "bad;name" in err.value.msg


def test_type_errors_name_the_item():
    with pytest.raises(OneboxError, match=r"instances\[0\] \(web\).*state"):
        parse_instances([{"name": "web", "state": "paused"}], owner=None)
    with pytest.raises(OneboxError, match=r"instances\[0\].*unsupported parameter|instances\[0\].*colour"):
        parse_instances([{"name": "web", "colour": "red"}], owner=None)


def test_duplicate_names_rejected():
    with pytest.raises(ValidationError, match="declared twice"):
        parse_instances([{"name": "a", "image": "i"}, {"name": "a", "image": "i"}], owner=None)


def test_owner_key_cannot_be_overridden():
    with pytest.raises(ValidationError, match="set by owner"):
        parse_instances([{"name": "a", "image": "i", "config": {OWNER_KEY: "other"}}], owner="box")


def test_copies_wait_for_their_declared_source():
    specs = parse_instances([{"name": "web2", "copy_from": "web1"}, {"name": "web1", "copy_from": "base"},
                             {"name": "base", "image": "i"}, {"name": "db", "image": "i"}], owner=None)
    order = [[s.name for s in wave] for wave in waves(specs)]
    assert order == [["base", "db"], ["web1"], ["web2"]]


def test_copy_cycle_is_an_error():
    specs = parse_instances([{"name": "a", "copy_from": "b"}, {"name": "b", "copy_from": "a"}], owner=None)
    with pytest.raises(ValidationError, match="cycle"):
        waves(specs)


# ---- what an owned set refuses before any change (InstanceSet.plan) --------------------------
def existing(name, owner=None):
    return {"name": name, "status": "Running", "config": {OWNER_KEY: owner} if owner else {}}


def owned_set(items, instances, owner="box", cpus=2, **kwargs):
    lxd = FakeLxd(instances, images=("i", "debian/12"), cpus=cpus)
    return InstanceSet(lxd, parse_instances(items, owner=owner), owner=owner, prune=True, **kwargs)


def planned(instance_set):
    instance_set.read()
    return instance_set.plan()


@pytest.mark.parametrize("mark, whose", [(None, "carries no owner mark"), ("other", "belongs to owner other")])
def test_a_container_without_the_mark_is_never_taken_over(mark, whose):
    instance_set = owned_set([{"name": "web", "image": "i"}], [existing("web", mark)])
    with pytest.raises(ValidationError) as err:
        planned(instance_set)
    assert err.value.field == "instances[0].name" and whose in err.value.msg and "adopt" in err.value.msg


def test_adopt_takes_it_over_and_the_mark_is_a_change():
    instance_set = owned_set([{"name": "web", "image": "i", "adopt": True}], [existing("web", "other")])
    planned(instance_set)
    assert instance_set.specs[0].config[OWNER_KEY] == "box"
    assert instance_set.specs[0].patch_body(existing("web", "other"), None) == {"config": {OWNER_KEY: "box"}}


def test_adopt_is_an_option_of_owned_sets_only():
    with pytest.raises(OneboxError, match="adopt"):
        parse_instances([{"name": "web", "image": "i", "adopt": True}], owner=None)


def test_own_containers_and_strangers_not_declared_are_fine():
    instance_set = owned_set([{"name": "web", "image": "i"}],
                             [existing("web", "box"), existing("hand-made"), existing("theirs", "other")])
    planned(instance_set)
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
            planned(instance_set)
        assert err.value.field == "prune" and err.value.value == names[declared:]
        assert "prune_confirm" in err.value.msg and "teardown" in err.value.msg
    else:
        planned(instance_set)
        assert [s.name for s in instance_set.doomed] == names[declared:]


def test_prune_guard_confirm_and_max():
    names = ["c%d" % i for i in range(4)]
    current = [existing(n, "box") for n in names]
    assert len(planned(owned_set([], current, prune_confirm=True))) == 4
    with pytest.raises(ValidationError, match="prune_max 2"):
        planned(owned_set([{"name": "c0", "image": "i"}], current, prune_max=2))
    assert planned(owned_set([{"name": "c0", "image": "i"}, {"name": "c1", "image": "i"}], current, prune_max=2))
    with pytest.raises(ValidationError, match="prune_max 0"):
        planned(owned_set([{"name": n, "image": "i"} for n in names[1:]], current, prune_max=0))


def test_cpus_beyond_the_host_are_refused_by_name():
    instance_set = owned_set([{"name": "web", "image": "i", "cpus": "4"}], [])
    with pytest.raises(ValidationError) as err:
        planned(instance_set)
    assert err.value.field == "instances[0].cpus" and err.value.value == "4"
    planned(owned_set([{"name": "web", "image": "i", "cpus": "0-1"}], []))


# ---- the orchestration of a set, against the fake LXD (InstanceSet.apply) ---------------------
def converge(lxd, items, owner="box", check_mode=False, diff=False, then=None, parallel=4, **kwargs):
    instance_set = InstanceSet(lxd, parse_instances(items, owner=owner), owner=owner, prune=owner is not None,
                               check_mode=check_mode, diff=diff, **kwargs)
    instance_set.read()
    instance_set.plan()
    instance_set.apply(parallel, then=then)
    return instance_set.result()


def test_a_new_set_is_created_started_and_returned_in_declared_order():
    lxd = FakeLxd()
    result = converge(lxd, [{"name": "web", "image": "debian/12", "memory": "256MiB"},
                            {"name": "db", "image": "debian/12", "ipv4_address": "auto"}])
    assert result["changed"] is True and result["pruned"] == []
    assert [(r["name"], r["actions"]) for r in result["instances"]] == [
        ("web", ["create", "start"]), ("db", ["create", "start"])]
    assert result["addresses"]["db"] == ["10.0.0.10"]  # the first auto address, held once started
    for name in ("web", "db"):  # each made, then started, then no other change
        assert [c[0] for c in lxd.changes() if c[1] == name] == ["create_instance", "change_state"]
    assert lxd.instances_by_name["web"]["config"] == {"limits.memory": "256MiB", OWNER_KEY: "box"}
    again = converge(lxd, [{"name": "web", "image": "debian/12", "memory": "256MiB"},
                           {"name": "db", "image": "debian/12", "ipv4_address": "auto"}])
    assert again["changed"] is False and [r["actions"] for r in again["instances"]] == [[], []]
    assert again["addresses"]["db"] == ["10.0.0.10"]


def test_a_copy_is_made_after_its_source_and_waits_for_nothing_else():
    lxd = FakeLxd()
    order = []

    def then(spec, result, settle):
        order.append(spec.name)

    converge(lxd, [{"name": "web2", "copy_from": "web1"}, {"name": "web1", "copy_from": "base"},
                   {"name": "base", "image": "debian/12", "config": {"user.role": "base"}}], then=then, parallel=8)
    made = lxd.names("create_instance")
    assert made.index("base") < made.index("web1") < made.index("web2")
    # a copy starts from its source's config: the source was there, made, when it was copied
    assert lxd.instances_by_name["web2"]["config"]["user.role"] == "base"
    assert sorted(order) == ["base", "web1", "web2"]


def test_check_mode_changes_nothing_and_predicts_the_changes():
    lxd = FakeLxd([existing("old", "box"), existing("web", "box")])
    before = {name: dict(inst) for name, inst in lxd.instances_by_name.items()}
    result = converge(lxd, [{"name": "web", "image": "debian/12", "memory": "256MiB"},
                            {"name": "new", "image": "debian/12"}, {"name": "copy", "copy_from": "new"}],
                      check_mode=True, diff=True)
    assert lxd.changes() == [] and lxd.instances_by_name == before
    assert [(r["name"], r["actions"]) for r in result["instances"]] == [
        ("web", ["update"]), ("new", ["create", "start"]), ("copy", ["create", "start"])]
    assert result["pruned"] == ["old"] and result["changed"] is True
    [entry] = result["diff"]
    assert entry["before_header"] == entry["after_header"] == "containers"
    assert sorted(entry["after"]) == ["copy", "new", "old", "web"] and entry["after"]["old"] == {}
    assert entry["before"]["web"]["config"] == {OWNER_KEY: "box"}
    assert entry["after"]["web"]["config"] == {"limits.memory": "256MiB", OWNER_KEY: "box"}


def test_prune_deletes_only_the_owners_undeclared_containers():
    lxd = FakeLxd([existing("keep", "box"), existing("gone", "box"), existing("gone2", "box"),
                   existing("theirs", "other"), existing("by-hand")])
    result = converge(lxd, [{"name": "keep", "image": "debian/12"}], prune_confirm=True)
    assert result["pruned"] == ["gone", "gone2"]
    assert sorted(lxd.names("delete_instance")) == ["gone", "gone2"]
    assert sorted(lxd.instances_by_name) == ["by-hand", "keep", "theirs"]
    assert converge(lxd, [{"name": "keep", "image": "debian/12"}])["pruned"] == []


def test_an_unowned_set_never_prunes():
    lxd = FakeLxd([existing("stray", "box")])
    assert converge(lxd, [{"name": "web", "image": "debian/12"}], owner=None)["pruned"] == []
    assert "stray" in lxd.instances_by_name


def test_a_failing_container_is_named_and_the_others_are_still_done():
    lxd = FakeLxd()
    lxd.fail("change_state", "bad")
    with pytest.raises(LxdError) as err:
        converge(lxd, [{"name": "good", "image": "debian/12"}, {"name": "bad", "image": "debian/12"}])
    assert err.value.msg.startswith("bad: ") and "fake failure" in err.value.msg
    assert err.value.details["failed_instances"] == ["bad"]
    assert lxd.instances_by_name["good"]["status"] == "Running"


def test_failures_in_the_work_inside_are_named_too():
    lxd = FakeLxd()
    lxd.on_exec = lambda name, command, kwargs: (1, "", "no such unit") if name != "ok" else None

    def then(spec, result, settle):
        lxd.run(spec.name, ["systemctl", "start", "app"])

    with pytest.raises(LxdError) as err:
        converge(lxd, [{"name": "ok", "image": "debian/12"}, {"name": "a", "image": "debian/12"},
                       {"name": "b", "image": "debian/12"}], then=then)
    assert err.value.details["failed_instances"] == ["a", "b"]
    assert err.value.msg.startswith("a: in a, systemctl start app exited 1: no such unit (and b: ")


def test_done_is_called_once_for_each_container_its_work_ended_well_or_not():
    # The box's progress count: each declared container (made, failed) and each one pruned.
    lxd = FakeLxd([existing("gone", "box")])
    lxd.fail("change_state", "bad")
    instance_set = InstanceSet(lxd, parse_instances([{"name": "good", "image": "debian/12"},
                                                     {"name": "bad", "image": "debian/12"},
                                                     {"name": "copy", "copy_from": "good"}], owner="box"),
                               owner="box", prune=True)
    instance_set.read()
    instance_set.plan()
    counted = []
    with pytest.raises(LxdError):
        instance_set.apply(4, done=lambda: counted.append(1))
    assert len(counted) == 4   # good, bad, copy (of good), and gone (pruned)


def test_a_copy_of_a_failed_source_is_not_made():
    lxd = FakeLxd()
    lxd.fail("create_instance", "base")
    with pytest.raises(LxdError) as err:
        converge(lxd, [{"name": "base", "image": "debian/12"}, {"name": "web", "copy_from": "base"}])
    assert err.value.details["failed_instances"] == ["base", "web"]
    assert lxd.names("create_instance") == ["base"] and lxd.instances_by_name == {}


# ---- what the run deletes, named: the volumes of a purge, the containers re-created -------------
def test_the_prune_guard_names_the_volumes_the_run_would_delete_too():
    instance_set = owned_set([], [existing("c1", "box"), existing("c2", "box")])
    instance_set.read()
    with pytest.raises(ValidationError) as err:
        instance_set.plan(volumes=["box-c1-data", "box-c2-data"])
    assert "(c1, c2), and the storage volumes box-c1-data, box-c2-data, which is over" in err.value.msg


def test_warn_pruned_names_the_containers_the_volumes_and_the_re_created():
    items = [{"name": "web", "image": "i", "config": {"user.onebox.image": "i"}},
             {"name": "db", "image": "i", "config": {"user.onebox.image": "i"}}]
    current = [dict(existing("web", "box"), config={OWNER_KEY: "box", "user.onebox.image": "old"}),
               existing("db", "box"), existing("gone", "box")]
    instance_set = owned_set(items, current, check_mode=True)
    instance_set.read()
    instance_set.plan(volumes=["box-gone-data"])
    assert instance_set.recreated == [("web", "image old -> i")]   # db has no record: not re-created for that
    warnings = []
    warn_pruned(SimpleNamespace(warn=warnings.append), instance_set)
    assert warnings == ["would delete the containers of owner box that are no longer declared: gone",
                        "would delete the storage volumes of owner box that are purged: box-gone-data",
                        "would delete web to make it again (image old -> i); what is on its storage volumes stays, "
                        "the rest is lost"]
