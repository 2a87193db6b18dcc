# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One converge at a time per daemon (LXD or Incus): a lock file on the host where the modules run.

Two runs at once on one box raced each other in the daemon ("Instance is busy") and in the proxy's
and the host's files. Every module holds the lock of its daemon (by socket path or URL) from after
its input is checked (bad input fails at once, without waiting) to its end. A second run waits for it, up to
``lock_timeout`` seconds, then fails naming the process that holds it. The lock is an flock(2):
the kernel drops it when its holder dies, so a killed run never leaves a stale lock behind.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import time

from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError

LOCK_DIRS = ("/run/lock", "/var/lock", "/tmp")
POLL = 0.2


def lock_path(key, dirs=LOCK_DIRS):
    """The lock file of ``key`` (the daemon's socket path or URL): one file per daemon."""
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    for directory in dirs:
        if os.path.isdir(directory) and os.access(directory, os.W_OK):
            return os.path.join(directory, "homelab-onebox-%s.lock" % digest)
    raise OneboxError("no writable directory for the run lock (tried %s)" % ", ".join(dirs))


class RunLock:
    """``with RunLock(key, timeout, what) as lock:`` holds the lock; ``lock.waited`` (seconds) and
    ``lock.holder`` (what the previous holder wrote) say whether it had to wait, and for whom."""

    def __init__(self, key, timeout, what, path=None):
        self.key, self.timeout, self.what = key, timeout, what
        self.path = path or lock_path(key)
        self.waited = 0.0
        self.holder = None
        self._fd = None

    def __enter__(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        started = time.monotonic()
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise OneboxError("take the run lock %s: %s" % (self.path, exc))
                self.holder = self.holder or read_holder(fd)
                if time.monotonic() - started >= self.timeout:
                    raise OneboxError(
                        "another homelab.onebox run holds the lock of the daemon at %s (%s); waited %d s (lock_timeout). "
                        "Let it finish, or raise lock_timeout" % (self.key, read_holder(fd) or "holder unknown",
                                                                  self.timeout),
                        lock=self.path)
                time.sleep(POLL)
        except BaseException:
            os.close(fd)
            raise
        self.waited = time.monotonic() - started
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, ("pid %d, %s, since %s" % (os.getpid(), self.what,
                                                 time.strftime("%Y-%m-%d %H:%M:%S"))).encode("utf-8"), 0)
        return self

    def __exit__(self, *exc_info):
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None
        return False

    def note(self):
        """A line for the run's warnings when it had to wait, else None."""
        if self.waited < POLL:
            return None
        return "waited %.1f s for another homelab.onebox run on the daemon at %s (%s)" % (
            self.waited, self.key, self.holder or "holder unknown")


def read_holder(fd):
    """What the holder wrote: its pid, module and start time."""
    try:
        return os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or None
    except OSError:
        return None
