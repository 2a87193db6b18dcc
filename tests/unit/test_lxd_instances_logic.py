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
