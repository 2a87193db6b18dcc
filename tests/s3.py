"""An S3-compatible server for the backup tests (restic to S3, issue 13): moto's server mode
(``moto_server`` from the venv, requirements.in) on 127.0.0.1, on a free port.

    def test_x(s3):                                   # the ``s3`` fixture (session scope)
        s3.endpoint                                   # http://127.0.0.1:PORT
        s3.access_key, s3.secret_key, s3.region       # what a client signs with (moto takes any)
        bucket = s3.bucket("onebox-x")                # made now (boto3); returns the name
        s3.repository(bucket, "box/web")              # "s3:http://127.0.0.1:PORT/onebox-x/box/web"
        env = dict(os.environ, **s3.env())            # AWS_ACCESS_KEY_ID, ..._SECRET_..., AWS_DEFAULT_REGION
        with s3.down():                               # the server stopped; started again on leaving
            ...                                       # (its buckets are gone afterwards)

Moto keeps everything in memory: a stop loses every bucket and object, and a start (the same port,
the same credentials) begins empty. A test that takes the server down makes its buckets again
afterwards, and a test that shares the fixture with others uses buckets of its own names
(``bucket()`` without a name makes a fresh one).

restic against a server that is down (restic 0.14.0, Debian 12; measured here):
  - down before the command: opening the repository fails after about 15 s (exit 1) with
    ``Fatal: unable to open config file: Stat: Head "http://127.0.0.1:PORT/BUCKET/PREFIX/config":
    dial tcp 127.0.0.1:PORT: connect: connection refused`` - the S3 client library (minio-go) tries
    each request 10 times, waiting up to 1 s between. ``-o s3.retries=1`` makes that under a second
    (tests/integration/test_s3_env.py checks both).
  - gone while a backup runs: restic's own retries come on top (10 per request, waits growing to
    ~20 s, not configurable in 0.14): with the default connections ``backup --stdin`` gave up after
    355 s (166 s with ``-o s3.retries=1``), exit 1, ``Fatal: unable to save snapshot:
    client.PutObject: Put "...": dial tcp ...: connect: connection refused``; with
    ``-o s3.connections=1`` it never gave up (killed after 900 s; only its lock refreshes went on
    failing). So a backup run needs a bound from outside (a timeout), and no ``s3.connections=1``.

The server is started and stopped by its PID here; its output goes to ``moto_server.log`` in the
fixture's directory under pytest's tmp dir, shown when it does not come up. A missing
``moto_server`` is a failed set-up (run scripts/venv), never a skip. Traffic goes only to 127.0.0.1.

Registered as tests/acme.py's fixtures are: a test module imports it (``from s3 import s3``) and
pytest finds it there. pytest keeps a fixture per module that imports it, so each such module
gets a server of its own, kept to the session's end.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

HOST = "127.0.0.1"
START_TIMEOUT = 20
STOP_TIMEOUT = 10


def moto_server_path():
    return Path(sys.executable).parent / "moto_server"


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class S3Server:
    """``moto_server`` on 127.0.0.1:``port`` (a free one if not given). ``start()`` runs it and waits
    until it answers, ``stop()`` ends it by its PID, ``down()`` is both as a context manager,
    ``close()`` ends it for good. A context manager too (start ... close)."""

    def __init__(self, directory, port=None, access_key="onebox-test-key", secret_key="onebox-test-secret",
                 region="us-east-1"):
        self.program = moto_server_path()
        if not os.access(self.program, os.X_OK):
            pytest.fail("set-up failed: %s is missing (moto[server] of requirements.txt: run scripts/venv)"
                        % self.program, pytrace=False)
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_file = self.dir / "moto_server.log"
        self.port = port or free_port()
        self.endpoint = "http://%s:%d" % (HOST, self.port)
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.process = None
        self._client = None

    # -- the process -------------------------------------------------------------------------------

    @property
    def pid(self):
        return self.process.pid if self.process else None

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None

    def log_tail(self, size=4000):
        try:
            return self.log_file.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def _answers(self):
        """True when the server answers an S3 ListBuckets at its endpoint (no proxy)."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.endpoint + "/", timeout=2) as response:
                return response.status == 200 and b"ListAllMyBucketsResult" in response.read()
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout=START_TIMEOUT):
        """Run the server on its port and wait (at most ``timeout`` s) until it answers; the test
        fails with its log otherwise. A start after a stop begins empty: moto keeps nothing, so
        every bucket made before is gone and a test makes the ones it needs again."""
        if self.running:
            return self
        with open(self.log_file, "ab") as log:
            log.write(b"== moto_server -H %s -p %d (%s)\n" % (HOST.encode(), self.port, time.ctime().encode()))
            log.flush()
            self.process = subprocess.Popen([str(self.program), "-H", HOST, "-p", str(self.port)],
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env=self._server_env(), start_new_session=True)
        self._client = None
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                state = ("exited with %s" % self.process.returncode if self.process.poll() is not None
                         else "did not answer within %ss" % timeout)
                self.stop()
                pytest.fail("set-up failed: moto_server on %s %s; its log (%s):\n%s"
                            % (self.endpoint, state, self.log_file, self.log_tail()), pytrace=False)
            time.sleep(0.1)
        return self

    @staticmethod
    def _server_env():
        env = dict(os.environ)
        # moto reads AWS_* itself; a set of this machine's would not belong to the test server.
        for name in list(env):
            if name.startswith("AWS_") or name.startswith("MOTO_"):
                del env[name]
        return env

    def stop(self):
        """End the server by its PID (TERM, KILL after 10 s) and wait until the port is closed.
        Moto keeps its data in memory: the buckets and objects go with it."""
        process, self.process = self.process, None
        self._client = None
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=STOP_TIMEOUT)
        with open(self.log_file, "ab") as log:
            log.write(b"== stopped (exit %d)\n" % process.returncode)

    @contextlib.contextmanager
    def down(self):
        """``with s3.down(): ...`` - the server stopped inside (connections to the endpoint are
        refused), started again on the same port on leaving, also when the block fails. Every bucket
        is gone afterwards: a test makes new ones (and so does every later test of the fixture)."""
        self.stop()
        try:
            yield self
        finally:
            self.start()

    def close(self):
        self.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # -- what a test uses --------------------------------------------------------------------------

    def client(self):
        """A boto3 S3 client of the server (path-style addressing, no proxy)."""
        if self._client is None:
            import boto3
            from botocore.config import Config
            self._client = boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                                        aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                                        config=Config(s3={"addressing_style": "path"}, proxies={},
                                                      retries={"max_attempts": 1}, connect_timeout=5,
                                                      read_timeout=30))
        return self._client

    def bucket(self, name=None):
        """Make bucket ``name`` (3-63 characters: lower case, digits, dots, hyphens; a fresh
        ``onebox-XXXXXXXX`` if None) and return its name."""
        name = name or "onebox-%s" % uuid.uuid4().hex[:8]
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket, prefix=""):
        """The keys under ``prefix`` in ``bucket``, sorted."""
        keys = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", ()))
        return sorted(keys)

    def repository(self, bucket, prefix):
        """restic's repository string for ``prefix`` in ``bucket``: s3:http://127.0.0.1:PORT/BUCKET/PREFIX."""
        return "s3:%s/%s/%s" % (self.endpoint, bucket, prefix.strip("/"))

    def env(self):
        """The environment restic needs for the server (merge it into os.environ)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": self.region}


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """moto_server on 127.0.0.1 for the session (see the module docstring); stopped by its PID at
    the end. A test that takes it down (``with s3.down()``) leaves it up but empty."""
    with S3Server(tmp_path_factory.mktemp("s3")) as server:
        yield server
