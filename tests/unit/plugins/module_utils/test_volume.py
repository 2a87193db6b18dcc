"""_volume: the box's volumes are made when missing with the owner's marks, grown, never taken over
nor shrunk, deleted only when purged and only with the owner's mark, kept (and said so) otherwise
(against the in-memory LXD)."""
import pytest

from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._volume import OWNER_KEY, SERVICE_KEY, SHARED_KEY, VolumeSet

from unit.fake_lxd import FakeLxd

DATA = {"name": "box-db-data", "size": "1GiB", "service": "db", "shared": False,
        "field": "services[db].volumes[0].name", "value": "data", "size_field": "services[db].volumes[0].size"}
MEDIA = {"name": "box-shared-media", "size": None, "service": None, "shared": True,
         "field": "services[web].volumes[0].name", "value": "media"}
TLS = {"name": "box-proxy-tls", "size": None, "service": None, "shared": False, "field": "tls"}


def volume_set(lxd, wanted=(DATA, MEDIA), check=False, **kwargs):
    return VolumeSet(lxd, "default", "box", wanted, check_mode=check, diff=True, **kwargs)


def converge(lxd, wanted=(DATA, MEDIA), check=False, leaving=(), **kwargs):
    volumes = volume_set(lxd, wanted, check, **kwargs)
    volumes.read()
    volumes.plan(leaving)
    volumes.apply()
    volumes.apply_deletions()
    return volumes.result()


def there(lxd, name, mount_by=None, **config):
    """A volume as made earlier; ``mount_by``: an instance whose device mounts it."""
    lxd.volumes[("default", name)] = {"name": name, "type": "custom", "config": dict(config)}
    if mount_by:
        lxd.add(mount_by, devices={"vol": {"type": "disk", "pool": "default", "source": name, "path": "/x"}})


def actions(result):
    return {item["name"]: item["action"] for item in result["volumes"]}


def test_made_once_with_the_owners_marks_and_the_size_then_nothing():
    lxd = FakeLxd()
    first = converge(lxd, (DATA, MEDIA, TLS))
    assert actions(first) == {"box-db-data": "create", "box-shared-media": "create", "box-proxy-tls": "create"}
    assert first["changed"]
    assert first["volumes"][0] == {"name": "box-db-data", "pool": "default", "service": "db", "action": "create"}
    assert lxd.volumes[("default", "box-db-data")]["config"] == {OWNER_KEY: "box", SERVICE_KEY: "db", "size": "1GiB"}
    assert lxd.volumes[("default", "box-shared-media")]["config"] == {OWNER_KEY: "box", SHARED_KEY: "true"}
    assert lxd.volumes[("default", "box-proxy-tls")]["config"] == {OWNER_KEY: "box"}
    assert first["diff"]["before"] == "" and "default/box-db-data size=1GiB\n" in first["diff"]["after"]
    lxd.calls.clear()
    again = converge(lxd, (DATA, MEDIA, TLS))
    assert set(actions(again).values()) == {"none"} and not again["changed"]
    assert lxd.changes() == [] and [c[0] for c in lxd.calls] == ["custom_volumes"]   # one request reads them all


def test_check_mode_says_create_and_makes_nothing():
    lxd = FakeLxd()
    assert set(actions(converge(lxd, check=True)).values()) == {"create"}
    assert lxd.volumes == {} and lxd.changes() == []


def test_a_larger_size_grows_the_volume_the_same_size_written_otherwise_is_no_change():
    lxd = FakeLxd()
    there(lxd, "box-db-data", **{OWNER_KEY: "box", SERVICE_KEY: "db", "size": "1024MiB"})
    assert actions(converge(lxd, (DATA,))) == {"box-db-data": "none"}
    predicted = converge(lxd, (dict(DATA, size="2GiB"),), check=True)
    assert actions(predicted) == {"box-db-data": "resize"} and lxd.changes() == []
    assert predicted["diff"]["before"] == "default/box-db-data size=1024MiB\n"
    assert predicted["diff"]["after"] == "default/box-db-data size=2GiB\n"
    assert actions(converge(lxd, (dict(DATA, size="2GiB"),))) == {"box-db-data": "resize"}
    assert lxd.volumes[("default", "box-db-data")]["config"]["size"] == "2GiB"
    assert actions(converge(lxd, (dict(DATA, size=None),))) == {"box-db-data": "none"}   # no size: left as it is


def test_a_smaller_size_is_refused_before_any_change():
    lxd = FakeLxd()
    there(lxd, "box-db-data", **{OWNER_KEY: "box", SERVICE_KEY: "db", "size": "2GiB"})
    with pytest.raises(ValidationError) as err:
        converge(lxd, (DATA, MEDIA))
    assert err.value.field == "services[db].volumes[0].size" and err.value.value == "1GiB"
    assert "never shrunk" in err.value.reason and lxd.changes() == []


@pytest.mark.parametrize("config, said", [
    ({}, "not marked as any box's"),
    ({OWNER_KEY: "other", SERVICE_KEY: "db"}, "owner other's"),
])
def test_someone_elses_volume_is_refused_naming_the_field_and_whose_before_any_change(config, said):
    lxd = FakeLxd()
    there(lxd, "box-db-data", **config)
    with pytest.raises(ValidationError) as err:
        converge(lxd, (MEDIA, DATA))
    assert err.value.field == "services[db].volumes[0].name" and err.value.value == "data"
    assert said in err.value.reason and "box-db-data" in err.value.reason
    assert lxd.changes() == [] and lxd.volumes[("default", "box-db-data")]["config"] == config   # MEDIA not made either


