# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup agent on the LXD host (/usr/local/sbin/onebox-backup): the box's containers and volumes through LXD's backup API into restic, and back.

The backup module ships this file's source to the host (a ``#!/usr/bin/python3`` line prepended),
writes the box's configuration (/etc/onebox/backup-OWNER/config.json: its services, containers,
volumes, targets, retention) and one secrets file per target (TARGET.env: RESTIC_PASSWORD and the
target's own environment, mode 0600), and runs, as the timer does:
  onebox-backup --config FILE prepare [--check]         each target's repository there (init when missing)
  onebox-backup --config FILE backup [--check] [SERVICE...]   one run: every included service
  onebox-backup --config FILE restore [--check] [--overwrite] [--run RUN] [--target T] (--all | SERVICE...)
  onebox-backup --config FILE drill [--target T] [SERVICE...]   each newest backup restored aside, started, checked, deleted
  onebox-backup --config FILE list [SERVICE...]          the runs each service can be restored from
  onebox-backup --config FILE status                     the last run of each service (no repository read)
Each prints one JSON object on stdout (exit 0; 1 when something failed; 2 for a broken configuration
or usage) and logs ``onebox-backup: ...`` lines on stderr and in /var/log/onebox-backup-OWNER.log.

One run, per service: its ``command`` first (a database dump into a volume, say), then a snapshot
of each of its containers and volumes taken together, each snapshot copied into a temporary
stopped container or volume (instant on btrfs and zfs), LXD's backup of that copy (an uncompressed
tarball: measured here, restic de-duplicates two containers of one image to 1 MB, their
optimized btrfs streams hardly at all) streamed into one ``restic backup --stdin`` per target at
once, the copy and the snapshots deleted. So every object is read at one instant (consistent per
container and its volumes) while the service keeps running. Retention (``restic forget --prune``)
and ``restic check`` run only after every object reached every target: a failed run leaves the
earlier backups as they were. A restore streams ``restic dump`` into LXD's import API: the
container comes back with its configuration (static address, volumes, owner's mark) as it was.

Runs take the box's run lock (the converges' flock): a converge never meets the temporary copies,
nor a restore a half-converged box. Stdlib only: this runs on the host's python3.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import fcntl
import hashlib
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid

PROGRAM = "/usr/local/sbin/onebox-backup"
CONFIG_DIR = "/etc/onebox/backup-%s"  # % owner: config.json and TARGET.env
STATE_DIR = "/var/lib/onebox/backup-%s"  # % owner: last.json, restic's cache
LOG = "/var/log/onebox-backup-%s.log"  # % owner
UNIT = "onebox-backup-%s"  # % owner: .service and .timer
DRILL_UNIT = "onebox-backup-drill-%s"  # % owner: the restore drill's
TEMP_PREFIX = "obk-"  # temporary copies and imports: never a box's own name (it has no owner prefix)
SNAPSHOT = "onebox-backup"
CHUNK = 1 << 20
NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
TARGET_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
RETENTION_KEYS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
# LXD operations (snapshot, copy, backup, import) and restic commands are each bounded; an object's
# stream by the configuration's object_timeout (Watchdog), the whole run by the unit's TimeoutStartSec.
OPERATION_TIMEOUT, RESTIC_TIMEOUT, LOCK_TIMEOUT = 1800, 3600, 3600


class Failure(Exception):
    """Something failed; the run reports it and goes on with what it can."""


class ConfigError(Exception):
    """The configuration or the command line is broken: nothing was done."""


