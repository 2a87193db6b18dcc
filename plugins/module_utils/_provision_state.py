# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What one container holds of its InsideSpec: the state-reading script (init wait included) and its parser.

state_script() prints everything the plan needs as tagged lines in one exec; parse_state() turns
them into an InsideState (a FileState per declared file, directories, users, groups, units,
packages and their versions, what each setup step last ran against), or a OneboxError naming the
container when init was not ready or the output was cut.
"""
from __future__ import annotations

import re
import shlex

from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError
from ansible_collections.homelab.onebox.plugins.module_utils._provision_spec import RESTART_PENDING


def parents(path):
    return path.rsplit("/", 1)[0] or "/"


def words(values):
    return " ".join(shlex.quote(value) for value in values)


def id_lines(users, groups):
    """Shell lines printing the passwd entries of ``users`` and group entries of ``groups`` that
    exist, one getent each (a missing name prints nothing)."""
    lines = []
    if users:
        lines.append("getent passwd %s | sed 's/^/U /'" % words(users))
    if groups:
        lines.append("getent group %s | sed 's/^/G /'" % words(groups))
    return lines


# A container just started (or restarted) is still in its init's early boot: first systemctl gets
# no answer at all ("Failed to connect to bus"), then the units before basic.target (mounts,
# tmpfiles, sysusers) are still making the files and users a read would compare. So the read of
# a container with services waits for basic.target. Not for the end of boot
# (`systemctl is-system-running --wait`): that includes ifupdown's networking.service (DHCP,
# 3-6 s), which the set-up inside is meant to overlap. On onebox-debian12, basic.target does not
# wait for networking.service: the latter has DefaultDependencies=no and is ordered only Before
# network.target, network-online.target and shutdown.target, and no network unit is in
# basic.target's After= closure (`systemctl list-dependencies --after --all basic.target`).
INIT_READY = "basic.target"
INIT_POLL = "0.15"   # seconds between two questions to a booting systemd (sleep's argument)


def init_wait_seconds(timeout):
    """How long a script waits for init inside an exec of ``timeout`` seconds: a little less
    (a fifth of it, between 0.5 and 10 s, is left), so the script can still say what init was
    doing before LXD's own timeout cuts it off with nothing to show."""
    return max(0.1, timeout - min(10.0, max(0.5, timeout * 0.2)))


def init_wait_lines(seconds, ready):
    """Shell lines that run the shell command ``ready`` until it succeeds, for at most ``seconds``.
    Ready at once: one run of it, nothing else. Still not ready when the time is up: they print
    ``I`` lines (centiseconds waited; systemd's word for its state, empty when it gives no answer;
    PID 1's program; how many jobs are queued, and the running ones), then ``END``, and end the script;
    init_not_ready() turns those lines into the error. The clock is /proc/uptime, read by the
    shell itself (no process; monotonic), in centiseconds."""
    now = "read -r up rest < /proc/uptime; now=$(( ${up%.*} * 100 + 1${up#*.} - 100 ))"
    return [
        now, "t0=$now",
        "until %s; do" % ready,
        "  " + now,
        "  if [ $((now - t0)) -ge %d ]; then" % int(round(seconds * 100)),
        '    echo "I waited $((now - t0))"',
        '    echo "I state $(systemctl is-system-running 2>/dev/null)"',
        '    echo "I init $(readlink /proc/1/exe 2>/dev/null)"',
        # What boot is busy with: how many jobs are queued, and the running ones (the rest wait for them).
        "    jobs=$(systemctl list-jobs --no-legend 2>/dev/null)",
        "    echo \"I queued $(printf '%s\\n' \"$jobs\" | grep -c ' ')\"",
        "    printf '%s\\n' \"$jobs\" | grep ' running' | head -n 5 | sed 's/^/I job /'",
        "    echo END; exit 0",
        "  fi",
        "  sleep %s" % INIT_POLL,
        "done",
    ]


