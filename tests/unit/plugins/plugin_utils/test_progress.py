"""The controller's side of the box's progress: the threshold from the environment, the file's
text read, the line shown, and the watch (nothing before the threshold, a count only when it
changed, nothing once the module ended, N of N after a run that went well, a failed read ending
the watch and not the task), and the read through a copy of the connection, not escalated."""
import threading

import pytest

from ansible_collections.homelab.onebox.plugins.plugin_utils._progress import (
    AFTER, Watch, after_seconds, message, parse, remote_reader)


@pytest.mark.parametrize("value, after", [
    (None, AFTER), ("", AFTER), ("0", 0.0), ("2.5", 2.5), (" 3 ", 3.0), ("-1", None)])
def test_the_threshold_comes_from_the_environment(value, after):
    assert after_seconds({} if value is None else {"ONEBOX_PROGRESS_AFTER": value}) == after


@pytest.mark.parametrize("value", ["junk", "5s", "nan", "inf"])
def test_a_threshold_that_is_not_a_number_is_refused_naming_it(value):
    with pytest.raises(ValueError, match="ONEBOX_PROGRESS_AFTER=%s: give the seconds" % value):
        after_seconds({"ONEBOX_PROGRESS_AFTER": value})


@pytest.mark.parametrize("text, count", [
    ('{"done": 4, "total": 11}', (4, 11)), ('{"done": 0, "total": 3}', (0, 3)),
    (None, None), ("", None), ('{"done": 4', None), ("[]", None), ('{"done": 5, "total": 4}', None),
    ('{"done": 0, "total": 0}', None), ('{"done": "x", "total": 2}', None)])
def test_the_file_read(text, count):
    assert parse(text) == count


def test_the_line():
    assert message("box1", 4, 11, 12.4) == "[box1] box: 4 of 11 containers done (12 s)"


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_count_is_shown_when_it_changes_and_n_of_n_at_a_good_end():
    clock, shown = Clock(), []
    texts = iter(['{"done": 0, "total": 3}', '{"done": 0, "total": 3}', None, '{"done": 2, "total": 3}'])
    watch = Watch(lambda: next(texts), shown.append, after=None, host="h", clock=clock)
    for seconds in (5, 6, 7, 8):
        clock.now = 100.0 + seconds
        watch.poll()
    clock.now = 109.6
    watch.finish(True)
    assert shown == ["[h] box: 0 of 3 containers done (5 s)", "[h] box: 2 of 3 containers done (8 s)",
                     "[h] box: 3 of 3 containers done (10 s)"]
    watch.finish(True)   # said once
    assert len(shown) == 3


def test_a_failed_run_or_one_never_shown_gets_no_last_line():
    shown = []
    failed = Watch(lambda: '{"done": 1, "total": 3}', shown.append, after=None)
    failed.poll()
    failed.finish(False)
    quiet = Watch(lambda: '{"done": 1, "total": 3}', shown.append, after=None)
    quiet.finish(True)
    assert shown == ["[localhost] box: 1 of 3 containers done (0 s)"]


def test_the_thread_reads_nothing_before_the_threshold():
    reads = []
    with Watch(lambda: reads.append(1), [].append, after=30):
        pass
    assert reads == []
    with Watch(lambda: reads.append(1), [].append, after=None) as watch:   # never
        assert watch._thread is None


def test_the_thread_reads_after_the_threshold_and_shows_nothing_once_stopped():
    read_once, shown = threading.Event(), []

    def read():
        read_once.set()
        return '{"done": 1, "total": 2}'
    with Watch(read, shown.append, after=0, interval=0.01) as watch:
        assert read_once.wait(5)
    late = len(shown)
    watch.poll()   # a read that ends after the module: not shown
    assert shown and len(shown) == late == 1 and not watch._thread.is_alive()


def test_a_failed_read_ends_the_watch_not_the_task():
    def read():
        raise OSError("connection lost")
    with Watch(read, [].append, after=0, interval=0.01) as watch:
        watch._thread.join(5)
    assert watch.failure == "OSError: connection lost"


class Connection:
    """A connection plugin's exec_command, recorded."""

    def __init__(self, returncode=0, stdout=b'{"done": 1, "total": 2}'):
        self.calls, self.returncode, self.stdout = [], returncode, stdout

    def exec_command(self, cmd, in_data=None, sudoable=True):
        self.calls.append((self, cmd, sudoable))
        return self.returncode, self.stdout, b""


def test_the_file_is_read_through_a_copy_of_the_connection_without_escalation():
    connection, tmpdir = Connection(), [None]
    read = remote_reader(connection, lambda: tmpdir[0])
    assert read() is None and connection.calls == []   # the module's run has not made it yet
    tmpdir[0] = "/home/u/.ansible/tmp/ansible-tmp-1 x"
    assert read() == '{"done": 1, "total": 2}'
    (used, command, sudoable), = connection.calls
    assert used is not connection and sudoable is False
    assert command == "cat '/home/u/.ansible/tmp/ansible-tmp-1 x/onebox-progress.json' 2>/dev/null"
    assert remote_reader(Connection(returncode=1, stdout=b""), lambda: "/tmp/t")() is None
