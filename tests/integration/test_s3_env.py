"""The S3 test environment of tests/s3.py against the real parts: moto_server on 127.0.0.1 and
Debian's restic (/usr/bin/restic, installed by scripts/test) backing up to it, reading back, refusing
a wrong password, and failing - within a bound - while the server is down. A missing part fails,
never skips.

Test traffic goes only to 127.0.0.1.
"""
from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

import s3 as s3_module
# s3 is a fixture: imported, pytest finds it here.
from s3 import S3Server, s3  # pylint: disable=unused-import

RESTIC = "/usr/bin/restic"
PASSWORD = "correct horse battery staple"
# A small file with every byte value, a NUL and no final newline: dump must give back these bytes.
CONTENT = bytes(range(256)) + b"onebox backup test\n\0last line without newline"


def restic(server, repository, args, password=PASSWORD, data=None, timeout=60, options=("s3.connections=1",)):
    """Run restic on ``repository`` of ``server``: a CompletedProcess (bytes), with ``seconds`` taken."""
    if not os.access(RESTIC, os.X_OK):
        pytest.fail("set-up failed: %s is missing (Debian's restic: scripts/test installs it)" % RESTIC, pytrace=False)
    env = {name: value for name, value in os.environ.items() if not name.startswith(("RESTIC_", "AWS_"))}
    env.update(server.env(), RESTIC_PASSWORD=password)
    cmd = [RESTIC, "-r", repository, "--no-cache"]
    for option in options:
        cmd += ["-o", option]
    started = time.monotonic()
    proc = subprocess.run(cmd + list(args), input=data, capture_output=True, timeout=timeout, check=False, env=env)
    proc.seconds = time.monotonic() - started
    return proc


def ok(proc):
    assert proc.returncode == 0, "restic %s: rc %s\nstdout:\n%s\nstderr:\n%s" % (
        proc.args[3:], proc.returncode, proc.stdout.decode(errors="replace")[-3000:],
        proc.stderr.decode(errors="replace")[-3000:])
    return proc


def new_repository(server, prefix="box/service"):
    """A bucket of its own and a restic repository initialised in it: (bucket, repository)."""
    bucket = server.bucket()
    repository = server.repository(bucket, prefix)
    proc = restic(server, repository, ["init"])
    assert b"created restic repository" in ok(proc).stdout
    return bucket, repository


def test_fixture_interface(s3):
    port = int(s3.endpoint.rsplit(":", 1)[1])
    assert s3.endpoint == "http://127.0.0.1:%d" % port == "http://127.0.0.1:%d" % s3.port
    assert s3.running and os.path.exists("/proc/%d" % s3.pid)
    assert s3.repository("onebox-a", "box/web") == "s3:http://127.0.0.1:%d/onebox-a/box/web" % port
    assert s3.repository("onebox-a", "/box/web/") == "s3:http://127.0.0.1:%d/onebox-a/box/web" % port
    assert s3.env() == {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
                        "AWS_DEFAULT_REGION": s3.region}
    assert all(s3.env().values())
    name = "onebox-interface-%d" % port
    assert s3.bucket(name) == name
    assert name in [b["Name"] for b in s3.client().list_buckets()["Buckets"]]
    assert s3.bucket() != s3.bucket()  # fresh names


def test_restic_backs_up_checks_and_reads_back(s3):
    bucket, repository = new_repository(s3)
    proc = restic(s3, repository, ["backup", "--stdin", "--stdin-filename", "f.txt"], data=CONTENT)
    assert b"snapshot " in ok(proc).stdout and b" saved" in proc.stdout
    keys = s3.objects(bucket)
    # the repository lies under its prefix: config, keys, data, index and the snapshot
    assert "box/service/config" in keys, keys
    for kind in ("keys", "data", "index", "snapshots"):
        assert any(key.startswith("box/service/%s/" % kind) for key in keys), (kind, keys)
    assert all(key.startswith("box/service/") for key in keys), keys
    proc = restic(s3, repository, ["check"])
    assert b"no errors were found" in ok(proc).stdout
    proc = restic(s3, repository, ["dump", "latest", "/f.txt"])
    assert ok(proc).stdout == CONTENT
    proc = restic(s3, repository, ["snapshots", "--json"])
    assert ok(proc).stdout.count(b'"short_id"') == 1


