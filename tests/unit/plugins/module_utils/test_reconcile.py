"""_reconcile: one instance brought to its spec, against the fake LXD (states, check mode, address)."""
import pytest

from ansible_collections.homelab.onebox.plugins.module_utils._instance import IMAGE_KEY, parse_instance
from ansible_collections.homelab.onebox.plugins.module_utils._lxd import LxdError
from ansible_collections.homelab.onebox.plugins.module_utils._reconcile import InstanceReconciler
from unit.fake_lxd import FakeLxd


def reconcile(lxd, check_mode=False, **params):
    params.setdefault("name", "web")
    return InstanceReconciler(lxd, parse_instance(params), check_mode=check_mode, diff=True).run()


@pytest.mark.parametrize("status, state, actions, after", [
    ("Stopped", "started", ["start"], "Running"),
    ("Running", "started", [], "Running"),
    ("Running", "stopped", ["stop"], "Stopped"),
    ("Stopped", "stopped", [], "Stopped"),
    ("Running", "restarted", ["restart"], "Running"),
    ("Stopped", "restarted", ["start"], "Running"),
    ("Stopped", "present", [], "Stopped"),
])
def test_states(status, state, actions, after):
    lxd = FakeLxd([{"name": "web", "status": status}])
    predicted = reconcile(lxd, check_mode=True, state=state)
    assert predicted["actions"] == actions and lxd.changes() == []
    result = reconcile(lxd, state=state)
    assert result["actions"] == actions and result["changed"] is bool(actions)
    assert result["instance"]["status"] == after == lxd.instances_by_name["web"]["status"]
    assert predicted["diff"]["after"]["status"] == after


def test_absent_stops_then_deletes_and_is_then_unchanged():
    lxd = FakeLxd([{"name": "web", "status": "Running"}])
    result = reconcile(lxd, state="absent")
    assert result["actions"] == ["delete"] and result["diff"]["after"] == {}
    assert [c[0] for c in lxd.changes()] == ["change_state", "delete_instance"]
    assert reconcile(lxd, state="absent")["changed"] is False


class BootingLxd(FakeLxd):
    """A daemon whose clean shutdown fails, as LXD's does for a container still booting."""

    def change_state(self, name, action, force=False, timeout=None):
        if action == "stop" and not force:
            self._record("change_state", name, "stop refused")
            raise LxdError('stop instance %s: Failed shutting down instance, status is "Running": '
                           'shutting down the container failed' % name)
        return super().change_state(name, action, force=force, timeout=timeout)


def test_a_container_that_will_not_shut_down_cleanly_is_stopped_by_force_when_it_goes():
    lxd = BootingLxd([{"name": "web", "status": "Running"}])
    result = reconcile(lxd, state="absent")
    assert result["actions"] == ["delete"] and "web" not in lxd.instances_by_name
    assert [c[:3] for c in lxd.changes()] == [("change_state", "web", "stop refused"), ("change_state", "web", "stop"),
                                              ("delete_instance", "web")]


def test_a_container_kept_is_not_stopped_by_force_when_it_will_not_shut_down():
    lxd = BootingLxd([{"name": "web", "status": "Running"}])
    with pytest.raises(LxdError, match="shutting down the container failed"):
        reconcile(lxd, state="stopped")
    assert lxd.instances_by_name["web"]["status"] == "Running"


def test_a_new_static_address_restarts_the_container_once_to_take_it():
    lxd = FakeLxd([{"name": "web", "status": "Running"}])  # holds a DHCP address
    assert reconcile(lxd, check_mode=True, ipv4_address="10.0.0.50")["actions"] == ["update", "restart"]
    result = reconcile(lxd, ipv4_address="10.0.0.50")
    assert result["actions"] == ["update", "restart"] and result["addresses"] == ["10.0.0.50"]
    assert reconcile(lxd, ipv4_address="10.0.0.50")["actions"] == []


def test_an_unknown_image_is_refused_before_anything_is_made():
    lxd = FakeLxd()
    with pytest.raises(Exception, match="no local image"):
        reconcile(lxd, image="nope")
    assert lxd.changes() == []


def test_a_container_that_never_gets_an_address_fails_naming_it():
    lxd = FakeLxd([{"name": "web", "status": "Running", "profiles": []}])  # no NIC: no address
    lxd.instances_by_name["web"]["state"]["network"] = {}
    with pytest.raises(LxdError, match="instance web has no IPv4 address"):
        InstanceReconciler(lxd, parse_instance({"name": "web", "wait_timeout": 1})).run()


