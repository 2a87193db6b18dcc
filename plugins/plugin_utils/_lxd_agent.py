# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lxd connection's agent: a small Python program the broker starts once in a container (one
exec whose stdin and stdout stay open as websockets), which then runs each task's commands itself;
both its sides: the program (``PROGRAM``) and the broker's ``Agent`` that talks to it.

Why: an exec through the daemon's API with recorded output costs ~40 ms here (the daemon forks and
attaches to the container, writes two records, which are read and deleted: four requests), and a
``copy`` task makes five of them; a command through the agent takes ~2 ms (measured; docs/
performance.md). Without Python 3 in the container (before a ``raw`` task installs it), or over
``https://``, the broker runs each command as its own exec as before (_lxd_broker).

The agent runs a command as the record-output exec did: ``/bin/sh -c`` in the environment, user
and directory the agent was started with, its stdin, stdout and stderr files (memfd), not pipes, so
that a process the command leaves behind does not hold the answer back; killed with its process
group after its timeout (TERM, then KILL ``kill_after`` s later: rc 124 or 137, as coreutils
timeout says it). It exits when its stdin closes (the broker went away), TERMing the commands still
running.

The protocol, both ways: frames of ``>II`` (request id, header length), a JSON header, then the
bytes the header counts. Requests: ``{"op": "exec", "cmd", "timeout", "kill_after", "n"}`` (``n``:
bytes of stdin that follow, absent: /dev/null), ``{"op": "put", "path", "mode", "n"}``. Answers:
``{"rc", "o", "e", "timed_out"}`` then ``o`` bytes of stdout and ``e`` of stderr; or ``{"error"}``.
The agent's first frame (id 0) is ``{"pid"}``."""
from __future__ import annotations

import json
import struct
import threading

HEAD = struct.Struct(">II")
START_TIMEOUT = 15      # seconds for a new agent's first frame
NAME = "onebox-lxd-agent"  # its argv[1]: what `ps` in the container shows

# Python 3.5 and later, standard library only (what a container's python3 has). Kept short: it is
# the exec's argument, sent once per agent.
PROGRAM = r'''
import json, os, signal, struct, subprocess, sys, tempfile, threading
HEAD = struct.Struct(">II")
inp, out = sys.stdin.buffer, sys.stdout.buffer
lock = threading.Lock()
running = {}
def read(n):
    parts = []
    while n:
        b = inp.read(n)
        if not b:
            return None
        parts.append(b)
        n -= len(b)
    return b"".join(parts)
def send(rid, head, *blobs):
    h = json.dumps(head).encode()
    with lock:
        out.write(HEAD.pack(rid, len(h)) + h + b"".join(blobs))
        out.flush()
def scratch(data=b""):
    try:
        f = os.fdopen(os.memfd_create("onebox"), "w+b")
    except (AttributeError, OSError):
        f = tempfile.TemporaryFile()
    if data:
        f.write(data)
        f.seek(0)
    return f
def kill(p, sig):
    try:
        os.killpg(p.pid, sig)
    except OSError:
        pass
def run_exec(rid, req, data):
    o, e = scratch(), scratch()
    i = scratch(data) if data is not None else open(os.devnull, "rb")
    timed_out = False
    try:
        p = subprocess.Popen(["/bin/sh", "-c", req["cmd"]], stdin=i, stdout=o, stderr=e, start_new_session=True)
    except OSError as exc:
        send(rid, {"error": "cannot run /bin/sh: %s" % exc})
        return
    finally:
        i.close()
    running[rid] = p
    try:
        p.wait(timeout=req["timeout"])
    except subprocess.TimeoutExpired:
        timed_out = True
        kill(p, signal.SIGTERM)
        try:
            p.wait(timeout=req["kill_after"])
        except subprocess.TimeoutExpired:
            kill(p, signal.SIGKILL)
            p.wait()
    running.pop(rid, None)
    rc = p.returncode
    if timed_out:
        rc = 124 if rc == -signal.SIGTERM else 137
    elif rc < 0:
        rc = 128 - rc
    blobs = []
    for f in (o, e):
        f.seek(0)
        blobs.append(f.read())
        f.close()
    send(rid, {"rc": rc, "o": len(blobs[0]), "e": len(blobs[1]), "timed_out": timed_out}, *blobs)
def run_put(rid, req, data):
    try:
        fd = os.open(req["path"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, req["mode"])
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except OSError as exc:
        send(rid, {"error": "cannot write %s: %s" % (req["path"], exc)})
        return
    send(rid, {"rc": 0, "o": 0, "e": 0})
def serve(rid, req, data):
    try:
        (run_put if req.get("op") == "put" else run_exec)(rid, req, data)
    except Exception as exc:
        send(rid, {"error": "%s: %s" % (type(exc).__name__, exc)})
send(0, {"pid": os.getpid()})
while True:
    head = read(HEAD.size)
    if head is None:
        break
    rid, size = HEAD.unpack(head)
    body = read(size)
    if body is None:
        break
    req = json.loads(body.decode())
    data = None
    if req.get("n") is not None:
        data = read(req["n"])
        if data is None:  # cut off: never run a command without all of its input
            break
    threading.Thread(target=serve, args=(rid, req, data), daemon=True).start()
for p in list(running.values()):
    kill(p, signal.SIGTERM)
'''


