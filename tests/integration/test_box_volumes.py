"""A box's storage volumes against the real LXD (btrfs pool, homelab.onebox.box run through ansible):
data written in a container survives its re-creation from a new image, a read-only mount refuses a
write, a volume outlives its service and a teardown and goes only with a purge, a volume of no box
is refused before anything changes, check mode changes nothing, a second run changes nothing.

The box has an owner of its own and only the containers part (no proxy, no forwards); everything
it makes (containers, volumes, an image alias) is removed at the end, even when a test fails."""
from __future__ import annotations

import subprocess

import pytest

from conftest import RUN_PREFIX, delete_instance_quietly, ok, run_module

OWNER = "%s-vol" % RUN_PREFIX
WRITER = "%s-vo-w" % RUN_PREFIX
READER = "%s-vo-r" % RUN_PREFIX
NEW = "%s-vo-n" % RUN_PREFIX
POOL = "default"
IMAGE = "onebox-debian12"
IMAGE2 = "%s-img2" % RUN_PREFIX       # a second alias of the same image: a "new" image, made in seconds
DATA = "%s-%s-data" % (OWNER, WRITER)
COMMON = "%s-shared-common" % OWNER
FOREIGN = "%s-%s-x" % (OWNER, NEW)    # made by hand, without marks


def services(image=None, writer_volumes=("data", "common"), size=None, writer=True):
    data = {"name": "data", "path": "/srv/data"}
    if size:
        data["size"] = size
    volumes = {"data": data, "common": {"name": "common", "path": "/srv/common", "shared": True}}
    out = [{"name": READER, "kind": "internal",
            "volumes": [{"name": "common", "path": "/mnt/common", "shared": True, "readonly": True}]}]
    if writer:
        out.insert(0, dict({"name": WRITER, "kind": "internal", "volumes": [volumes[v] for v in writer_volumes]},
                           **({"image": image} if image else {})))
    return out


def args(**kwargs):
    removed = kwargs.pop("removed", [])
    return {"owner": OWNER, "parts": ["containers", "insides"], "services": services(**kwargs) + removed}


def lxc(*argv, check=True):
    return subprocess.run(["lxc"] + list(argv), capture_output=True, text=True, timeout=120, check=check)


def sh(container, script, check=True):
    return subprocess.run(["lxc", "exec", container, "--", "sh", "-c", script], capture_output=True, text=True,
                          timeout=60, check=check)


def ours(lxd):
    """This box's volumes (the owner is this run's alone): name -> config (without LXD's volatile keys)."""
    return {v["name"]: {k: val for k, val in (v.get("config") or {}).items() if not k.startswith("volatile.")}
            for v in lxd.custom_volumes(POOL) if v["name"].startswith(OWNER + "-")}


def containers(lxd):
    return sorted(i["name"] for i in lxd.instances() if i["name"].startswith("%s-vo-" % RUN_PREFIX))


def uuid(lxd, name):
    return lxd.instance(name, state=False)["config"]["volatile.uuid"]


def actions(result):
    return {v["name"]: v["action"] for v in result["volumes"]}


@pytest.fixture(scope="module")
def image2(lxd):
    fingerprint = lxd.image_alias(IMAGE)["target"]
    lxc("image", "alias", "create", IMAGE2, fingerprint)
    try:
        yield IMAGE2
    finally:
        lxc("image", "alias", "delete", IMAGE2, check=False)


@pytest.fixture(scope="module")
def built(lxd):
    """Check mode on nothing, then the box for real; at the end torn down and purged, and whatever
    a failed test left (its containers, its volumes, the hand-made one) removed by name."""
    predicted = run_module("box", args(), check=True, diff=True)
    after_check = (containers(lxd), ours(lxd))
    try:
        result = run_module("box", args(), timeout=600)
        yield {"predicted": predicted, "after_check": after_check, "result": result}
    finally:
        run_module("box", {"owner": OWNER, "state": "absent", "purge": True})
        for name in (WRITER, READER, NEW):
            delete_instance_quietly(lxd, name)
        for name in ours(lxd):
            lxd.delete_volume(POOL, name)
        assert containers(lxd) == [] and ours(lxd) == {}


