"""DnatManager (_dnat_host) on a fake host: what it reads, refuses, writes and returns, in order."""
from __future__ import annotations

import os
import stat

import pytest

from ansible_collections.homelab.onebox.plugins.module_utils import _dnat, _dnat_rules
from ansible_collections.homelab.onebox.plugins.module_utils._dnat_host import DnatManager
from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError, ValidationError
from unit.fake_dnat import HOST, SAVED, WEB, FakeHost, FakeLxd, state

NEW = {"port": 8080, "target": "10.87.0.11", "comment": "new"}
# sshd on 0.0.0.0:22 (socket inode 0: no process looked up for the message)
SSHD = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 0 1\n")


def manager(**params):
    return DnatManager(FakeHost(**params))


def on_host(tmp_path, ip_forward="1\n", tcp="", **params):
    """A manager whose files, ip_forward and sockets are under tmp_path."""
    params.setdefault("save_path", str(tmp_path / "dnat.rules"))
    params.setdefault("restore_script", str(tmp_path / "restore"))
    params.setdefault("sysctl_file", str(tmp_path / "sysctl.conf"))
    dnat = DnatManager(FakeHost(**params))
    (tmp_path / "ip_forward").write_text(ip_forward)
    (tmp_path / "tcp").write_text(tcp)
    dnat.ip_forward_path = str(tmp_path / "ip_forward")
    dnat.proc_net = (("tcp", str(tmp_path / "tcp")),)
    return dnat


def files_of(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir() if p.name not in ("ip_forward", "tcp"))


def saves_run(dnat):
    return sum(os.path.basename(argv[0]).endswith("-save") for argv in dnat.module.commands)


# ---- names (no I/O) ------------------------------------------------------------------------------
def test_manager_names_come_from_the_owner():
    assert manager().names() == dict(owner=None, **_dnat.owner_defaults(None))
    assert manager(owner="onebox").names() == dict(owner="onebox", **_dnat.owner_defaults("onebox"))
    assert manager(owner="web-2", state="absent").names() == dict(owner="web-2", **_dnat.owner_defaults("web-2"))
    # given values win
    names = manager(owner="web-2", chain_prefix="MINE", save_path="/tmp/r", restore_script="/tmp/s",
                    sysctl_file="/tmp/c").names()
    assert names == dict(owner="web-2", chain_prefix="MINE", save_path="/tmp/r", restore_script="/tmp/s",
                         sysctl_file="/tmp/c", unit_name="onebox-dnat-web-2.service")
    # "" keeps no file (and no save file means no script); no forwarding, no sysctl file
    assert manager(owner="web-2", save_path="").names()["restore_script"] is None
    assert manager(owner="web-2", sysctl_file="").names()["sysctl_file"] is None
    assert manager(owner="web-2", ip_forward=False).names()["sysctl_file"] is None


def test_manager_refuses_a_bad_owner_or_prefix():
    with pytest.raises(ValidationError) as err:
        manager(owner="bad_owner")
    assert err.value.field == "owner"
    with pytest.raises(ValidationError):
        manager(owner="web-2", chain_prefix="web")


# ---- read, plan, apply, result -------------------------------------------------------------------
def test_nothing_to_change_reads_the_rules_once_and_writes_nothing(tmp_path):
    dnat = on_host(tmp_path, forwards=[WEB], save_path="", sysctl_file="")
    result = dnat.run()
    assert result["changed"] is False and dnat.module.restores == [] and files_of(tmp_path) == []
    assert saves_run(dnat) == 1
    assert result["rules"] == _dnat_rules.render(state(WEB))
    assert result["forwards"] == _dnat.summary(_dnat.parse_forwards([WEB]))


def test_check_mode_writes_nothing_and_says_what_would_change(tmp_path):
    dnat = on_host(tmp_path, ip_forward="0\n", forwards=[WEB, NEW], check_mode=True, diff=True)
    result = dnat.run()
    assert result["changed"] is True
    assert dnat.module.restores == [] and files_of(tmp_path) == [] and (tmp_path / "ip_forward").read_text() == "0\n"
    headers = [d["before_header"] for d in result["diff"]]
    assert headers == ["iptables (ONEBOX_* chains and jumps)", str(tmp_path / "dnat.rules"), str(tmp_path / "restore"),
                       str(tmp_path / "sysctl.conf"), str(tmp_path / "ip_forward")]
    assert "10.87.0.11:8080" in result["diff"][0]["after"] and "10.87.0.11" not in result["diff"][0]["before"]
    assert all(d["before_header"] == d["after_header"] for d in result["diff"])


def test_apply_loads_the_plan_once_then_writes_the_files(tmp_path):
    (tmp_path / "dnat.rules").write_text("old\n")
    dnat = on_host(tmp_path, ip_forward="0\n", forwards=[WEB, NEW], diff=True)
    result = dnat.run()
    assert result["changed"] is True
    assert dnat.module.restores == [_dnat_rules.plan(_dnat_rules.parse_save(SAVED, "ONEBOX"), state(WEB, NEW))]
    assert saves_run(dnat) == 1
    saved = (tmp_path / "dnat.rules").read_text()
    assert saved == _dnat_rules.save_file(state(WEB, NEW), "ONEBOX")
    assert stat.S_IMODE((tmp_path / "restore").stat().st_mode) == 0o755
    assert (tmp_path / "sysctl.conf").read_text() == _dnat_rules.sysctl_text()
    assert (tmp_path / "ip_forward").read_text() == "1\n"
    # the diff of a file shows it as it was before the run
    assert result["diff"][1]["before"] == "old\n" and result["diff"][1]["after"] == saved