def init_not_ready(where, lines):
    """The OneboxError for the ``I`` lines of init_wait_lines() (None when there are none). Tolerant:
    a line missing or odd leaves its part of the message out, never hides the failure."""
    found = {"waited": "", "state": "", "init": "", "queued": ""}
    jobs, seen = [], False
    for line in lines:
        tag, _sep, rest = line.partition(" ")
        if tag != "I":
            continue
        seen = True
        key, _sep, value = rest.partition(" ")
        if key == "job":   # "ID UNIT TYPE running": the unit and what it does
            fields = value.split()
            jobs.append(" ".join(fields[1:3]) if len(fields) >= 3 else " ".join(fields))
        elif key in found:
            found[key] = value.strip()
    if not seen:
        return None
    waited = int(found["waited"]) / 100.0 if found["waited"].isdigit() else None
    state = found["state"] or None
    msg = "reading the state of %s: its init was not ready after %s s (%s not reached): %s" % (
        where, "%.1f" % waited if waited is not None else "?", INIT_READY,
        "systemd says %r" % state if state else "no answer from systemd (not started yet, or not the container's init)")
    if found["init"]:
        msg += "; PID 1 is %s" % found["init"]
    queued = int(found["queued"]) if found["queued"].isdigit() else None
    if queued is not None:
        msg += "; %d jobs queued" % queued
    if jobs:
        msg += ", running: %s" % ", ".join(jobs)
    msg += " (a busy host boots its containers slowly: a larger timeout waits longer)"
    return OneboxError(msg, instance=where, waited=waited, init_state=state or "no answer from systemd",
                       queued=queued, jobs=jobs)


def state_script(spec, timeout=120):
    """One ``sh -c`` script printing everything the plan needs about one container as tagged lines,
    ``END`` last (so a lost or cut output is never taken for "nothing there"). A fixed number of
    processes however many files: one stat, one sha256sum (of the regular files only: never
    open a FIFO), one getent per database, one systemctl, one dpkg-query.

    With services, it first waits for the container's init (init_wait_lines(), within an exec of
    ``timeout`` seconds); the systemctl that asks whether init is ready also reads the units, so a
    container that is up pays no extra process and no extra round trip."""
    lines = []
    if spec.services:
        # basic.target's block first, then one block of properties per unit, in order, blank-line
        # separated; only the units' blocks are printed once basic.target is active.
        lines += ["nl='\n'",
                  "ready() {",
                  "  units=$(systemctl show -p LoadState -p UnitFileState -p ActiveState -p SubState -- %s 2>&1)"
                  % words([INIT_READY] + [svc.unit for svc in spec.services]),
                  "  first=${units#*ActiveState=}",
                  '  [ "${first%%"$nl"*}" = active ]',
                  "}"]
        lines += init_wait_lines(init_wait_seconds(timeout), "ready")
        lines.append('printf \'%s\\n\' "${units#*"$nl$nl"}" | sed \'s/^/S /\'')
    files = [f.path for f in spec.all_files]
    if files:
        lines.append("stat -c 'F %%F|%%a|%%u|%%g|%%n' -- %s 2>/dev/null" % words(files))
        lines.append("for f in %s; do if [ -f \"$f\" ] && [ ! -L \"$f\" ]; then set -- \"$@\" \"$f\"; fi; done"
                     % words(files))
        lines.append("if [ $# -gt 0 ]; then sha256sum -- \"$@\" | sed 's/^/H /'; fi")
    sized = [f.path for f in spec.files if f.source is not None]
    if sized:  # a file from a src: its size, so diff pulls no large file
        lines.append("stat -c 'Z %%s|%%n' -- %s 2>/dev/null" % words(sized))
    lines += tree_lines(spec.trees)
    dirs = sorted({parents(f.path) for f in spec.all_files if f.state == "present"})
    lines += ["if [ -d %s ]; then echo 'D 1 %s'; else echo 'D 0 %s'; fi" % (shlex.quote(d), i, i)
              for i, d in enumerate(dirs)]
    lines += id_lines(spec.user_names(), spec.group_names())
    if spec.packages:
        lines.append('echo "A $(ls /var/lib/apt/lists 2>/dev/null | grep -c _Packages)"')
        # The status is three characters ("ii "); the version follows it (a setup step's when_changed).
        lines.append("dpkg-query -W -f='P ${Package} ${db:Status-Abbrev}${Version}\\n' -- %s 2>/dev/null"
                     % words(spec.packages))
    lines += setup_lines(spec.setup)
    lines.append("echo END")
    return "\n".join(lines) + "\n"