class AgentError(Exception):
    """The agent cannot take a request (not started, gone) or said it could not do it. ``sent``:
    whether the request had reached it (then its command may have run: the caller must not run it
    again); ``answered``: the agent itself said so (it is still there)."""

    def __init__(self, message, sent=False, answered=False):
        super().__init__(message)
        self.sent = sent or answered
        self.answered = answered


def frame(rid, head, data=b""):
    """One frame: id, header, the bytes it counts."""
    text = json.dumps(head, separators=(",", ":")).encode("utf-8")
    return HEAD.pack(rid, len(text)) + text + data


class Frames:
    """Cuts the agent's output, which arrives in pieces of any size, into its answers:
    ``feed(bytes)`` returns the (id, header, stdout, stderr) completed."""

    def __init__(self):
        self._buffer = bytearray()

    def feed(self, data):
        self._buffer.extend(data)
        done = []
        while len(self._buffer) >= HEAD.size:
            rid, size = HEAD.unpack_from(self._buffer)
            if len(self._buffer) < HEAD.size + size:
                break
            head = json.loads(bytes(self._buffer[HEAD.size:HEAD.size + size]).decode("utf-8"))
            start = HEAD.size + size
            out, err = int(head.get("o", 0)), int(head.get("e", 0))
            if len(self._buffer) < start + out + err:
                break
            done.append((rid, head, bytes(self._buffer[start:start + out]), bytes(self._buffer[start + out:start + out + err])))
            del self._buffer[:start + out + err]
        return done


class Agent:
    """The broker's side of one agent (one container, one user): requests sent as frames on the
    exec's stdin, answers matched by id. ``open_stream(on_stdout, on_stderr, on_close)`` starts the
    exec (``LxdClient.exec_stream``); several threads may ask at once."""

    def __init__(self, open_stream, start_timeout=START_TIMEOUT):
        self._lock = threading.Lock()
        self._frames = Frames()
        self._waiting = {}   # id -> [event, answer]
        self._next = 1
        self._dead = None    # why it is gone, once it is
        self._errors = bytearray()
        self._waiting[0] = [threading.Event(), None]
        self._stream = open_stream(self._stdout, self._stderr, self._closed)
        hello = self._await(0, start_timeout, "start")
        self.pid = hello[0].get("pid")

    @property
    def alive(self):
        return self._dead is None

    def _stdout(self, data):
        try:
            with self._lock:
                for rid, head, out, err in self._frames.feed(data):
                    slot = self._waiting.get(rid)
                    if slot is not None:
                        slot[1] = (head, out, err)
                        slot[0].set()
        except ValueError as exc:  # not its frames: nothing after can be read either
            self.close("its output could not be read: %s" % exc)

    def _stderr(self, data):
        with self._lock:
            self._errors.extend(data[-2000:])
            del self._errors[:-2000]

    def _closed(self, why="its exec ended"):
        with self._lock:
            if self._dead is None:
                said = bytes(self._errors).decode("utf-8", "replace").strip()
                self._dead = why + (": %s" % said if said else "")
            for slot in self._waiting.values():
                slot[0].set()

    def _await(self, rid, timeout, what):
        slot = self._waiting[rid]
        slot[0].wait(timeout)
        with self._lock:
            self._waiting.pop(rid, None)
            if slot[1] is not None:
                return slot[1]
            dead = self._dead
        if dead is None:
            self.close("it did not answer %s within %s s" % (what, timeout))
            dead = self._dead
        raise AgentError("the agent %s: %s" % ("did not start" if rid == 0 else "is gone", dead), sent=rid != 0)

    def request(self, head, data=None, wait=60):
        """Send one request, return its answer (header, stdout, stderr); AgentError when the agent
        is gone (``sent``: after the request reached it)."""
        with self._lock:
            if self._dead is not None:
                raise AgentError("the agent is gone: %s" % self._dead)
            rid = self._next
            self._next += 1
            self._waiting[rid] = [threading.Event(), None]
        head = dict(head, n=None if data is None else len(data))
        try:
            self._stream.send(frame(rid, head, data or b""))
        except Exception as exc:  # pylint: disable=broad-except  # any failure to write: the agent is gone
            with self._lock:
                self._waiting.pop(rid, None)
            self.close("writing to it failed: %s" % exc)
            raise AgentError("the agent is gone: %s" % self._dead)
        answer = self._await(rid, wait, head.get("op", "exec"))
        if "error" in answer[0]:
            raise AgentError("the agent could not %s: %s" % (head.get("op", "exec"), answer[0]["error"]), answered=True)
        return answer

    def exec(self, command, stdin=None, timeout=3600, kill_after=5, margin=30):
        head, out, err = self.request({"op": "exec", "cmd": command, "timeout": timeout, "kill_after": kill_after},
                                      stdin, wait=timeout + kill_after + margin)
        return int(head["rc"]), out, err, bool(head.get("timed_out"))

    def put(self, path, data, mode=0o600, wait=60):
        self.request({"op": "put", "path": path, "mode": mode}, data, wait=wait)

    def close(self, why="closed"):
        self._closed(why)
        try:
            self._stream.close()
        except Exception:  # pylint: disable=broad-except  # closing what may be gone already
            pass
