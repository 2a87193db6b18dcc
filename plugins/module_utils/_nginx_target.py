# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where nginx's site files live and nginx runs: the Target primitives (read, write, swap,
restore, remove, command), on the host (HostTarget) or inside an LXD instance (LxdTarget, through
_lxd.py with a few sh scripts: nothing but sh, mv, ln, rm and nginx is needed in the container),
and nginx's command lines.

Staged and backup files are dot-files beside the live one (``.onebox-NAME.conf.new`` / ``.old``)
that neither ``*.conf`` nor ``*`` include globs match.
"""
from __future__ import annotations

import os
import re

from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError
from ansible_collections.homelab.onebox.plugins.module_utils._nginx_render import SUFFIX

STAGE_PREFIX = ".onebox-"


class NginxError(OneboxError):
    """nginx refused a configuration, or a target operation failed."""


def stage_name(fname):
    return "%s%s.new" % (STAGE_PREFIX, fname)


def backup_name(fname):
    return "%s%s.old" % (STAGE_PREFIX, fname)


def included_files(dump):
    """File paths an ``nginx -T`` dump shows as loaded."""
    return set(re.findall(r"^# configuration file (.+?):\s*$", dump, re.MULTILINE))


class Target:
    """Where the files live and nginx runs. Subclasses implement the primitives; paths are names
    inside ``conf_dir`` (validated plain file names)."""

    def __init__(self, conf_dir, test_command, reload_command):
        self.conf_dir = conf_dir.rstrip("/") or "/"
        self.test_command = list(test_command)
        self.reload_command = list(reload_command)

    def path(self, fname):
        return os.path.join(self.conf_dir, fname)

    # primitives
    def read(self):
        """{file name: text} of the regular ``*.conf`` files, plus the list of ``.onebox-*`` leftovers."""
        raise NotImplementedError

    def write(self, fname, text):
        raise NotImplementedError

    def swap(self, pairs):
        """For each (fname, has_before, has_after): link live -> .old, rename .new -> live (or remove)."""
        raise NotImplementedError

    def restore(self, pairs):
        raise NotImplementedError

    def remove(self, fnames):
        raise NotImplementedError

    def command(self, argv):
        """-> (rc, stdout, stderr)"""
        raise NotImplementedError


class HostTarget(Target):
    def __init__(self, module, conf_dir, test_command, reload_command):
        super().__init__(conf_dir, test_command, reload_command)
        self.module = module

    def read(self):
        if not os.path.isdir(self.conf_dir):
            raise NginxError("conf_dir %s does not exist (is nginx installed?)" % self.conf_dir)
        files, leftovers = {}, []
        for fname in sorted(os.listdir(self.conf_dir)):
            full = self.path(fname)
            if fname.startswith(STAGE_PREFIX):
                leftovers.append(fname)
            elif fname.endswith(SUFFIX) and os.path.isfile(full) and not os.path.islink(full):
                with open(full, "rb") as handle:
                    files[fname] = handle.read().decode("utf-8", "replace")
        return files, leftovers

    def write(self, fname, text):
        full = self.path(fname)
        with open(full, "wb") as handle:
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(full, 0o644)

    def swap(self, pairs):
        for fname, has_before, has_after in pairs:
            if has_before:
                os.link(self.path(fname), self.path(backup_name(fname)))
            if has_after:
                self.module.atomic_move(self.path(stage_name(fname)), self.path(fname))
            else:
                os.unlink(self.path(fname))

    def restore(self, pairs):
        for fname, has_before, _has_after in pairs:
            old = self.path(backup_name(fname))
            if has_before and os.path.exists(old):
                os.rename(old, self.path(fname))
            elif not has_before and os.path.exists(self.path(fname)):
                os.unlink(self.path(fname))

    def remove(self, fnames):
        for fname in fnames:
            try:
                os.unlink(self.path(fname))
            except FileNotFoundError:
                pass

    def command(self, argv):
        return self.module.run_command(argv)


# sh scripts for the LXD target: argv carries the (validated) names, never the script text.
_SH_READ = r'''cd "$1" || { echo "conf_dir $1 does not exist" >&2; exit 3; }
for f in .onebox-*; do [ -e "$f" ] && printf '\001L %s\n' "$f"; done
for f in *.conf; do
  [ -f "$f" ] && [ ! -L "$f" ] || continue
  printf '\001F %s\n' "$f"; cat -- "$f"; printf '\n'
done
exit 0'''
_SH_SWAP = r'''cd "$1" && shift || exit 3
while [ $# -gt 0 ]; do
  f=$1; before=$2; after=$3; shift 3
  if [ "$before" = 1 ]; then ln -f -- "$f" ".onebox-$f.old" || exit 1; fi
  if [ "$after" = 1 ]; then mv -f -- ".onebox-$f.new" "$f" || exit 1; else rm -f -- "$f" || exit 1; fi
done'''
_SH_RESTORE = r'''cd "$1" && shift || exit 3
rc=0
while [ $# -gt 0 ]; do
  f=$1; before=$2; shift 3
  if [ "$before" = 1 ]; then
    if [ -e ".onebox-$f.old" ]; then mv -f -- ".onebox-$f.old" "$f" || rc=1; fi
  else rm -f -- "$f" || rc=1; fi
done
exit $rc'''


class LxdTarget(Target):
    def __init__(self, lxd, instance, conf_dir, test_command, reload_command, timeout=60):
        super().__init__(conf_dir, test_command, reload_command)
        self.lxd = lxd
        self.instance = instance
        self.timeout = timeout

    def _sh(self, script, args):
        return self.lxd.exec(self.instance, ["sh", "-c", script, "sh"] + [str(a) for a in args],
                             timeout=self.timeout)

    def _must(self, what, script, args):
        result = self._sh(script, args)
        if result.rc != 0:
            raise NginxError("%s in %s failed (exit %d): %s"
                             % (what, self.instance, result.rc, (result.stderr or result.stdout).strip()))
        return result

    def read(self):
        if self.lxd.instance(self.instance) is None:
            raise NginxError("instance %s does not exist" % self.instance)
        out = self._must("reading %s" % self.conf_dir, _SH_READ, [self.conf_dir]).stdout
        files, leftovers = {}, []
        for chunk in out.split("\001")[1:]:
            kind, _sep, rest = chunk.partition(" ")
            fname, _sep, body = rest.partition("\n")
            if kind == "L":
                leftovers.append(fname)
            elif kind == "F":
                # cat output plus the separating newline we printed
                files[fname] = body[:-1] if body.endswith("\n") else body
        return files, leftovers

    def write(self, fname, text):
        self.lxd.push_file(self.instance, self.path(fname), text.encode("utf-8"), mode=0o644)

    def swap(self, pairs):
        self._must("swapping in the new files", _SH_SWAP, [self.conf_dir] + _flat(pairs))

    def restore(self, pairs):
        self._must("restoring the previous files", _SH_RESTORE, [self.conf_dir] + _flat(pairs))

    def remove(self, fnames):
        if fnames:
            self._must("removing", 'cd "$1" && shift && rm -f -- "$@"', [self.conf_dir] + list(fnames))

    def command(self, argv):
        result = self.lxd.exec(self.instance, argv, timeout=self.timeout)
        return result.rc, result.stdout, result.stderr


def _flat(pairs):
    args = []
    for fname, has_before, has_after in pairs:
        args += [fname, "1" if has_before else "0", "1" if has_after else "0"]
    return args


def test_and_dump_command(binary, prefix=None, conf=None):
    return _nginx_argv(binary, prefix, conf) + ["-T", "-q"]


def reload_command(binary, prefix=None, conf=None):
    return _nginx_argv(binary, prefix, conf) + ["-s", "reload"]


def _nginx_argv(binary, prefix, conf):
    argv = [binary]
    if prefix:
        argv += ["-p", prefix]
    if conf:
        argv += ["-c", conf]
    return argv