def test_state_absent_removes_the_chains_and_the_files(tmp_path):
    on_host(tmp_path, forwards=[WEB]).run()
    dnat = on_host(tmp_path, state="absent", forwards=[WEB])
    result = dnat.run()
    assert result["changed"] and result["forwards"] == [] and result["rules"] == ""
    assert "-X ONEBOX_PREROUTING" in dnat.module.restores[0]
    assert files_of(tmp_path) == []


@pytest.mark.parametrize("params, saves, tcp, message", [
    (dict(owner="mine", forwards=[{"port": 8080, "target": "10.87.0.5"}]), HOST, "",
     "tcp port 8080 is already forwarded by owner web-2"),
    (dict(owner="mine", chain_prefix="WEB_2", forwards=[NEW]), HOST, "", "chain prefix WEB_2 belongs to owner web-2"),
    (dict(forwards=[{"port": 22, "target": "10.87.0.5"}]), SAVED, SSHD, "the host itself listens on tcp 0.0.0.0:22"),
    # the host's own port is refused before the targets are looked up
    (dict(forwards=[{"port": 22, "target": "ghost"}]), SAVED, SSHD, "the host itself listens"),
    (dict(forwards=[NEW, {"port": 9000, "target": "ghost"}]), SAVED, "", "no LXD instance of that name"),
])
def test_a_refusal_changes_nothing(tmp_path, params, saves, tcp, message):
    dnat = on_host(tmp_path, tcp=tcp, saves=[saves], **params)
    dnat.read()
    with pytest.raises(ValidationError) as err:
        dnat.plan()
    assert message in err.value.msg
    assert dnat.module.restores == [] and files_of(tmp_path) == []


def test_a_file_of_another_owner_is_refused(tmp_path):
    on_host(tmp_path, owner="web-2", forwards=[NEW], saves=[""]).run()
    theirs = (tmp_path / "dnat.rules").read_text()
    dnat = on_host(tmp_path, owner="other", chain_prefix="OTHER", forwards=[WEB], saves=[""])
    dnat.read()
    with pytest.raises(ValidationError) as err:
        dnat.plan()
    assert err.value.field == "save_path" and "owner web-2's" in err.value.msg
    assert dnat.module.restores == [] and (tmp_path / "dnat.rules").read_text() == theirs


def test_a_failed_restore_puts_the_previous_rules_back(tmp_path):
    # iptables-restore failed after the nat table was committed: the next iptables-save shows it
    previous = _dnat_rules.parse_save(SAVED, "ONEBOX")
    half = _dnat_rules.RuleSet({**previous.chains, **{k: v for k, v in state(NEW).chains.items() if k[0] == "nat"}},
                               previous.jumps)
    dnat = on_host(tmp_path, forwards=[NEW], saves=[SAVED, _dnat_rules.render(half)], restore_fails=1)
    with pytest.raises(OneboxError) as err:
        dnat.run()
    assert "(the previous forwards were kept)" in err.value.msg
    assert err.value.details["rules"] == dnat.module.restores[0]
    assert dnat.module.restores[1] == _dnat_rules.plan(half, previous) != ""
    assert "*filter" not in dnat.module.restores[1]  # only the table that was changed
    assert files_of(tmp_path) == []  # nor the files


def test_a_failed_restore_that_changed_nothing_is_not_undone(tmp_path):
    dnat = on_host(tmp_path, forwards=[NEW], restore_fails=1)
    with pytest.raises(OneboxError):
        dnat.run()
    assert len(dnat.module.restores) == 1 and saves_run(dnat) == 2


def test_a_box_gives_its_addresses_and_names_its_fields(tmp_path):
    lxd = FakeLxd([{"name": "db", "expanded_devices": {"eth0": {"type": "nic", "ipv4.address": "10.87.0.40"}}}])
    forwards = [{"port": 8080, "target": "web"}, {"port": 5432, "target": "db"}]
    dnat = DnatManager(FakeHost(forwards=forwards, lxd=lxd, save_path="", sysctl_file=""),
                       addresses={"web": "10.87.0.30"}, field_of=lambda field: "services[x]." + field)
    dnat.proc_net = ()
    dnat.read()
    dnat.plan()
    assert [(f["target"], f["address"]) for f in dnat.result()["forwards"]] == [("db", "10.87.0.40"), ("web", "10.87.0.30")]
    assert lxd.listed == 1
    # only the targets the caller does not know are looked up; none, no LXD at all
    dnat = DnatManager(FakeHost(forwards=forwards[:1], save_path="", sysctl_file=""), addresses={"web": "10.87.0.30"})
    dnat.proc_net = ()
    dnat.read()
    dnat.plan()
    assert dnat.module.lxd.listed == 0
    # a refusal names the field as the caller's user wrote it
    dnat = DnatManager(FakeHost(forwards=[{"port": 9000, "target": "ghost"}], save_path="", sysctl_file=""),
                       field_of=lambda field: "services[x]." + field)
    dnat.proc_net = ()
    dnat.read()
    with pytest.raises(ValidationError) as err:
        dnat.plan()
    assert err.value.field == "services[x].forwards[0].target"
