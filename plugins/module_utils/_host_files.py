# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A file on the host written whole or removed: a temporary file beside it, its mode set, then AnsibleModule.atomic_move.

A reader (a boot unit, a timer's agent, iptables-restore) sees the old file or the new one, never
half of one; the mode is set before the move, so a secret is never readable by others, even for
an instant.
"""
from __future__ import annotations

import os
import tempfile


def write_host_file(module, path, content, mode, dir_mode=0o755):
    """``content`` into ``path`` with ``mode`` (its directory made with ``dir_mode``); None removes it."""
    if content is None:
        if os.path.lexists(path):
            os.unlink(path)
        return
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=dir_mode, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".%s." % os.path.basename(path))
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(content)
    os.chmod(tmp, mode)
    module.atomic_move(tmp, path)
    os.chmod(path, mode)
