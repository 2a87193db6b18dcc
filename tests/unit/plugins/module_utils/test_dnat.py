"""Forwards as the user gives them, parsed and checked, and the names of their owner (_dnat)."""
from __future__ import annotations

import re

import pytest

from ansible_collections.homelab.onebox.plugins.module_utils import _dnat, _validate
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError


# ---- validation ------------------------------------------------------------------------------
@pytest.mark.parametrize("forward, field, value", [
    ({"port": 0, "target": "10.0.0.1"}, "forwards[0].port", 0),
    ({"port": 65536, "target": "10.0.0.1"}, "forwards[0].port", 65536),
    ({"port": "8010-8000", "target": "10.0.0.1"}, "forwards[0].port", "8010-8000"),
    ({"port": 80, "target": "10.0.0.1", "target_port": 70000}, "forwards[0].target_port", 70000),
    ({"port": "80-81", "target": "10.0.0.1", "target_port": "90-99"}, "forwards[0].target_port", "90-99"),
    ({"port": 80, "target": "10.0.0.1", "proto": "sctp"}, "forwards[0].proto", "sctp"),
    ({"port": 80, "target": "10.0.0.1", "comment": 'say "hi"'}, "forwards[0].comment", 'say "hi"'),
    ({"port": 80, "target": "10.0.0.1", "comment": "it's"}, "forwards[0].comment", "it's"),
    ({"port": 80, "target": "10.0.0.1", "comment": "two\nlines"}, "forwards[0].comment", "two\nlines"),
    ({"port": 80, "target": "10.0.0.1", "comment": "x" * 256}, "forwards[0].comment", "x" * 256),
    ({"port": 80, "target": "bad_name!"}, "forwards[0].target", "bad_name!"),
    ({"port": 80, "target": "127.0.0.1"}, "forwards[0].target", "127.0.0.1"),
    ({"port": 80, "target": "10.0.0.1", "host_address": "300.1.1.1"}, "forwards[0].host_address", "300.1.1.1"),
    ({"port": 80, "target": "10.0.0.1", "source": ["nonsense"]}, "forwards[0].source[0]", "nonsense"),
    ({"port": 80}, "forwards[0].target", None),
    ({"target": "web"}, "forwards[0].port", None),
    ({"port": 80, "target": "web", "colour": "red"}, "forwards[0]", {"port": 80, "target": "web", "colour": "red"}),
])
def test_bad_forward_names_field_and_value(forward, field, value):
    with pytest.raises(ValidationError) as err:
        _dnat.parse_forwards([forward])
    assert err.value.field == field
    assert err.value.value == value
    assert field in err.value.msg and repr(value) in err.value.msg


@pytest.mark.parametrize("first, second", [
    ({"port": 80, "target": "a"}, {"port": 80, "target": "b"}),
    ({"port": "7000-7010", "target": "a"}, {"port": "7005-7020", "target": "b"}),
    ({"port": "7000-7010", "target": "a"}, {"port": 7010, "target": "b"}),
    ({"port": 80, "target": "a", "host_address": "192.0.2.2"}, {"port": 80, "target": "b"}),
    ({"proto": "udp", "port": 53, "target": "a"}, {"proto": "UDP", "port": "53", "target": "b"}),
])
def test_same_port_twice_is_rejected(first, second):
    with pytest.raises(ValidationError) as err:
        _dnat.parse_forwards([first, second])
    assert err.value.field == "forwards[1].port"
    assert "forwards[0]" in err.value.msg


@pytest.mark.parametrize("first, second", [
    ({"port": 80, "target": "a"}, {"port": 80, "target": "b", "proto": "udp"}),
    ({"port": "7000-7010", "target": "a"}, {"port": 7011, "target": "b"}),
    ({"port": 80, "target": "a", "host_address": "192.0.2.2"}, {"port": 80, "target": "b", "host_address": "192.0.2.3"}),
])
def test_distinct_ports_are_accepted(first, second):
    assert len(_dnat.parse_forwards([first, second])) == 2


