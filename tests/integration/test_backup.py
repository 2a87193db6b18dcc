"""homelab.onebox.backup against the real thing: LXD's backup and import API, Debian's restic, a
directory target and an S3-compatible one (moto's server on loopback), this host's iptables, and a
client in a network namespace of its own that asks the restored service for its data.

The box has an owner of its own: one app serving its volume's files over HTTP on a forwarded host
port, with a backup_command. Everything it makes (containers, volumes, forwards, the backups'
files and units on the host) is removed at the end, even when a test fails; the tests run in order
and share the box and its backups."""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from conftest import CLI, ROOT, RUN_PREFIX, ansible_env, run_module, run_playbook
from netns import Netns
from s3 import s3  # noqa: F401  pylint: disable=unused-import

OWNER = "%s-bk" % RUN_PREFIX
APP = "%s-bk-app" % RUN_PREFIX
VOLUME = "%s-%s-data" % (OWNER, APP)
PREFIX = "OBK%s" % RUN_PREFIX[1:].upper()
PORT = random.randrange(40000, 49000, 10)
PASSWORD = "pw-%s-correct-horse" % RUN_PREFIX
UNIT_DIR = "/etc/systemd/system"
CONFIG_DIR = "/etc/onebox/backup-%s" % OWNER
STATE_DIR = "/var/lib/onebox/backup-%s" % OWNER
SERVICE_UNIT = "%s/onebox-backup-%s.service" % (UNIT_DIR, OWNER)
TIMER_UNIT = "%s/onebox-backup-%s.timer" % (UNIT_DIR, OWNER)
LOG = "/var/log/onebox-backup-%s.log" % OWNER
DATA = {"a.txt": "alpha %s\n" % RUN_PREFIX, "b.bin": "%064x\n" % random.getrandbits(256)}

SERVICES = [{"name": APP, "kind": "app", "port": 8000,
             "command": ["/usr/bin/python3", "-m", "http.server", "8000", "--directory", "/srv/data"],
             "forwards": [{"proto": "tcp", "port": PORT, "target_port": 8000}],
             "volumes": [{"name": "data", "path": "/srv/data"}],
             "backup_command": "date +%s > /srv/data/dumped-at"}]

FETCH = r"""
import sys, urllib.request
try:
    print(urllib.request.urlopen("http://%s:%s/%s" % tuple(sys.argv[1:4]), timeout=5).read().decode(), end="")
except Exception as exc:
    print("ERROR %s" % exc)
"""


def sh(container, script, check=True):
    return subprocess.run([CLI, "exec", container, "--", "sh", "-c", script], capture_output=True, text=True,
                          timeout=60, check=check)


def sums(container):
    """sha256 of each data file in the container's volume."""
    out = sh(container, "cd /srv/data && sha256sum %s" % " ".join(sorted(DATA))).stdout
    return dict(reversed(line.split()) for line in out.splitlines())


def expected_sums():
    return {name: hashlib.sha256(text.encode()).hexdigest() for name, text in DATA.items()}


def restic(repository, *args, password=PASSWORD, env=None, check=False, timeout=300):
    full = dict(os.environ, RESTIC_REPOSITORY=repository, RESTIC_PASSWORD=password, RESTIC_CACHE_DIR="/tmp/%s-cache" % OWNER,
                **(env or {}))
    return subprocess.run(["restic"] + list(args), env=full, capture_output=True, text=True, timeout=timeout, check=check)


def snapshots(repository, env=None):
    proc = restic(repository, "snapshots", "--json", env=env, check=True)
    return json.loads(proc.stdout or "[]")


@pytest.fixture(scope="module")
def client():
    with Netns("bk") as ns:
        yield ns


def fetch(client, name):
    return client.run([sys.executable, "-c", FETCH, client.host_address, str(PORT), name], timeout=20).stdout


def answered(client, name, seconds=15):
    """What the service answers once it listens again (a restore returns with the container's
    network up; its own server takes a moment more)."""
    deadline = time.monotonic() + seconds
    while True:
        got = fetch(client, name)
        if not got.startswith("ERROR") or time.monotonic() > deadline:
            return got
        time.sleep(0.3)


