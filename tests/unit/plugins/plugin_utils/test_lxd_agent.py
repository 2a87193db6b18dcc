"""The lxd connection's agent: its program run here by this machine's Python (as the container's
python3 runs it, its stdin and stdout pipes in place of the exec's websockets), talked to by the
broker's Agent: exact bytes and exit codes, stdin or none, the kill at the timeout, a process left
behind not holding the answer, files written, a hundred requests at once, its end when its stdin
closes; the frames cut from pieces of any size; an agent that does not start, or goes."""
import os
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.homelab.onebox.plugins.plugin_utils import _lxd_agent as agent_module
from ansible_collections.homelab.onebox.plugins.plugin_utils._lxd_agent import Agent, AgentError, Frames, frame


class LocalStream:
    """What LxdClient.exec_stream gives, over a local process's pipes."""

    def __init__(self, on_stdout, on_stderr, on_close, argv=None):
        argv = argv or [sys.executable, "-c", agent_module.PROGRAM, agent_module.NAME]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._lock = threading.Lock()
        self.sent = []

        def pump(pipe, handler, closed=None):
            for chunk in iter(lambda: os.read(pipe.fileno(), 7919), b""):  # a prime: answers arrive cut anywhere
                handler(chunk)
            if closed:
                closed()
        threading.Thread(target=pump, args=(self.proc.stdout, on_stdout, on_close), daemon=True).start()
        threading.Thread(target=pump, args=(self.proc.stderr, on_stderr), daemon=True).start()

    def send(self, data):
        with self._lock:
            self.sent.append(data)
            self.proc.stdin.write(data)
            self.proc.stdin.flush()

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass


@pytest.fixture
def agent():
    streams = []

    def open_stream(*handlers):
        streams.append(LocalStream(*handlers))
        return streams[-1]
    found = Agent(open_stream)
    found.stream = streams[0]
    yield found
    found.close()
    streams[0].proc.wait(10)


def test_exact_bytes_and_codes_both_ways(agent):
    assert agent.pid == agent.stream.proc.pid
    assert agent.exec("printf 'o\\377\\000'; printf 'e\\200' >&2; exit 7") == (7, b"o\xff\x00", b"e\x80", False)
    data = os.urandom(300000)
    assert agent.exec("cat", stdin=data)[1] == data
    assert agent.exec("cat") == (0, b"", b"", False)  # no input: /dev/null, not a wait
    assert agent.exec("no-such-command-t17")[0] == 127
    assert agent.exec("kill -9 $$")[0] == 128 + signal.SIGKILL


def test_a_command_past_its_timeout_is_killed_with_its_group(agent, tmp_path):
    marker = tmp_path / "late"
    started = time.monotonic()
    rc, _out, _err, late = agent.exec("(sleep 3; touch %s) & sleep 30" % marker, timeout=1, kill_after=1)
    assert (rc, late) == (124, True) and time.monotonic() - started < 5
    rc, _out, _err, late = agent.exec("trap '' TERM; sleep 30", timeout=1, kill_after=1)
    assert (rc, late) == (137, True)
    time.sleep(3)
    assert not marker.exists()  # the group died with it
    assert agent.exec("exit 124", timeout=5)[3] is False  # the command's own 124 is not a timeout


def test_a_process_left_behind_does_not_hold_the_answer(agent):
    started = time.monotonic()
    rc, out, _err, _late = agent.exec("sleep 20 & echo started")
    assert (rc, out) == (0, b"started\n") and time.monotonic() - started < 5


def test_files_are_written_and_a_write_that_fails_said_so(agent, tmp_path):
    target = tmp_path / "put.bin"
    agent.put(str(target), b"\x00\xffdata", 0o600)
    assert target.read_bytes() == b"\x00\xffdata" and stat.S_IMODE(target.stat().st_mode) == 0o600
    agent.put(str(target), b"again", 0o600)
    assert target.read_bytes() == b"again"
    with pytest.raises(AgentError) as failed:
        agent.put(str(tmp_path / "no-dir" / "x"), b"x")
    assert failed.value.answered and "cannot write %s" % (tmp_path / "no-dir" / "x") in str(failed.value)
    assert agent.alive


