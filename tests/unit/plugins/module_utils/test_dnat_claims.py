"""What other owners and the host hold, and the refusals of forwards over it (_dnat_claims)."""
from __future__ import annotations

import pytest

from ansible_collections.homelab.onebox.plugins.module_utils import _dnat, _dnat_claims
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError
from unit.fake_dnat import HOST, SAVED


def test_collection_owners_are_read_from_the_jumps():
    assert _dnat_claims.collection_owners(HOST) == {"ONEBOX": None, "WEB_2": "web-2", "GAME": "game"}
    assert _dnat_claims.collection_owners(SAVED) == {"ONEBOX": None}
    assert _dnat_claims.collection_owners("") == {}
    # a jump that names the owner wins over one of 0.1 (a box half way through its first run)
    mixed = HOST.replace('"homelab.onebox" -j ONEBOX_FORWARD', '"homelab.onebox owner=onebox" -j ONEBOX_FORWARD')
    assert _dnat_claims.collection_owners(mixed)["ONEBOX"] == "onebox"


def test_chains_of_another_owner_are_refused():
    owners = _dnat_claims.collection_owners(HOST)
    _dnat_claims.check_owner(owners, "WEB_2", "web-2")          # its own
    _dnat_claims.check_owner(owners, "ONEBOX", "onebox")        # 0.1's chains: taken over
    _dnat_claims.check_owner(owners, "ONEBOX", "anyone")
    _dnat_claims.check_owner(owners, "NEW", "new")              # nobody's
    with pytest.raises(ValidationError) as err:
        _dnat_claims.check_owner(owners, "WEB_2", "other")
    assert err.value.field == "chain_prefix" and err.value.value == "WEB_2"
    assert "chain prefix WEB_2 belongs to owner web-2" in err.value.msg and "its own chain_prefix" in err.value.msg
    with pytest.raises(ValidationError) as err:  # a run without owner does not take an owner's chains either
        _dnat_claims.check_owner(owners, "GAME", None)
    assert "belongs to owner game" in err.value.msg and "owner: game" in err.value.msg


def test_other_claims_are_the_dnat_rules_of_other_owners():
    owners = _dnat_claims.collection_owners(HOST)
    claims = _dnat_claims.other_claims(HOST, owners, "WEB_2")
    assert [(c.owner, c.prefix, c.proto, c.port, c.host) for c in claims] == [
        ("game", "GAME", "udp", (27015, 27030), "192.0.2.2/32"),
        (None, "ONEBOX", "tcp", (80, 80), None)]
    assert claims[0].rule.startswith("-A GAME_PREROUTING -d 192.0.2.2/32")
    # our own chain is not a claim; neither are Docker's nor a chain without the collection's jump
    assert {c.prefix for c in _dnat_claims.other_claims(HOST, owners, "GAME")} == {"ONEBOX", "WEB_2"}


@pytest.mark.parametrize("forward, owner, field", [
    ({"port": 8080, "target": "10.87.0.5"}, "web-2", "forwards[0].port"),
    ({"port": "8000-8100", "target": "10.87.0.5"}, "web-2", "forwards[0].port"),
    ({"port": 7010, "target": "10.87.0.5", "source": "198.51.100.0/24"}, "web-2", "forwards[0].port"),
    ({"port": 8080, "target": "10.87.0.5", "host_address": "192.0.2.9"}, "web-2", "forwards[0].port"),
    ({"proto": "udp", "port": 27020, "target": "10.87.0.5"}, "game", "forwards[0].port"),
    ({"proto": "udp", "port": 27020, "target": "10.87.0.5", "host_address": "192.0.2.2"}, "game", "forwards[0].port"),
    ({"port": 80, "target": "10.87.0.5"}, "unknown (chains ONEBOX_*)", "forwards[0].port"),
])
def test_a_port_of_another_owner_is_refused(forward, owner, field):
    claims = _dnat_claims.other_claims(HOST, _dnat_claims.collection_owners(HOST), "MINE")
    forwards = _dnat.parse_forwards([forward])
    with pytest.raises(ValidationError) as err:
        _dnat_claims.check_claims(forwards, claims)
    assert err.value.field == field
    assert err.value.value == (forward["port"] if isinstance(forward["port"], int) else forward["port"])
    assert "already forwarded by owner %s" % owner in err.value.msg
    if owner.startswith("unknown"):
        assert "chain_prefix: ONEBOX takes them over" in err.value.msg


