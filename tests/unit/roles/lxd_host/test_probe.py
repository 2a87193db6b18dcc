"""homelab.onebox.lxd_host's probe script (files/probe.sh) with stand-ins for lxc and dpkg-query:
one JSON document whatever is missing."""
from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
PACKAGES = ("lxd", "btrfs-progs", "nginx-light")

# lxc query URL: answers from files named after the URL; exit 1 when there is none.
FAKE_LXC = """#!/bin/sh
[ "$1" = query ] || exit 2
f="$FAKE_DIR/answers/$(printf '%s' "$2" | tr '/?=' '___')"
[ -f "$f" ] || { echo "Error: not found" >&2; exit 1; }
cat "$f"
"""
# dpkg-query: lxd and btrfs-progs installed, nginx-light removed (config files left), others unknown.
FAKE_DPKG = """#!/bin/sh
for p in "$@"; do
  case $p in
    lxd|btrfs-progs) echo "$p installed" ;;
    nginx-light) echo "$p config-files" ;;
    -*) ;;
    *) echo "dpkg-query: no packages found matching $p" >&2 ;;
  esac
done
"""


def script():
    with open(os.path.join(ROOT, "roles", "lxd_host", "files", "probe.sh"), encoding="utf-8") as handle:
        return handle.read()


def write(path, text, mode=0o644):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, mode)


@pytest.fixture
def fake(tmp_path):
    bindir = tmp_path / "bin"
    answers = tmp_path / "answers"
    bindir.mkdir()
    answers.mkdir()
    write(bindir / "lxc", FAKE_LXC, stat.S_IRWXU)
    # Incus's client answers `incus query URL` alike; it has answers of its own here.
    write(bindir / "incus", FAKE_LXC.replace("$FAKE_DIR/answers/", "$FAKE_DIR/incus-answers/"), stat.S_IRWXU)
    (tmp_path / "incus-answers").mkdir()
    write(bindir / "dpkg-query", FAKE_DPKG, stat.S_IRWXU)

    def answer(url, data, client="lxc"):
        where = answers if client == "lxc" else tmp_path / "incus-answers"
        write(where / url.replace("/", "_").replace("?", "_").replace("=", "_"),
              "" if data is None else json.dumps(data, indent=2))

    def run(packages=PACKAGES, client="lxc", units="lxd.socket lxd.service"):
        env = dict(os.environ, FAKE_DIR=str(tmp_path), PATH="%s:%s" % (bindir, os.environ["PATH"]))
        proc = subprocess.run(["sh", "-c", script(), "onebox-probe", client, "default", units,
                               "fs.inotify.max_user_instances kernel.no_such_key"]
                              + list(packages), env=env, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    return answer, run


def test_daemon_down_gives_nulls(fake):
    out = fake[1]()
    assert out["daemon"] is False
    assert out["pools"] is None and out["networks"] is None and out["profile"] is None and out["aliases"] is None
    assert sorted(out["installed"]) == ["btrfs-progs", "lxd"]
    assert out["systemd"] is os.path.exists("/run/systemd/system")
    # Kernel limits read from /proc/sys; a key the kernel lacks reads as 0 (below any wanted value).
    with open("/proc/sys/fs/inotify/max_user_instances", encoding="ascii") as handle:
        assert out["sysctl"] == {"fs.inotify.max_user_instances": handle.read().strip(), "kernel.no_such_key": "0"}


def test_everything_answered(fake):
    answer, run = fake
    answer("/1.0", {"api_version": "1.0"})
    answer("/1.0/storage-pools?recursion=1", [{"name": "default", "driver": "btrfs"}])
    answer("/1.0/networks?recursion=1", [{"name": "lxdbr0", "managed": True}, {"name": "eth0", "managed": False}])
    answer("/1.0/profiles/default", {"name": "default", "devices": {}})
    answer("/1.0/images/aliases?recursion=1", [{"name": "onebox-debian12", "target": "abc"}])
    out = run()
    assert out["daemon"] is True
    assert [p["name"] for p in out["pools"]] == ["default"]
    assert [n["name"] for n in out["networks"]] == ["lxdbr0", "eth0"]
    assert out["profile"]["name"] == "default"
    assert out["aliases"] == [{"name": "onebox-debian12", "target": "abc"}]


def test_missing_profile_is_null(fake):
    answer, run = fake
    answer("/1.0", {"api_version": "1.0"})
    answer("/1.0/storage-pools?recursion=1", [])
    answer("/1.0/networks?recursion=1", [])
    answer("/1.0/images/aliases?recursion=1", [])
    out = run()
    assert out["daemon"] is True and out["profile"] is None
    assert out["pools"] == [] and out["networks"] == [] and out["aliases"] == []


def test_no_package_known(fake):
    assert fake[1](["not-a-package"])["installed"] == []


def test_incus_is_read_through_its_own_client(fake):
    """The probe reads whichever daemon it is given the client of: with incus, Incus's answers,
    not LXD's (both daemons may run side by side)."""
    answer, run = fake
    answer("/1.0", {"api_version": "1.0"})
    answer("/1.0/networks?recursion=1", [{"name": "lxdbr0", "managed": True}])
    answer("/1.0", {"api_version": "1.0", "environment": {"server": "incus"}}, client="incus")
    answer("/1.0/storage-pools?recursion=1", [{"name": "default", "driver": "btrfs"}], client="incus")
    answer("/1.0/networks?recursion=1", [{"name": "incusbr0", "managed": True},
                                         {"name": "lxdbr0", "managed": False}], client="incus")
    answer("/1.0/profiles/default", {"name": "default", "devices": {}}, client="incus")
    answer("/1.0/images/aliases?recursion=1", [{"name": "onebox-debian12", "target": "def"}], client="incus")
    out = run(packages=("incus-base", "btrfs-progs"), client="incus",
              units="incus.socket incus.service incus-startup.service")
    assert out["daemon"] is True
    assert [n["name"] for n in out["networks"]] == ["incusbr0", "lxdbr0"]
    assert out["aliases"] == [{"name": "onebox-debian12", "target": "def"}]
    assert out["installed"] == ["btrfs-progs"]  # the fake dpkg knows no incus-base


def test_incus_down_while_lxd_answers(fake):
    answer, run = fake
    answer("/1.0", {"api_version": "1.0"})
    out = run(client="incus")
    assert out["daemon"] is False and out["pools"] is None and out["aliases"] is None


def test_an_empty_answer_is_an_empty_list(fake):
    """Incus's `incus query` prints nothing at all for an empty list (LXD prints [])."""
    answer, run = fake
    answer("/1.0", {"api_version": "1.0"}, client="incus")
    for url in ("/1.0/storage-pools?recursion=1", "/1.0/networks?recursion=1", "/1.0/images/aliases?recursion=1"):
        answer(url, None, client="incus")
    out = run(client="incus")
    assert out["daemon"] is True
    assert out["pools"] == [] and out["networks"] == [] and out["aliases"] == [] and out["profile"] is None
