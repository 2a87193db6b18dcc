"""The lxd connection's broker: the protocol's lines, the command run in the container (run here by
a real /bin/sh and coreutils timeout: stdin from a file opened then removed, the exit code behind
the nonce, 126/127 kept, the kill at the timeout), the socket's name and directory, one broker
started by workers racing (a fake start), a broker that fails to start quoted from its log, and the
broker's answers over a fake client (state kept briefly, users, exec with input, unreachable)."""
import os
import subprocess
import sys
import threading
import time
from collections import namedtuple

import pytest

from ansible_collections.homelab.onebox.plugins.plugin_utils import _lxd_broker as broker

from .test_lxd_agent import LocalStream

Result = namedtuple("Result", "rc stdout stderr")


def test_a_line_each_way_with_bytes_as_base64():
    line = broker.encode({"op": "exec", "stdin": broker.to_b64(b"\x00\xff\n")})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert broker.from_b64(broker.decode(line)["stdin"]) == b"\x00\xff\n"
    assert broker.to_b64(None) is None and broker.from_b64(None) is None
    with pytest.raises(ValueError):
        broker.decode(b"[1]\n")


def run_here(argv, timeout=30):
    """The container's command run by this machine's /bin/sh (the same argv LXD would exec)."""
    proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def test_the_command_runs_under_timeout_with_its_code_behind_the_nonce():
    nonce = broker.new_nonce()
    argv = broker.exec_argv("echo out; printf 'e\\377' >&2; exit 7", 60, nonce)
    assert argv[:3] == ["/bin/sh", "-c", broker.RUN] and argv[3:] == ["onebox", "60", argv[5], nonce]
    assert 'timeout -k 5 "$1" /bin/sh -c "$2"' in broker.RUN
    result = run_here(argv)
    assert result.rc == 0  # the wrapper's own: LXD never sees 126/127
    assert broker.split_status(result.rc, result.stderr, nonce) == (7, b"e\xff")
    assert result.stdout == b"out\n"


@pytest.mark.parametrize("command, code", [("no-such-command-t17", 127), ("exit 126", 126), ("true", 0)])
def test_codes_lxd_would_turn_into_errors_come_back_as_codes(command, code):
    nonce = broker.new_nonce()
    result = run_here(broker.exec_argv(command, 60, nonce))
    assert broker.split_status(result.rc, result.stderr, nonce)[0] == code


def test_pipelined_input_is_read_from_a_file_opened_then_removed(tmp_path):
    data = bytes(range(256)) * 10
    path = tmp_path / "in"
    path.write_bytes(data)
    nonce = broker.new_nonce()
    argv = broker.exec_argv('cat; test -e "%s" && echo still-there >&2; exit 3' % path, 60, nonce, str(path))
    assert argv[2] == broker.RUN_WITH_INPUT and argv[-1] == str(path)
    assert broker.RUN_WITH_INPUT.startswith('exec <"$4" && rm -f -- "$4" && {')
    result = run_here(argv)
    assert result.stdout == data
    assert broker.split_status(result.rc, result.stderr, nonce) == (3, b"")
    assert not path.exists()


def test_a_command_past_its_timeout_is_killed_and_said_so():
    nonce = broker.new_nonce()
    started = time.monotonic()
    result = run_here(broker.exec_argv("sleep 30", 1, nonce))
    elapsed = time.monotonic() - started
    rc = broker.split_status(result.rc, result.stderr, nonce)[0]
    assert rc == 124 and elapsed < 10
    assert broker.timed_out(rc, elapsed, 1)
    assert not broker.timed_out(124, 0.2, 1)  # the command's own 124, early
    assert not broker.timed_out(0, 5, 1)


def test_split_status_without_a_trailer_keeps_the_exec_code():
    assert broker.split_status(2, b"sh: cannot open", "N:") == (2, b"sh: cannot open")
    assert broker.split_status(0, b"xN:12", "N:") == (12, b"x")
    assert broker.split_status(0, b"N:x", "N:") == (0, b"N:x")


