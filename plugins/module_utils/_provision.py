# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plan of one container's inside (its InsideSpec against its InsideState) and the Provisioner that applies it.

Provisioner works through LxdClient only (exec with a timeout, file push/pull): the container
needs ``sh``, coreutils, ``getent``, ``useradd``, ``dpkg-query``/``apt-get`` and systemd, no Python.
Its interface is every component's: read(), plan() (refusals raise here, before any change),
apply() (never in check mode), result().
"""
from __future__ import annotations

import hashlib
import json
import re
import shlex
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.homelab.onebox.plugins.module_utils._diff import entry
from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError, ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._provision_spec import (
    RESTART_PENDING, UNIT_DIR, FileSpec, covers, mask_env)
from ansible_collections.homelab.onebox.plugins.module_utils._provision_state import (
    FileState, id_lines, parents, parse_ids, parse_state, state_script, words)

# `systemctl is-enabled` answers that need no `systemctl enable` (or cannot take one).
ENABLED = {"enabled", "enabled-runtime", "static", "indirect", "generated", "transient", "alias"}
RUNNING = {"active", "activating", "reloading", "deactivating"}
_APT_NEEDS_LISTS = re.compile(r"Unable to locate package|has no installation candidate|Failed to fetch|404\s+Not Found")

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C",
           "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
APT_OPTIONS = ["-o", "DPkg::Lock::Timeout=120", "-o", "Dpkg::Options::=--force-confdef",
               "-o", "Dpkg::Options::=--force-confold"]
# A larger file (or one that is not UTF-8) is shown in diff as its size and sha256, and never
# pulled from the container for it.
DIFF_LIMIT = 64 * 1024
# One exec's script stays below this many bytes: Linux refuses a single argument of 128 KiB
# (MAX_ARG_STRLEN), and a tree's owner and mode fixes can be as many lines as it has files.
SCRIPT_LIMIT = 100 * 1024
# Files pushed at once into one container: each push is one request (~6 ms here), and a tree's
# first run pushes every file (measured: 200 small files 1.16 s one by one, 0.77 s 8 at once).
PUSHES_AT_ONCE = 8


# How long a (re)started service is given before it must be running. A process that exits at once
# (a missing module, a bad argument, a port taken) does so within a few hundred milliseconds; with
# the unit's RestartSec=1 it is then either waiting to be restarted or restarted once (NRestarts=1)
# a second later, so one second tells it apart from one that stays up, for one sleep per
# container that restarts something (never on a run that changes nothing). A process that dies
# later is the health check's to find (the box's ``health``).
SETTLE_SECONDS = 1
# Lines of a failing setup step's output, and of a failing service's journal, in the error.
TAIL_LINES = 20
# A setup step's exec outlives its own timeout (run by coreutils' timeout inside, which sends
# TERM, then KILL 10 s later) by this much, so the step's output still comes back.
SETUP_GRACE = 30
# One setup step, run by root's sh: the restart it will owe recorded first (RESTART_PENDING);
# stdout and stderr as one stream in order, in the step's directory, under coreutils' timeout
# (its exit 124: the time was up); the stamp written only after it succeeded, root's only (mode
# 0600 in a 0700 directory).
SETUP_SCRIPT = r"""exec 2>&1
stamp=$2 digest=$3 seconds=$4
(umask 077 && mkdir -p -- "${stamp%/*}" && : > "$5") || exit 1
cd -- "$1" || exit 1
shift 5
timeout -k 10 "$seconds" "$@"
rc=$?
[ "$rc" -eq 0 ] || exit "$rc"
umask 077
mkdir -p -- "${stamp%/*}" && printf '%s
' "$digest" > "$stamp.new" && mv -f -- "$stamp.new" "$stamp" || {
  echo "onebox: the step succeeded, but its stamp $stamp could not be written"; exit 1; }