def test_check_mode_predicts_the_volumes_and_creates_nothing(built):
    predicted = built["predicted"]
    assert predicted["changed"] and not predicted.get("failed"), predicted
    assert actions(predicted) == {DATA: "create", COMMON: "create"}
    assert {r["name"]: r["actions"] for r in predicted["instances"]} == {WRITER: ["create", "start"],
                                                                         READER: ["create", "start"]}
    volume_diff = [d for d in predicted["diff"] if d["before_header"] == "storage volumes"][0]
    assert volume_diff["before"] == "" and "%s/%s\n" % (POOL, DATA) in volume_diff["after"]
    assert built["after_check"] == ([], {})


def test_the_volumes_are_made_marked_and_mounted(built, lxd):
    ok(built["result"])
    assert actions(built["result"]) == {DATA: "create", COMMON: "create"}
    volumes = ours(lxd)
    assert volumes[DATA] == {"user.onebox.owner": OWNER, "user.onebox.service": WRITER}
    assert volumes[COMMON] == {"user.onebox.owner": OWNER, "user.onebox.shared": "true"}
    devices = lxd.instance(READER, state=False)["devices"]
    assert devices["vol-common"] == {"type": "disk", "pool": POOL, "source": COMMON, "path": "/mnt/common",
                                     "readonly": "true"}
    assert sorted(lxd.instance(WRITER, state=False)["devices"]) == ["eth0", "vol-common", "vol-data"]


def test_a_second_run_changes_nothing(built):
    again = ok(run_module("box", args()), changed=False)
    assert set(actions(again).values()) == {"none"} and again["volumes_kept"] == []


def test_a_shared_volume_is_read_where_it_is_read_only_and_refuses_a_write_there(built):
    sh(WRITER, "echo from the writer > /srv/common/hello")
    assert sh(READER, "cat /mnt/common/hello").stdout == "from the writer\n"
    refused = sh(READER, "echo x > /mnt/common/hello", check=False)
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr, refused
    assert sh(WRITER, "cat /srv/common/hello").stdout == "from the writer\n"


def test_a_new_image_re_creates_the_container_and_its_data_stays(built, lxd, image2):
    sh(WRITER, "head -c 1048576 /dev/urandom > /srv/data/blob")
    checksum = sh(WRITER, "sha256sum /srv/data/blob").stdout.split()[0]
    first = uuid(lxd, WRITER)
    predicted = run_module("box", args(image=image2), check=True, diff=True)
    assert predicted["changed"] and not predicted.get("failed"), predicted
    writer = {r["name"]: r for r in predicted["instances"]}[WRITER]
    assert writer["actions"] == ["delete", "create", "start"] and writer["recreated"] == "image %s -> %s" % (IMAGE, image2)
    assert any("would delete %s to make it again" % WRITER in w for w in predicted["warnings"])
    container_diff = [d for d in predicted["diff"] if d["before_header"] == "containers"][0]
    assert container_diff["after"][WRITER]["config"]["user.onebox.image"] == image2
    assert uuid(lxd, WRITER) == first                                   # check mode made nothing
    result = ok(run_module("box", args(image=image2), timeout=600))
    assert {r["name"]: r["actions"] for r in result["instances"]}[WRITER] == ["delete", "create", "start"]
    assert uuid(lxd, WRITER) != first                                   # a new container...
    assert lxd.instance(WRITER, state=False)["config"]["user.onebox.image"] == image2
    assert sh(WRITER, "sha256sum /srv/data/blob").stdout.split()[0] == checksum   # ...with the same data
    assert sh(WRITER, "cat /srv/common/hello").stdout == "from the writer\n"
    ok(run_module("box", args(image=image2)), changed=False)
    ok(run_module("box", args(), timeout=600))                          # and back, for the tests after this one
    assert sh(WRITER, "sha256sum /srv/data/blob").stdout.split()[0] == checksum


