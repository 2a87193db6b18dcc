"""_reconcile: one instance brought to its spec, against the fake LXD (states, check mode, address)."""
import pytest

from ansible_collections.homelab.onebox.plugins.module_utils._instance import parse_instance
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
