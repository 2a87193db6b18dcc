"""_volume: a volume the box owns is made when missing, never taken over, deleted only when purged
and only with the owner's mark (against the in-memory LXD)."""
import pytest

from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._volume import OWNER_KEY, OwnedVolume

from unit.fake_lxd import FakeLxd


def converge(lxd, state="present", owner="box", check=False):
    volume = OwnedVolume(lxd, "default", "box-proxy-tls", owner, state=state, field="tls", check_mode=check)
    volume.read()
    volume.plan()
    volume.apply()
    return volume.result(diff=True)


def test_made_once_with_the_owners_mark():
    lxd = FakeLxd()
    first = converge(lxd)
    assert first["action"] == "create" and first["changed"]
    assert lxd.volumes[("default", "box-proxy-tls")]["config"] == {OWNER_KEY: "box"}
    assert first["diff"]["before"] == "" and first["diff"]["after"] == "default/box-proxy-tls\n"
    again = converge(lxd)
    assert again["action"] == "none" and not again["changed"]


def test_check_mode_says_create_and_makes_nothing():
    lxd = FakeLxd()
    assert converge(lxd, check=True)["action"] == "create"
    assert lxd.volumes == {} and not [c for c in lxd.changes() if c[0] == "create_volume"]


@pytest.mark.parametrize("config, said", [({}, "not marked"), ({OWNER_KEY: "other"}, "owner other's")])
def test_someone_elses_volume_is_refused_before_any_change_even_by_a_purge(config, said):
    for state in ("present", "purged"):
        lxd = FakeLxd()
        lxd.volumes[("default", "box-proxy-tls")] = {"name": "box-proxy-tls", "config": dict(config)}
        with pytest.raises(ValidationError) as err:
            converge(lxd, state=state)
        assert err.value.field == "tls" and said in err.value.msg
        assert ("default", "box-proxy-tls") in lxd.volumes


def test_purge_deletes_the_owners_volume_and_then_nothing():
    lxd = FakeLxd()
    converge(lxd)
    assert converge(lxd, state="purged")["action"] == "delete" and lxd.volumes == {}
    assert converge(lxd, state="purged")["action"] == "none"
