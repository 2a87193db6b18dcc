"""homelab.onebox.onebox_daemon: which daemon a host gets, from /etc/os-release samples (pure logic)."""
from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.homelab.onebox.plugins.filter.host.onebox_daemon import FilterModule, onebox_daemon, parse_os_release

DEBIAN_12 = """PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
SUPPORT_URL="https://www.debian.org/support"
BUG_REPORT_URL="https://bugs.debian.org/"
"""
DEBIAN_13 = """PRETTY_NAME="Debian GNU/Linux 13 (trixie)"
NAME="Debian GNU/Linux"
VERSION_ID="13"
VERSION="13 (trixie)"
VERSION_CODENAME=trixie
DEBIAN_VERSION_FULL=13.1
ID=debian
HOME_URL="https://www.debian.org/"
"""
# Debian 14 once released, and testing before that (no VERSION_ID).
DEBIAN_14 = DEBIAN_13.replace("13", "14").replace("trixie", "forky").replace("14.1", "14.0")
DEBIAN_TESTING = """PRETTY_NAME="Debian GNU/Linux forky/sid"
NAME="Debian GNU/Linux"
VERSION_CODENAME=forky
ID=debian
"""
# trixie while it was testing: no VERSION_ID, no VERSION.
TRIXIE_NO_VERSION_ID = """PRETTY_NAME="Debian GNU/Linux trixie/sid"
NAME="Debian GNU/Linux"
VERSION_CODENAME=trixie
ID=debian
HOME_URL="https://www.debian.org/"
"""
SID = 'PRETTY_NAME="Debian GNU/Linux sid"\nNAME="Debian GNU/Linux"\nID=debian\n'
DEBIAN_11 = DEBIAN_12.replace("12", "11").replace("bookworm", "bullseye")
UBUNTU_2404 = """PRETTY_NAME="Ubuntu 24.04.1 LTS"
NAME="Ubuntu"
VERSION_ID="24.04"
VERSION="24.04.1 LTS (Noble Numbat)"
VERSION_CODENAME=noble
ID=ubuntu
ID_LIKE=debian
UBUNTU_CODENAME=noble
"""
FEDORA = 'NAME="Fedora Linux"\nVERSION="40 (Server Edition)"\nID=fedora\nVERSION_ID=40\n'


def test_registered_as_filter():
    assert FilterModule().filters()["onebox_daemon"] is onebox_daemon


def test_parse_os_release_unquotes_and_skips_comments():
    fields = parse_os_release("# a comment\n\nNAME='Debian GNU/Linux'\nID=debian\nPRETTY_NAME=\"A \\\"B\\\"\"\n")
    assert fields == {"NAME": "Debian GNU/Linux", "ID": "debian", "PRETTY_NAME": 'A "B"'}


@pytest.mark.parametrize("wanted", ["auto", "lxd", "AUTO", None])
def test_debian_12_auto_and_lxd_take_debians_lxd(wanted):
    choice = onebox_daemon(DEBIAN_12, wanted)
    assert choice["daemon"] == "lxd"
    assert choice["packages"] == ["lxd"] and choice["apt_release"] == "" and choice["apt_release_packages"] == []
    assert choice["command"] == "lxc" and choice["socket"] == "/var/lib/lxd/unix.socket"
    assert choice["daemon_binary"] == "lxd" and choice["group"] == "lxd"
    assert choice["network"] == "lxdbr0"
    assert choice["systemd_units"] == ["lxd.socket", "lxd.service", "lxd-containers.service"]
    assert choice["os_release"] == 12 and choice["os_codename"] == "bookworm"


def test_debian_12_incus_comes_from_backports():
    choice = onebox_daemon(DEBIAN_12, "incus")
    assert choice["daemon"] == "incus" and choice["wanted"] == "incus"
    assert choice["packages"] == ["incus-base", "dnsmasq-base"] and choice["apt_release"] == "bookworm-backports"
    # Only the daemon from backports (its client follows as an exact-version dependency).
    assert choice["apt_release_packages"] == ["incus-base"]
    assert choice["command"] == "incus" and choice["socket"] == "/var/lib/incus/unix.socket"
    assert choice["daemon_binary"] == "/usr/libexec/incus/incusd" and choice["group"] == "incus-admin"
    assert choice["network"] == "incusbr0" and choice["dir_env"] == "INCUS_DIR"
    assert choice["path"].startswith("/usr/libexec/incus:")


