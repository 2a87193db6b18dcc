# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A ``src`` on the module's host: its files listed, hashed (streamed) once a run, opened to be pushed; transferred copies unpacked.

A ``src`` is a path on the controller; the action plugin gives the module that path itself when
it runs on the controller, or (any other connection) one tar of it per source in the task's
temporary directory, with ``src_archives`` mapping the path to its archive. unpack_archives()
puts each archive's content in the module's own temporary directory and points the items' ``src``
at it, so everything after sees a local path either way.
"""
from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import threading

from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError

CHUNK = 1 << 20          # bytes read at a time: a large artifact is never held whole
ARCHIVE_ROOT = "src"     # the name of the source (a file, or a directory and its tree) in its archive

_digests = {}            # (path, inode, size, mtime) -> sha256: a pool's members share one source
_digests_lock = threading.Lock()


def file_digest(path):
    """The sha256 of a file's bytes, read in chunks; computed once a run for a file unchanged
    since (the same inode, size and modification time)."""
    info = os.stat(path)
    key = (path, info.st_ino, info.st_size, info.st_mtime_ns)
    with _digests_lock:
        if key in _digests:
            return _digests[key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    with _digests_lock:
        _digests[key] = digest.hexdigest()
    return _digests[key]


class SourceFile:
    """One regular file of the module's host: its size and permission bits (read when it is
    made), its sha256 (when first asked), and a binary handle to stream it from."""

    def __init__(self, path, info=None):
        info = info or os.stat(path)
        self.path = path
        self.size = info.st_size
        self.mode = stat.S_IMODE(info.st_mode) & 0o777

    @property
    def digest(self):
        return file_digest(self.path)

    def open(self):
        return open(self.path, "rb")

    def head(self, limit):
        """Its first ``limit`` bytes (what diff shows of a small file)."""
        with self.open() as handle:
            return handle.read(limit)


def list_tree(root):
    """A directory of the module's host -> (directories, files): the relative paths of every
    directory under it (sorted, parents first) and {relative path: SourceFile} of every regular
    file. Links are followed (a linked directory once: a loop is not walked twice); anything
    else (a socket, a FIFO) is left out. A name with a newline is refused: the container's side
    of the comparison is read line by line (_provision_state)."""
    dirs, files, seen = [], {}, set()
    for top, subdirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            subdirs[:] = []
            continue
        seen.add(real)
        rel = os.path.relpath(top, root)
        rel = "" if rel == "." else rel
        subdirs.sort()
        if "\n" in rel:
            raise OneboxError("%r: a name with a newline cannot be copied" % top, path=top)
        if rel:
            dirs.append(rel)
        for name in sorted(names):
            full = os.path.join(top, name)
            if "\n" in name:
                raise OneboxError("%r: a name with a newline cannot be copied" % full, path=full)
            try:
                info = os.stat(full)
            except OSError:
                continue  # a dangling link: nothing to copy
            if stat.S_ISREG(info.st_mode):
                files[os.path.join(rel, name) if rel else name] = SourceFile(full, info)
    return sorted(dirs), files


# ---- archives the action plugin transferred -------------------------------------------------------
def _safe_members(archive, where):
    """The archive's regular files and directories under ARCHIVE_ROOT; anything else (a link, a
    device, an absolute or ``..`` name) refuses the archive: it did not come from the plugin."""
    members = []
    for member in archive.getmembers():
        parts = member.name.split("/")
        if parts[0] != ARCHIVE_ROOT or ".." in parts or member.name.startswith("/") or not (
                member.isfile() or member.isdir()):
            raise OneboxError("%s: unexpected member %r in a transferred source" % (where, member.name))
        members.append(member)
    return members


def unpack(archive_path, into):
    """One transferred archive unpacked under ``into``; the path of its source (file or directory)."""
    os.makedirs(into, exist_ok=True)
    with tarfile.open(archive_path, "r:") as archive:
        members = _safe_members(archive, archive_path)
        for member in members:
            target = os.path.join(into, member.name)
            if member.isdir():
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with archive.extractfile(member) as data, open(target, "wb") as out:
                for chunk in iter(lambda: data.read(CHUNK), b""):
                    out.write(chunk)
            os.chmod(target, member.mode & 0o777)
    return os.path.join(into, ARCHIVE_ROOT)


def unpack_archives(archives, file_items, tmpdir):
    """``archives`` ({src: archive path}, the option ``src_archives``) unpacked under ``tmpdir``,
    each archive removed once unpacked, and every item of ``file_items`` whose ``src`` is one of
    them pointed at the unpacked copy (in place)."""
    local = {}
    for index, (src, archive) in enumerate(sorted((archives or {}).items())):
        try:
            local[src] = unpack(archive, os.path.join(tmpdir, "onebox-src-%d" % index))
        except (OSError, tarfile.TarError) as exc:
            raise OneboxError("src %s: cannot unpack its transferred copy %s: %s" % (src, archive, exc))
        try:
            os.remove(archive)
        except OSError:
            pass  # the task's temporary directory goes anyway
    for item in file_items:
        if isinstance(item, dict) and item.get("src") in local:
            item["src"] = local[item["src"]]
    return local