@pytest.fixture(scope="module")
def bucket(s3):
    return s3.bucket("%s-bucket" % RUN_PREFIX)


@pytest.fixture(scope="module")
def world(tmp_path_factory, s3, bucket, lxd):
    """The box built and its backups configured: the arguments of both modules, the targets."""
    tmp = tmp_path_factory.mktemp("backup")
    disk = str(tmp / "repo")
    s3_repo = s3.repository(bucket, OWNER)
    backup = {"password": PASSWORD, "retention": {"last": 2}, "schedule": "*-*-* 03:00:00", "object_timeout": 300,
              "targets": [{"name": "disk", "repository": disk},
                          {"name": "s3", "repository": s3_repo, "environment": s3.env()}]}
    box_args = {"owner": OWNER, "services": SERVICES, "parts": ["containers", "insides", "forwards"],
                "forwards": {"chain_prefix": PREFIX, "save_path": str(tmp / "dnat.rules"),
                             "restore_script": str(tmp / "restore"), "sysctl_file": str(tmp / "ip_forward.conf")}}
    backup_args = {"owner": OWNER, "services": SERVICES, "backup": backup}
    inventory = tmp / "inventory.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "onebox_owner": OWNER, "onebox_services": SERVICES, "onebox_backup": backup}}}}))
    built = run_module("box", box_args, timeout=600)
    assert not built.get("failed"), built
    files = " ".join("printf %%s %s > /srv/data/%s;" % (shlex.quote(text), name) for name, text in DATA.items())
    sh(APP, files)
    try:
        yield {"box": box_args, "backup": backup_args, "disk": disk, "s3": s3_repo, "env": s3.env(), "tmp": tmp,
               "inventory": str(inventory), "address": built["addresses"][APP][0]}
    finally:
        removed = run_module("backup", dict(backup_args, state="absent"))
        assert not removed.get("failed") and not any(os.path.exists(p) for p in (SERVICE_UNIT, TIMER_UNIT, CONFIG_DIR)), removed
        gone = run_module("box", dict(box_args, state="absent", purge=True), timeout=600)
        assert not gone.get("failed"), gone
        for path in (STATE_DIR, "/tmp/%s-cache" % OWNER):
            shutil.rmtree(path, ignore_errors=True)
        if os.path.exists(LOG):
            os.unlink(LOG)


def backup_now(world, check=False, **extra):
    return run_module("backup", dict(world["backup"], action="backup", **extra), check=check, timeout=900)


def test_configure_checks_then_writes_units_secrets_and_repositories(world):
    predicted = run_module("backup", world["backup"], check=True, diff=True)
    assert predicted["changed"] and not predicted.get("failed"), predicted
    assert {t["name"]: t["action"] for t in predicted["targets"]} == {"disk": "init", "s3": "init"}
    assert not os.path.exists(CONFIG_DIR) and not os.path.exists(world["disk"])
    assert all(PASSWORD not in json.dumps(d) for d in predicted["diff"])

    done = run_module("backup", world["backup"])
    assert done["changed"] and not done.get("failed"), done
    assert {t["name"]: t["action"] for t in done["targets"]} == {"disk": "init", "s3": "init"}
    for name in ("disk", "s3"):
        assert os.stat("%s/%s.env" % (CONFIG_DIR, name)).st_mode & 0o777 == 0o600
    assert "RESTIC_PASSWORD=%s\n" % PASSWORD in open("%s/disk.env" % CONFIG_DIR).read()
    assert "OnCalendar=*-*-* 03:00:00" in open(TIMER_UNIT).read()
    assert PASSWORD not in open(SERVICE_UNIT).read() + open("%s/config.json" % CONFIG_DIR).read()
    assert snapshots(world["disk"]) == [] and snapshots(world["s3"], world["env"]) == []

    again = run_module("backup", world["backup"])
    assert not again["changed"] and not again.get("failed"), again


def test_a_wrong_password_fails_before_anything_changes(world):
    before = open("%s/disk.env" % CONFIG_DIR).read()
    wrong = dict(world["backup"], backup=dict(world["backup"]["backup"], password="not-the-password"))
    failed = run_module("backup", wrong)
    assert failed.get("failed") and "wrong password" in failed["msg"], failed
    assert open("%s/disk.env" % CONFIG_DIR).read() == before