# ---- a new image re-creates, an owned device no longer declared leaves --------------------------
def recorded(image, owned=None):
    params = {"name": "web", "image": image, "config": {IMAGE_KEY: image},
              "devices": {"vol-data": {"type": "disk", "pool": "default", "source": "box-web-data", "path": "/data"}}}
    spec = parse_instance(dict(params, state="started"))
    spec.owned_devices = owned
    return spec


def test_a_container_made_from_another_image_is_deleted_and_made_again_with_its_devices():
    lxd = FakeLxd(images=("img-a", "img-b"))
    InstanceReconciler(lxd, recorded("img-a")).run()
    lxd.calls.clear()
    predicted = InstanceReconciler(lxd, recorded("img-b"), check_mode=True, diff=True).run()
    assert predicted["actions"] == ["delete", "create", "start"] and predicted["recreated"] == "image img-a -> img-b"
    assert predicted["diff"]["before"]["config"][IMAGE_KEY] == "img-a"
    assert predicted["diff"]["after"]["config"][IMAGE_KEY] == "img-b"
    assert lxd.changes() == []
    result = InstanceReconciler(lxd, recorded("img-b")).run()
    assert result["actions"] == ["delete", "create", "start"] and result["recreated"] == "image img-a -> img-b"
    assert [c[0] for c in lxd.changes()] == ["change_state", "delete_instance", "create_instance", "change_state"]
    created = lxd.calls[[c[0] for c in lxd.calls].index("create_instance")][2]
    assert created["source"] == {"type": "image", "alias": "img-b"} and "vol-data" in created["devices"]
    again = InstanceReconciler(lxd, recorded("img-b")).run()
    assert again["actions"] == [] and "recreated" not in again


def test_an_unknown_new_image_fails_before_the_old_container_is_deleted():
    lxd = FakeLxd(images=("img-a",))
    InstanceReconciler(lxd, recorded("img-a")).run()
    lxd.calls.clear()
    with pytest.raises(Exception, match="no local image"):
        InstanceReconciler(lxd, recorded("img-b")).run()
    assert lxd.changes() == [] and "web" in lxd.instances_by_name


def test_a_container_without_the_record_gets_it_in_place_not_a_new_container():
    lxd = FakeLxd([{"name": "web", "status": "Running"}], images=("img-a", "img-b"))
    result = InstanceReconciler(lxd, recorded("img-b")).run()
    assert result["actions"] == ["update"] and "recreated" not in result
    assert lxd.instances_by_name["web"]["config"][IMAGE_KEY] == "img-b"


def test_an_owned_device_no_longer_declared_leaves_the_running_container_through_a_put():
    lxd = FakeLxd(images=("img-a",))
    InstanceReconciler(lxd, recorded("img-a")).run()
    spec = parse_instance({"name": "web", "image": "img-a", "config": {IMAGE_KEY: "img-a"}, "state": "started"})
    spec.owned_devices = "vol-"
    predicted = InstanceReconciler(lxd, spec, check_mode=True, diff=True).run()
    assert predicted["actions"] == ["update"] and predicted["diff"]["after"]["devices"] == {}
    assert "vol-data" in lxd.instances_by_name["web"]["devices"]
    assert InstanceReconciler(lxd, spec).run()["actions"] == ["update"]
    assert lxd.names("put_instance") == ["web"] and lxd.instances_by_name["web"]["devices"] == {}
    assert lxd.instances_by_name["web"]["status"] == "Running"
    assert InstanceReconciler(lxd, spec).run()["actions"] == []


def test_a_new_instance_is_made_on_the_cluster_member_asked_for_and_an_existing_one_stays():
    lxd = FakeLxd()
    reconcile(lxd, name="web1", image="debian/12", target="member2")
    made = [c for c in lxd.calls if c[0] == "create_instance"]
    assert len(made) == 1 and made[0][3] == "member2"
    lxd.calls.clear()
    reconcile(lxd, name="web1", image="debian/12", target="member3")  # never moved
    assert not [c for c in lxd.calls if c[0] == "create_instance"]
    reconcile(lxd, name="web2", image="debian/12")
    assert [len(c) for c in lxd.calls if c[0] == "create_instance"] == [3]  # no member: none asked


def test_a_target_is_a_plain_name():
    from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError
    with pytest.raises(ValidationError) as caught:
        parse_instance(dict(name="web1", image="debian/12", target="member 2; x"))
    assert caught.value.field == "target"
