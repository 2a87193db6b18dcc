"""The rules of the forwards: rendered, read back from iptables-save, planned, saved (_dnat_rules)."""
from __future__ import annotations

from ansible_collections.homelab.onebox.plugins.module_utils import _dnat, _dnat_rules
from unit.fake_dnat import NETWORKS, SAVED, WEB, state


def test_connected_networks_and_hairpin():
    assert [str(n) for n in NETWORKS] == ["10.87.0.0/24", "192.0.2.0/24"]
    assert _dnat_rules.hairpin_network("10.87.0.10", NETWORKS) == "10.87.0.0/24"
    assert _dnat_rules.hairpin_network("198.51.100.7", NETWORKS) is None


# ---- rules -----------------------------------------------------------------------------------
def test_rules_match_only_traffic_to_the_host():
    rules = state(WEB).chains
    pre = rules[("nat", "ONEBOX_PREROUTING")]
    assert pre == ["-p tcp -m addrtype --dst-type LOCAL -m tcp --dport 80 -m comment --comment web "
                   "-j DNAT --to-destination 10.87.0.10:80"]
    assert rules[("nat", "ONEBOX_OUTPUT")][0].startswith("! -d 127.0.0.0/8 -p tcp -m addrtype --dst-type LOCAL ")
    assert rules[("nat", "ONEBOX_POSTROUTING")] == [
        "-s 10.87.0.0/24 -d 10.87.0.10/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT "
        "-m comment --comment web -j MASQUERADE"]
    assert len(rules[("filter", "ONEBOX_FORWARD")]) == 2


def test_listen_address_source_and_ranges():
    chains = state({"proto": "udp", "port": "7000-7002", "target": "10.87.0.11", "target_port": "8000-8002",
                    "host_address": "192.0.2.2", "source": ["203.0.113.0/24", "198.51.100.9"],
                    "comment": "game server"},
                   {"port": "6000-6001", "target": "198.51.100.20"}).chains
    pre = chains[("nat", "ONEBOX_PREROUTING")]
    assert pre[0] == "-p tcp -m addrtype --dst-type LOCAL -m tcp --dport 6000:6001 -j DNAT --to-destination 198.51.100.20:6000-6001"
    assert pre[1:] == [
        '-s %s -d 192.0.2.2/32 -p udp -m udp --dport 7000:7002 -m comment --comment "game server" '
        '-j DNAT --to-destination 10.87.0.11:8000-8002/7000' % src for src in ("203.0.113.0/24", "198.51.100.9/32")]
    assert chains[("nat", "ONEBOX_OUTPUT")][1:] == pre[1:]
    # no hairpin for a target outside the host's networks
    assert len(chains[("nat", "ONEBOX_POSTROUTING")]) == 1


def test_quote_like_iptables_save():
    assert _dnat_rules.quote("web") == "web"
    assert _dnat_rules.quote("web-1_a") == "web-1_a"
    assert _dnat_rules.quote("homelab.onebox") == '"homelab.onebox"'
    assert _dnat_rules.quote("a b") == '"a b"'


# ---- parse, compare, plan --------------------------------------------------------------------
def test_parse_save_takes_only_what_is_ours():
    current = _dnat_rules.parse_save(SAVED, "ONEBOX")
    assert set(current.chains) == {("nat", "ONEBOX_PREROUTING"), ("nat", "ONEBOX_OUTPUT"),
                                   ("nat", "ONEBOX_POSTROUTING"), ("filter", "ONEBOX_FORWARD")}
    assert ("nat", "ONEBOX_USER") not in current.chains
    assert current.jumps[("filter", "FORWARD")] == ['-m comment --comment "homelab.onebox" -j ONEBOX_FORWARD']
    assert current == state(WEB)
    assert _dnat_rules.plan(current, state(WEB)) == ""


def test_plan_changes_only_the_table_that_differs():
    current = _dnat_rules.parse_save(SAVED, "ONEBOX")
    changed = dict(WEB, comment="web2")
    text = _dnat_rules.plan(current, state(changed))
    assert text.count("*") == 2  # the comment is on rules in both tables
    moved = dict(WEB)
    text = _dnat_rules.plan(current, state(moved, {"port": 81, "target": "198.51.100.20"}))
    assert "*nat" in text and "*filter" in text
    # no jump is added again, none is deleted
    assert "-j ONEBOX_PREROUTING" not in text and "-D " not in text