def test_check_mode_backup_says_what_without_a_snapshot(world):
    predicted = backup_now(world, check=True)
    assert not predicted.get("failed"), predicted
    assert predicted["services"] == [{"name": APP, "objects": ["instance/%s" % APP, "volume/%s" % VOLUME]}]
    assert snapshots(world["disk"]) == []


def test_backup_reaches_both_targets_and_restores_a_deleted_container(world, lxd, client):
    done = backup_now(world)
    assert done["changed"] and not done.get("failed") and done["failures"] == [], done
    objects = done["services"][0]["objects"]
    assert set(objects) == {"instance/%s" % APP, "volume/%s" % VOLUME}
    assert all(set(per) == {"disk", "s3"} for per in objects.values())
    for repository, env in ((world["disk"], None), (world["s3"], world["env"])):
        assert len(snapshots(repository, env)) == 2
        assert restic(repository, "check", env=env).returncode == 0
    # The backup_command ran first: its dump is in the volume's backup.
    assert sh(APP, "cat /srv/data/dumped-at").stdout.strip().isdigit()
    assert fetch(client, "a.txt") == DATA["a.txt"]

    subprocess.run([CLI, "delete", "--force", APP], check=True, timeout=120)
    assert fetch(client, "a.txt").startswith("ERROR")
    # Its volume is still there, newer than the backup: replacing it takes an explicit word.
    rc, out = run_playbook(os.path.join(ROOT, "playbooks", "restore.yml"), {"service": APP},
                           inventory=world["inventory"], timeout=600)
    assert rc != 0 and "volume/%s exist(s)" % VOLUME in json.dumps(out) and "overwrite" in json.dumps(out)
    rc, out = run_playbook(os.path.join(ROOT, "playbooks", "restore.yml"), {"service": APP, "overwrite": True},
                           inventory=world["inventory"], timeout=600)
    assert rc == 0, json.dumps(out)[-3000:]
    assert lxd.instance(APP)["status"] == "Running"
    assert sums(APP) == expected_sums()
    assert answered(client, "a.txt") == DATA["a.txt"]  # the same static address: the forward works again
    assert fetch(client, "b.bin") == DATA["b.bin"]


def test_restore_brings_a_deleted_volume_back_too(world, client):
    subprocess.run([CLI, "delete", "--force", APP], check=True, timeout=120)
    subprocess.run([CLI, "storage", "volume", "delete", "default", VOLUME], check=True, timeout=120)
    restored = run_module("backup", dict(world["backup"], action="restore", restore_services=[APP]), timeout=600)
    assert restored["changed"] and not restored.get("failed"), restored
    assert restored["services"][0]["replaces"] == []
    assert sums(APP) == expected_sums()
    assert answered(client, "a.txt") == DATA["a.txt"]


def test_restore_onto_a_live_service_needs_overwrite(world, client):
    sh(APP, "echo changed > /srv/data/a.txt")
    refused = run_module("backup", dict(world["backup"], action="restore", restore_services=[APP]))
    assert refused.get("failed") and "overwrite" in refused["msg"] and APP in refused["msg"], refused
    assert fetch(client, "a.txt") == "changed\n"
    predicted = run_module("backup", dict(world["backup"], action="restore", restore_services=[APP], overwrite=True), check=True)
    assert predicted["changed"] and sorted(predicted["services"][0]["replaces"]) == ["instance/%s" % APP, "volume/%s" % VOLUME]
    assert fetch(client, "a.txt") == "changed\n"
    done = run_module("backup", dict(world["backup"], action="restore", restore_services=[APP], overwrite=True), timeout=600)
    assert done["changed"] and not done.get("failed"), done
    assert sums(APP) == expected_sums() and answered(client, "a.txt") == DATA["a.txt"]
    # The box converged again finds it as described.
    again = run_module("box", world["box"], timeout=600)
    assert not again["changed"], again


