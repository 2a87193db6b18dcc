# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller's side of the box's progress file (module_utils._progress): while the module
runs, a thread of the action plugin reads the file on the host and shows each new count
("box: 4 of 11 containers done (12 s)") through ansible's display.

The module is called as it always was (same result, errors, check and diff mode, task timeout);
the thread only watches. Nothing is read before ``after`` seconds (ONEBOX_PROGRESS_AFTER, 5 by
default; negative: never), so a short run costs nothing but the thread. Then the file is read
every ``INTERVAL`` seconds through a copy of the task's connection (a command of its own, over
SSH too; not escalated: the file is readable by all), and a count is shown only when it
changed. When the module ends well after a count was shown, the last line says N of N."""
from __future__ import annotations

import copy
import json
import math
import os
import shlex
import threading
import time

from ansible.module_utils.common.text.converters import to_text

from ansible_collections.homelab.onebox.plugins.module_utils._progress import progress_path

AFTER_ENV = "ONEBOX_PROGRESS_AFTER"
AFTER = 5.0      # seconds of a run before its progress is shown
INTERVAL = 1.0   # seconds between two reads of the file
JOIN = 5.0       # seconds the action waits for a read under way once the module ended


def after_seconds(environ=None):
    """Seconds before progress is shown (``ONEBOX_PROGRESS_AFTER``; unset or empty: 5), or None
    for never (a negative value). Anything else but a number is refused (ValueError naming it):
    the task fails before the module runs, rather than a typo meaning 5 s."""
    value = (os.environ if environ is None else environ).get(AFTER_ENV, "").strip()
    if not value:
        return AFTER
    try:
        after = float(value)
    except ValueError:
        after = None
    if after is None or not math.isfinite(after):
        raise ValueError("%s=%s: give the seconds before a converge shows its progress (a number; 0 from "
                         "the start, negative never)" % (AFTER_ENV, value))
    return None if after < 0 else after


def parse(text):
    """The file's (done, total), or None for no file, a partial or foreign one, or no containers."""
    try:
        data = json.loads(text or "")
        done, total = int(data["done"]), int(data["total"])
    except (ValueError, TypeError, KeyError):
        return None
    return (done, total) if 0 <= done <= total and total > 0 else None


def message(host, done, total, seconds):
    return "[%s] box: %d of %d containers done (%d s)" % (host, done, total, int(round(seconds)))


def remote_reader(connection, tmpdir_of):
    """read() -> the progress file's text on the host (None when it is not there, or when the task
    has no temporary directory: ``tmpdir_of()``, asked at each read, since the module's run makes
    it), through a shallow copy of the task's connection: the copy's per-command state (the ssh
    plugin's become flags, its password pipe) is its own while the module's command runs on the
    original, and ``sudoable=False`` leaves the shared become plugin alone."""
    connection = copy.copy(connection)

    def read():
        tmpdir = tmpdir_of()
        if not tmpdir:
            return None
        command = "cat %s 2>/dev/null" % shlex.quote(progress_path(tmpdir))
        returncode, stdout, _stderr = connection.exec_command(command, sudoable=False)
        return to_text(stdout, errors="surrogate_or_replace") if returncode == 0 else None
    return read


class Watch:
    """``with Watch(read, show, after):`` around the module's run, then ``finish(ok)``. ``read()``
    gives the file's text (or None), ``show(line)`` prints; ``clock`` is for the tests."""

    def __init__(self, read, show, after, host="localhost", interval=INTERVAL, clock=time.monotonic):
        self.read, self.show, self.after, self.host = read, show, after, host
        self.interval, self.clock = interval, clock
        self.started = clock()
        self.shown = None   # the last (done, total) shown
        self.failure = None  # why reading stopped, when it did
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = None

    def __enter__(self):
        if self.after is not None:
            self._thread = threading.Thread(target=self._watch, name="onebox-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(JOIN)
        return False

    def _watch(self):
        if self._stop.wait(self.after):
            return
        while True:
            try:
                self.poll()
            except Exception as exc:  # pylint: disable=broad-except
                # Progress is a courtesy: a read that fails ends it, never the task.
                self.failure = "%s: %s" % (type(exc).__name__, exc)
                return
            if self._stop.wait(self.interval):
                return

    def poll(self):
        """One read; its count shown when it is new (never once the module has ended)."""
        count = parse(self.read())
        if count is not None:
            self._show(count, late_ok=False)

    def _show(self, count, late_ok):
        with self._lock:
            if count == self.shown or (self._stop.is_set() and not late_ok):
                return
            self.shown = count
            self.show(message(self.host, count[0], count[1], self.clock() - self.started))

    def finish(self, ok):
        """After the module: N of N when a count was shown and the run went well (a count was
        the last one read, up to INTERVAL before the end)."""
        if ok and self.shown is not None:
            self._show((self.shown[1], self.shown[1]), late_ok=True)