def test_a_hundred_requests_at_once_each_get_their_own_answer(agent):
    found = {}

    def ask(index):
        found[index] = agent.exec("echo %d; echo e%d >&2; exit %d" % (index, index, index % 5))
    threads = [threading.Thread(target=ask, args=(index,)) for index in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(found[index] == (index % 5, b"%d\n" % index, b"e%d\n" % index, False) for index in range(100))


def test_it_ends_when_its_stdin_closes_and_terms_what_still_runs(agent, tmp_path):
    marker = tmp_path / "pid"
    thread = threading.Thread(target=lambda: pytest.raises(AgentError, agent.exec, "echo $$ > %s; exec sleep 60" % marker))
    thread.start()
    deadline = time.monotonic() + 10
    while not (marker.exists() and marker.read_text().strip()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pid = int(marker.read_text())
    agent.stream.close()
    assert agent.stream.proc.wait(10) == 0
    thread.join(10)
    assert not agent.alive
    deadline = time.monotonic() + 10
    while os.path.exists("/proc/%d" % pid) and "Z" not in open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1][:3]:
        assert time.monotonic() < deadline, "the command outlived its agent"
        time.sleep(0.05)
    with pytest.raises(AgentError) as gone:
        agent.exec("true")
    assert not gone.value.sent  # never reached it: safe to run elsewhere


def test_an_agent_that_cannot_start_quotes_its_stderr():
    argv = [sys.executable, "-c", "import sys; sys.stderr.write('python3: not found'); sys.exit(127)"]
    with pytest.raises(AgentError) as failed:
        Agent(lambda *handlers: LocalStream(*handlers, argv=argv))
    assert "did not start" in str(failed.value) and "python3: not found" in str(failed.value)
    assert not failed.value.sent


def test_an_agent_silent_at_its_start_is_given_up():
    argv = [sys.executable, "-c", "import sys; sys.stdin.buffer.read()"]
    started = time.monotonic()
    with pytest.raises(AgentError) as failed:
        Agent(lambda *handlers: LocalStream(*handlers, argv=argv), start_timeout=1)
    assert "did not answer start within 1 s" in str(failed.value) and time.monotonic() - started < 5


def test_an_agent_gone_during_a_command_says_the_command_was_sent(agent):
    thread_error = []

    def run():
        try:
            agent.exec("sleep 30")
        except AgentError as exc:
            thread_error.append(exc)
    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.5)
    agent.stream.proc.kill()
    thread.join(10)
    assert thread_error and thread_error[0].sent and "is gone" in str(thread_error[0])


def test_frames_cut_anywhere_come_back_whole():
    answers = frame(3, {"rc": 0, "o": 2, "e": 1}, b"ab" + b"c") + frame(4, {"error": "x"})
    frames = Frames()
    found = []
    for index in range(len(answers)):
        found.extend(frames.feed(answers[index:index + 1]))
    assert found == [(3, {"rc": 0, "o": 2, "e": 1}, b"ab", b"c"), (4, {"error": "x"}, b"", b"")]
    assert Frames().feed(answers) == found


def test_a_request_cut_off_is_never_run(tmp_path):
    """Its stdin closing in the middle of a request's input: the command does not run without it."""
    marker = tmp_path / "ran"
    proc = subprocess.Popen([sys.executable, "-c", agent_module.PROGRAM], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    whole = frame(1, {"op": "exec", "cmd": "cat >/dev/null; touch %s" % marker, "timeout": 10, "kill_after": 1,
                      "n": 100}, b"x" * 100)
    out, _err = proc.communicate(whole[:-10], timeout=10)
    assert proc.returncode == 0
    assert [rid for rid, _head, _o, _e in Frames().feed(out)] == [0]  # its hello, no answer
    time.sleep(0.5)
    assert not marker.exists()


def test_output_that_is_not_its_frames_ends_the_agent():
    def open_stream(on_stdout, on_stderr, on_close):
        on_stdout(frame(0, {"pid": 1}))
        stream = LocalStream(on_stdout, on_stderr, on_close, argv=[sys.executable, "-c", "import sys; sys.stdin.buffer.read()"])
        on_stdout(b"\x00\x00\x00\x05\x00\x00\x00\x03{x}")
        return stream
    found = Agent(open_stream)
    assert not found.alive and "could not be read" in found._dead
    found.close()
