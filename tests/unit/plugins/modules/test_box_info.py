"""The box_info module's reads against the in-memory LXD and a fake host: one listing, one command in
the proxy, one iptables-save, the backups' two files; nothing changed; a bad description refused
before anything is read."""
from __future__ import annotations

import json
import os
import re

import pytest

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.homelab.onebox.plugins.module_utils import _backup_agent
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._instance_set import OWNER_KEY
from ansible_collections.homelab.onebox.plugins.module_utils._module import LXD_ARGUMENT_SPEC
from ansible_collections.homelab.onebox.plugins.modules.box_info import ARGUMENT_SPEC, PROXY_READ, BoxInfo, parse_proxy_output

from unit.fake_lxd import FakeLxd
from unit.plugins.module_utils.test_box_info import ADDRESSES, CERT, OWNER, SERVICES, rules_text, site_files


class Host:
    """The module: its params, the daemon, and the host's commands (iptables only)."""

    def __init__(self, lxd, saved, **params):
        checked = ArgumentSpecValidator(dict(ARGUMENT_SPEC, **LXD_ARGUMENT_SPEC)).validate(dict(owner=OWNER, **params))
        assert not checked.error_messages, checked.error_messages
        self.params, self.lxd, self.saved, self.commands = checked.validated_parameters, lxd, saved, []
        self.check_mode, self._diff = True, False

    @staticmethod
    def get_bin_path(name, required=False):
        return "/usr/sbin/%s" % name

    def run_command(self, argv, data=None, binary_data=False):
        self.commands.append(os.path.basename(argv[0]))
        if argv[-1] == "-V":
            return 0, "iptables v1.8.9 (nf_tables)", ""
        if re.fullmatch(r"iptables-nft-save", os.path.basename(argv[0])):
            return 0, self.saved, ""
        raise AssertionError("unexpected command %s" % argv)


def the_box(proxy_status="Running", with_proxy=True, answer=None):
    lxd = FakeLxd()
    lxd.daemon, lxd.server = "LXD", {"environment": {"server_version": "5.0.2"}}
    for name, found in ADDRESSES.items():
        if name == "unit-proxy" and not with_proxy:
            continue
        status = proxy_status if name == "unit-proxy" else "Running"
        added = lxd.add(name, status=status, config={OWNER_KEY: OWNER},
                        devices={"eth0": {"type": "nic", "network": "lxdbr0", "ipv4.address": found[0]}})
        added["last_used_at"] = "2027-01-15T05:59:30Z"
    lxd.add("theirs", status="Running", config={OWNER_KEY: "other"})
    files = site_files()

    def proxy_read(name, command, _kwargs):
        assert name == "unit-proxy" and command[:3] == ["sh", "-c", PROXY_READ]
        assert command[4:] == ["/etc/nginx/conf.d", "/usr/local/sbin/onebox-tls"]
        out = "".join("\001F %s\n%s\n" % (fname, text) for fname, text in sorted(files.items()))
        return 0, out + "\001T \n" + json.dumps({"certs": [CERT]}) + "\n", ""
    lxd.on_exec = answer or proxy_read
    return lxd


def run(lxd, saved=None, **params):
    module = Host(lxd, rules_text() if saved is None else saved, **params)
    return BoxInfo(module).run(), module


@pytest.fixture(autouse=True)
def backups_here(tmp_path, monkeypatch):
    """The backups' record under tmp_path (none there unless a test writes one)."""
    monkeypatch.setattr(_backup_agent, "CONFIG_DIR", str(tmp_path / "config-%s"))
    monkeypatch.setattr(_backup_agent, "STATE_DIR", str(tmp_path / "state-%s"))
    return tmp_path


def test_reads_each_thing_once_and_changes_nothing():
    lxd = the_box()
    result, module = run(lxd, services=SERVICES)
    assert result["changed"] is False and lxd.changes() == [("exec", "unit-proxy", lxd.calls[-1][2])]
    assert [c[0] for c in lxd.calls].count("instances") == 1 and lxd.names("exec") == ["unit-proxy"]
    assert module.commands == ["iptables", "iptables-nft-save"]
    assert [s["name"] for s in result["services"]] == ["site", "web", "vpn"]
    assert result["daemon"] == "LXD 5.0.2" and result["backups"] is False and result["notes"] == []
    assert result["certificates"][0]["not_after"] == "2027-03-16T08:00:00Z"
    assert result["differences"]["undescribed_containers"] == []  # another owner's container is not the box's
    assert result["table"][0].startswith("box unit (LXD 5.0.2): 3 services, 5 containers (5 running), 2 domains")
    assert '"domain:web.test" -> "proxy:unit-proxy" [label="http"];' in result["dot"]
    assert {"from": "port:udp/51820", "to": "container:vpn", "label": ""} in result["graph"]["edges"]