def test_parse_forwards_defaults_and_order():
    forwards = _dnat.parse_forwards([{"proto": "udp", "port": "51820", "target": "vpn"},
                                     {"port": 443, "target": "proxy", "proto": None, "source": "203.0.113.7"},
                                     {"port": "7000:7002", "target": "10.87.0.5", "target_port": "8000-8002"}])
    assert [(f.proto, f.port) for f in forwards] == [("tcp", (443, 443)), ("tcp", (7000, 7002)), ("udp", (51820, 51820))]
    assert forwards[0].target_port == (443, 443) and forwards[0].sources == ("203.0.113.7/32",)
    assert forwards[0].address is None and forwards[1].address == "10.87.0.5"
    assert forwards[1].target_port == (8000, 8002)


def test_comment_checker():
    assert _validate.comment("web proxy (tls)", "c") == "web proxy (tls)"
    for bad in ("", "a\tb", "back\\slash", "`x`"):
        with pytest.raises(ValidationError):
            _validate.comment(bad, "c")


@pytest.mark.parametrize("prefix", ["onebox", "1BOX", "A" * 17, "ONE-BOX", ""])
def test_bad_prefix(prefix):
    with pytest.raises(ValidationError):
        _dnat.check_prefix(prefix)


# ---- instances -------------------------------------------------------------------------------
def test_static_address_of_an_instance():
    instance = {"expanded_devices": {
        "root": {"type": "disk", "path": "/"},
        "eth1": {"type": "nic", "network": "lan", "ipv4.address": "192.168.1.9"},
        "eth0": {"type": "nic", "network": "lxdbr0", "ipv4.address": "10.87.0.10"}}}
    assert _dnat.static_ipv4(instance, "web", "f") == "10.87.0.10"
    del instance["expanded_devices"]["eth0"]
    assert _dnat.static_ipv4(instance, "web", "f") == "192.168.1.9"


def test_instance_without_static_address_or_missing():
    with pytest.raises(ValidationError) as err:
        _dnat.static_ipv4({"expanded_devices": {"eth0": {"type": "nic", "network": "lxdbr0"}}}, "web", "forwards[2].target")
    assert err.value.field == "forwards[2].target" and "static" in err.value.msg
    with pytest.raises(ValidationError) as err:
        _dnat.static_ipv4(None, "ghost", "forwards[0].target")
    assert "no LXD instance" in err.value.msg and "'ghost'" in err.value.msg


def test_parse_isolate():
    assert _dnat.parse_isolate(["lxdbr0", "br-lan", "lxdbr0"]) == ("br-lan", "lxdbr0")
    assert _dnat.parse_isolate(None) == ()
    assert _dnat.parse_isolate([]) == ()
    assert _dnat.parse_isolate("lxdbr0") == ("lxdbr0",)
    assert _dnat.parse_isolate(["a" * 15, "vlan.10", "veth@if3", "_x"]) == ("_x", "a" * 15, "veth@if3", "vlan.10")


@pytest.mark.parametrize("items, field, value", [
    (["lxdbr0", ""], "isolate[1]", ""),
    (["a" * 16], "isolate[0]", "a" * 16),
    (["br/0"], "isolate[0]", "br/0"),
    (["br 0"], "isolate[0]", "br 0"),
    (["br\t0"], "isolate[0]", "br\t0"),
    (["lxdbr0\n"], "isolate[0]", "lxdbr0\n"),
    (['br"0'], "isolate[0]", 'br"0'),
    (["br'0"], "isolate[0]", "br'0"),
    (["br;0"], "isolate[0]", "br;0"),
    (["br:0"], "isolate[0]", "br:0"),
    (["br$0"], "isolate[0]", "br$0"),
    (["br\\0"], "isolate[0]", "br\\0"),
    (["lxdbr+"], "isolate[0]", "lxdbr+"),
    (["-o"], "isolate[0]", "-o"),
    (["."], "isolate[0]", "."),
    ([".."], "isolate[0]", ".."),
    ([None], "isolate[0]", None),
    ([7], "isolate[0]", 7),
    ({"name": "lxdbr0"}, "isolate", {"name": "lxdbr0"}),
])
def test_bad_isolate_names_field_and_value(items, field, value):
    with pytest.raises(ValidationError) as err:
        _dnat.parse_isolate(items)
    assert err.value.field == field
    assert err.value.value == value
    assert field in err.value.msg and repr(value) in err.value.msg


