"""Upgrades of a running box against the real LXD and apt (homelab.onebox.box through ansible):
``upgrade`` installs a container's pending Debian updates and restarts its service (an update
served from a local apt repository in the container: a package at 1.0 installed, 2.0 offered),
and changes nothing once there is nothing to upgrade; ``follow_images`` re-creates a container
whose image alias was moved onto another image (a rebuilt base image) and nothing before that.

The box has an owner and an image alias of its own, and only containers (no proxy, no forwards);
everything it makes is removed at the end, even when a test fails."""
from __future__ import annotations

import json
import subprocess

import pytest

from conftest import RUN_PREFIX, delete_instance_quietly, ok, run_module

OWNER = "%s-upg" % RUN_PREFIX
APP = "%s-up-app" % RUN_PREFIX
SCRATCH = "%s-up-scratch" % RUN_PREFIX
IMAGE = "onebox-debian12"
ALIAS = "%s-up-img" % RUN_PREFIX      # the box's image: an alias of its own, moved by the test

# A package in two versions and a repository offering the second, built in the container with
# dpkg-deb (no network, no signing: the repository is trusted by its sources line).
LOCAL_REPO = r"""
set -eu
for v in 1.0 2.0; do
  d=/tmp/probe-$v
  mkdir -p $d/DEBIAN $d/usr/share/onebox-probe
  printf 'Package: onebox-probe\nVersion: %s\nArchitecture: all\nMaintainer: t <t@example.invalid>\nDescription: probe\n' $v > $d/DEBIAN/control
  echo $v > $d/usr/share/onebox-probe/version
  dpkg-deb --build $d /tmp/onebox-probe_${v}_all.deb >/dev/null
done
dpkg -i /tmp/onebox-probe_1.0_all.deb >/dev/null
mkdir -p /srv/repo && cp /tmp/onebox-probe_2.0_all.deb /srv/repo/
cd /srv/repo
f=onebox-probe_2.0_all.deb
{ dpkg-deb -f $f; echo "Filename: ./$f"; echo "Size: $(stat -c %s $f)"; echo "SHA256: $(sha256sum $f | cut -d' ' -f1)"; } > Packages
echo 'deb [trusted=yes] file:/srv/repo ./' > /etc/apt/sources.list.d/onebox-probe.list
apt-get -q update >/dev/null
"""


def args(**kwargs):
    service = {"name": APP, "kind": "plain", "image": ALIAS, "port": 8000,
               "command": ["/usr/bin/python3", "-m", "http.server", "8000"], "health": {"tcp": 8000, "timeout": 30}}
    return dict({"owner": OWNER, "services": [service], "parts": ["containers", "insides"]}, **kwargs)


def lxc(*argv, check=True, timeout=300):
    return subprocess.run(["lxc"] + list(argv), capture_output=True, text=True, timeout=timeout, check=check)


def sh(script):
    return lxc("exec", APP, "--", "sh", "-c", script).stdout.strip()


def main_pid():
    return sh("systemctl show -p MainPID --value onebox-%s.service" % APP)


@pytest.fixture(scope="module")
def built(lxd):
    base = lxd.image_alias(IMAGE)["target"]
    lxc("image", "alias", "create", ALIAS, base)
    made = []
    try:
        yield {"base": base, "result": ok(run_module("box", args(), timeout=600), True), "made": made}
    finally:
        run_module("box", {"owner": OWNER, "state": "absent", "parts": ["containers", "insides"]})
        delete_instance_quietly(lxd, APP)
        delete_instance_quietly(lxd, SCRATCH)
        lxc("image", "alias", "delete", ALIAS, check=False)
        for fingerprint in made:
            lxc("image", "delete", fingerprint, check=False)


def test_an_upgrade_installs_the_pending_updates_restarts_the_service_and_then_changes_nothing(built):
    sh(LOCAL_REPO)
    assert sh("cat /usr/share/onebox-probe/version") == "1.0"
    predicted = ok(run_module("box", args(upgrade=True), check=True), True)
    assert predicted["upgraded"] == {APP: ["onebox-probe 1.0 -> 2.0"]}, predicted
    assert sh("cat /usr/share/onebox-probe/version") == "1.0"  # check mode changed nothing
    before = main_pid()
    upgraded = ok(run_module("box", args(upgrade=True), timeout=600), True)
    assert upgraded["upgraded"] == {APP: ["onebox-probe 1.0 -> 2.0"]}, upgraded
    assert sh("cat /usr/share/onebox-probe/version") == "2.0"
    # Its service restarted onto what the upgrade installed, and answered before the run ended.
    assert main_pid() not in (before, "0") and APP in upgraded["healthy"], upgraded
    again = ok(run_module("box", args(upgrade=True), timeout=600), False)
    assert again["upgraded"] == {} and again["healthy"] == {}, again


def test_a_converge_without_upgrade_never_asks_apt(built):
    sh("rm -f /var/lib/apt/lists/*_Packages")
    ok(run_module("box", args()), False)
    # apt-get update would have fetched the lists again.
    assert sh("ls /var/lib/apt/lists | grep -c _Packages || true") == "0"


def test_a_moved_alias_re_creates_the_container_only_when_followed(built, lxd):
    # A "rebuilt" image: a container of the same image published as a new one (another
    # fingerprint), then the alias moved onto it as the base_image role's rebuild does.
    lxc("init", IMAGE, SCRATCH)
    published = lxc("publish", SCRATCH, "--compression", "none", timeout=600).stdout
    new = published.strip().split()[-1]   # "Instance published with fingerprint: FP"
    built["made"].append(new)
    assert lxd.image(new)["fingerprint"] == new
    lxc("query", "-X", "PUT", "--data", json.dumps({"target": new, "description": ""}), "/1.0/images/aliases/" + ALIAS)
    assert lxd.instance(APP, state=False)["config"]["volatile.base_image"] == built["base"]
    ok(run_module("box", args()), False)   # not followed: nothing happens
    followed = ok(run_module("box", args(follow_images=True), timeout=600), True)
    item = next(r for r in followed["instances"] if r["name"] == APP)
    assert item["recreated"] == "image %s (%s) -> %s (%s)" % (ALIAS, built["base"][:12], ALIAS, new[:12]), item
    assert lxd.instance(APP, state=False)["config"]["volatile.base_image"] == new
    assert APP in followed["healthy"]
    ok(run_module("box", args(follow_images=True)), False)
