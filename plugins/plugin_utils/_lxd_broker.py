# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lxd connection's broker: one local process per daemon (and per version of this code) that
holds one warm LxdClient and the agents it started in the containers (_lxd_agent), and serves the
connection's workers over a unix socket; both its sides.

Why: Ansible forks a new worker for every task on every host, and importing pylxd there costs
~100 ms and a client ~18 ms, far more than a task's own work. The worker side here (``open_broker``,
``Channel``) imports only the standard library; the broker side (``Broker``, ``main``) imports
module_utils._lxd when it runs, once, in its own process (``python _lxd_broker.py``), like SSH's
ControlPersist or ansible-connection.

Where: a socket in ``~/.ansible/onebox-lxd/`` (0700, the user's), named from a hash of the daemon's
options, of $LXD_DIR/$INCUS_DIR, of the Python, and of this code's, _lxd_agent's and _lxd.py's size and mtime (an
edited collection never talks to an old broker); its log (stderr) beside it. Two workers that find
no broker start one under an fcntl lock. The broker exits by itself after ``persist`` idle seconds.

The protocol: one JSON object a line each way; bytes as base64. Requests: hello, state, user, exec,
put, fetch. An answer is ``{"ok": true, ...}`` or ``{"ok": false, "kind": KIND, "error": TEXT}``
(KIND: unreachable, notfound, error)."""
from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid

from ansible_collections.homelab.onebox.plugins.plugin_utils import _lxd_agent as agent_program
from ansible_collections.homelab.onebox.plugins.plugin_utils._lxd_agent import Agent, AgentError

DIRECTORY = os.path.join("~", ".ansible", "onebox-lxd")
MARGIN = 30            # seconds a worker waits for an answer beyond the request's own time
START_TIMEOUT = 30     # seconds for a new broker's socket to answer
KILL_AFTER = 5         # seconds between timeout's TERM and its KILL inside the container
TIMED_OUT = (124, 137)  # timeout's exit codes: the command got TERM (124) or, still alive, KILL (137)
STATE_TTL = 2.0        # seconds a Running state is taken as still true (a task's _connect asks again)
AGENT_RETRY = 10.0     # seconds before an agent that could not start (no python3 yet) is tried again
AGENT_PUT_MAX = 4 << 20  # bytes: a file up to this size goes through the agent, a larger one streams (files API)
SOCKET_MAX = 100       # a unix socket path is limited to 108 bytes


class BrokerError(Exception):
    """What the broker (or reaching it) said went wrong; ``kind``: unreachable, notfound, error, gone
    (the broker closed or is not there: the worker may start one and ask again)."""

    def __init__(self, message, kind="error"):
        super().__init__(message)
        self.kind = kind


# ---- the protocol: one JSON object a line -------------------------------------------------------
def encode(message):
    return json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n"


def decode(line):
    message = json.loads(line.decode("utf-8"))
    if not isinstance(message, dict):
        raise ValueError("not an object: %r" % (message,))
    return message


def to_b64(data):
    return None if data is None else base64.b64encode(data).decode("ascii")


def from_b64(text):
    return None if text is None else base64.b64decode(text.encode("ascii"))


# ---- what runs in the container --------------------------------------------------------------
# The command under coreutils timeout, its exit code written after its stderr as NONCE<rc> (no
# newline): LXD turns an exec that exits 126 or 127 into a failed operation ("Command not found")
# and drops its output, but Ansible needs both (a missing setfacl is how it learns to chmod).
RUN = 'timeout -k %d "$1" /bin/sh -c "$2"; printf "%%s%%d" "$3" "$?" >&2' % KILL_AFTER
# Pipelined: stdin from the file the input was written to, opened, then removed, then the command.
RUN_WITH_INPUT = 'exec <"$4" && rm -f -- "$4" && { %s; }' % RUN


def exec_argv(command, timeout, nonce, stdin_path=None):
    """The argv of a task's command: killed inside the container after ``timeout`` seconds (TERM,
    then KILL ``KILL_AFTER`` s later, by coreutils timeout), its exit code after its stderr behind
    ``nonce``, and, when pipelined, reading its stdin from ``stdin_path`` (record-output exec takes
    no stdin, so the input goes in with one files-API call before)."""
    argv = ["/bin/sh", "-c", RUN if stdin_path is None else RUN_WITH_INPUT, "onebox", str(int(timeout)), command, nonce]
    return argv + ([stdin_path] if stdin_path is not None else [])


def split_status(rc, stderr, nonce):
    """(the command's exit code, its stderr) out of what the wrapper of exec_argv gave: the code
    it wrote behind ``nonce``; the exec's own when there is none (the wrapper itself failed)."""
    marker = nonce.encode("ascii")
    at = stderr.rfind(marker)
    tail = stderr[at + len(marker):] if at >= 0 else b""
    if at < 0 or not tail.isdigit():
        return rc, stderr
    return int(tail), stderr[:at]


def new_nonce():
    return "ONEBOX-RC-%s:" % uuid.uuid4().hex


def stdin_path():
    """A fresh name for a pipelined task's stdin in the container."""
    return "/tmp/.onebox-stdin-%s" % uuid.uuid4().hex


def parse_passwd(line):
    """(uid, gid, home) out of a ``getent passwd`` line, or None."""
    fields = line.strip().split(":")
    if len(fields) < 7 or not fields[2].isdigit() or not fields[3].isdigit():
        return None
    return int(fields[2]), int(fields[3]), fields[5] or "/"


def user_environment(name, home):
    return {"HOME": home, "USER": name, "LOGNAME": name}


def timed_out(rc, elapsed, timeout):
    """Whether an exec's rc is timeout's (and not the command's own 124): it ran the whole time."""
    return rc in TIMED_OUT and elapsed >= timeout


# ---- the messages a worker raises ------------------------------------------------------------
def where(daemon, endpoint):
    """'the LXD daemon at /var/lib/lxd/unix.socket'."""
    return "the %s daemon at %s" % (daemon or "LXD or Incus", endpoint)


def not_running_message(name, status, daemon, endpoint):
    if status is None:
        return "no container %s on %s (onebox_lxd_instance / ansible_host name it)" % (name, where(daemon, endpoint))
    return ("container %s is %s on %s: start it (converging the box starts its containers)"
            % (name, status, where(daemon, endpoint)))


# ---- the worker's side -----------------------------------------------------------------------
def code_identity(files):
    """Size and mtime of each file (the broker's code): a changed file names a new broker."""
    parts = []
    for path in files:
        try:
            info = os.stat(path)
            parts.append("%s:%d:%d" % (os.path.basename(path), info.st_size, info.st_mtime_ns))
        except OSError:
            parts.append("%s:-" % os.path.basename(path))
    return ";".join(parts)


def socket_name(options, persist, identity, environ=None, python=None):
    """The broker's name: a hash of what makes it the right one to ask (its idle time too: a
    broker keeps the one it started with)."""
    environ = os.environ if environ is None else environ
    key = {"options": options, "persist": float(persist), "code": identity, "python": python or sys.executable,
           "env": [environ.get("LXD_DIR"), environ.get("INCUS_DIR")]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:20]


def broker_dir(directory=None):
    """The user's broker directory, made 0700; refused when another user owns it or others may enter."""
    directory = os.path.expanduser(directory or DIRECTORY)
    if len(os.path.join(directory, "x" * 20 + ".sock")) > SOCKET_MAX:  # a long $HOME: a shorter place of the user's
        directory = os.path.join("/tmp", "onebox-lxd-%d" % os.getuid())
    os.makedirs(directory, mode=0o700, exist_ok=True)
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise BrokerError("the broker's directory %s must be a directory of uid %d with mode 0700 (it is uid %d, mode %o)"
                          % (directory, os.getuid(), info.st_uid, stat.S_IMODE(info.st_mode)), "unreachable")
    return directory


def collection_root(path=None):
    """The directory holding ansible_collections/ that this file was loaded from (the broker's
    sys.path), or None when this file does not sit in such a tree."""
    path = os.path.abspath(path or __file__)
    parts = path.split(os.sep)
    if parts[-6:-2] == ["ansible_collections", "homelab", "onebox", "plugins"]:
        return os.sep.join(parts[:-6]) or os.sep
    return None


def code_files(path=None):
    here = os.path.dirname(os.path.abspath(path or __file__))
    return [os.path.join(here, "_lxd_broker.py"), os.path.join(here, "_lxd_agent.py"),
            os.path.join(os.path.dirname(here), "module_utils", "_lxd.py")]


def socket_path(options, persist, directory):
    """Where the broker for these options listens (tests find theirs here)."""
    return os.path.join(directory, socket_name(options, persist, code_identity(code_files())) + ".sock")


class Channel:
    """A worker's line to the broker: one request at a time, each answer awaited with a timeout."""

    def __init__(self, sock):
        self._sock = sock
        self._reader = sock.makefile("rb")

    def request(self, op, wait, **fields):
        """Send one request and return its answer, waiting at most ``wait`` seconds for it."""
        fields["op"] = op
        try:
            self._sock.settimeout(wait)
            self._sock.sendall(encode(fields))
            line = self._reader.readline()
        except socket.timeout:
            self.close()
            raise BrokerError("the broker did not answer %s within %s s" % (op, wait))
        except OSError as exc:
            self.close()
            raise BrokerError("the broker's socket failed during %s: %s" % (op, exc), "gone")
        if not line:
            self.close()
            raise BrokerError("the broker closed its socket during %s" % op, "gone")
        answer = decode(line)
        if not answer.get("ok"):
            raise BrokerError(answer.get("error") or "the broker failed %s" % op, answer.get("kind") or "error")
        return answer

    def close(self):
        for thing in (self._reader, self._sock):
            try:
                thing.close()
            except OSError:
                pass


def _connect(path, timeout):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def _greet(path, timeout):
    """A channel to the broker at ``path`` that answered hello, or BrokerError(kind gone)."""
    try:
        channel = Channel(_connect(path, timeout))
    except OSError as exc:
        raise BrokerError("no broker at %s: %s" % (path, exc), "gone")
    try:
        hello = channel.request("hello", timeout)
    except BrokerError:
        channel.close()
        raise
    return channel, hello


def _tail(path, size=2000):
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - size))
            return handle.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def start_broker(path, options, persist, log_path, root, python=None, popen=subprocess.Popen,
                 greet=_greet, timeout=START_TIMEOUT, sleep=time.sleep):
    """Start a broker for ``path`` and return (channel, hello) once it answered; BrokerError
    (unreachable) quoting its log when it exits or does not answer within ``timeout``."""
    try:
        os.unlink(path)  # a stale socket of a broker gone (we hold the lock: no live one answers here)
    except FileNotFoundError:
        pass
    env = dict(os.environ)
    if root:
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    argv = [python or sys.executable, code_files()[0], "--socket", path, "--persist", str(persist),
            "--options", json.dumps(options)]
    with open(log_path, "wb") as log:
        proc = popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                     start_new_session=True, close_fds=True, env=env)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return greet(path, timeout)
        except BrokerError as exc:
            if exc.kind != "gone":
                raise
        if proc.poll() is not None:
            raise BrokerError("the lxd connection's broker exited (%s) at its start; its log %s says: %s"
                              % (proc.returncode, log_path, _tail(log_path) or "nothing"), "unreachable")
        if time.monotonic() >= deadline:
            raise BrokerError("the lxd connection's broker (pid %s) did not answer on %s within %s s; its log %s says: %s"
                              % (proc.pid, path, timeout, log_path, _tail(log_path) or "nothing"), "unreachable")
        sleep(0.02)