def tree_lines(trees):
    """Shell lines reading every tree: per tree, each entry under its directory (the directory
    itself first, as ``""``) as ``T<i> TYPE|MODE|UID|GID|SIZE|RELATIVE PATH`` (find's ``%y``,
    ``%m``, ...) and the sha256 of each regular file as ``H`` lines, or ``T<i> !`` when its path
    is not a directory (``-`` when nothing is there). Two finds and a batched sha256sum a tree,
    however many files it has; the script does not grow with them. A name with a newline would
    break the lines: it is left out (never compared, never removed)."""
    if not trees:
        return []
    lines = ["tnl='\n'"]
    for index, tree in enumerate(trees):
        root = shlex.quote(tree.path)
        lines += ["if [ -d %s ] && [ ! -L %s ]; then" % (root, root),
                  "  find %s -name \"*$tnl*\" -prune -o -printf 'T%d %%y|%%m|%%U|%%G|%%s|%%P\\n'" % (root, index),
                  "  find %s -name \"*$tnl*\" -prune -o -type f -exec sha256sum -- {} + | sed 's/^/H /'" % root,
                  "elif [ -e %s ] || [ -L %s ]; then echo 'T%d !'; else echo 'T%d -'; fi" % (root, root, index, index)]
    return lines


class TreeState:
    """What is under one tree's path: ``kind`` of the path itself (dir, none, other) and every
    entry under it, relative path -> FileState (kinds file, dir, link, other; digest of files)."""

    def __init__(self):
        self.kind = "none"
        self.root = None         # the FileState of the path itself, when it is a directory
        self.entries = {}


_TREE_KINDS = {"f": "file", "d": "dir", "l": "link"}


def setup_lines(steps):
    """Shell lines printing, per setup step, the digest its stamp file holds (``X INDEX DIGEST``)
    and whether its ``creates`` path is there (``C INDEX``), and whether a restart is still owed
    after a step failed (``X pending``): shell builtins only, no process."""
    lines = ["if [ -e %s ]; then echo 'X pending'; fi" % RESTART_PENDING] if steps else []
    for index, step in enumerate(steps):
        stamp = shlex.quote(step.stamp)
        lines.append("if [ -f %s ] && read -r d < %s; then echo \"X %d $d\"; fi" % (stamp, stamp, index))
        if step.creates:
            lines.append("if [ -e %s ] || [ -L %s ]; then echo 'C %d'; fi"
                         % (shlex.quote(step.creates), shlex.quote(step.creates), index))
    return lines


_KINDS = {"regular file": "file", "regular empty file": "file", "directory": "dir", "symbolic link": "link"}


def parse_digest(rest):
    """A sha256sum line -> (path, digest); it escapes a name holding a backslash (or newline)."""
    escaped = rest.startswith("\\")
    if escaped:
        rest = rest[1:]
    digest, path = rest[:64], rest[66:]
    if escaped:
        path = re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), path)
    return path, digest


class FileState:
    """One declared path as found: its kind (file, dir, link, other, none), mode, owner, digest."""

    def __init__(self, kind, mode=None, uid=None, gid=None, digest=None, size=None):
        self.kind, self.mode, self.uid, self.gid, self.digest = kind, mode, uid, gid, digest
        self.size = size   # bytes, where it was read (a file from a src, a tree's files)


class InsideState:
    """What one container has of what its InsideSpec declares."""

    def __init__(self):
        self.files = []          # FileState per spec.all_files
        self.trees = []          # TreeState per spec.trees
        self.dirs = {}           # parent directory -> exists
        self.passwd = {}         # user -> (uid, gid, home) or None
        self.groups = {}         # group -> gid or None
        self.units = []          # (is-enabled, is-active) per spec.services
        self.packages = {}       # package -> dpkg status abbreviation ("ii " when installed)
        self.versions = {}       # installed package -> its version, as dpkg reports it
        self.stamps = {}         # setup step index -> the digest it last ran against
        self.created = set()     # setup step indexes whose ``creates`` path is there
        self.restart_pending = False   # a setup step failed since the services were last restarted
        self.apt_lists = None    # number of package lists apt has (None: not asked)

    def uid(self, user):
        entry = self.passwd.get(user)
        return entry[0] if entry else None

    def gid(self, group=None, user=None):
        if group is not None:
            return self.groups.get(group)
        entry = self.passwd.get(user)
        return entry[1] if entry else None


def parse_ids(state, users, groups, lines):
    """getent's output -> state.passwd and state.groups (None for a name it did not print)."""
    state.passwd.update(dict.fromkeys(users))
    state.groups.update(dict.fromkeys(groups))
    for line in lines:
        tag, _sep, rest = line.partition(" ")
        fields = rest.split(":")
        if tag == "U" and len(fields) >= 7 and fields[0] in state.passwd:
            state.passwd[fields[0]] = (int(fields[2]), int(fields[3]), fields[5])
        elif tag == "G" and len(fields) >= 3 and fields[0] in state.groups:
            state.groups[fields[0]] = int(fields[2])