@pytest.mark.parametrize("forward", [
    {"port": 8081, "target": "10.87.0.5"},
    {"proto": "udp", "port": 8080, "target": "10.87.0.5"},
    {"proto": "udp", "port": 27020, "target": "10.87.0.5", "host_address": "192.0.2.3"},  # game's is on .2 only
    {"port": 27020, "target": "10.87.0.5"},
    {"port": 7777, "target": "10.87.0.5"},   # a chain nobody jumps to with the collection's comment
    {"port": 9999, "target": "10.87.0.5"},   # Docker's
])
def test_ports_nobody_else_forwards_are_accepted(forward):
    claims = _dnat_claims.other_claims(HOST, _dnat_claims.collection_owners(HOST), "MINE")
    _dnat_claims.check_claims(_dnat.parse_forwards([forward]), claims)


def test_a_box_forwarding_its_own_ports_again_is_no_conflict():
    owners = _dnat_claims.collection_owners(HOST)
    _dnat_claims.check_claims(_dnat.parse_forwards([{"port": 8080, "target": "10.87.0.20", "target_port": 80}]),
                              _dnat_claims.other_claims(HOST, owners, "WEB_2"))


# ---- the host's listeners ------------------------------------------------------------------------
# /proc/net/* of a host with sshd on 0.0.0.0:22 and [::]:22, LXD's dnsmasq on the bridge
# (10.87.0.1:53 tcp and udp, 0.0.0.0:67 udp bound to the bridge), a local resolver on 127.0.0.53:53,
# a web server on 192.0.2.2:8443 and ::1:631, an established TCP connection, a connected UDP
# socket (a client's), and a listener on ::ffff:192.0.2.2:9000.
PROC_TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0100570A:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 100 0 0 10 5
   2: 3500007F:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000   101        0 1003 1 0000000000000000 100 0 0 10 5
   3: 020200C0:20FB 00000000:0000 0A 00000000:00000000 00:00000000 00000000    33        0 1004 1 0000000000000000 100 0 0 10 0
   4: 020200C0:0016 0A0200C0:D431 01 00000000:00000000 02:000A7E4B 00000000     0        0 1005 4 0000000000000000 20 4 31 10 -1
"""
# (the tcp6 lines end at the inode here: what follows it is not read)
PROC_TCP6 = """  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001
   1: 00000000000000000000000001000000:0277 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2002
   2: 0000000000000000FFFF0000020200C0:2328 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2003
   3: B80D0120000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2004
"""
PROC_UDP = """   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  452: 0100570A:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3001 2 0000000000000000 0
  466: 00000000:0043 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3002 2 0000000000000000 0
  470: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 3003 2 0000000000000000 0
  480: 020200C0:A1B2 08080808:0035 01 00000000:00000000 00:00000000 00000000     0        0 3004 2 0000000000000000 0