def test_a_stopped_proxy_is_a_note_and_the_rest_is_shown():
    result, _module = run(the_box(proxy_status="Stopped"), services=SERVICES)
    assert result["notes"] == ["the proxy unit-proxy could not be read (its sites and certificates are not shown): "
                               "exec sh in unit-proxy: Instance is not running"]
    assert result["proxy"]["sites_read"] is False and result["differences"]["stopped_containers"] == ["unit-proxy"]
    assert [f["port"] for f in result["services"][2]["forwards"]] == ["7000-7002", "51820"]


def test_a_box_without_a_proxy_has_nothing_to_say_about_it():
    services = [SERVICES[2]]
    saved = rules_text(services)
    result, _module = run(the_box(with_proxy=False), saved=saved, services=services)
    assert result["proxy"] is None and result["notes"] == []


def test_a_proxy_without_its_site_directory():
    lxd = the_box(answer=lambda name, command, kwargs: (0, "\001E conf_dir /etc/nginx/conf.d does not exist\n", ""))
    result, _module = run(lxd)
    assert result["notes"] == ["the proxy's sites could not be read: conf_dir /etc/nginx/conf.d does not exist"]
    assert result["differences"] is None and result["proxy"]["sites_read"] is False


def test_the_backups_record_is_read_from_the_host(backups_here):
    (backups_here / ("config-%s" % OWNER)).mkdir()
    (backups_here / ("config-%s" % OWNER) / "config.json").write_text(json.dumps(
        {"owner": OWNER, "services": [{"name": "site", "include": True}, {"name": "web", "include": False}]}))
    (backups_here / ("state-%s" % OWNER)).mkdir()
    (backups_here / ("state-%s" % OWNER) / "last.json").write_text(json.dumps(
        {"site": {"last_time": "2027-01-15T03:00:00Z", "ok": True, "last_good_time": "2027-01-15T03:00:00Z"}}))
    result, _module = run(the_box(), services=SERVICES)
    backups = {s["name"]: s["backup"] for s in result["services"]}
    assert backups["site"]["ok"] is True and backups["site"]["last_time"] == "2027-01-15T03:00:00Z"
    assert backups["web"]["included"] is False and backups["vpn"]["last_time"] is None
    assert result["backups"] is True and result["table"][1].endswith("LAST BACKUP")


def test_a_bad_description_is_refused_before_anything_is_read():
    lxd = the_box()
    module = Host(lxd, "", services=[{"name": "web", "count": 0, "kind": "pool"}])
    with pytest.raises(ValidationError) as err:
        BoxInfo(module)
    assert err.value.field == "services[web].count" and lxd.calls == [] and module.commands == []


@pytest.mark.parametrize("params, field", [
    ({"owner": "Bad Owner!"}, "owner"),
    ({"proxy": {"name": "-proxy"}}, "proxy.name"),
    ({"forwards": {"chain_prefix": "bad prefix"}}, "forwards.chain_prefix"),
])
def test_a_bad_option_is_refused_naming_it_before_anything_is_read(params, field):
    lxd = the_box()
    module = Host(lxd, "", **{key: value for key, value in params.items() if key != "owner"})
    module.params.update(params)  # Host fills in a good owner: a bad one replaces it
    with pytest.raises(ValidationError) as err:
        BoxInfo(module)
    assert err.value.field == field and lxd.calls == [] and module.commands == []


def test_the_proxys_output_parsed():
    files, certs, error = parse_proxy_output("\001F a.conf\nserver {}\n\n\001F b.conf\n\n\001T \nnot json\n")
    assert files == {"a.conf": "server {}\n", "b.conf": ""} and certs == {} and error is None
    files, certs, error = parse_proxy_output("\001T \n" + json.dumps({"certs": [CERT, {"name": None}, "x"]}))
    assert files == {} and list(certs) == ["site.test"] and error is None