"""
SETUP_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def check_instances(specs, current):
    """Every declared container exists and runs (``current``: name -> LXD instance record)."""
    for spec in specs:
        inst = current.get(spec.name)
        if inst is None:
            raise ValidationError(spec.field + ".name", spec.name, "no such container")
        if inst.get("status") != "Running":
            raise ValidationError(spec.field + ".name", spec.name,
                                  "container is %s; it must be running" % inst.get("status"))


# ---- the plan ---------------------------------------------------------------------------------
class InsidePlan:
    """What one container needs to match its InsideSpec, in the order apply() does it."""

    def __init__(self):
        self.actions = []
        self.packages = []       # to install
        self.users = []          # (name, home) to create
        self.mkdirs = []         # missing parent directories
        self.removals = []       # paths to rm before writing (absent files, links in the way)
        self.purges = []         # directories a synced tree removes (rm -r)
        self.dirs = []           # (path, TreeSpec): a tree's directories to make, or whose owner/mode change
        self.meta = []           # existing files whose owner/mode change (before their content)
        self.pushes = []         # FileSpecs to write
        self.changed_files = []  # (FileSpec, FileState) for diff
        self.daemon_reload = False
        self.setup = []          # SetupSteps to run
        self.enable, self.disable, self.stop, self.restart = [], [], [], []

    @property
    def changed(self):
        return bool(self.actions)


def plan_inside(spec, state):
    """Compare the declaration with the container's state; raise ValidationError for a
    declaration the container cannot satisfy (unknown user or group, a directory in a file's place)."""
    result = InsidePlan()
    declared_users = {u[0] for u in spec.users}
    for uname, home, _where in spec.users:
        if state.passwd.get(uname) is None:
            result.users.append((uname, home))
            result.actions.append("user %s" % uname)
    pending = {u for u, _home in result.users}

    for pkg in spec.packages:
        if not state.packages.get(pkg, "").startswith("ii"):
            result.packages.append(pkg)
            result.actions.append("package %s" % pkg)

    for svc in spec.services:
        if svc.command and svc.user and svc.user not in declared_users and state.passwd.get(svc.user) is None:
            raise ValidationError(svc.field + ".user", svc.user, "no such user in %s, and not declared in users" % spec.name)

    own = {id(f): svc for svc in spec.services for f in svc.own_files}
    user_files_changed = False
    touched_units = set()
    for fspec, current in zip(spec.all_files, state.files):
        change = _plan_file(spec, state, fspec, current, declared_users, pending, result)
        if change:
            result.changed_files.append((fspec, current))
            result.actions.append(fspec.label)
            svc = own.get(id(fspec))
            if svc is None:
                user_files_changed = user_files_changed or fspec.restart
                if fspec.state == "absent" and fspec.path.startswith(UNIT_DIR + "/"):
                    result.daemon_reload = True  # a unit removed: systemd forgets it (a timer stops firing)
            else:
                touched_units.add(svc.unit)
                if fspec is svc.unit_file:
                    result.daemon_reload = True
    for tree, tstate in zip(spec.trees, state.trees):
        if _plan_tree(spec, state, tree, tstate, declared_users, pending, result):
            user_files_changed = user_files_changed or tree.restart
    if result.daemon_reload:
        result.actions.append("daemon-reload")

    _plan_setup(spec, state, declared_users, pending, result)
    installing = bool(result.packages)
    for svc, (enabled, active) in zip(spec.services, state.units):
        exists = bool(enabled) or svc.command is not None
        if not exists and not installing:
            raise ValidationError(svc.field + ".name", svc.name,
                                  "no unit %s in %s (and no package to install)" % (svc.unit, spec.name))
        if svc.enabled and enabled not in ENABLED:
            result.enable.append(svc)
        elif not svc.enabled and enabled in ("enabled", "enabled-runtime"):
            result.disable.append(svc)
        running = active in RUNNING
        if svc.state == "stopped":
            if running:
                result.stop.append(svc)
        elif (not running or installing or user_files_changed or result.setup or state.restart_pending
              or svc.unit in touched_units):
            result.restart.append((svc, "restart" if running else "start"))
    result.actions += ["enable %s" % s.short for s in result.enable]
    result.actions += ["disable %s" % s.short for s in result.disable]
    result.actions += ["stop %s" % s.short for s in result.stop]
    result.actions += ["%s %s" % (verb, s.short) for s, verb in result.restart]
    return result


def _plan_file(spec, state, fspec, current, declared_users, pending, result):
    """Add what one file needs to the plan; True when it changes."""
    if current.kind == "dir":
        raise ValidationError(fspec.field, fspec.path, "is a directory in %s" % spec.name)
    if fspec.state == "absent":
        if current.kind == "none":
            return False
        result.removals.append(fspec.path)
        return True
    _check_ids(spec, state, fspec, declared_users)
    parent = parents(fspec.path)
    if not state.dirs.get(parent, True) and parent not in result.mkdirs:
        result.mkdirs.append(parent)
    return _plan_content(state, fspec, current, pending, result)


def _check_ids(spec, state, fspec, declared_users):
    """The owner and group of a file (or tree) exist in the container, or are declared users."""
    for name, what, known in ((fspec.owner, "owner", state.passwd.get(fspec.owner) is not None or fspec.owner in declared_users),
                              (fspec.group, "group", fspec.group is None or state.groups.get(fspec.group) is not None
                               or fspec.group in declared_users)):
        if not known:
            field = fspec.field.rsplit(".", 1)[0] + "." + what
            raise ValidationError(field, name, "no such %s in %s, and not declared in users" % (what, spec.name))


def _ids(state, fspec, pending):
    """(uid, gid) a file must have; None for one of a user this run creates (it differs anyway)."""
    uid = None if fspec.owner in pending else state.uid(fspec.owner)
    gid = None if (fspec.group or fspec.owner) in pending else state.gid(fspec.group, fspec.owner)
    return uid, gid


def _plan_content(state, fspec, current, pending, result):
    """A present file whose directory is there (or made): pushed when missing or different,
    owner and mode fixed when only they differ; True when it changes."""
    if current.kind != "file":
        if current.kind != "none":
            result.removals.append(fspec.path)   # a link or a device in the way
        result.pushes.append(fspec)
        return True
    uid, gid = _ids(state, fspec, pending)
    content = current.digest != fspec.digest
    meta = (current.mode, current.uid, current.gid) != (fspec.mode, uid, gid)
    if meta:
        result.meta.append(fspec)
    if content:
        result.pushes.append(fspec)
    return content or meta


def _plan_tree(spec, state, tree, tstate, declared_users, pending, result):
    """Add what one tree (a directory src) needs to the plan: its directories made (or their
    owner and mode fixed), each missing or different file pushed, a file whose owner or mode
    alone differs fixed, and with sync what is under its path and not in the source removed.
    One action for the tree, the files in ``changed_files``; True when it changes."""
    if tstate.kind == "other":
        raise ValidationError(tree.field, tree.path, "is not a directory in %s (the tree of src %s goes there)"
                              % (spec.name, tree.src))
    _check_ids(spec, state, tree, declared_users)
    ids = _ids(state, tree, pending)
    counts = {"pushed": 0, "fixed": 0, "removed": 0, "dirs": 0}
    dirs = set(tree.dirs)
    for rel in [""] + tree.dirs:
        current = tstate.root if rel == "" else tstate.entries.get(rel)
        if current is not None and current.kind == "dir" and (current.mode & 0o777, current.uid, current.gid) == (0o755,) + ids:
            continue
        if current is not None and current.kind != "dir":
            result.removals.append(tree.full(rel))   # a file or link where the source has a directory
        result.dirs.append((tree.full(rel), tree))
        counts["dirs"] += 1
    for rel in sorted(tree.files):
        fspec, current = tree.file_spec(rel), tstate.entries.get(rel) or FileState("none")
        if current.kind == "dir":
            raise ValidationError(tree.field, fspec.path, "is a directory in %s, a file in src %s" % (spec.name, tree.src))
        if _plan_content(state, fspec, current, pending, result):
            result.changed_files.append((fspec, current))
            counts["pushed" if result.pushes and result.pushes[-1] is fspec else "fixed"] += 1
    if tree.sync:
        gone = []
        for rel in sorted(tstate.entries):
            if rel in tree.files or rel in dirs or any(rel.startswith(g + "/") for g in gone):
                continue
            current = tstate.entries[rel]
            if current.kind == "dir":
                gone.append(rel)
                result.purges.append(tree.full(rel))
            else:
                result.removals.append(tree.full(rel))
            result.changed_files.append((FileSpec(tree.full(rel), state="absent", field=tree.field), current))
            counts["removed"] += 1
    if not any(counts.values()):
        return False
    result.actions.append("tree %s (%s)" % (tree.path, ", ".join("%d %s" % (n, what) for what, n in counts.items() if n)))
    return True


def script_batches(lines, limit=SCRIPT_LIMIT):
    """Shell lines as ``set -e`` scripts of at most about ``limit`` bytes each (one exec each)."""
    batch, size = [], 0
    for line in lines:
        if batch and size + len(line) > limit:
            yield "set -e\n" + "\n".join(batch)
            batch, size = [], 0
        batch.append(line)
        size += len(line) + 1
    if batch:
        yield "set -e\n" + "\n".join(batch)


def declared_digests(spec, top):
    """(path, state, digest) of every declared file at or under ``top``: files, and trees' files."""
    found = [(f.path, f.state, f.digest if f.state == "present" else "") for f in spec.files if covers(top, f.path)]
    for tree in spec.trees:
        if covers(top, tree.path) or covers(tree.path, top):
            found += [(tree.full(rel), "present", source.digest) for rel, source in tree.files.items()
                      if covers(top, tree.full(rel))]
    return sorted(found)


def setup_digest(step, spec, versions):
    """What a setup step runs against, as one sha256: the step (command, user, directory) and each
    of its ``when_changed``: the declared digests of the files at or under a path, a package's
    installed version (``versions``), an environment value of its service."""
    inputs = []
    for entry in step.when_changed:
        if entry.startswith("/"):
            inputs.append([entry, declared_digests(spec, entry)])
        else:
            inputs.append([entry, versions.get(entry) if entry in spec.packages else None, step.environment.get(entry)])
    text = json.dumps([step.command, step.user, step.working_directory, inputs], sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _plan_setup(spec, state, declared_users, pending, result):
    """The setup steps that run: one never run (no stamp), or whose stamp holds another digest (the
    step, or something it names in when_changed, changed), or whose ``creates`` is missing, or
    that names a package this run installs."""
    installing = set(result.packages)
    for step in spec.setup:
        if step.user not in declared_users and step.user not in pending and state.passwd.get(step.user) is None:
            raise ValidationError(step.field + ".user", step.user, "no such user in %s, and not declared in users"
                                  % spec.name)
        if (state.stamps.get(step.index) != setup_digest(step, spec, state.versions)
                or (step.creates and step.index not in state.created)
                or installing.intersection(step.when_changed)):
            result.setup.append(step)
            result.actions.append(step.label)


def settled(svc):
    """What systemd must say of a service one settle time after its (re)start: active; a unit the
    module writes (Type=simple) running, not restarted since; another service not restarted since
    (a oneshot one may have exited: active, sub-state exited); another unit (a timer) active."""
    if svc.command:
        return {"ActiveState": "active", "SubState": "running", "NRestarts": "0"}
    if svc.unit.endswith(".service"):
        return {"ActiveState": "active", "NRestarts": "0"}
    return {"ActiveState": "active"}


def started_check_lines(services):
    """Shell lines that, SETTLE_SECONDS after a (re)start, print each service's state (``R<i>``
    lines of ``systemctl show``) and, for one that is not as settled() wants, the last TAIL_LINES
    lines of its journal (``J<i>`` lines). No failure of theirs ends the script: parse_started()
    reads what they print."""
    lines = ["set +e", "sleep %s" % SETTLE_SECONDS]
    for index, svc in enumerate(services):
        want = settled(svc)
        pattern = "|".join("%s=%s" % item for item in sorted(want.items()))
        unit = shlex.quote(svc.unit)
        lines += ["s=$(systemctl show -p ActiveState -p SubState -p NRestarts -p Result -p ExecMainStatus -- %s 2>&1)"
                  % unit,
                  "printf '%%s\n' \"$s\" | sed 's/^/R%d /'" % index,
                  "if [ \"$(printf '%%s\n' \"$s\" | grep -cxE '%s')\" != %d ]; then" % (pattern, len(want)),
                  "  journalctl -u %s -n %d --no-pager 2>&1 | sed 's/^/J%d /'" % (unit, TAIL_LINES, index),
                  "fi"]
    return lines


def parse_started(services, output, where):
    """The output of started_check_lines() -> None, or the OneboxError naming each service that
    did not stay up, with what systemd says of it and the end of its journal."""
    props = [{} for _svc in services]
    journals = [[] for _svc in services]
    for line in output.splitlines():
        tag, _sep, rest = line.partition(" ")
        if len(tag) > 1 and tag[0] in "RJ" and tag[1:].isdigit() and int(tag[1:]) < len(services):
            if tag[0] == "R":
                key, _sep, value = rest.partition("=")
                props[int(tag[1:])][key.strip()] = value.strip()
            else:
                journals[int(tag[1:])].append(rest)
    failures, names = [], []
    for svc, found, journal in zip(services, props, journals):
        if all(found.get(key) == value for key, value in settled(svc).items()):
            continue
        said = ", ".join("%s=%s" % (key, found[key])
                         for key in ("ActiveState", "SubState", "NRestarts", "Result", "ExecMainStatus") if found.get(key))
        names.append(svc.name)
        failures.append("service %s (%s, %s) did not stay up: %d s after its start systemd says %s; the end of its "
                        "journal (journalctl -u %s -n %d):\n%s"
                        % (svc.name, svc.unit, svc.field, SETTLE_SECONDS, said or "nothing", svc.unit, TAIL_LINES,
                           "\n".join(journal) or "(empty)"))
    if not failures:
        return None
    return OneboxError("in %s, %s" % (where, "\n".join(failures)), failed_services=names)


def systemctl_script(todo, reload=True):
    """The systemctl steps of a plan as one shell script (one exec), or "" when there are none.

    enable/disable get --no-reload: their implicit daemon-reload (seconds on a busy host) is not
    needed for the symlinks they make, and a new or changed unit file gets one explicit reload."""
    steps = []
    if todo.daemon_reload and reload:
        steps.append("systemctl daemon-reload")
    for verb, services in (("enable --no-reload", todo.enable), ("disable --no-reload", todo.disable),
                           ("stop", todo.stop), ("restart", [svc for svc, _verb in todo.restart])):
        if services and verb == "restart":
            # systemd keeps counting a unit's restarts (NRestarts) across a restart by hand, and the
            # check after it asks for none: the count of a unit that died before starts again at 0.
            steps.append("systemctl reset-failed -- %s 2>/dev/null || true" % words(svc.unit for svc in services))
        if services:
            steps.append("systemctl %s -- %s" % (verb, words(svc.unit for svc in services)))
    return "set -e\n" + "\n".join(steps) if steps else ""


# ---- one container, through the LXD API -------------------------------------------------------------
class Provisioner:
    """One container's inside: read() its state, plan() what differs, apply() it, result()."""

    def __init__(self, lxd, spec, timeout=120, package_timeout=600, diff=False):
        self.lxd, self.spec = lxd, spec
        self.timeout, self.package_timeout, self.diff_mode = timeout, package_timeout, diff
        self.state = None
        self.planned = None              # the InsidePlan, once plan() ran
        self.before, self.after = {}, {}   # path -> text of every changed file (diff mode)

    def _sh(self, script):
        return self.lxd.run(self.spec.name, ["sh", "-c", script], timeout=self.timeout)

    def read(self):
        """The container's state (one exec); nothing changes."""
        self.state = parse_state(self.spec, self._sh(state_script(self.spec, self.timeout)), self.spec.name)
        return self.state

    def plan(self):
        """The InsidePlan (a ValidationError for what the container cannot satisfy); in diff mode,
        the before/after text of every changed file (pulled now, only those)."""
        self.planned = plan_inside(self.spec, self.state)
        if self.diff_mode:
            self._read_diff()
        return self.planned

    def _read_diff(self):
        for fspec, current in self.planned.changed_files:
            secret = fspec.masked is not None
            if current.kind == "file" and current.size is not None and current.size > DIFF_LIMIT:
                self.before[fspec.path] = _summary(current.size, current.digest)   # not pulled
            elif current.kind == "file":
                old = _text(self.lxd.pull_file(self.spec.name, fspec.path) or b"")
                self.before[fspec.path] = mask_env(old) if secret else old
            elif current.kind != "none":
                self.before[fspec.path] = "<%s>" % current.kind
            if fspec.state == "present":
                self.after[fspec.path] = fspec.masked if secret else _after_text(fspec)

    def apply(self):
        """Make the plan so, in the order of InsidePlan; never called in check mode."""
        name, todo, state = self.spec.name, self.planned, self.state
        if todo.packages:
            self._install(todo.packages)
        if todo.users:
            self._create_users(todo.users)
        if todo.mkdirs:
            self.lxd.run(name, ["sh", "-c", 'umask 022 && mkdir -p -- "$@"', "sh"] + todo.mkdirs, timeout=self.timeout)
        if todo.removals:
            self.lxd.run(name, ["rm", "-f", "--"] + todo.removals, timeout=self.timeout)
        if todo.purges:
            self.lxd.run(name, ["rm", "-rf", "--"] + todo.purges, timeout=self.timeout)
        # A tree's directories made with their owner and mode before its files go in (mkdir -p:
        # the parents of a new tree's path too, root's, 0755 by the umask).
        made = ["mkdir -p -- %s && chown %d:%d -- %s && chmod 0755 -- %s"
                % ((shlex.quote(path), state.uid(tree.owner), self._gid(tree)) + (shlex.quote(path),) * 2)
                for path, tree in todo.dirs]
        # Owner and mode first, content after: a secret never sits in a file with the old mode.
        fix = ["chown %d:%d -- %s && chmod %04o -- %s" % (state.uid(f.owner), self._gid(f), shlex.quote(f.path),
                                                          f.mode, shlex.quote(f.path)) for f in todo.meta]
        for script in script_batches(["umask 022"] * bool(made) + made + fix):
            self._sh(script)
        special = ["chmod %04o -- %s" % (f.mode, shlex.quote(f.path)) for f in todo.pushes if f.mode > 0o777]
        if len(todo.pushes) > 1:
            with ThreadPoolExecutor(max_workers=PUSHES_AT_ONCE) as pool:
                list(pool.map(self._push, todo.pushes))
        elif todo.pushes:
            self._push(todo.pushes[0])
        for script in script_batches(special):
            self._sh(script)
        reloaded = False
        if todo.setup:
            if todo.daemon_reload:
                # Before the steps: a step that fails leaves the new unit on disk, and the next run,
                # finding it in place, would restart the service with the old one systemd holds.
                self._sh("systemctl daemon-reload")
                reloaded = True
            self._setup(todo.setup)
        script = systemctl_script(todo, reload=not reloaded)
        if script:
            started = [svc for svc, _verb in todo.restart]
            if started and self.spec.setup:
                script += "\nrm -f -- %s" % RESTART_PENDING   # the restart a failed step owed is done
            if started:
                script += "\n" + "\n".join(started_check_lines(started))
            failure = parse_started(started, self._sh(script), name)
            if failure is not None:
                raise failure

    def _setup(self, steps):
        """Run the setup steps in order; the first that fails ends the run with its output's end
        (the services are not restarted). A step is given its service's environment, HOME, USER
        and LOGNAME of its user, and a PATH, as systemd gives the service."""
        name, state = self.spec.name, self.state
        needed = sorted({entry for step in steps for entry in step.when_changed if entry in self.spec.packages})
        if needed and self.planned.packages:
            # Versions of the packages this run installed, for the digests the stamps keep.
            output = self.lxd.run(name, ["dpkg-query", "-W", "-f=${Package} ${Version}\\n", "--"] + needed,
                                  timeout=self.timeout)
            for line in output.splitlines():
                package, _sep, version = line.partition(" ")
                state.versions[package] = version
        for step in steps:
            timeout = step.timeout or self.package_timeout
            uid, gid, home = state.passwd.get(step.user) or (None, None, "/")
            if uid is None:
                raise OneboxError("in %s, %s: no such user %s" % (name, step.field, step.user))
            argv = ["sh", "-c", SETUP_SCRIPT, "sh", step.working_directory, step.stamp,
                    setup_digest(step, self.spec, state.versions), str(timeout), RESTART_PENDING]
            if uid != 0:
                argv += ["setpriv", "--reuid=%d" % uid, "--regid=%d" % gid, "--init-groups", "--"]
            environment = dict({"PATH": SETUP_PATH, "HOME": home, "USER": step.user, "LOGNAME": step.user},
                               **step.environment)
            result = self.lxd.exec(name, argv + step.command, timeout=timeout + SETUP_GRACE, environment=environment)
            if result.rc != 0:
                tail = "\n".join((result.stdout + result.stderr).rstrip("\n").splitlines()[-TAIL_LINES:])
                what = {124: "did not finish within %d s (its timeout)" % timeout,
                        137: "was killed (KILL: 10 s past its timeout of %d s, or out of memory)" % timeout
                        }.get(result.rc, "exited %d" % result.rc)
                raise OneboxError("in %s, %s (%s) %s; the services were not (re)started. The end of its output:\n%s"
                                  % (name, step.field, _shown(step.command), what, tail or "(none)"),
                                  field=step.field, rc=result.rc, output=tail)

    def _push(self, fspec):
        """One file written: its content, or its source streamed from the module's host."""
        uid, gid = self.state.uid(fspec.owner), self._gid(fspec)
        if fspec.source is None:
            self.lxd.push_file(self.spec.name, fspec.path, fspec.content, fspec.mode & 0o777, uid, gid)
            return
        with fspec.source.open() as data:
            self.lxd.push_file(self.spec.name, fspec.path, data, fspec.mode & 0o777, uid, gid)

    def _gid(self, fspec):
        gid = self.state.gid(fspec.group, fspec.owner)
        if gid is None:
            raise OneboxError("in %s: cannot find the group of %s (%s)"
                              % (self.spec.name, fspec.path, fspec.group or fspec.owner))
        return gid

    def _create_users(self, users):
        lines = ["set -e"]
        for uname, home in users:
            argv = ["useradd", "--system", "--create-home", "--shell", "/usr/sbin/nologin"]
            if home:
                argv += ["--home-dir", home]
            lines.append("getent passwd %s >/dev/null || %s" % (shlex.quote(uname), words(argv + [uname])))
        names, groups = self.spec.user_names(), self.spec.group_names()
        output = self._sh("\n".join(lines + id_lines(names, groups)))
        parse_ids(self.state, names, groups, output.splitlines())

    def _install(self, packages):
        name, timeout = self.spec.name, self.package_timeout
        update = ["apt-get", "-q", "update"] + APT_OPTIONS[:2]
        install = ["apt-get", "-q", "install", "-y", "--no-install-recommends"] + APT_OPTIONS + ["--"] + packages
        updated = False
        if not self.state.apt_lists:
            self.lxd.run(name, update, timeout=timeout, environment=APT_ENV)
            updated = True
        result = self.lxd.exec(name, install, timeout=timeout, environment=APT_ENV)
        if result.rc != 0 and not updated and _APT_NEEDS_LISTS.search(result.stderr + result.stdout):
            self.lxd.run(name, update, timeout=timeout, environment=APT_ENV)
            result = self.lxd.exec(name, install, timeout=timeout, environment=APT_ENV)
        if result.rc != 0:
            output = (result.stderr or result.stdout).strip()[-2000:]
            raise OneboxError("in %s, apt-get install %s exited %d: %s" % (name, " ".join(packages), result.rc, output),
                              rc=result.rc)

    def result(self):
        """name, changed, actions; in diff mode ``diff``: one entry of the changed files' texts
        (none when nothing changes)."""
        result = {"name": self.spec.name, "changed": self.planned.changed, "actions": list(self.planned.actions)}
        if self.diff_mode:
            result["diff"] = [entry("inside %s" % self.spec.name, self.before, self.after)] if self.planned.changed else []
        return result


def take_diff(results):
    """The one diff entry of Provisioner results, taken out of them (each result loses its
    ``diff``): header ``inside the containers``, keyed by container then path."""
    before, after = {}, {}
    for result in results:
        for item in result.pop("diff", []):
            before[result["name"]], after[result["name"]] = item["before"], item["after"]
    return entry("inside the containers", before, after)


def _shown(command, limit=200):
    """A command as an error shows it: shell-quoted, cut at ``limit`` characters."""
    text = " ".join(shlex.quote(word) for word in command)
    return text if len(text) <= limit else text[:limit] + "..."


def _text(data):
    """File bytes as diff text."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return _summary(len(data), hashlib.sha256(data).hexdigest(), "binary: ")


def _summary(size, digest, kind=""):
    """What diff shows of a file instead of its content."""
    return "<%s%d bytes, sha256 %s>" % (kind, size, digest)


def _after_text(fspec):
    """What diff shows of a file as it will be: its text, or (large, or not UTF-8) a summary; a
    source is read only when it is small."""
    if fspec.size > DIFF_LIMIT:
        return _summary(fspec.size, fspec.digest)
    data = fspec.content if fspec.source is None else fspec.source.head(DIFF_LIMIT + 1)
    return _text(data)