@pytest.mark.parametrize("config, said", [
    ({OWNER_KEY: "box", SERVICE_KEY: "db-old"}, "service db-old's"),
    ({OWNER_KEY: "box", SHARED_KEY: "true"}, "a shared volume"),
])
def test_the_owners_volume_of_another_service_is_refused_too(config, said):
    lxd = FakeLxd()
    there(lxd, "box-db-data", **config)
    with pytest.raises(ValidationError) as err:
        converge(lxd, (DATA,))
    assert err.value.field == "services[db].volumes[0].name" and said in err.value.reason and lxd.changes() == []


def test_nothing_is_deleted_without_a_purge_and_what_this_run_unmounts_is_kept():
    lxd = FakeLxd()
    there(lxd, "box-db-data", mount_by="db", **{OWNER_KEY: "box", SERVICE_KEY: "db"})
    there(lxd, "box-db-idle", **{OWNER_KEY: "box", SERVICE_KEY: "db"})       # unmounted already: nothing to say
    there(lxd, "box-proxy-tls", mount_by="box-proxy", **{OWNER_KEY: "box"})  # not a service's
    there(lxd, "theirs", mount_by="other", **{OWNER_KEY: "other", SERVICE_KEY: "db"})
    result = converge(lxd, (MEDIA,), complete=True, leaving={"db"})
    assert actions(result) == {"box-shared-media": "create"} and result["kept"] == ["box-db-data"]
    left = {name for _pool, name in lxd.volumes}
    assert left == {"box-db-data", "box-db-idle", "box-proxy-tls", "theirs", "box-shared-media"}
    assert converge(lxd, (MEDIA,), leaving={"db"})["kept"] == []   # only a set of every described volume says so


def test_a_purged_service_loses_its_own_volumes_only_never_shared_nor_anothers():
    lxd = FakeLxd()
    there(lxd, "box-db-data", **{OWNER_KEY: "box", SERVICE_KEY: "db"})
    there(lxd, "box-db-logs", mount_by="db", **{OWNER_KEY: "box", SERVICE_KEY: "db"})
    there(lxd, "box-shared-db", **{OWNER_KEY: "box", SHARED_KEY: "true", SERVICE_KEY: "db"})
    there(lxd, "box-web-data", **{OWNER_KEY: "box", SERVICE_KEY: "web"})
    there(lxd, "other-db-data", **{OWNER_KEY: "other", SERVICE_KEY: "db"})
    there(lxd, "db-by-hand", **{SERVICE_KEY: "db"})
    purge = {"db": "services[db].purge"}
    volumes = volume_set(lxd, (), purge_services=purge)
    volumes.read()
    assert volumes.doomed() == ["box-db-data", "box-db-logs"]   # known before plan(), for the prune guard
    predicted = converge(lxd, (), check=True, purge_services=purge, leaving={"db"})
    assert actions(predicted) == {"box-db-data": "delete", "box-db-logs": "delete"} and lxd.changes() == []
    assert predicted["volumes"][0]["service"] == "db" and predicted["diff"]["after"] == ""
    lxd.instances_by_name.pop("db")   # the box deletes the containers first (the fake, as LXD, refuses a mounted one)
    result = converge(lxd, (), purge_services=purge, leaving={"db"})
    assert actions(result) == {"box-db-data": "delete", "box-db-logs": "delete"}
    assert {name for _pool, name in lxd.volumes} == {"box-shared-db", "box-web-data", "other-db-data", "db-by-hand"}
    assert not converge(lxd, (), purge_services=purge)["changed"]


def test_lxd_refuses_a_mounted_volume_so_the_plan_refuses_one_a_kept_container_mounts():
    lxd = FakeLxd()
    there(lxd, "box-db-data", mount_by="db", **{OWNER_KEY: "box", SERVICE_KEY: "db"})
    with pytest.raises(ValidationError) as err:
        converge(lxd, (), purge_services={"db": "services[db].purge"}, leaving=())
    assert err.value.field == "services[db].purge" and "still used by db" in err.value.reason
    assert lxd.changes() == []


def test_a_teardowns_purge_deletes_every_volume_of_the_owner_and_only_those():
    lxd = FakeLxd()
    there(lxd, "box-db-data", mount_by="db", **{OWNER_KEY: "box", SERVICE_KEY: "db"})
    there(lxd, "box-shared-media", **{OWNER_KEY: "box", SHARED_KEY: "true"})
    there(lxd, "box-proxy-tls", **{OWNER_KEY: "box"})
    there(lxd, "theirs", **{OWNER_KEY: "other"})
    there(lxd, "by-hand")
    lxd.instances_by_name.pop("db")   # gone by now (the box deletes the containers first)
    result = converge(lxd, (), purge_all=True, leaving={"db"})
    assert sorted(actions(result)) == ["box-db-data", "box-proxy-tls", "box-shared-media"]
    assert set(actions(result).values()) == {"delete"}
    assert {name for _pool, name in lxd.volumes} == {"theirs", "by-hand"}
