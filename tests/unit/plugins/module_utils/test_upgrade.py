"""_upgrade: apt's simulation read, and one container's upgrade against the in-memory LXD."""
from __future__ import annotations

import pytest

from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError
from ansible_collections.homelab.onebox.plugins.module_utils._upgrade import Upgrade, parse_pending

from unit.fake_lxd import FakeLxd

SIMULATION = """Reading package lists...
Building dependency tree...
The following packages will be upgraded:
  libssl3 openssl
2 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.
Inst libssl3 [3.0.15-1~deb12u1] (3.0.17-1~deb12u2 Debian-Security:12/stable-security [amd64])
Inst openssl [3.0.15-1~deb12u1] (3.0.17-1~deb12u2 Debian-Security:12/stable-security [amd64])
Conf libssl3 (3.0.17-1~deb12u2 Debian-Security:12/stable-security [amd64])
Conf openssl (3.0.17-1~deb12u2 Debian-Security:12/stable-security [amd64])
"""


def test_the_simulation_lists_each_upgrade_with_its_versions():
    assert parse_pending(SIMULATION) == [
        {"name": "libssl3", "from": "3.0.15-1~deb12u1", "to": "3.0.17-1~deb12u2"},
        {"name": "openssl", "from": "3.0.15-1~deb12u1", "to": "3.0.17-1~deb12u2"}]
    assert parse_pending("Reading package lists...\n0 upgraded, 0 newly installed\n") == []


def lxd_answering(rc=0):
    lxd = FakeLxd()
    lxd.add("c1", status="Running")
    ran = []

    def answer(name, command, _kwargs):
        ran.append(command)
        if command[:4] == ["apt-get", "-q", "-s", "upgrade"]:
            return 0, SIMULATION, ""
        if command[:4] == ["apt-get", "-q", "-y", "upgrade"]:
            return rc, "", "E: dpkg was interrupted" if rc else ""
        return 0, "", ""
    lxd.on_exec = answer
    return lxd, ran


def test_an_upgrade_refreshes_the_lists_installs_and_restarts_the_services():
    lxd, ran = lxd_answering()
    upgrade = Upgrade(lxd, "c1")
    assert [p["name"] for p in upgrade.pending()] == ["libssl3", "openssl"]
    upgrade.apply(["onebox-app.service"])
    assert [c[:4] for c in ran] == [["apt-get", "-q", "update", "-o"], ["apt-get", "-q", "-s", "upgrade"],
                                    ["apt-get", "-q", "-y", "upgrade"], ["systemctl", "restart", "--", "onebox-app.service"]]
    assert "Dpkg::Options::=--force-confold" in ran[2]  # the box's configuration files are kept


def test_check_mode_reads_the_lists_as_they_are():
    lxd, ran = lxd_answering()
    assert len(Upgrade(lxd, "c1", check_mode=True).pending()) == 2
    assert [c[:4] for c in ran] == [["apt-get", "-q", "-s", "upgrade"]]


def test_a_failed_upgrade_names_the_container_and_restarts_nothing():
    lxd, ran = lxd_answering(rc=100)
    upgrade = Upgrade(lxd, "c1")
    upgrade.pending()
    with pytest.raises(OneboxError) as caught:
        upgrade.apply(["onebox-app.service"])
    assert caught.value.msg == "in c1, apt-get upgrade exited 100: E: dpkg was interrupted"
    assert not any(c[0] == "systemctl" for c in ran)
