"""The run lock (_lock.py): one holder at a time, a waiter told who holds it, a timeout that fails
naming the holder, and nothing left held when the holder goes."""
import os
import threading
import time

import pytest

from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError
from ansible_collections.homelab.onebox.plugins.module_utils._lock import RunLock, lock_path


def test_one_file_per_daemon(tmp_path):
    dirs = (str(tmp_path / "missing"), str(tmp_path))
    assert lock_path("/var/lib/lxd/unix.socket", dirs) == lock_path("/var/lib/lxd/unix.socket", dirs)
    assert lock_path("/var/lib/lxd/unix.socket", dirs) != lock_path("https://other:8443", dirs)
    assert os.path.dirname(lock_path("x", dirs)) == str(tmp_path)


def test_a_second_run_times_out_naming_the_holder(tmp_path):
    path = str(tmp_path / "run.lock")
    with RunLock("/sock", 5, "module box", path=path):
        started = time.monotonic()
        with pytest.raises(OneboxError) as err:
            with RunLock("/sock", 1, "module dnat", path=path):
                pass
        assert time.monotonic() - started >= 1
        assert "pid %d, module box" % os.getpid() in err.value.msg and "lock_timeout" in err.value.msg
    with RunLock("/sock", 0, "module dnat", path=path) as lock:  # free again at once
        assert lock.note() is None


def test_a_waiter_gets_the_lock_when_the_holder_ends(tmp_path):
    path = str(tmp_path / "run.lock")
    first = RunLock("/sock", 5, "module box", path=path).__enter__()
    threading.Timer(0.6, first.__exit__).start()
    with RunLock("/sock", 10, "module lxd_instances", path=path) as second:
        assert second.waited >= 0.5
        assert "module box" in second.note()