"""


def listeners():
    out = []
    for text, proto in ((PROC_TCP, "tcp"), (PROC_TCP6, "tcp"), (PROC_UDP, "udp"), (None, "udp")):
        out.extend(_dnat_claims.parse_proc_net(text, proto))
    return out


def test_parse_proc_net():
    found = [(l.proto, str(l.address), l.port, l.inode) for l in listeners()]
    assert found == [
        ("tcp", "0.0.0.0", 22, 1001), ("tcp", "10.87.0.1", 53, 1002), ("tcp", "127.0.0.53", 53, 1003),
        ("tcp", "192.0.2.2", 8443, 1004),
        ("tcp", "::", 22, 2001), ("tcp", "::1", 631, 2002), ("tcp", "192.0.2.2", 9000, 2003),
        ("tcp", "2001:db8::1", 80, 2004),
        ("udp", "10.87.0.1", 53, 3001), ("udp", "0.0.0.0", 67, 3002), ("udp", "127.0.0.53", 53, 3003)]
    # on a big-endian host the kernel prints the words as they are
    assert str(_dnat_claims.parse_proc_net(PROC_TCP.replace("0100570A", "0A570001"), "tcp", "big")[1].address) == "10.87.0.1"


@pytest.mark.parametrize("forward, shown", [
    ({"port": 22, "target": "10.87.0.5"}, "tcp 0.0.0.0:22"),
    ({"port": "20-30", "target": "10.87.0.5", "host_address": "192.0.2.2"}, "tcp 0.0.0.0:22"),
    ({"proto": "udp", "port": 53, "target": "10.87.0.5"}, "udp 10.87.0.1:53"),  # LXD's dnsmasq
    ({"port": 53, "target": "10.87.0.5"}, "tcp 10.87.0.1:53"),
    ({"proto": "udp", "port": 67, "target": "10.87.0.5"}, "udp 0.0.0.0:67"),
    ({"port": 8443, "target": "10.87.0.5"}, "tcp 192.0.2.2:8443"),
    ({"port": 8443, "target": "10.87.0.5", "host_address": "192.0.2.2"}, "tcp 192.0.2.2:8443"),
    ({"port": 9000, "target": "10.87.0.5"}, "tcp 192.0.2.2:9000"),  # IPv4-mapped
])
def test_a_forward_over_a_host_listener_is_refused(forward, shown):
    forwards = _dnat.parse_forwards([{"port": 10, "target": "10.87.0.9"}, forward])
    conflicts = _dnat_claims.listener_conflicts(forwards, listeners())
    assert conflicts and conflicts[0][0].field == "forwards[1]"
    fwd, listener = conflicts[0]
    err = _dnat_claims.listener_error(fwd, listener, "sshd pid 1")
    assert err.field == "forwards[1].port" and err.value == forward["port"]
    assert "listens on %s (sshd pid 1)" % shown in err.msg and "allow_host_listener: true" in err.msg
    assert "(sshd" not in _dnat_claims.listener_error(fwd, listener).msg
    # unless the forward says it means it
    assert _dnat_claims.listener_conflicts(_dnat.parse_forwards([dict(forward, allow_host_listener=True)]), listeners()) == []


@pytest.mark.parametrize("forward", [
    {"port": 631, "target": "10.87.0.5"},                                # ::1 only
    {"port": 80, "target": "10.87.0.5"},                                 # an IPv6 address only (forwards are IPv4)
    {"proto": "udp", "port": 22, "target": "10.87.0.5"},                 # other protocol
    {"port": "23-52", "target": "10.87.0.5"},                            # around, not over
    {"port": 8443, "target": "10.87.0.5", "host_address": "192.0.2.3"},  # another address
    {"port": 53, "target": "10.87.0.5", "host_address": "192.0.2.2"},    # dnsmasq is on the bridge's address
    {"proto": "udp", "port": "40000-49999", "target": "10.87.0.5"},      # a connected (client) socket's port
])
def test_listeners_the_forward_cannot_catch_do_not_block(forward):
    assert _dnat_claims.listener_conflicts(_dnat.parse_forwards([forward]), listeners()) == []


def test_a_loopback_listener_does_not_block():
    only_loopback = [l for l in listeners() if l.address.is_loopback]
    assert {(l.proto, l.port) for l in only_loopback} == {("tcp", 53), ("tcp", 631), ("udp", 53)}
    forwards = _dnat.parse_forwards([{"port": 53, "target": "10.87.0.5"}, {"proto": "udp", "port": 53, "target": "10.87.0.5"}])
    assert _dnat_claims.listener_conflicts(forwards, only_loopback) == []