def test_a_size_given_grows_the_volume(built, lxd):
    predicted = run_module("box", args(size="256MiB"), check=True)
    assert actions(predicted)[DATA] == "resize" and "size" not in ours(lxd)[DATA]
    result = ok(run_module("box", args(size="256MiB")))
    assert actions(result)[DATA] == "resize" and ours(lxd)[DATA]["size"] == "256MiB"
    ok(run_module("box", args(size="256MiB")), changed=False)
    smaller = run_module("box", args(size="128MiB"))
    assert smaller.get("failed") and "services[%s].volumes[0].size" % WRITER in smaller["msg"], smaller
    assert "never shrunk" in smaller["msg"] and ours(lxd)[DATA]["size"] == "256MiB"


def test_a_volume_of_no_box_is_refused_before_any_change(built, lxd):
    lxc("storage", "volume", "create", POOL, FOREIGN)
    before = (containers(lxd), ours(lxd))
    wanting = args(removed=[{"name": NEW, "kind": "internal", "volumes": [{"name": "x", "path": "/x"},
                                                                          {"name": "y", "path": "/y"}]}])
    result = run_module("box", wanting)
    assert result.get("failed"), result
    assert "services[%s].volumes[0].name" % NEW in result["msg"] and "not marked as any box's" in result["msg"]
    assert (containers(lxd), ours(lxd)) == before                       # no container, no volume y
    assert ours(lxd)[FOREIGN] == {}


def test_a_volume_dropped_from_a_running_service_leaves_it_and_stays(built, lxd):
    result = ok(run_module("box", args(writer_volumes=("common",))))
    assert result["volumes_kept"] == [DATA]
    assert any(DATA in w and "no longer described" in w for w in result["warnings"]), result["warnings"]
    assert sorted(lxd.instance(WRITER, state=False)["devices"]) == ["eth0", "vol-common"]
    assert lxd.instance(WRITER, state=False)["status"] == "Running" and DATA in ours(lxd)
    ok(run_module("box", args()))                                       # mounted again, with its data
    assert sh(WRITER, "test -s /srv/data/blob && echo there").stdout == "there\n"


def test_a_removed_service_keeps_its_volume_until_it_is_purged(built, lxd):
    gone = ok(run_module("box", args(writer=False)))
    assert gone["pruned"] == [WRITER] and gone["volumes_kept"] == [DATA] and DATA in ours(lxd)
    assert any("keeping the storage volumes of owner %s that are no longer described: %s" % (OWNER, DATA) in w
               for w in gone["warnings"]), gone["warnings"]
    ok(run_module("box", args(writer=False, removed=[{"name": WRITER, "state": "absent"}])), changed=False)
    purge = [{"name": WRITER, "state": "absent", "purge": True}]
    predicted = run_module("box", args(writer=False, removed=purge), check=True)
    assert actions(predicted)[DATA] == "delete" and DATA in ours(lxd)
    purged = ok(run_module("box", args(writer=False, removed=purge)))
    assert actions(purged)[DATA] == "delete"
    assert any("deleting the storage volumes of owner %s that are purged: %s" % (OWNER, DATA) in w
               for w in purged["warnings"]), purged["warnings"]
    assert DATA not in ours(lxd) and COMMON in ours(lxd)                # the shared one is not the service's
    ok(run_module("box", args(writer=False, removed=purge)), changed=False)


def test_a_teardown_keeps_the_volumes_and_a_purge_deletes_the_owners_only(built, lxd):
    kept = ok(run_module("box", {"owner": OWNER, "state": "absent"}))
    assert containers(lxd) == [] and COMMON in ours(lxd) and kept["volumes_kept"] == [COMMON]
    purged = ok(run_module("box", {"owner": OWNER, "state": "absent", "purge": True}))
    assert actions(purged) == {COMMON: "delete"}
    assert list(ours(lxd)) == [FOREIGN]                                 # never one without the owner's mark
    lxd.delete_volume(POOL, FOREIGN)
