"""homelab.onebox.lxd_instances against the real LXD daemon: a set in one call, prune by owner."""
import uuid

from conftest import RUN_PREFIX, run_module

IMAGE = "onebox-debian12"
OWNER_KEY = "user.onebox.owner"


def test_set_create_copy_idempotent_check_and_prune(lxd, instance_names):
    owner = "%s-%s" % (RUN_PREFIX, uuid.uuid4().hex[:4])
    base, web1, web2, db = (instance_names(n) for n in ("base", "web1", "web2", "db"))
    stranger = instance_names("other")
    assert run_module("lxd_instance", {"name": stranger, "image": IMAGE, "wait_for_ipv4": False})["changed"]
    declared = [
        {"name": base, "image": IMAGE, "state": "stopped", "memory": "256MiB"},
        {"name": web1, "copy_from": base, "ipv4_address": "auto"},
        {"name": web2, "copy_from": base, "memory": "384MiB"},
        {"name": db, "image": IMAGE, "memory": "512MiB", "autostart": True, "autostart_priority": 90,
         "ipv4_address": "auto"},
    ]
    args = {"owner": owner, "prune": True, "instances": declared}

    check = run_module("lxd_instances", args, check=True, diff=True)
    assert check.get("failed") is not True, check
    assert check["changed"] is True
    assert all(lxd.instance(n) is None for n in (base, web1, web2, db)), "check mode created something"
    assert [d["before_header"] for d in check["diff"]] == ["containers"]
    assert set(check["diff"][0]["after"]) == {base, web1, web2, db}

    first = run_module("lxd_instances", args)
    assert first.get("failed") is not True, first
    assert [r["actions"] for r in first["instances"]] == [["create"], ["create", "start"], ["create", "start"],
                                                          ["create", "start"]]
    assert lxd.instance(base)["status"] == "Stopped"
    for name in (web1, web2, db):
        assert first["addresses"][name], name
        assert lxd.instance(name)["config"][OWNER_KEY] == owner
    assert lxd.instance(web1)["config"]["limits.memory"] == "256MiB"  # copied from base
    assert lxd.instance(web2)["config"]["limits.memory"] == "384MiB"
    assert len({a for n in (web1, web2, db) for a in first["addresses"][n]}) == 3
    # auto: a static reservation on eth0, and it is the address the container has.
    for name in (web1, db):
        static = lxd.instance(name)["devices"]["eth0"]["ipv4.address"]
        assert first["addresses"][name] == [static]

    again = run_module("lxd_instances", args)
    assert again["changed"] is False and again["pruned"] == []
    assert again["addresses"] == first["addresses"]

    # web2 leaves the description: pruned; the stranger (no owner mark) is never touched.
    args["instances"] = [item for item in declared if item["name"] != web2]
    predicted = run_module("lxd_instances", args, check=True)
    assert predicted["pruned"] == [web2] and lxd.instance(web2) is not None
    pruned = run_module("lxd_instances", args)
    assert pruned["changed"] is True and pruned["pruned"] == [web2]
    assert lxd.instance(web2) is None
    assert lxd.instance(stranger) is not None
    assert run_module("lxd_instances", args)["changed"] is False


def test_one_bad_item_changes_nothing(lxd, instance_names):
    good, bad = instance_names("good"), "bad;name"
    result = run_module("lxd_instances", {"instances": [{"name": good, "image": IMAGE},
                                                        {"name": bad, "image": IMAGE}]})
    assert result.get("failed") is True
    assert "instances[1].name: invalid value 'bad;name'" in result["msg"]
    assert lxd.instance(good) is None


def test_unknown_image_in_a_set_is_refused_before_creating_it(lxd, instance_names):
    name = instance_names("noimg")
    result = run_module("lxd_instances", {"instances": [{"name": name, "image": "no-such-image-xyz"}]})
    assert result.get("failed") is True and "image: invalid value 'no-such-image-xyz'" in result["msg"]
    assert lxd.instance(name) is None


def test_prune_needs_owner():
    result = run_module("lxd_instances", {"prune": True, "instances": []})
    assert result.get("failed") is True and result["msg"].startswith("prune:")