def test_passwd_lines():
    assert broker.parse_passwd("deploy:x:1001:1002:,,,:/home/deploy:/bin/sh\n") == (1001, 1002, "/home/deploy")
    assert broker.parse_passwd("odd:x:5:6:::/bin/sh") == (5, 6, "/")
    assert broker.parse_passwd("") is None and broker.parse_passwd("a:b:c") is None


def test_messages_name_the_container_the_status_and_the_daemon():
    assert broker.not_running_message("web", "Stopped", "LXD", "/var/lib/lxd/unix.socket") == (
        "container web is Stopped on the LXD daemon at /var/lib/lxd/unix.socket: start it "
        "(converging the box starts its containers)")
    assert broker.not_running_message("web", None, "Incus", "https://h:8443").startswith(
        "no container web on the Incus daemon at https://h:8443")


def test_the_socket_name_changes_with_what_makes_a_broker_the_right_one():
    options = {"url": None, "project": None}
    base = broker.socket_name(options, 60, "code1", {}, "/py")
    assert base == broker.socket_name(dict(options), 60.0, "code1", {}, "/py")
    others = {broker.socket_name({"url": "https://h:8443", "project": None}, 60, "code1", {}, "/py"),
              broker.socket_name(options, 5, "code1", {}, "/py"),
              broker.socket_name(options, 60, "code2", {}, "/py"),
              broker.socket_name(options, 60, "code1", {"INCUS_DIR": "/var/lib/incus"}, "/py"),
              broker.socket_name(options, 60, "code1", {}, "/other/py")}
    assert base not in others and len(others) == 5


def test_the_code_identity_follows_the_files(tmp_path):
    code = tmp_path / "_lxd.py"
    code.write_text("a")
    before = broker.code_identity([str(code)])
    code.write_text("ab")
    assert broker.code_identity([str(code)]) != before
    assert broker.code_identity([str(tmp_path / "gone.py")]) == "gone.py:-"
    assert [os.path.basename(path) for path in broker.code_files()] == ["_lxd_broker.py", "_lxd_agent.py", "_lxd.py"]
    assert all(os.path.exists(path) for path in broker.code_files())


def test_the_broker_directory_is_the_users_alone(tmp_path):
    made = broker.broker_dir(str(tmp_path / "b"))
    assert os.stat(made).st_mode & 0o777 == 0o700
    os.chmod(made, 0o755)
    with pytest.raises(broker.BrokerError, match="must be a directory of uid %d with mode 0700" % os.getuid()) as caught:
        broker.broker_dir(made)
    assert caught.value.kind == "unreachable"


def test_the_collection_root_is_above_ansible_collections():
    assert broker.collection_root("/r/ansible_collections/homelab/onebox/plugins/plugin_utils/_lxd_broker.py") == "/r"
    assert broker.collection_root("/work/main/plugins/plugin_utils/_lxd_broker.py") is None