def test_a_wrong_password_is_refused(s3):
    _bucket, repository = new_repository(s3)
    proc = restic(s3, repository, ["snapshots"], password="not the password")
    assert proc.returncode != 0
    assert b"Fatal: wrong password or no key found" in proc.stderr, proc.stderr
    proc = restic(s3, repository, ["snapshots"])
    ok(proc)


def test_restic_fails_while_the_server_is_down_and_works_after(s3):
    bucket, repository = new_repository(s3)
    pid = s3.pid
    with s3.down():
        assert not s3.running and not os.path.exists("/proc/%d" % pid)
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", s3.port)) != 0  # refused: nothing listens
        # restic's defaults: the S3 client (minio-go) tries the first request 10 times (~15 s)
        proc = restic(s3, repository, ["snapshots"], timeout=120)
        seconds = proc.seconds
        assert proc.returncode == 1, proc
        stderr = proc.stderr.decode()
        assert stderr.startswith("Fatal: unable to open config file: Stat: Head \"%s/%s/box/service/config\": "
                                 "dial tcp 127.0.0.1:%d: connect: connection refused\n" % (s3.endpoint, bucket, s3.port)), stderr
        assert 1 < seconds < 60, seconds
        # s3.retries=1: one more try, well under a second
        proc = restic(s3, repository, ["snapshots"], timeout=30, options=("s3.connections=1", "s3.retries=1"))
        quick = proc.seconds
        assert proc.returncode == 1 and proc.stderr.decode() == stderr, proc
        assert quick < 5, quick
        print("restic against a stopped S3 server: %.1f s with defaults, %.1f s with -o s3.retries=1"
              % (seconds, quick))
    assert s3.running and s3.pid != pid and s3.endpoint.endswith(":%d" % s3.port)
    # moto kept nothing: the bucket is gone, a new one works
    assert bucket not in [b["Name"] for b in s3.client().list_buckets()["Buckets"]]
    proc = restic(s3, repository, ["snapshots"], options=("s3.connections=1", "s3.retries=1"))
    # (a HEAD of the config in a missing bucket: a 404 without a body, which restic reads as a missing key)
    assert proc.returncode == 1 and proc.stderr.startswith(
        b"Fatal: unable to open config file: Stat: The specified key does not exist.\n"), proc.stderr
    _bucket, repository = new_repository(s3)
    proc = restic(s3, repository, ["backup", "--stdin", "--stdin-filename", "f.txt"], data=CONTENT)
    ok(proc)


def test_down_starts_the_server_again_when_the_block_fails(s3):
    with pytest.raises(RuntimeError):
        with s3.down():
            raise RuntimeError("a failing test inside the block")
    assert s3.running
    assert s3.bucket() in [b["Name"] for b in s3.client().list_buckets()["Buckets"]]


def test_close_ends_the_server_by_its_pid(tmp_path):
    with S3Server(tmp_path / "s3") as server:
        pid = server.process.pid
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            assert b"moto_server" in handle.read()
        server.bucket("onebox-close")
    assert not server.running and not os.path.exists("/proc/%d" % pid)
    assert "== stopped" in server.log_tail()


def test_a_server_that_does_not_come_up_fails_with_its_log(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        server = S3Server(tmp_path / "s3", port=taken.getsockname()[1])
        with pytest.raises(pytest.fail.Exception) as failed:
            server.start(timeout=10)
    message = str(failed.value)
    assert message.startswith("set-up failed: moto_server on %s " % server.endpoint), message
    assert "Address already in use" in message, message
    assert not server.running


def test_a_missing_moto_server_is_a_failed_set_up(tmp_path, monkeypatch):
    monkeypatch.setattr(s3_module, "moto_server_path", lambda: tmp_path / "no-such-moto_server")
    with pytest.raises(pytest.fail.Exception) as failed:
        S3Server(tmp_path / "s3")
    assert "set-up failed: %s is missing" % (tmp_path / "no-such-moto_server") in str(failed.value)