# ---- owners ------------------------------------------------------------------------------------
def test_owner_prefix_of_the_default_owner_is_that_of_0_1():
    assert _dnat.owner_prefix("onebox") == _dnat.owner_prefix(None) == "ONEBOX" == _dnat.DEFAULT_PREFIX


@pytest.mark.parametrize("owner, prefix", [
    ("web-2", "WEB_2"),
    ("a", "A"),
    ("onebox-example", "ONEBOX_EXAMPLE"),
    ("abcdefghij-klmno", "ABCDEFGHIJ_KLMNO"),  # 16 characters: still the plain form
    ("my-very-long-box-name", "MY_VERY_LO_44RGX"),  # the documented examples
    ("MyBox", "MYBOX_A5EZ3"),
])
def test_owner_prefix_examples(owner, prefix):
    assert _dnat.owner_prefix(owner) == prefix


@pytest.mark.parametrize("owner", ["abcdefghij-klmnop", "my-very-long-box-name", "x" * 63, "MyBox", "ONEBOX",
                                   "a-----------------b"])
def test_owner_prefix_of_a_long_or_capitalised_owner_is_short_readable_and_valid(owner):
    prefix = _dnat.owner_prefix(owner)
    assert _dnat.check_prefix(prefix) == prefix and len(prefix) <= 16
    head, digest = prefix.rsplit("_", 1)
    assert len(digest) == 5 and re.fullmatch("[A-Z2-7]{5}", digest)
    assert owner.upper().replace("-", "_").startswith(head)  # readable: the owner's start
    assert _dnat.owner_prefix(owner) == prefix  # the same every run


def test_owner_prefix_tells_owners_apart():
    # many long names with the same start: the hash tells them apart
    owners = (["box-%d" % i for i in range(500)] + ["a-long-box-name-number-%d" % i for i in range(2000)]
              + ["mybox", "MyBox", "MYBOX", "Mybox", "onebox", "Onebox"])
    prefixes = [_dnat.owner_prefix(owner) for owner in owners]
    assert len(set(prefixes)) == len(owners)
    assert _dnat.owner_prefix("mybox") == "MYBOX" and _dnat.owner_prefix("MyBox") != "MYBOX"
    assert all(_dnat.check_prefix(p) for p in prefixes)


def test_owner_defaults():
    legacy = {"chain_prefix": "ONEBOX", "save_path": "/etc/onebox/dnat.rules",
              "restore_script": "/usr/local/sbin/onebox-dnat-restore",
              "sysctl_file": "/etc/sysctl.d/60-onebox-ip-forward.conf", "unit_name": "onebox-dnat.service"}
    assert _dnat.owner_defaults(None) == legacy
    assert _dnat.owner_defaults("onebox") == legacy
    web = _dnat.owner_defaults("web-2")
    assert web == {"chain_prefix": "WEB_2", "save_path": "/etc/onebox/dnat-web-2.rules",
                   "restore_script": "/usr/local/sbin/onebox-dnat-restore-web-2",
                   "sysctl_file": "/etc/sysctl.d/60-onebox-ip-forward-web-2.conf",
                   "unit_name": "onebox-dnat-web-2.service"}
    # no two owners share a chain prefix, a file or a unit
    values = [_dnat.owner_defaults(owner) for owner in ("onebox", "web-2", "web", "Web", "restore")]
    for key in legacy:
        assert len({v[key] for v in values}) == len(values), key


@pytest.mark.parametrize("owner", ["", "-box", "my box", "box_1", "a" * 64, 7, "box-"])
def test_bad_owner_is_refused_by_name(owner):
    with pytest.raises(ValidationError) as err:
        _dnat.check_owner_name(owner)
    assert err.value.field == "owner"


def test_allow_host_listener_is_a_forward_key():
    assert "allow_host_listener" in _dnat.FORWARD_KEYS
    forwards = _dnat.parse_forwards([{"port": 22, "target": "10.87.0.5", "allow_host_listener": True}])
    assert forwards[0].allow_listener is True
    assert _dnat.summary([forwards[0]._replace(address="10.87.0.5")])[0]["allow_host_listener"] is True
    with pytest.raises(ValidationError) as err:
        _dnat.parse_forwards([{"port": 22, "target": "10.87.0.5", "allow_host_listener": "yes"}])
    assert err.value.field == "forwards[0].allow_host_listener"