def open_broker(options, persist, directory=None, greet=_greet, start=start_broker, timeout=START_TIMEOUT):
    """A channel to the broker for these daemon options, starting one when none answers (under a
    lock, so workers racing start one); returns (channel, hello)."""
    directory = broker_dir(directory)
    path = socket_path(options, persist, directory)
    name = os.path.basename(path)[:-len(".sock")]
    try:
        return greet(path, timeout)
    except BrokerError as exc:
        if exc.kind != "gone":
            raise
    with open(os.path.join(directory, name + ".lock"), "ab") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            try:  # another worker may have started it while we waited for the lock
                return greet(path, timeout)
            except BrokerError as exc:
                if exc.kind != "gone":
                    raise
            return start(path, options, persist, os.path.join(directory, name + ".log"), collection_root(),
                         timeout=timeout)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# ---- the broker's side -----------------------------------------------------------------------
class Broker:
    """Answers requests with one client (made on the first request; ``make_client`` makes it);
    ``error_type``: what the client raises (_lxd.LxdError)."""

    def __init__(self, options, make_client, error_type, clock=time.monotonic):
        self.options = options
        self.error_type = error_type
        self._make_client = make_client
        self._client = None
        self._client_lock = threading.Lock()
        self._clock = clock
        self._states = {}   # instance -> (when, record): a Running state recently read
        self._users = {}    # (instance, created_at, user) -> (uid, gid, home)
        self._cache_lock = threading.Lock()
        self._agents = {}   # (instance, uid) -> Agent, or the time it could not start
        self._agent_locks = {}

    def log(self, text):
        sys.stderr.write("%s\n" % text)
        sys.stderr.flush()

    def client(self):
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client(self.options)
            return self._client

    def close(self):
        with self._cache_lock:
            agents = [agent for agent in self._agents.values() if isinstance(agent, Agent)]
        for agent in agents:
            agent.close()
        if self._client is not None:
            self._client.close()

    # ---- the agents: one a container and user, running the commands (plugin_utils._lxd_agent) ----
    def _known_agent(self, key):
        """(the live agent for ``key`` or None, whether its start failed less than AGENT_RETRY s ago)."""
        with self._cache_lock:
            known = self._agents.get(key)
        if isinstance(known, Agent):
            return (known if known.alive else None), False
        return None, known is not None and self._clock() - known < AGENT_RETRY

    def agent(self, name, user=None, start=True):
        """The running agent for this container and user (None: root), started when there is none
        and ``start``; None when it cannot be (no python3 in the container: tried again after
        AGENT_RETRY s; a daemon over https)."""
        client = self.client()
        if not client.endpoint.startswith("/"):
            return None
        key = (name, user["uid"] if user else 0)
        found, failed_lately = self._known_agent(key)
        if found is not None or failed_lately or not start:
            return found
        with self._cache_lock:
            lock = self._agent_locks.setdefault(key, threading.Lock())
        with lock:
            found, failed_lately = self._known_agent(key)  # another thread may have started it meanwhile
            if found is not None or failed_lately:
                return found
            env = user_environment(user["name"], user["home"]) if user else {}
            uid, gid, cwd = (user["uid"], user["gid"], user["home"]) if user else (None, None, None)

            def open_stream(on_stdout, on_stderr, on_close):
                return client.exec_stream(name, ["python3", "-c", agent_program.PROGRAM, agent_program.NAME],
                                          on_stdout, on_stderr, on_close, environment=env, cwd=cwd, user=uid, group=gid)
            try:
                found = Agent(open_stream)
            except (AgentError, self.error_type) as exc:
                self.log("no agent in %s for uid %s (each command is an exec of its own): %s" % (name, key[1], exc))
                found = self._clock()
            else:
                self.log("agent pid %s in %s for uid %s" % (found.pid, name, key[1]))
            with self._cache_lock:
                self._agents[key] = found
            return found if isinstance(found, Agent) else None

    def handle(self, request):
        """The answer to one request."""
        op = request.get("op")
        method = getattr(self, "op_%s" % op, None)
        if method is None:
            return {"ok": False, "kind": "error", "error": "the broker knows no request %r" % (op,)}
        try:
            answer = method(request)
        except BrokerError as exc:
            return {"ok": False, "kind": exc.kind, "error": str(exc)}
        except self.error_type as exc:
            return {"ok": False, "kind": "error", "error": str(exc)}
        answer["ok"] = True
        return answer

    def _client_or_unreachable(self):
        try:
            return self.client()
        except self.error_type as exc:
            raise BrokerError(str(exc), "unreachable")

    def op_hello(self, request):
        client = self._client_or_unreachable()
        return {"pid": os.getpid(), "daemon": client.daemon, "endpoint": client.endpoint}

    def _record(self, name, fresh=False):
        now = self._clock()
        with self._cache_lock:
            known = self._states.get(name)
        if known and not fresh and now - known[0] < STATE_TTL:
            return known[1]
        record = self.client().instance(name, state=False)
        if record is not None and record.get("status") == "Running":
            with self._cache_lock:
                self._states[name] = (now, record)
        else:
            with self._cache_lock:
                self._states.pop(name, None)
        return record

    def op_state(self, request):
        record = self._record(request["name"])
        return {"status": None if record is None else record.get("status")}

    def op_user(self, request):
        name, user = request["name"], request["user"]
        record = self._record(name) or {}
        key = (name, record.get("created_at"), user)
        with self._cache_lock:
            known = self._users.get(key)
        if known is None:
            result = self.client().exec(name, ["getent", "passwd", user], timeout=30, raw=True)
            known = parse_passwd(result.stdout.decode("utf-8", "replace")) if result.rc == 0 else None
            if known is None:
                raise BrokerError("no user %s in container %s (getent passwd %s found none): create it, or set "
                                  "ansible_user / remote_user to one that exists" % (user, name, user))
            with self._cache_lock:
                self._users[key] = known
        uid, gid, home = known
        return {"uid": uid, "gid": gid, "home": home}

    def op_exec(self, request):
        name, timeout = request["name"], int(request["timeout"])
        user = request.get("user")  # {name, uid, gid, home} or None: root
        client = self.client()
        uid = gid = cwd = None
        env = {}
        if user:
            uid, gid, cwd = user["uid"], user["gid"], user["home"]
            env = user_environment(user["name"], user["home"])
        data = from_b64(request.get("stdin"))
        agent = self.agent(name, user)
        if agent is not None:
            started = time.monotonic()
            try:
                rc, stdout, stderr, late = agent.exec(request["command"], data, timeout, KILL_AFTER, MARGIN)
            except AgentError as exc:
                if exc.sent:  # the command may have run: not again; a container stopped meanwhile is said so
                    self._failed(name, exc)
                self.log("container %s: %s; the command goes as an exec of its own" % (name, exc))
            else:
                return {"rc": rc, "stdout": to_b64(stdout), "stderr": to_b64(stderr), "timed_out": late,
                        "elapsed": round(time.monotonic() - started, 3)}
        path = None
        if data is not None:
            path = stdin_path()
            self._api(name, lambda: client.push_file(name, path, data, mode=0o600, uid=uid or 0, gid=gid or 0))
        nonce = new_nonce()
        argv = exec_argv(request["command"], timeout, nonce, path)
        started = time.monotonic()
        try:
            result = self._api(name, lambda: client.exec(name, argv, timeout=timeout + MARGIN, environment=env, cwd=cwd,
                                                         user=uid, group=gid, raw=True))
        except BrokerError:
            if path is not None:  # the command never opened it
                try:
                    client.exec(name, ["rm", "-f", "--", path], timeout=30)
                except Exception:  # pylint: disable=broad-except  # the error said is the exec's
                    pass
            raise
        elapsed = time.monotonic() - started
        rc, stderr = split_status(result.rc, result.stderr, nonce)
        return {"rc": rc, "stdout": to_b64(result.stdout), "stderr": to_b64(stderr),
                "timed_out": timed_out(rc, elapsed, timeout), "elapsed": round(elapsed, 3)}

    def _api(self, name, call):
        """A call on the instance; when it fails, a container no longer running is said so (unreachable)."""
        try:
            return call()
        except self.error_type as exc:
            self._failed(name, exc)

    def _failed(self, name, exc):
        """Raise BrokerError for what failed in the container: unreachable when it is no longer running."""
        try:
            record = self._record(name, fresh=True)
        except self.error_type:
            record = {"status": "Running"}
        if record is None or record.get("status") != "Running":
            client = self.client()
            raise BrokerError(not_running_message(name, None if record is None else record.get("status"),
                                                  client.daemon, client.endpoint), "unreachable")
        raise BrokerError(str(exc))

    def op_put(self, request):
        name, local, remote = request["name"], request["local"], request["remote"]
        client = self.client()
        try:
            handle = open(local, "rb")
        except FileNotFoundError:
            raise BrokerError("file to copy into container %s not found: %s" % (name, local), "notfound")
        mode, uid, gid = int(request.get("mode", 0o644)), int(request.get("uid", 0)), int(request.get("gid", 0))
        with handle:
            agent = self.agent(name, {"uid": uid}, start=False)
            if agent is not None and os.fstat(handle.fileno()).st_size <= AGENT_PUT_MAX:
                try:  # the agent runs as the file's owner
                    agent.put(remote, handle.read(), mode)
                    return {}
                except AgentError as exc:  # the files API writes it, as root then owned by uid (as before the agent)
                    self.log("container %s: put %s: %s; the files API writes it" % (name, remote, exc))
                    handle.seek(0)
            self._api(name, lambda: client.push_file(name, remote, handle, mode=mode, uid=uid, gid=gid))
        return {}

    def op_fetch(self, request):
        name, remote, local = request["name"], request["remote"], request["local"]
        client = self.client()
        part = "%s.onebox-part-%s" % (local, uuid.uuid4().hex[:8])
        try:
            with open(part, "wb") as handle:
                written = self._api(name, lambda: client.pull_file_to(name, remote, handle))
            if written is None:
                raise BrokerError("file to fetch from container %s not found: %s" % (name, remote), "notfound")
            os.replace(part, local)
        finally:
            if os.path.exists(part):
                os.unlink(part)
        return {"size": written}