def now_iso(epoch=None):
    return datetime.datetime.fromtimestamp(epoch if epoch is not None else time.time(),
                                           datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def config_problems(config):
    """What is wrong with a configuration, as messages (an empty list when nothing is)."""
    problems = []
    if not isinstance(config, dict):
        return ["must be a JSON object"]
    if not isinstance(config.get("owner"), str) or not NAME.fullmatch(config["owner"]):
        problems.append("owner must be a name")
    for key in ("socket", "lock"):
        if not isinstance(config.get(key), str) or not config[key].startswith("/"):
            problems.append("%s must be an absolute path" % key)
    targets = config.get("targets")
    if not isinstance(targets, list) or not targets:
        problems.append("targets must be a non-empty list")
    else:
        for target in targets:
            if not isinstance(target, dict) or not TARGET_NAME.fullmatch(str(target.get("name"))) \
                    or not isinstance(target.get("repository"), str) or not target["repository"]:
                problems.append("each target needs a name and a repository (got %r)" % (target,))
    retention = config.get("retention", {})
    if not isinstance(retention, dict) or set(retention) - set(RETENTION_KEYS) or \
            not all(isinstance(n, int) and n >= 0 for n in retention.values()):
        problems.append("retention takes counts of %s" % ", ".join(RETENTION_KEYS))
    services = config.get("services")
    if not isinstance(services, list):
        problems.append("services must be a list")
    else:
        for service in services:
            if not isinstance(service, dict) or not NAME.fullmatch(str(service.get("name"))) \
                    or not isinstance(service.get("containers", []), list) \
                    or not isinstance(service.get("volumes", []), list):
                problems.append("each service needs a name, containers and volumes (got %r)" % (service,))
    return problems


# ---- LXD over its unix socket ---------------------------------------------------------------
class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("lxd", timeout=timeout)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


class Lxd:
    """The few REST calls a backup and a restore make (one connection per call: calls run in threads).

    LXD's or Incus's socket (the module found it as _lxd does): their backup, export, import,
    snapshot and exec calls are the same; exec's output records are read, then deleted, at the paths
    the operation gives (Incus keeps them under logs/exec-output/, LXD under logs/)."""

    def __init__(self, socket_path, timeout=60):
        self.socket_path, self.timeout = socket_path, timeout
        # The daemon's name in messages: Incus's sockets are in its own directories (/var/lib/incus, /run/incus).
        self.daemon = "Incus" if "/incus/" in socket_path else "LXD"

    def _connection(self, timeout=None):
        return _UnixConnection(self.socket_path, timeout or self.timeout)

    def request(self, method, path, body=None, headers=None, timeout=None):
        """The response's JSON; an error answer raises Failure with LXD's message."""
        conn = self._connection(timeout)
        streamed = hasattr(body, "read")  # an import's tarball, sent as restic dumps it
        all_headers = {"Content-Type": "application/json"} if body is not None and not streamed else {}
        all_headers.update(headers or {})
        try:
            conn.request(method, path, body=body if streamed or body is None else json.dumps(body).encode(),
                         headers=all_headers, encode_chunked=streamed)
            response = conn.getresponse()
            text = response.read()
        except OSError as e:
            raise Failure("%s %s %s: %s" % (self.daemon, method, path, e))
        finally:
            conn.close()
        try:
            answer = json.loads(text)
        except ValueError:
            raise Failure("%s %s %s: answered %d, not JSON" % (self.daemon, method, path, response.status))
        if answer.get("type") == "error" or response.status >= 400:
            raise Failure("%s %s %s: %s" % (self.daemon, method, path, answer.get("error") or response.status))
        return answer

    def call(self, method, path, body=None, headers=None, timeout=OPERATION_TIMEOUT):
        """A request, its operation waited for (bounded): the result's metadata."""
        answer = self.request(method, path, body, headers)
        if answer.get("type") != "async":
            return answer.get("metadata")
        try:
            waited = self.request("GET", "%s/wait?timeout=%d" % (answer["operation"], timeout), timeout=timeout + 30)
        except Failure:
            # Past its timeout LXD answers the operation, still running; Incus an error ("context
            # deadline exceeded"): the operation itself says which.
            waited = self.request("GET", answer["operation"])
        meta = waited.get("metadata") or {}
        if meta.get("status") != "Success":
            said = meta.get("err") or (meta.get("status") not in (None, "Running") and meta["status"])
            raise Failure("%s %s %s: %s" % (self.daemon, method, path, said or "timed out after %d s" % timeout))
        return meta

    def get(self, path):
        return self.request("GET", path).get("metadata")

    def find(self, path):
        """The object's metadata, or None when LXD has no such object."""
        try:
            return self.request("GET", path).get("metadata") or {}
        except Failure as e:
            if "not found" in str(e).lower():
                return None
            raise

    @contextlib.contextmanager
    def stream(self, path):
        """A GET whose body is read as it comes (a backup's export)."""
        conn = self._connection(OPERATION_TIMEOUT)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            if response.status >= 400:
                raise Failure("%s GET %s: %s" % (self.daemon, path, response.read()[:300].decode("utf-8", "replace")))
            yield response
        except OSError as e:
            raise Failure("%s GET %s: %s" % (self.daemon, path, e))
        finally:
            conn.close()

    def run(self, name, command, timeout):
        """``command`` in container ``name``: (exit status, stdout, stderr), bounded by ``timeout``."""
        meta = self.call("POST", "/1.0/instances/%s/exec" % name,
                         {"command": command, "record-output": True, "interactive": False,
                          "wait-for-websocket": False, "environment": {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}},
                         timeout=timeout)
        out = meta.get("metadata") or {}
        logs = []
        for key in ("1", "2"):
            path = (out.get("output") or {}).get(key)
            text = b""
            if path:
                with self.stream(path) as response:
                    text = response.read()
                try:  # the record stays on the host until deleted; a failure to delete is not the run's
                    self.request("DELETE", path)
                except Failure:
                    pass
            logs.append(text.decode("utf-8", "replace"))
        return out.get("return", -1), logs[0], logs[1]


def random_mac():
    """A locally administered unicast MAC (02:...), random: a drill container's own."""
    return "02:" + ":".join("%02x" % b for b in os.urandom(5))


def import_headers(name, pool=None):
    """An import's name (and an instance's pool) for either daemon: LXD reads X-LXD-name and
    X-LXD-pool, Incus only X-Incus-name and X-Incus-pool (it imported under the backup's own name,
    the temporary copy's), and each ignores the other's."""
    headers = {"Content-Type": "application/octet-stream", "X-LXD-name": name, "X-Incus-name": name}
    if pool:
        headers.update({"X-LXD-pool": pool, "X-Incus-pool": pool})
    return headers


# ---- restic ----------------------------------------------------------------------------------
def restic_error(output, status):
    """restic's own reason, in a few words a user can act on."""
    text = output.strip()
    lower = text.lower()
    if "wrong password" in lower or "no key found" in lower:
        return "wrong password (restic: %s)" % text.splitlines()[-1]
    if "does not exist" in lower or "is there a repository" in lower or "unable to open config file" in lower:
        return "no repository there (not initialised, or its disk or mount is gone): %s" % text.splitlines()[-1]
    lines = [line for line in text.splitlines() if line.strip()]
    return "restic exited %s: %s" % (status, " | ".join(lines[-3:]) or "no output")


class Restic:
    """restic against one target: its repository and its secrets' environment (never on a command line)."""

    def __init__(self, target, env, cache_dir, program="restic"):
        self.name, self.repository = target["name"], target["repository"]
        self.env = dict(os.environ, RESTIC_REPOSITORY=self.repository, RESTIC_CACHE_DIR=cache_dir, **env)
        self.program = program

    def command(self, *args):
        return [self.program] + list(args)

    def run(self, *args, timeout=RESTIC_TIMEOUT):
        try:
            proc = subprocess.run(self.command(*args), env=self.env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise Failure("%s: restic %s took more than %d s" % (self.name, args[0], timeout))
        except OSError as e:
            raise Failure("%s: restic: %s" % (self.name, e))
        if proc.returncode != 0:
            raise Failure("%s: %s" % (self.name, restic_error((proc.stderr or b"").decode("utf-8", "replace"), proc.returncode)))
        return proc.stdout.decode("utf-8", "replace")

    def reachable(self):
        """The repository opens with the password, and a directory one takes files."""
        self.run("cat", "config", timeout=120)
        if self.repository.startswith("/"):
            try:
                probe_directory(self.repository)
            except Failure as e:
                raise Failure("%s: %s" % (self.name, e))

    def json(self, *args, timeout=RESTIC_TIMEOUT):
        return json.loads(self.run(*(args + ("--json",)), timeout=timeout) or "null")

    def start_backup(self, filename, host, tags):
        """A ``restic backup --stdin`` process waiting for the object's bytes."""
        args = ["backup", "--stdin", "--stdin-filename", filename, "--host", host, "--json", "--quiet"]
        for tag in tags:
            args += ["--tag", tag]
        try:
            return subprocess.Popen(self.command(*args), env=self.env, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as e:
            raise Failure("%s: restic: %s" % (self.name, e))

    def start_dump(self, snapshot, filename):
        try:
            return subprocess.Popen(self.command("dump", snapshot, "/" + filename), env=self.env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as e:
            raise Failure("%s: restic: %s" % (self.name, e))


class Watchdog:
    """Kills the processes still running after ``seconds``: restic retries a failing backend (a
    disk that refuses writes, an S3 server gone) for up to about 15 minutes, and a restic that
    stops reading its stdin would block the stream feeding it for good."""

    def __init__(self, procs, seconds):
        self.seconds, self.fired = seconds, False
        self._timer = threading.Timer(seconds, self._fire, [procs])
        self._timer.daemon = True

    def _fire(self, procs):
        self.fired = True
        for proc in procs:
            if proc.poll() is None:
                proc.kill()

    def __enter__(self):
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self._timer.cancel()
        return False


def probe_directory(repository):
    """A directory repository's subdirectories each take a new file (restic would otherwise retry
    a refused write for minutes before saying so)."""
    dirs = [os.path.join(repository, d) for d in ("locks", "snapshots", "index")]
    data = os.path.join(repository, "data")
    dirs += [os.path.join(data, d) for d in sorted(os.listdir(data))] if os.path.isdir(data) else []
    for directory in dirs:
        try:
            fd, path = tempfile.mkstemp(dir=directory, prefix=".onebox-probe-")
            os.close(fd)
            os.unlink(path)
        except OSError as e:
            raise Failure("cannot write in %s: %s" % (directory, e.strerror))


def backup_summary(output):
    """The summary line of ``restic backup --json``: its snapshot id and the bytes it added."""
    for line in reversed(output.splitlines()):
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and item.get("message_type") == "summary":
            return {"snapshot": item.get("snapshot_id"), "added": item.get("data_added", 0),
                    "size": item.get("total_bytes_processed", 0)}
    raise Failure("restic backup printed no summary: %s" % output.strip()[-300:])


def tag_value(snapshot, key):
    prefix = key + "="
    return next((t[len(prefix):] for t in snapshot.get("tags") or [] if t.startswith(prefix)), None)


def object_file(kind, name):
    """The file name of an object in its restic snapshot."""
    return "%s-%s.tar" % (kind, name)


def runs_of(snapshots, service):
    """A service's runs, newest first: [{run, time, objects: {kind/name: snapshot id}}]."""
    runs = {}
    for snap in snapshots or []:
        if tag_value(snap, "service") != service:
            continue
        run = tag_value(snap, "run")
        entry = runs.setdefault(run, {"run": run, "time": snap.get("time", ""), "objects": {}})
        entry["objects"]["%s/%s" % (tag_value(snap, "kind"), tag_value(snap, "object"))] = snap.get("short_id") or snap["id"][:8]
        entry["time"] = max(entry["time"], snap.get("time", ""))
    return sorted(runs.values(), key=lambda r: (r["time"], r["run"]), reverse=True)


def objects_of(service):
    """A service's objects as the agent names them: instance/NAME..., volume/NAME..."""
    return ["instance/%s" % c for c in service.get("containers", [])] + ["volume/%s" % v for v in service.get("volumes", [])]


def complete(run, service):
    """Whether a run holds every object of the service as configured now."""
    return set(objects_of(service)) <= set(run["objects"])


class Manifest:
    """sha256 of each file of a volume's backup, read from the tarball as it streams by (what a
    drill compares the restored volume with)."""

    PREFIX = "backup/volume/"

    def __init__(self):
        self.files = {}
        self.error = None
        self._read_fd, self._write_fd = os.pipe()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        with os.fdopen(self._read_fd, "rb") as pipe:
            try:
                with tarfile.open(fileobj=pipe, mode="r|") as tar:
                    for member in tar:
                        if member.isfile() and member.name.startswith(self.PREFIX):
                            digest, source = hashlib.sha256(), tar.extractfile(member)
                            for chunk in iter(lambda: source.read(CHUNK), b""):
                                digest.update(chunk)
                            self.files[member.name[len(self.PREFIX):]] = digest.hexdigest()
            except (tarfile.TarError, OSError) as e:
                self.error = str(e)
            while pipe.read(CHUNK):  # the rest (tar's padding, or all of it after an error)
                pass

    def write(self, chunk):
        view = memoryview(chunk)
        while view:
            view = view[os.write(self._write_fd, view):]

    def close(self):
        """The manifest (None when the tarball could not be read)."""
        os.close(self._write_fd)
        self._thread.join(OPERATION_TIMEOUT)
        return self.files if self.error is None else None


def drill_name():
    return "%sdrill-%s" % (TEMP_PREFIX, uuid.uuid4().hex[:8])


# ---- the agent -------------------------------------------------------------------------------
class Agent:
    def __init__(self, config, check=False, restic="restic"):
        self.config, self.check = config, check
        owner = config["owner"]
        self.lxd = Lxd(config["socket"])
        self.log_path = config.get("log") or LOG % owner
        self.state_dir = config.get("state_dir") or STATE_DIR % owner
        self.config_dir = config.get("config_dir") or CONFIG_DIR % owner
        self.restic_program = restic
        self._log_lock = threading.Lock()

    def log(self, message):
        line = "onebox-backup: %s" % message
        sys.stderr.write(line + "\n")
        with self._log_lock, contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
            with open(self.log_path, "a", encoding="utf-8") as handle:
                handle.write("%s %s\n" % (now_iso(), line))

    # -- configuration
    def secrets(self, target):
        """The target's environment: RESTIC_PASSWORD and its own (read from TARGET.env, KEY=VALUE lines)."""
        given = os.environ.get("ONEBOX_BACKUP_SECRETS")  # a check-mode run's: not written yet
        if given:
            return dict(json.loads(given).get(target["name"]) or {})
        path = os.path.join(self.config_dir, "%s.env" % target["name"])
        env = {}
        try:
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    if "=" in line and not line.startswith("#"):
                        key, value = line.rstrip("\n").split("=", 1)
                        env[key] = value
        except OSError as e:
            raise Failure("%s: its secrets %s cannot be read: %s" % (target["name"], path, e.strerror))
        if not env.get("RESTIC_PASSWORD"):
            raise Failure("%s: %s has no RESTIC_PASSWORD" % (target["name"], path))
        return env

    def restic(self, target):
        cache = os.path.join(self.state_dir, "cache")
        return Restic(target, self.secrets(target), cache, self.restic_program)

    def targets(self, only=None):
        chosen = [t for t in self.config["targets"] if only is None or t["name"] == only]
        if not chosen:
            raise ConfigError("no target named %s (targets: %s)" % (only, ", ".join(t["name"] for t in self.config["targets"])))
        return chosen

    def services(self, names=(), all_services=False):
        known = {s["name"]: s for s in self.config["services"]}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError("no service %s in the box (services: %s)" % (", ".join(unknown), ", ".join(sorted(known))))
        if names:
            return [known[n] for n in names]
        return [s for s in self.config["services"] if all_services or s.get("include", True)]

    def pool(self):
        """The pool of the default profile's root disk: where the box's volumes are."""
        root = ((self.lxd.get("/1.0/profiles/default") or {}).get("devices") or {}).get("root") or {}
        if not root.get("pool"):
            raise Failure("the default profile has no root disk with a pool")
        return root["pool"]

    @contextlib.contextmanager
    def lock(self):
        """The box's run lock (the converges' flock), held for the whole run."""
        path = self.config["lock"]
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        started = time.monotonic()
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    if time.monotonic() - started > self.config.get("lock_timeout", LOCK_TIMEOUT):
                        raise Failure("another homelab.onebox run holds %s: waited %d s" % (path, time.monotonic() - started))
                    time.sleep(0.5)
            os.ftruncate(fd, 0)
            os.pwrite(fd, ("pid %d, onebox-backup of %s, since %s" % (os.getpid(), self.config["owner"], now_iso())).encode(), 0)
            yield
        finally:
            os.close(fd)

    # -- prepare
    def prepare(self):
        """Each target's repository: there (its config readable with the password), else made."""
        out = []
        for target in self.targets():
            restic = self.restic(target)
            try:
                restic.reachable()
                out.append({"name": target["name"], "action": "none"})
                continue
            except Failure as e:
                if "no repository there" not in str(e):
                    raise
            if not self.check:
                restic.run("init", timeout=300)
                self.log("%s: repository made at %s" % (target["name"], target["repository"]))
            out.append({"name": target["name"], "action": "init"})
        return 0, {"targets": out, "changed": any(t["action"] != "none" for t in out)}

    # -- backup
    def backup(self, names):
        services = self.services(names)
        run = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
        plan = [{"name": s["name"], "objects": objects_of(s)} for s in services]
        if self.check:
            return 0, {"run": None, "services": plan, "changed": bool(plan)}
        started = time.monotonic()
        pool = self.pool()
        targets = self.targets()
        restics = [self.restic(t) for t in targets]
        for restic in restics:  # a missing repository, a wrong password, a refused write: before anything is read
            restic.reachable()
        self.log("run %s: %s" % (run, ", ".join(s["name"] for s in services) or "nothing to back up"))
        results = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, self.config.get("parallel", 2))) as pool_exec:
            futures = [pool_exec.submit(self._backup_service, s, run, pool, restics) for s in services]
            for service, future in zip(services, futures):
                try:
                    results.append(future.result())
                except Failure as e:
                    self.log("%s: %s" % (service["name"], e))
                    results.append({"name": service["name"], "ok": False, "error": str(e)})
        failed = [r["name"] for r in results if not r["ok"]]
        maintenance = []
        if not failed:
            for restic in restics:
                maintenance.append(self._maintain(restic))
            failed += ["target %s" % m["name"] for m in maintenance if not m["ok"]]
        else:
            self.log("run %s: failed (%s); retention not applied, earlier backups untouched" % (run, ", ".join(failed)))
        self._record(run, results)
        seconds = round(time.monotonic() - started, 1)
        self.log("run %s: %s in %.1f s" % (run, "failed" if failed else "done", seconds))
        return (1 if failed else 0), {"run": run, "services": results, "targets": maintenance, "failures": failed,
                                      "seconds": seconds, "changed": True}

    def _backup_service(self, service, run, pool, restics):
        started = time.monotonic()
        name = service["name"]
        if service.get("command"):
            container = service.get("command_in") or service["containers"][0]
            status, out, err = self.lxd.run(container, service["command"], service.get("command_timeout", 600))
            if status != 0:
                raise Failure("its backup_command exited %s in %s: %s" % (status, container, (err or out).strip()[-300:]))
        snapshot = "%s-%s" % (SNAPSHOT, run)
        objects = [tuple(key.split("/", 1)) for key in objects_of(service) if self._current(key, pool) is not None]
        made = []
        try:
            # The objects' snapshots one right after the other: the service's instant.
            for kind, obj in objects:
                self.lxd.call("POST", self._object_path(kind, obj, pool) + "/snapshots", {"name": snapshot, "stateful": False}
                              if kind == "instance" else {"name": snapshot})
                made.append((kind, obj))
            stored = {}
            for kind, obj in objects:
                stored["%s/%s" % (kind, obj)] = self._backup_object(kind, obj, snapshot, name, run, pool, restics)
        finally:
            for kind, obj in made:
                with contextlib.suppress(Failure):
                    self.lxd.call("DELETE", "%s/snapshots/%s" % (self._object_path(kind, obj, pool), snapshot))
        seconds = round(time.monotonic() - started, 1)
        added = sum(t["added"] for o in stored.values() for t in o.values())
        self.log("%s: %d object(s) in %.1f s, %d bytes new" % (name, len(objects), seconds, added))
        return {"name": name, "ok": True, "objects": stored, "seconds": seconds, "added": added}

    @staticmethod
    def _object_path(kind, name, pool):
        if kind == "instance":
            return "/1.0/instances/%s" % name
        return "/1.0/storage-pools/%s/volumes/custom/%s" % (pool, name)

    def _backup_object(self, kind, name, snapshot, service, run, pool, restics):
        """One object's snapshot, copied, backed up by LXD, streamed into every target: {target: summary}."""
        temp = TEMP_PREFIX + uuid.uuid4().hex[:12]
        if kind == "instance":
            # As `lxc copy` does: the snapshot's own profiles, config (LXD's volatile keys aside) and devices.
            snap = self.lxd.get("/1.0/instances/%s/snapshots/%s" % (name, snapshot)) or {}
            self.lxd.call("POST", "/1.0/instances", {
                "name": temp, "profiles": snap.get("profiles") or [], "devices": snap.get("devices") or {},
                "config": {k: v for k, v in (snap.get("config") or {}).items() if not k.startswith("volatile.")},
                "source": {"type": "copy", "source": "%s/%s" % (name, snapshot), "instance_only": True}})
        else:
            self.lxd.call("POST", "/1.0/storage-pools/%s/volumes/custom" % pool,
                          {"name": temp, "type": "custom", "source": {"type": "copy", "pool": pool, "name": "%s/%s" % (name, snapshot),
                                                                      "volume_only": True}})
        temp_path = self._object_path(kind, temp, pool)
        try:
            body = {"name": "onebox", "optimized_storage": False, "compression_algorithm": "none",
                    "expires_at": now_iso(time.time() + 86400).replace("Z", "+00:00")}
            body["instance_only" if kind == "instance" else "volume_only"] = True
            self.lxd.call("POST", temp_path + "/backups", body)
            tags = ["onebox", "service=%s" % service, "run=%s" % run, "kind=%s" % kind, "object=%s" % name]
            manifest = Manifest() if kind == "volume" else None
            try:
                with self.lxd.stream(temp_path + "/backups/onebox/export") as response:
                    stored = self._into_restic(response, object_file(kind, name), tags, restics, manifest)
            finally:
                files = manifest.close() if manifest is not None else None  # its reader ends, the run failed or not
            if manifest is not None:
                self._save_manifest(run, name, files)
            return stored
        finally:
            with contextlib.suppress(Failure):
                self.lxd.call("DELETE", temp_path)

    def _into_restic(self, response, filename, tags, restics, manifest=None):
        """The export's bytes into one restic process per target at once (and the manifest's reader)."""
        procs = [(r, r.start_backup(filename, self.config["owner"], tags)) for r in restics]
        broken = {}
        readers = {}
        limit = self.config.get("object_timeout", RESTIC_TIMEOUT)
        with Watchdog([proc for _r, proc in procs], limit) as watchdog, \
                concurrent.futures.ThreadPoolExecutor(max_workers=2 * len(procs)) as io:
            for restic, proc in procs:  # their output read as it comes: a full pipe would stall them
                readers[restic.name] = (io.submit(proc.stdout.read), io.submit(proc.stderr.read))
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                if manifest is not None:
                    manifest.write(chunk)
                for restic, proc in procs:
                    if restic.name in broken:
                        continue
                    try:
                        proc.stdin.write(chunk)
                    except OSError as e:
                        broken[restic.name] = str(e)
            out = {}
            for restic, proc in procs:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
                try:
                    proc.wait(timeout=RESTIC_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                stdout = readers[restic.name][0].result().decode("utf-8", "replace")
                stderr = readers[restic.name][1].result().decode("utf-8", "replace")
                if watchdog.fired and proc.returncode != 0:
                    raise Failure("%s: restic backup of %s took more than %d s (object_timeout): %s" % (
                        restic.name, filename, limit, " | ".join(stderr.strip().splitlines()[-2:])))
                if proc.returncode != 0:
                    raise Failure("%s: %s" % (restic.name, restic_error(stderr or stdout, proc.returncode)))
                out[restic.name] = backup_summary(stdout)
        return out

    def _maintain(self, restic):
        """Retention, then the repository's own check, on one target."""
        retention = self.config.get("retention") or {}
        keep = [arg for key in RETENTION_KEYS if retention.get(key) for arg in ("--keep-%s" % key, str(retention[key]))]
        try:
            if keep:  # no retention given: keep everything
                restic.run("forget", "--host", self.config["owner"], "--tag", "onebox", "--group-by", "host,paths", "--prune", *keep)
            if self.config.get("check", True):
                restic.run("check")
            return {"name": restic.name, "ok": True}
        except Failure as e:
            self.log(str(e))
            return {"name": restic.name, "ok": False, "error": str(e)}

    def _record(self, run, results):
        """last.json: per service, its last run and its last good one (what status and the module show)."""
        state = self.read_state()
        stamp = now_iso()
        for result in results:
            entry = state.setdefault(result["name"], {})
            entry.update(last_run=run, last_time=stamp, ok=result["ok"], error=result.get("error"))
            if result["ok"]:
                entry.update(last_good_run=run, last_good_time=stamp, objects=result["objects"])
        self._write_state(state)

    def _write_state(self, state):
        path = os.path.join(self.state_dir, "last.json")
        os.makedirs(self.state_dir, exist_ok=True)
        temp = path + ".tmp"
        with open(temp, "w", encoding="utf-8") as handle:
            json.dump(state, handle, sort_keys=True, indent=1)
        os.replace(temp, path)

    def read_state(self):
        try:
            with open(os.path.join(self.state_dir, "last.json"), encoding="utf-8") as handle:
                state = json.load(handle)
            return state if isinstance(state, dict) else {}
        except (OSError, ValueError):
            return {}

    def _manifest_path(self, run, volume):
        return os.path.join(self.state_dir, "manifests", run, "%s.json" % volume)

    def _save_manifest(self, run, volume, files):
        if files is None:
            return
        path = self._manifest_path(run, volume)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(files, handle, sort_keys=True)

    def _load_manifest(self, run, volume):
        try:
            with open(self._manifest_path(run, volume), encoding="utf-8") as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return None

    # -- drill
    def drill(self, names, target=None):
        """Each service's newest backup restored into a throwaway container of its own (no static
        address, no forwards, no sites, no owner's mark; its volumes copies), started, its
        volumes' files compared with what the backup read, deleted. Recorded; any failure fails."""
        services = [s for s in self.services(names) if s.get("containers")]
        restic = self.restic(self.targets(target)[0])
        if self.check:
            return 0, {"target": restic.name, "services": [{"name": s["name"]} for s in services], "changed": False}
        snaps, pool = self.snapshots(restic), self.pool()
        results = []
        for service in services:
            started = time.monotonic()
            try:
                run = next((r for r in runs_of(snaps, service["name"]) if complete(r, service)), None)
                if run is None:
                    raise Failure("no backup holds all of it")
                checked = self._drill_service(service, run, restic, pool)
                results.append({"name": service["name"], "ok": True, "run": run["run"], "files_checked": checked,
                                "seconds": round(time.monotonic() - started, 1)})
                self.log("drill %s: run %s restored, started, %d file(s) as backed up" % (service["name"], run["run"], checked))
            except Failure as e:
                self.log("drill %s: FAILED: %s" % (service["name"], e))
                results.append({"name": service["name"], "ok": False, "error": str(e)})
        self._record_drills(results)
        failed = [r["name"] for r in results if not r["ok"]]
        return (1 if failed else 0), {"target": restic.name, "services": results, "failures": failed, "changed": False}

    def _drill_service(self, service, run, restic, pool):
        base = drill_name()
        volumes = {name: "%s-%d" % (base, i) for i, name in enumerate(service.get("volumes", []))}
        made = []
        try:
            for volume, temp in volumes.items():
                self._import("volume", volume, run["objects"]["volume/%s" % volume], restic, pool, as_name=temp)
                made.append(("volume", temp))
            container = service["containers"][0]
            self._import("instance", container, run["objects"]["instance/%s" % container], restic, pool, as_name=base)
            made.insert(0, ("instance", base))
            self._detach(base, volumes)
            self.lxd.call("PUT", "/1.0/instances/%s/state" % base, {"action": "start", "timeout": 60}, timeout=120)
            checked = 0
            devices = (self.lxd.get("/1.0/instances/%s" % base) or {}).get("devices") or {}
            for device in devices.values():
                temp = device.get("source")
                volume = next((v for v, t in volumes.items() if t == temp), None)
                if device.get("type") != "disk" or volume is None:
                    continue
                want = self._load_manifest(run["run"], volume)
                status, out, err = self.lxd.run(base, ["sh", "-c", 'cd "$1" && find . -type f -exec sha256sum {} +', "-", device["path"]], 300)
                if status != 0:
                    raise Failure("reading %s in the drill's container: %s" % (device["path"], err.strip()[-200:]))
                got = {line[68:]: line[:64] for line in out.splitlines() if line[64:68] == "  ./"}
                if want is not None and got != want:
                    differ = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
                    raise Failure("volume %s restored differs from its backup in %d file(s): %s" % (volume, len(differ), ", ".join(differ[:5])))
                checked += len(got)
            return checked
        finally:
            for kind, temp in made:
                with contextlib.suppress(Failure):
                    self._remove(kind, temp, pool)

    def _detach(self, name, volumes):
        """The drill's container made a stranger: its volumes the drill's copies, no static
        address, a MAC of its own, no owner's mark (no converge prunes or adopts it), no autostart."""
        current = self.lxd.get("/1.0/instances/%s" % name) or {}
        devices = {}
        for dev, conf in (current.get("devices") or {}).items():
            conf = dict(conf)
            if conf.get("type") == "disk" and conf.get("source") in volumes:
                conf["source"] = volumes[conf["source"]]
            devices[dev] = conf
        for dev, conf in (current.get("expanded_devices") or {}).items():
            if conf.get("type") == "nic":
                # A MAC of its own (the live container's would clash on the bridge), given on the
                # device: Incus checks an update against the imported volatile MAC, the live
                # container's, and refuses it ("already defined on another NIC"); LXD would make one.
                conf = dict(devices.get(dev) or conf, hwaddr=random_mac())
                conf.pop("ipv4.address", None)
                devices[dev] = conf
        config = {k: v for k, v in (current.get("config") or {}).items()
                  if not k.startswith("user.onebox.") and not (k.startswith("volatile.") and k.endswith(".hwaddr"))}
        config.update({"user.onebox.drill": self.config["owner"], "boot.autostart": "false"})
        self.lxd.call("PUT", "/1.0/instances/%s" % name, {
            "architecture": current.get("architecture"), "config": config, "devices": devices,
            "profiles": current.get("profiles") or [], "ephemeral": False, "description": "homelab.onebox restore drill"})

    def _record_drills(self, results):
        state = self.read_state()
        for result in results:
            state.setdefault(result["name"], {}).update(drill_time=now_iso(), drill_ok=result["ok"], drill_error=result.get("error"),
                                                        drill_run=result.get("run"))
        self._write_state(state)

    # -- list, status
    def snapshots(self, restic):
        return restic.json("snapshots", "--host", self.config["owner"], "--tag", "onebox", timeout=300) or []

    def list(self, names, target=None):
        restic = self.restic(self.targets(target)[0])
        snaps = self.snapshots(restic)
        services = self.services(names, all_services=True)
        return 0, {"target": restic.name, "services": [{"name": s["name"], "runs": runs_of(snaps, s["name"])} for s in services],
                   "changed": False}

    def status(self):
        state, now = self.read_state(), time.time()
        out = []
        for service in self.config["services"]:
            entry = dict(state.get(service["name"], {}), name=service["name"], include=service.get("include", True))
            good = entry.get("last_good_time")
            if good:
                entry["age_seconds"] = int(now - datetime.datetime.strptime(good, "%Y-%m-%dT%H:%M:%SZ").replace(
                    tzinfo=datetime.timezone.utc).timestamp())
            entry.pop("objects", None)
            out.append(entry)
        return 0, {"services": out, "changed": False}

    # -- restore
    def restore(self, names, all_services=False, run=None, target=None, overwrite=False):
        services = self.services(names, all_services=all_services) if (names or all_services) else []
        if not services:
            raise ConfigError("restore needs SERVICE... or --all")
        restic = self.restic(self.targets(target)[0])
        snaps = self.snapshots(restic)
        pool = self.pool()
        plan = []
        for service in services:
            runs = [r for r in runs_of(snaps, service["name"]) if run is None or r["run"] == run]
            chosen = next((r for r in runs if complete(r, service)), None)
            if chosen is None:
                raise Failure("%s: no backup%s holds all of it (%s) in target %s" % (
                    service["name"], " of run %s" % run if run else "", ", ".join(objects_of(service)), restic.name))
            present = []
            for key in sorted(chosen["objects"]):
                current = self._current(key, pool)
                if current is None:
                    continue
                mark = (current.get("config") or {}).get("user.onebox.owner")
                if mark != self.config["owner"]:
                    raise Failure("%s: %s exists and is not marked as %s's (%s): never replaced" % (
                        service["name"], key, self.config["owner"], mark))
                present.append(key)
            if present and not overwrite:
                raise Failure("%s: %s exist(s) on the box: restoring replaces them; say overwrite to do it" % (
                    service["name"], ", ".join(present)))
            plan.append({"name": service["name"], "run": chosen["run"], "time": chosen["time"], "objects": chosen["objects"],
                         "replaces": present})
        if self.check:
            return 0, {"target": restic.name, "services": plan, "changed": True}
        started = time.monotonic()
        for item in plan:
            self._restore_service(item, restic, pool)
        return 0, {"target": restic.name, "services": plan, "seconds": round(time.monotonic() - started, 1), "changed": True}

    def _restore_service(self, item, restic, pool):
        """Its containers stopped and deleted, its volumes deleted (each checked for the owner's mark
        in the plan), each imported from the backup, the containers started."""
        objects = sorted(item["objects"].items(), key=lambda kv: kv[0].startswith("instance/"))  # volumes first
        for key in sorted(item["replaces"], key=lambda k: not k.startswith("instance/")):  # containers first
            self._remove(*key.split("/", 1), pool=pool)
        for key, snapshot in objects:
            kind, name = key.split("/", 1)
            self._import(kind, name, snapshot, restic, pool)
        for key, _snapshot in objects:
            kind, name = key.split("/", 1)
            if kind == "instance":
                self.lxd.call("PUT", "/1.0/instances/%s/state" % name, {"action": "start", "timeout": 60}, timeout=120)
                self._wait_address(name)
        self.log("%s: restored from run %s (%s)" % (item["name"], item["run"], ", ".join(sorted(item["objects"]))))

    def _current(self, key, pool):
        """Object ``kind/name`` as LXD has it, or None when it has none."""
        return self.lxd.find(self._object_path(*key.split("/", 1), pool=pool))

    def _remove(self, kind, name, pool):
        """An object gone: a container stopped (forced) first, then deleted."""
        path = self._object_path(kind, name, pool)
        if kind == "instance":
            with contextlib.suppress(Failure):
                self.lxd.call("PUT", path + "/state", {"action": "stop", "force": True, "timeout": 30}, timeout=60)
        self.lxd.call("DELETE", path)

    def _wait_address(self, name, timeout=60):
        """Until the container has an IPv4 address (its network up: what forwards and sites reach)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            network = (self.lxd.get("/1.0/instances/%s/state" % name) or {}).get("network") or {}
            if any(a.get("family") == "inet" and a.get("scope") == "global"
                   for nic, info in network.items() if nic != "lo" for a in info.get("addresses") or []):
                return
            time.sleep(0.2)
        raise Failure("%s started but has no IPv4 address after %d s" % (name, timeout))

    def _import(self, kind, name, snapshot, restic, pool, as_name=None):
        """Object ``name`` of restic snapshot ``snapshot`` into LXD (as ``as_name``)."""
        proc = restic.start_dump(snapshot, object_file(kind, name))
        path = "/1.0/instances" if kind == "instance" else "/1.0/storage-pools/%s/volumes/custom" % pool
        headers = import_headers(as_name or name, pool if kind == "instance" else None)
        try:
            with Watchdog([proc], self.config.get("object_timeout", RESTIC_TIMEOUT)):
                self.lxd.call("POST", path, proc.stdout, headers)
        finally:
            try:
                proc.stdout.close()
                proc.wait(timeout=RESTIC_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
            err = proc.stderr.read().decode("utf-8", "replace")
        if proc.returncode != 0:
            raise Failure("%s/%s: restic dump: %s" % (kind, name, restic_error(err, proc.returncode)))


def _command(agent, argv):
    cmd, rest = argv[0], argv[1:]
    flags = {a for a in rest if a in ("--check", "--overwrite", "--all")}
    values, names, i = {}, [], 0
    while i < len(rest):
        arg = rest[i]
        if arg in ("--run", "--target"):
            if i + 1 >= len(rest):
                raise ConfigError("%s needs a value" % arg)
            values[arg[2:]] = rest[i + 1]
            i += 2
            continue
        if arg.startswith("-") and arg not in flags:
            raise ConfigError("unknown flag %s" % arg)
        if not arg.startswith("-"):
            names.append(arg)
        i += 1
    commands = {  # name -> (what it does, whether it changes the box: then under the run lock)
        "prepare": (agent.prepare, False),
        "backup": (lambda: agent.backup(names), True),
        "restore": (lambda: agent.restore(names, all_services="--all" in flags, run=values.get("run"),
                                          target=values.get("target"), overwrite="--overwrite" in flags), True),
        "drill": (lambda: agent.drill(names, values.get("target")), True),
        "list": (lambda: agent.list(names, values.get("target")), False),
        "status": (agent.status, False),
    }
    if cmd not in commands:
        raise ConfigError("usage: onebox-backup --config FILE prepare|backup|restore|drill|list|status ... (got %s)" % cmd)
    function, locked = commands[cmd]
    with agent.lock() if locked and not agent.check else contextlib.nullcontext():
        return function()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    agent = None
    try:
        if len(argv) < 3 or argv[0] != "--config":
            raise ConfigError("usage: onebox-backup --config FILE prepare|backup|restore|drill|list|status ...")
        path = argv[1]
        text = os.environ.get("ONEBOX_BACKUP_CONFIG")  # a check-mode run gives the configuration it would write
        if text is None:
            try:
                with open(path, encoding="utf-8") as handle:
                    text = handle.read()
            except OSError as e:
                raise ConfigError("%s: %s" % (path, e.strerror))
        try:
            config = json.loads(text)
        except ValueError as e:
            raise ConfigError("%s is not JSON: %s" % (path, e))
        problems = config_problems(config)
        if problems:
            raise ConfigError("%s: %s" % (path, "; ".join(problems)))
        agent = Agent(config, check="--check" in argv[3:], restic=os.environ.get("ONEBOX_BACKUP_RESTIC", "restic"))
        status, result = _command(agent, argv[2:])
    except ConfigError as e:
        status, result = 2, {"error": str(e)}
    except (Failure, OSError) as e:
        status, result = 1, {"error": str(e)}
        if agent is not None:
            agent.log(str(e))
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())  # pylint: disable=ansible-bad-function
