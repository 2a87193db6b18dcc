"""homelab.onebox.apt_backports: the backports entry apt's sources lack (pure logic)."""
from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.homelab.onebox.plugins.filter.host.apt_backports import FilterModule, apt_backports

# `apt-get indextargets --format '$(TARGET_OF) $(RELEASE) $(COMPONENT) $(REPO_URI)'` + FETCHED, on a
# Debian 12 host with deb822 sources (debian.sources) and no backports.
BOOKWORM = """deb bookworm main http://deb.debian.org/debian/ 1
deb bookworm-updates main http://deb.debian.org/debian/ 1
deb bookworm-security main http://deb.debian.org/debian-security/ 1
"""
WITH_BACKPORTS = BOOKWORM + "deb bookworm-backports main http://deb.debian.org/debian/ 0\n"


def test_registered_as_filter():
    assert FilterModule().filters()["apt_backports"] is apt_backports


def test_missing_suite_gets_the_releases_own_mirror():
    out = apt_backports(BOOKWORM, "bookworm-backports")
    assert out == {"present": False, "fetched": False, "mirror": "http://deb.debian.org/debian/",
                   "line": "deb http://deb.debian.org/debian bookworm-backports main"}


def test_a_local_mirror_is_kept():
    text = ("deb-src bookworm main http://other.example/debian/ 0\n"
            "deb bookworm contrib http://mirror.example/d/ 1\n"
            "deb bookworm main http://mirror.example/debian/ 1\n")
    assert apt_backports(text, "bookworm-backports")["line"] == "deb http://mirror.example/debian bookworm-backports main"


def test_present_but_not_fetched_then_fetched():
    assert apt_backports(WITH_BACKPORTS, "bookworm-backports")["present"] is True
    assert apt_backports(WITH_BACKPORTS, "bookworm-backports")["fetched"] is False
    fetched = WITH_BACKPORTS.replace("debian/ 0", "debian/ 1")
    assert apt_backports(fetched.splitlines(), "bookworm-backports")["fetched"] is True


def test_a_deb_src_entry_does_not_count():
    text = BOOKWORM + "deb-src bookworm-backports main http://deb.debian.org/debian/ 0\n"
    assert apt_backports(text, "bookworm-backports")["present"] is False


def test_no_mirror_to_take_is_refused():
    with pytest.raises(AnsibleFilterError, match="name neither bookworm-backports nor bookworm"):
        apt_backports("deb nodistro main https://deb.nodesource.com/node_20.x/ 1\n", "bookworm-backports")


def test_present_without_the_release_is_fine():
    out = apt_backports("deb bookworm-backports main http://m.example/debian/ 1", "bookworm-backports")
    assert out["present"] and out["fetched"] and out["line"] == ""


def test_no_suite():
    with pytest.raises(AnsibleFilterError, match="no suite"):
        apt_backports(BOOKWORM, "")