def parse_units(lines, count):
    """``systemctl show`` blocks -> [(unit file state, active state)] ("" when there is no such
    unit), or None when the output does not hold ``count`` blocks. A unit whose process died and
    that waits to be restarted (``activating``, sub-state ``auto-restart``) is ``auto-restart``: not
    running, so the plan starts it and the check after the start says why it does not stay up."""
    blocks, block = [], {}
    for line in lines + [""]:
        key, sep, value = line.partition("=")
        if sep:
            block[key.strip()] = value.strip()
        elif not line.strip() and block:
            blocks.append(block)
            block = {}
        elif line.strip():
            return None   # an error message instead of properties
    if len(blocks) != count or any("ActiveState" not in b for b in blocks):
        return None
    return [("" if b.get("LoadState") == "not-found" else b.get("UnitFileState", ""),
             "auto-restart" if b.get("SubState") == "auto-restart" else b["ActiveState"]) for b in blocks]


def parse_tree_line(tstate, rest):
    """One ``T<i>`` line of tree_lines() into its TreeState."""
    if rest in ("!", "-"):
        tstate.kind = "other" if rest == "!" else "none"
        return
    fields = rest.split("|", 5)
    if len(fields) != 6 or not all(f.isdigit() for f in fields[1:5]):
        return
    kind, mode, uid, gid, size, rel = fields
    entry = FileState(_TREE_KINDS.get(kind, "other"), int(mode, 8), int(uid), int(gid), size=int(size))
    if rel:
        tstate.entries[rel] = entry
    else:
        tstate.kind = "dir"
        tstate.root = entry


def parse_state(spec, output, where="container"):
    lines = output.splitlines()
    not_ready = init_not_ready(where, lines)
    if not_ready is not None:
        raise not_ready
    if "END" not in lines:
        raise OneboxError("reading the state of %s: the output is missing or cut short: %r" % (where, output[-500:]))
    state = InsideState()
    dirs = sorted({parents(f.path) for f in spec.all_files if f.state == "present"})
    found, digests, units, sizes = {}, {}, [], {}
    trees = [TreeState() for _tree in spec.trees]
    for line in lines:
        tag, _sep, rest = line.partition(" ")
        if tag.startswith("T") and tag[1:].isdigit() and int(tag[1:]) < len(trees):
            parse_tree_line(trees[int(tag[1:])], rest)
        elif tag == "Z":
            size, _sep, path = rest.partition("|")
            if size.isdigit():
                sizes[path] = int(size)
        elif tag == "F":
            fields = rest.split("|", 4)
            if len(fields) == 5:
                found[fields[4]] = FileState(_KINDS.get(fields[0], "other"), int(fields[1], 8),
                                             int(fields[2]), int(fields[3]))
        elif tag == "H":
            path, digest = parse_digest(rest)
            digests[path] = digest
        elif tag == "D":
            exists, _sep, index = rest.partition(" ")
            if index.isdigit() and int(index) < len(dirs):
                state.dirs[dirs[int(index)]] = exists == "1"
        elif tag == "S":
            units.append(rest)
        elif tag == "A":
            state.apt_lists = int(rest) if rest.strip().isdigit() else 0
        elif tag == "P":
            name, _sep, status = rest.partition(" ")
            if status.startswith("ii") or name not in state.packages:
                state.packages[name] = status[:3]
                if status.startswith("ii"):
                    state.versions[name] = status[3:]
        elif tag == "X":
            index, _sep, digest = rest.partition(" ")
            state.restart_pending = state.restart_pending or index == "pending"
            if index.isdigit():
                state.stamps[int(index)] = digest.strip()
        elif tag == "C" and rest.strip().isdigit():
            state.created.add(int(rest))
    for fspec in spec.all_files:
        current = found.get(fspec.path, FileState("none"))
        current.digest = digests.get(fspec.path)
        current.size = sizes.get(fspec.path)
        state.files.append(current)
    for tree, tstate in zip(spec.trees, trees):
        for rel, entry in tstate.entries.items():
            entry.digest = digests.get(tree.full(rel))
    state.trees = trees
    parse_ids(state, spec.user_names(), spec.group_names(), lines)
    state.units = parse_units(units, len(spec.services))
    if state.units is None:
        raise OneboxError("reading the state of %s: systemctl gave no state for the units %s (is systemd "
                          "the container's init, and running?): %r"
                          % (where, ", ".join(svc.unit for svc in spec.services), "\n".join(units)[-500:]))
    return state