class Idle:
    """Counts open connections and the time of the last activity; ``expired`` after ``persist`` idle seconds."""

    def __init__(self, persist, clock=time.monotonic):
        self.persist = persist
        self._clock = clock
        self._lock = threading.Lock()
        self.active = 0
        self.last = clock()

    def enter(self):
        with self._lock:
            self.active += 1
            self.last = self._clock()

    def leave(self):
        with self._lock:
            self.active -= 1
            self.last = self._clock()

    def touch(self):
        with self._lock:
            self.last = self._clock()

    def expired(self):
        with self._lock:
            return self.active == 0 and self._clock() - self.last >= self.persist


def serve(path, options, persist):  # pragma: no cover - run by the integration tests, as a process
    import socketserver
    from ansible_collections.homelab.onebox.plugins.module_utils._lxd import LxdClient, LxdError

    def make_client(opts):
        verify = opts.get("verify")
        return LxdClient(url=opts.get("url") or None, client_cert=opts.get("client_cert") or None,
                         client_key=opts.get("client_key") or None, verify=True if verify in (None, "") else verify,
                         project=opts.get("project") or None, timeout=30)

    broker = Broker(options, make_client, LxdError)
    idle = Idle(persist)

    class Handler(socketserver.StreamRequestHandler):
        def setup(self):
            idle.enter()
            super().setup()

        def finish(self):
            try:
                super().finish()
            finally:
                idle.leave()

        def handle(self):
            for line in self.rfile:
                idle.touch()
                try:
                    request = decode(line)
                except ValueError as exc:
                    answer = {"ok": False, "kind": "error", "error": "the broker could not read a request: %s" % exc}
                else:
                    try:
                        answer = broker.handle(request)
                    except Exception as exc:  # pylint: disable=broad-except  # said to the worker, and logged
                        import traceback
                        traceback.print_exc()
                        answer = {"ok": False, "kind": "error", "error": "the broker failed %s: %r" % (request.get("op"), exc)}
                self.wfile.write(encode(answer))
                self.wfile.flush()
                idle.touch()

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True
        request_queue_size = 64

    old = os.umask(0o077)
    try:
        server = Server(path, Handler)
    finally:
        os.umask(old)
    mine = os.stat(path).st_ino
    sys.stderr.write("broker pid %d serving %s for %s, exits after %s s idle\n" % (os.getpid(), path, json.dumps(options), persist))
    sys.stderr.flush()

    def watch():
        while not idle.expired():
            time.sleep(min(1.0, max(0.05, persist / 4.0)))
        # New workers find no socket and start a broker of their own; one that connected just now
        # gets its connection closed and does the same (its hello fails as "gone").
        try:
            if os.stat(path).st_ino == mine:
                os.unlink(path)
        except OSError:
            pass
        server.shutdown()

    threading.Thread(target=watch, daemon=True).start()
    server.serve_forever(poll_interval=0.5)
    server.server_close()
    broker.close()
    sys.stderr.write("broker pid %d exits after %s s idle\n" % (os.getpid(), persist))


def main(argv=None):  # pragma: no cover - the broker process's entry
    import argparse
    parser = argparse.ArgumentParser(description="homelab.onebox lxd connection broker")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--persist", type=float, required=True)
    parser.add_argument("--options", required=True)
    args = parser.parse_args(argv)
    serve(args.socket, json.loads(args.options), args.persist)


if __name__ == "__main__":  # pragma: no cover
    main()