def test_plan_from_nothing_and_back():
    desired = state(WEB)
    text = _dnat_rules.plan(_dnat_rules.empty_rules(), desired)
    lines = text.splitlines()
    assert lines[0] == "*nat" and lines[-1] == "COMMIT"
    assert "-I FORWARD 1 -m comment --comment \"homelab.onebox\" -j ONEBOX_FORWARD" in lines
    assert "-A PREROUTING -m comment --comment \"homelab.onebox\" -j ONEBOX_PREROUTING" in lines
    # the chain lines go after their declaration, the jumps after the chains are filled
    assert lines.index(":ONEBOX_PREROUTING - [0:0]") < lines.index("-A PREROUTING -m comment --comment \"homelab.onebox\" -j ONEBOX_PREROUTING")
    removal = _dnat_rules.plan(_dnat_rules.parse_save(SAVED, "ONEBOX"), _dnat_rules.empty_rules()).splitlines()
    assert "-D FORWARD -m comment --comment \"homelab.onebox\" -j ONEBOX_FORWARD" in removal
    assert "-X ONEBOX_FORWARD" in removal and "-X ONEBOX_PREROUTING" in removal
    assert not any("DOCKER" in line or "ONEBOX_USER" in line for line in removal)
    assert removal.index("-D PREROUTING -m comment --comment \"homelab.onebox\" -j ONEBOX_PREROUTING") < removal.index("-X ONEBOX_PREROUTING")
    assert _dnat_rules.plan(_dnat_rules.empty_rules(), _dnat_rules.empty_rules()) == ""


def test_duplicate_jump_is_removed_and_missing_one_added():
    text = SAVED.replace('-A OUTPUT -m comment --comment "homelab.onebox" -j ONEBOX_OUTPUT\n',
                         '-A OUTPUT -j ONEBOX_OUTPUT\n')
    text = text.replace('-A FORWARD -j DOCKER-USER\n',
                        '-A FORWARD -j DOCKER-USER\n-A FORWARD -m comment --comment "homelab.onebox" -j ONEBOX_FORWARD\n')
    lines = _dnat_rules.plan(_dnat_rules.parse_save(text, "ONEBOX"), state(WEB)).splitlines()
    assert "-D OUTPUT -j ONEBOX_OUTPUT" in lines
    assert "-A OUTPUT -m comment --comment \"homelab.onebox\" -j ONEBOX_OUTPUT" in lines
    assert lines.count("-D FORWARD -m comment --comment \"homelab.onebox\" -j ONEBOX_FORWARD") == 1
    assert not any(line.startswith("-I FORWARD") for line in lines)


def test_other_prefix_is_independent():
    assert _dnat_rules.parse_save(SAVED, "TESTBOX") == _dnat_rules.empty_rules()
    desired = state(WEB, prefix="TESTBOX")
    assert ("nat", "TESTBOX_PREROUTING") in desired.chains


def test_save_file_and_restore_script():
    desired = state(WEB)
    saved = _dnat_rules.save_file(desired, "ONEBOX")
    assert "-j ONEBOX_PREROUTING" not in saved  # the jumps are the script's job
    assert ":ONEBOX_PREROUTING - [0:0]" in saved and saved.rstrip().endswith("COMMIT")
    script = _dnat_rules.restore_script("/etc/onebox/dnat.rules", "/usr/sbin/iptables-nft",
                                        "/usr/sbin/iptables-nft-restore", "ONEBOX")
    assert script.startswith("#!/bin/sh\n")
    assert "/usr/sbin/iptables-nft-restore --wait=10 --noflush < \"$rules\"" in script
    assert "jump filter FORWARD first -m comment --comment homelab.onebox -j ONEBOX_FORWARD" in script
    assert "ip_forward" in script
    assert "ip_forward" not in _dnat_rules.restore_script("/r", "/ipt", "/iptr", "ONEBOX", ip_forward=False)


def test_render_for_diff():
    text = _dnat_rules.render(state(WEB))
    assert text.splitlines()[0] == "*nat" and "-A PREROUTING -m comment" in text
    assert _dnat_rules.render(_dnat_rules.empty_rules()) == ""


# ---- isolate -----------------------------------------------------------------------------------
ISOLATE_LXDBR0 = [
    '! -i lxdbr0 -o lxdbr0 -m conntrack --ctstate DNAT -m comment --comment "isolate lxdbr0" -j RETURN',
    '! -i lxdbr0 -o lxdbr0 -m conntrack ! --ctstate RELATED,ESTABLISHED -m comment --comment "isolate lxdbr0" -j DROP',
]


def test_isolate_rules_are_written_as_iptables_save_prints_them():
    assert _dnat_rules.isolate_rules("lxdbr0") == ISOLATE_LXDBR0