@pytest.mark.parametrize("text", [DEBIAN_13, DEBIAN_14, DEBIAN_TESTING, TRIXIE_NO_VERSION_ID, SID])
@pytest.mark.parametrize("wanted", ["auto", "incus"])
def test_debian_13_and_later_get_incus_from_their_own_release(text, wanted):
    choice = onebox_daemon(text, wanted)
    assert choice["daemon"] == "incus" and choice["command"] == "incus"
    assert choice["packages"] == ["incus-base", "dnsmasq-base"]
    assert choice["apt_release"] == "" and choice["apt_release_packages"] == []


def test_release_numbers_and_code_names():
    assert onebox_daemon(DEBIAN_14)["os_release"] == 14
    assert onebox_daemon(TRIXIE_NO_VERSION_ID)["os_release"] == 13
    assert onebox_daemon(TRIXIE_NO_VERSION_ID)["os_codename"] == "trixie"
    assert onebox_daemon(DEBIAN_TESTING)["os_release"] == 14
    assert onebox_daemon(SID)["os_release"] is None


def test_version_without_codename_field():
    # An older file: the code name only in VERSION.
    text = 'ID=debian\nVERSION_ID="12"\nVERSION="12 (bookworm)"\n'
    assert onebox_daemon(text, "incus")["apt_release"] == "bookworm-backports"
    # Neither: the number alone names it.
    assert onebox_daemon('ID=debian\nVERSION_ID="12"\n', "incus")["apt_release"] == "bookworm-backports"


@pytest.mark.parametrize("text", [DEBIAN_13, DEBIAN_14, TRIXIE_NO_VERSION_ID, SID])
def test_lxd_is_refused_where_debian_has_no_lxd(text):
    with pytest.raises(AnsibleFilterError, match=r"onebox_lxd_host_daemon=lxd: .* has no lxd package.*incus or auto"):
        onebox_daemon(text, "lxd")


@pytest.mark.parametrize("wanted", ["auto", "lxd", "incus"])
def test_ubuntu_is_refused_with_the_snap_named(wanted):
    with pytest.raises(AnsibleFilterError, match=r"onebox_lxd_host_daemon=%s: Ubuntu 24.04.1 LTS is not supported: "
                                                 r"Ubuntu ships LXD as a snap.*not supported" % wanted):
        onebox_daemon(UBUNTU_2404, wanted)


def test_debian_before_12_is_refused():
    with pytest.raises(AnsibleFilterError, match=r"Debian GNU/Linux 11 \(bullseye\) has neither an lxd nor an incus"):
        onebox_daemon(DEBIAN_11)


@pytest.mark.parametrize("text", [FEDORA, "", "NAME=Something\n"])
def test_other_systems_are_refused(text):
    with pytest.raises(AnsibleFilterError, match=r"onebox_lxd_host_daemon=auto: .* is not supported: the role knows "
                                                 r"Debian's lxd and incus packages only"):
        onebox_daemon(text)


@pytest.mark.parametrize("wanted", ["docker", "lxc", "", "snap"])
def test_an_unknown_wanted_value_is_refused_naming_the_variable_and_the_value(wanted):
    with pytest.raises(AnsibleFilterError, match=r"onebox_lxd_host_daemon: '%s' is not one of auto, lxd, incus" % wanted):
        onebox_daemon(DEBIAN_12, wanted)


def test_a_parsed_dict_works_like_the_text():
    assert onebox_daemon(parse_os_release(DEBIAN_12), "incus") == onebox_daemon(DEBIAN_12, "incus")


def test_bad_input_type():
    with pytest.raises(AnsibleFilterError, match="text of /etc/os-release"):
        onebox_daemon(12)


def test_a_bad_version_id():
    with pytest.raises(AnsibleFilterError, match="VERSION_ID 'twelve'"):
        onebox_daemon('ID=debian\nVERSION_ID=twelve\n')


def test_the_result_is_a_fresh_copy():
    first = onebox_daemon(DEBIAN_12)
    first["packages"].append("x")
    assert onebox_daemon(DEBIAN_12)["packages"] == ["lxd"]