def test_a_restore_drill_restores_aside_checks_and_deletes(world, lxd, client):
    before = {i["name"] for i in lxd.instances()}
    drilled = run_module("backup", dict(world["backup"], action="drill"), timeout=600)
    assert not drilled.get("failed") and drilled["failures"] == [], drilled
    entry = drilled["services"][0]
    # a.txt, b.bin and the backup_command's dump, each as the backup read it
    assert entry["ok"] and entry["files_checked"] >= 3, drilled
    assert {i["name"] for i in lxd.instances()} == before
    assert not [v for v in lxd.custom_volumes("default") if v["name"].startswith("obk-")]
    assert fetch(client, "a.txt") == DATA["a.txt"]  # the live service untouched
    status = run_module("backup", dict(world["backup"], action="status"))
    assert status["services"][0]["drill_ok"] is True, status


def test_the_timers_command_backs_up_and_retention_keeps_the_allowed(world):
    """What the timer runs (the unit's ExecStart), twice more: retention {last: 2} leaves two per object."""
    exec_start = re.search(r"^ExecStart=(.*)$", open(SERVICE_UNIT).read(), re.M).group(1)
    for _run in range(2):
        proc = subprocess.run(shlex.split(exec_start), capture_output=True, text=True, timeout=900, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    for repository, env in ((world["disk"], None), (world["s3"], world["env"])):
        snaps = snapshots(repository, env)
        per_object = {}
        for snap in snaps:
            per_object.setdefault(snap["paths"][0], []).append(snap)
        assert {path: len(items) for path, items in per_object.items()} == {
            "/instance-%s.tar" % APP: 2, "/volume-%s.tar" % VOLUME: 2}
        assert restic(repository, "check", env=env).returncode == 0
    status = run_module("backup", dict(world["backup"], action="status"))
    entry = status["services"][0]
    assert entry["name"] == APP and entry["ok"] and 0 <= entry["age_seconds"] < 600, status


def test_the_repository_is_unreadable_without_the_password(world):
    refused = restic(world["disk"], "snapshots", password="guess")
    assert refused.returncode != 0 and "wrong password" in refused.stderr
    # Encrypted at rest: the data's text appears in no file of the repository.
    needle = DATA["b.bin"].strip().encode()
    for top, _dirs, names in os.walk(world["disk"]):
        for name in names:
            with open(os.path.join(top, name), "rb") as handle:
                assert needle not in handle.read()


def test_no_secret_in_verbose_output(world):
    env = ansible_env(ANSIBLE_STDOUT_CALLBACK="default")
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-vvv", "-i", world["inventory"],
                           os.path.join(ROOT, "playbooks", "backup.yml")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    assert "homelab.onebox.backup" in text
    for secret in (PASSWORD, world["env"]["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in text


def test_failed_runs_leave_earlier_backups_intact(world, s3):
    before = {r: snapshots(r, e) for r, e in ((world["disk"], None), (world["s3"], world["env"]))}
    # A target that is gone (a disk not mounted): refused, nothing written anywhere.
    moved = world["disk"] + ".away"
    os.rename(world["disk"], moved)
    try:
        failed = backup_now(world)
        assert failed.get("failed") and "no repository there" in failed["msg"] and "disk" in failed["msg"], failed
        assert not os.path.exists(world["disk"])
    finally:
        os.rename(moved, world["disk"])
    # A target that cannot be written: the run fails, retention is not applied.
    data_dirs = [os.path.join(world["disk"], "data", d) for d in os.listdir(os.path.join(world["disk"], "data"))]
    subprocess.run(["chattr", "+i"] + data_dirs, check=True)
    try:
        failed = backup_now(world)
        assert failed.get("failed") and "disk" in failed["msg"], failed
    finally:
        subprocess.run(["chattr", "-i"] + data_dirs, check=True)
    assert [s["id"] for s in snapshots(world["disk"])] == [s["id"] for s in before[world["disk"]]]
    assert restic(world["disk"], "check").returncode == 0
    # The S3 server down: a clear failure; the directory's backups stay as they were and restorable.
    with s3.down():
        failed = backup_now(world)
        assert failed.get("failed") and "s3" in failed["msg"], failed
    assert [s["id"] for s in snapshots(world["disk"])] == [s["id"] for s in before[world["disk"]]]
    listed = run_module("backup", dict(world["backup"], action="list", restore_target="disk"))
    assert len(listed["services"][0]["runs"]) == 2, listed
