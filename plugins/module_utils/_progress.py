# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How far a converge is: the count of containers done, in a small file the box's action plugin
reads on the controller while the module runs (a module cannot print until it ends).

The file is ``PROGRESS_FILE`` in the task's temporary directory (the one the action plugin made
and removes; ``_ansible_tmpdir``), one JSON object ``{"done": D, "total": T}``, replaced whole
(write then rename), so a reader never sees half of it. Without that directory (pipelining
without one, or become to an unprivileged user) nothing is written. The file goes at the end of
the run; a write that fails only loses the progress, never the converge."""
from __future__ import annotations

import json
import os
import threading

PROGRESS_FILE = "onebox-progress.json"


def progress_path(tmpdir):
    """The progress file in the task's temporary directory, or None without one."""
    return os.path.join(tmpdir, PROGRESS_FILE) if tmpdir else None


class Progress:
    """``start(total)``, then ``done()`` from any thread as each container's work ends, ``close()``
    at the end (the file removed). With ``path`` None it only counts."""

    def __init__(self, path):
        self.path = path
        self.done_count, self.total = 0, 0
        self._lock = threading.Lock()

    def start(self, total):
        with self._lock:
            self.done_count, self.total = 0, total
            self._write()

    def done(self, *_args):
        """One more container done (takes and ignores a future, to be a done-callback)."""
        with self._lock:
            self.done_count += 1
            self._write()

    def _write(self):
        if self.path is None or not self.total:
            return
        partial = self.path + ".part"
        try:
            with open(partial, "w", encoding="utf-8") as handle:
                handle.write(json.dumps({"done": self.done_count, "total": self.total}))
            os.chmod(partial, 0o644)  # read by the connection's user, who may not be the module's
            os.replace(partial, self.path)
        except OSError:
            self.path = None  # not writable here: no progress, the converge goes on

    def close(self):
        if self.path is None:
            return
        for path in (self.path, self.path + ".part"):
            try:
                os.remove(path)
            except OSError:
                pass