def test_workers_racing_start_one_broker(tmp_path):
    started = []
    lock = threading.Lock()

    def greet(path, timeout):
        if not os.path.exists(path):
            raise broker.BrokerError("no broker", "gone")
        return "channel", {"pid": 1}

    def start(path, options, persist, log, root, timeout):
        with lock:
            started.append(path)
        time.sleep(0.2)  # a slow start: the others wait on the lock, then find it
        open(path, "w").close()
        return "channel", {"pid": 1}

    answers = []
    threads = [threading.Thread(target=lambda: answers.append(
        broker.open_broker({"url": None}, 60, str(tmp_path / "d"), greet=greet, start=start))) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(started) == 1 and answers == [("channel", {"pid": 1})] * 8
    assert started[0].endswith(".sock") and os.path.dirname(started[0]) == str(tmp_path / "d")


def test_a_broker_saying_its_daemon_is_unreachable_is_not_restarted(tmp_path):
    def greet(path, timeout):
        raise broker.BrokerError("cannot connect to LXD or Incus at /x", "unreachable")

    def start(*args, **kwargs):
        raise AssertionError("started")
    with pytest.raises(broker.BrokerError, match="cannot connect") as caught:
        broker.open_broker({"url": None}, 60, str(tmp_path), greet=greet, start=start)
    assert caught.value.kind == "unreachable"


class ExitedProcess:
    pid, returncode = 4242, 1

    def poll(self):
        return 1


def test_a_broker_that_dies_at_its_start_is_quoted_from_its_log(tmp_path):
    log = tmp_path / "b.log"

    def popen(argv, stderr, **kwargs):
        stderr.write(b"ModuleNotFoundError: No module named 'pylxd'\n")
        assert argv[1].endswith("_lxd_broker.py") and argv[2:4] == ["--socket", str(tmp_path / "b.sock")]
        assert kwargs["start_new_session"] and kwargs["env"]["PYTHONPATH"].split(os.pathsep)[0] == "/root-of-it"
        return ExitedProcess()

    def greet(path, timeout):
        raise broker.BrokerError("no broker", "gone")
    with pytest.raises(broker.BrokerError) as caught:
        broker.start_broker(str(tmp_path / "b.sock"), {"url": None}, 60, str(log), "/root-of-it", popen=popen,
                            greet=greet, timeout=5, sleep=lambda s: None)
    assert caught.value.kind == "unreachable"
    assert "exited (1) at its start; its log %s says: ModuleNotFoundError: No module named 'pylxd'" % log in str(caught.value)


class FakeClient:
    daemon, endpoint = "LXD", "/var/lib/lxd/unix.socket"

    def __init__(self, status="Running"):
        self.status, self.calls, self.files = status, [], {}

    def instance(self, name, state=True):
        self.calls.append(("instance", name))
        return None if self.status is None else {"status": self.status, "created_at": "t0"}

    def exec(self, name, argv, raw=False, **kwargs):
        self.calls.append(("exec", argv, kwargs))
        if self.status != "Running":
            raise FakeError("Instance is not running")
        if argv[:2] == ["getent", "passwd"]:
            return Result(0, b"deploy:x:1001:1002::/home/deploy:/bin/sh\n", b"") if argv[2] == "deploy" else Result(2, b"", b"")
        return Result(0, b"out", b"err" + argv[6].encode() + b"5")

    def push_file(self, name, path, data, mode, uid, gid):
        self.files[path] = (data, mode, uid, gid)

    def close(self):
        pass

    def exec_stream(self, name, argv, on_stdout, on_stderr, on_close, **kwargs):
        """No python3 here: each command is an exec of its own (AgentClient has one)."""
        self.calls.append(("exec_stream", argv, kwargs))
        raise FakeError("exec python3 in %s: Command not found" % name)


class AgentClient(FakeClient):
    """A client whose containers have python3: the agent runs here, over pipes (test_lxd_agent)."""

    def __init__(self, status="Running"):
        super().__init__(status)
        self.streams = []

    def exec_stream(self, name, argv, on_stdout, on_stderr, on_close, **kwargs):
        self.calls.append(("exec_stream", argv, kwargs))
        assert argv[:2] == ["python3", "-c"] and argv[3] == "onebox-lxd-agent"
        self.streams.append(LocalStream(on_stdout, on_stderr, on_close, argv=[sys.executable] + argv[1:]))
        return self.streams[-1]


class FakeError(Exception):
    pass


def make(client, clock=None):
    return broker.Broker({"url": None}, lambda options: client, FakeError, **({"clock": clock} if clock else {}))


def test_a_running_state_is_kept_briefly_and_a_missing_one_said_so():
    now = [100.0]
    client = FakeClient()
    b = make(client, clock=lambda: now[0])
    assert b.handle({"op": "state", "name": "c"}) == {"ok": True, "status": "Running"}
    now[0] += 1
    b.handle({"op": "state", "name": "c"})
    assert client.calls.count(("instance", "c")) == 1
    now[0] += broker.STATE_TTL
    b.handle({"op": "state", "name": "c"})
    assert client.calls.count(("instance", "c")) == 2
    client.status = None
    now[0] += broker.STATE_TTL
    assert b.handle({"op": "state", "name": "c"}) == {"ok": True, "status": None}


def test_users_are_looked_up_once_and_an_unknown_one_named():
    client = FakeClient()
    b = make(client)
    assert b.handle({"op": "user", "name": "c", "user": "deploy"}) == {
        "ok": True, "uid": 1001, "gid": 1002, "home": "/home/deploy"}
    b.handle({"op": "user", "name": "c", "user": "deploy"})
    assert len([call for call in client.calls if call[0] == "exec"]) == 1
    answer = b.handle({"op": "user", "name": "c", "user": "ghost"})
    assert answer["ok"] is False and answer["error"].startswith("no user ghost in container c (getent passwd ghost")


def test_exec_with_input_writes_it_for_the_user_then_runs_the_wrapper():
    client = FakeClient()
    user = {"name": "deploy", "uid": 1001, "gid": 1002, "home": "/home/deploy"}
    answer = make(client).handle({"op": "exec", "name": "c", "command": "python3", "stdin": broker.to_b64(b"code"),
                                  "user": user, "timeout": 10})
    assert answer["ok"] and answer["rc"] == 5 and broker.from_b64(answer["stderr"]) == b"err"
    assert len(client.files) == 1
    path, (data, mode, uid, gid) = next(iter(client.files.items()))
    assert path.startswith("/tmp/.onebox-stdin-") and (data, mode, uid, gid) == (b"code", 0o600, 1001, 1002)
    argv, kwargs = client.calls[-1][1:]
    assert argv[2] == broker.RUN_WITH_INPUT and argv[4:6] == ["10", "python3"] and argv[-1] == path
    assert kwargs["timeout"] == 10 + broker.MARGIN and (kwargs["user"], kwargs["group"], kwargs["cwd"]) == (1001, 1002, "/home/deploy")
    assert kwargs["environment"] == {"HOME": "/home/deploy", "USER": "deploy", "LOGNAME": "deploy"}


def test_exec_in_a_container_stopped_since_is_unreachable():
    client = FakeClient(status="Stopped")
    answer = make(client).handle({"op": "exec", "name": "c", "command": "true", "timeout": 10})
    assert answer == {"ok": False, "kind": "unreachable", "error": broker.not_running_message(
        "c", "Stopped", "LXD", "/var/lib/lxd/unix.socket")}


def test_an_unknown_request_and_a_put_of_a_missing_file():
    b = make(FakeClient())
    assert b.handle({"op": "dance"})["error"] == "the broker knows no request 'dance'"
    answer = b.handle({"op": "put", "name": "c", "local": "/nonexistent/t17", "remote": "/x"})
    assert answer["kind"] == "notfound" and "not found: /nonexistent/t17" in answer["error"]


def test_idle_expires_only_with_no_connection_open():
    now = [0.0]
    idle = broker.Idle(5, clock=lambda: now[0])
    idle.enter()
    now[0] = 100
    assert not idle.expired()
    idle.leave()
    assert not idle.expired()
    now[0] = 105
    assert idle.expired()


def execs(client):
    return [call for call in client.calls if call[0] == "exec"]


def test_commands_go_through_one_agent_a_container_and_user():
    client = AgentClient()
    b = make(client)
    try:
        answer = b.handle({"op": "exec", "name": "c", "command": "cat; echo e >&2; exit 3",
                           "stdin": broker.to_b64(b"in\xff"), "timeout": 10})
        assert answer["ok"] and answer["rc"] == 3 and not answer["timed_out"]
        assert (broker.from_b64(answer["stdout"]), broker.from_b64(answer["stderr"])) == (b"in\xff", b"e\n")
        b.handle({"op": "exec", "name": "c", "command": "true", "timeout": 10})
        user = {"name": "deploy", "uid": 1001, "gid": 1002, "home": "/home/deploy"}
        b.handle({"op": "exec", "name": "c", "command": "true", "timeout": 10, "user": user})
        started = [call for call in client.calls if call[0] == "exec_stream"]
        assert len(started) == 2 and not execs(client) and not client.files  # no exec of its own, no stdin file
        assert started[0][2] == {"environment": {}, "cwd": None, "user": None, "group": None}
        assert started[1][2] == {"environment": {"HOME": "/home/deploy", "USER": "deploy", "LOGNAME": "deploy"},
                                 "cwd": "/home/deploy", "user": 1001, "group": 1002}
        answer = b.handle({"op": "exec", "name": "c", "command": "sleep 30", "timeout": 1})
        assert answer["ok"] and answer["timed_out"] and answer["rc"] == 124
    finally:
        b.close()
    for stream in client.streams:
        assert stream.proc.wait(10) == 0  # closing the broker ends its agents


def test_without_python3_each_command_is_an_exec_and_the_agent_is_tried_again_later():
    now = [100.0]
    client = FakeClient()
    b = make(client, clock=lambda: now[0])
    for command in ("true", "true", "true"):
        assert b.handle({"op": "exec", "name": "c", "command": command, "timeout": 10})["ok"]
    assert len(execs(client)) == 3 and len([call for call in client.calls if call[0] == "exec_stream"]) == 1
    now[0] += broker.AGENT_RETRY
    b.handle({"op": "exec", "name": "c", "command": "true", "timeout": 10})
    assert len([call for call in client.calls if call[0] == "exec_stream"]) == 2


def test_a_daemon_over_https_never_gets_an_agent():
    client = AgentClient()
    client.endpoint = "https://192.0.2.10:8443"
    b = make(client)
    assert b.handle({"op": "exec", "name": "c", "command": "true", "timeout": 10})["ok"]
    assert len(execs(client)) == 1 and not client.streams


def test_an_agent_gone_during_a_command_does_not_run_it_again():
    client = AgentClient()
    b = make(client)
    assert b.handle({"op": "exec", "name": "c", "command": "true", "timeout": 10})["ok"]
    killer = threading.Timer(0.5, client.streams[0].proc.kill)
    killer.start()
    answer = b.handle({"op": "exec", "name": "c", "command": "sleep 30", "timeout": 60})
    assert answer["ok"] is False and "the agent is gone" in answer["error"] and not execs(client)
    assert b.handle({"op": "exec", "name": "c", "command": "true", "timeout": 10})["ok"]  # a new agent
    assert len(client.streams) == 2
    b.close()


def test_small_files_go_through_the_agent_large_ones_and_others_through_the_files_api(tmp_path):
    client = AgentClient()
    b = make(client)
    small, large = tmp_path / "small", tmp_path / "large"
    small.write_bytes(b"\x00small")
    with open(large, "wb") as handle:
        handle.truncate(broker.AGENT_PUT_MAX + 1)
    target = tmp_path / "in-container"
    # No agent yet for uid 0: the files API.
    assert b.handle({"op": "put", "name": "c", "local": str(small), "remote": str(target), "mode": 0o600})["ok"]
    assert list(client.files) == [str(target)] and not target.exists()
    b.handle({"op": "exec", "name": "c", "command": "true", "timeout": 10})
    assert b.handle({"op": "put", "name": "c", "local": str(small), "remote": str(target), "mode": 0o600})["ok"]
    assert target.read_bytes() == b"\x00small" and len(client.files) == 1
    assert b.handle({"op": "put", "name": "c", "local": str(large), "remote": "/big", "mode": 0o600})["ok"]
    assert "/big" in client.files
    # One the agent cannot write (here: no such directory) goes through the files API, as before it.
    assert b.handle({"op": "put", "name": "c", "local": str(small), "remote": str(tmp_path / "no" / "x")})["ok"]
    assert str(tmp_path / "no" / "x") in client.files
    b.close()