def test_isolate_goes_after_the_forwards_accept_rules():
    """The RETURN of DNATed traffic must not skip the ACCEPT rules (a DROP policy would drop it)."""
    desired = _dnat_rules.desired_rules(_dnat.parse_forwards([WEB]), "ONEBOX", NETWORKS, ("br-x", "lxdbr0"))
    chain = desired.chains[("filter", "ONEBOX_FORWARD")]
    assert chain[:2] == state(WEB).chains[("filter", "ONEBOX_FORWARD")]
    assert chain[2:] == _dnat_rules.isolate_rules("br-x") + ISOLATE_LXDBR0
    # nothing else changes: no other chain, no other jump
    plain = state(WEB)
    assert {k: v for k, v in desired.chains.items() if k[1] != "ONEBOX_FORWARD"} == \
        {k: v for k, v in plain.chains.items() if k[1] != "ONEBOX_FORWARD"}
    assert desired.jumps == plain.jumps


def test_isolate_without_forwards_and_its_round_trip():
    desired = _dnat_rules.desired_rules([], "ONEBOX", (), _dnat.parse_isolate(["lxdbr0"]))
    assert desired.chains[("filter", "ONEBOX_FORWARD")] == ISOLATE_LXDBR0
    assert desired.chains[("nat", "ONEBOX_PREROUTING")] == []
    text = _dnat_rules.render(desired)
    assert "-A ONEBOX_FORWARD %s\n" % ISOLATE_LXDBR0[1] in text
    # what iptables-save prints back is the same State: a second run changes nothing
    saved = "*filter\n:FORWARD ACCEPT [0:0]\n" + text.split("*filter\n", 1)[1]
    assert _dnat_rules.parse_save(saved, "ONEBOX") == _dnat_rules.RuleSet(
        {("filter", "ONEBOX_FORWARD"): ISOLATE_LXDBR0}, {("filter", "FORWARD"): desired.jumps[("filter", "FORWARD")]})
    # turning it off refills only the filter table's chain, without the isolation rules
    current = _dnat_rules.parse_save(_dnat_rules.render(desired), "ONEBOX")
    text = _dnat_rules.plan(current, _dnat_rules.desired_rules([], "ONEBOX"))
    assert text == "*filter\n:ONEBOX_FORWARD - [0:0]\nCOMMIT\n"
    # and state absent removes the chain with its rules and the jump
    removal = _dnat_rules.plan(current, _dnat_rules.empty_rules())
    assert "-X ONEBOX_FORWARD" in removal and "-D FORWARD -m comment" in removal


def test_isolate_is_in_the_save_file():
    saved = _dnat_rules.save_file(_dnat_rules.desired_rules([], "ONEBOX", (), ("lxdbr0",)), "ONEBOX")
    for body in ISOLATE_LXDBR0:
        assert "-A ONEBOX_FORWARD %s\n" % body in saved


def test_owner_is_written_on_the_jumps_the_files_and_the_script():
    desired = _dnat_rules.desired_rules(_dnat.parse_forwards([WEB]), "WEB_2", NETWORKS, owner="web-2")
    assert desired.jumps[("nat", "PREROUTING")] == ['-m comment --comment "homelab.onebox owner=web-2" -j WEB_2_PREROUTING']
    assert state(WEB).jumps[("nat", "PREROUTING")] == ['-m comment --comment "homelab.onebox" -j ONEBOX_PREROUTING']
    # what iptables-save prints back (both backends quote a comment with a space the same way)
    assert _dnat_rules.parse_save(_dnat_rules.render(desired), "WEB_2") == desired
    script = _dnat_rules.restore_script("/r", "/ipt", "/iptr", "WEB_2", owner="web-2")
    assert "-m comment --comment 'homelab.onebox owner=web-2' -j WEB_2_FORWARD" in script
    for text in (_dnat_rules.save_file(desired, "WEB_2", "web-2"), script, _dnat_rules.sysctl_text("web-2")):
        assert _dnat_rules.file_owner(text) == "web-2"
    for text in (_dnat_rules.save_file(desired, "WEB_2"), _dnat_rules.restore_script("/r", "/i", "/ir", "X"), _dnat_rules.sysctl_text(),
                 None, "", "net.ipv4.ip_forward = 1\n"):
        assert _dnat_rules.file_owner(text) is None
    # a run without owner writes what 0.1 wrote
    assert _dnat_rules.sysctl_text() == "# homelab.onebox.dnat: port forwards need IPv4 forwarding.\nnet.ipv4.ip_forward = 1\n"
    assert "the collection's port forwards (chains X_*)" in _dnat_rules.restore_script("/r", "/i", "/ir", "X")
