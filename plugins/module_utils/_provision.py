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

import re
import shlex

from ansible_collections.homelab.onebox.plugins.module_utils._diff import entry
from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError, ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._provision_spec import UNIT_DIR, mask_env
from ansible_collections.homelab.onebox.plugins.module_utils._provision_state import (
    id_lines, parents, parse_ids, parse_state, state_script, words)

# `systemctl is-enabled` answers that need no `systemctl enable` (or cannot take one).
ENABLED = {"enabled", "enabled-runtime", "static", "indirect", "generated", "transient", "alias"}
RUNNING = {"active", "activating", "reloading", "deactivating"}
_APT_NEEDS_LISTS = re.compile(r"Unable to locate package|has no installation candidate|Failed to fetch|404\s+Not Found")

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C",
           "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
APT_OPTIONS = ["-o", "DPkg::Lock::Timeout=120", "-o", "Dpkg::Options::=--force-confdef",
               "-o", "Dpkg::Options::=--force-confold"]


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
        self.meta = []           # existing files whose owner/mode change (before their content)
        self.pushes = []         # FileSpecs to write
        self.changed_files = []  # (FileSpec, FileState) for diff
        self.daemon_reload = False
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
    if result.daemon_reload:
        result.actions.append("daemon-reload")

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
        elif not running or installing or user_files_changed or svc.unit in touched_units:
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
    for name, what, known in ((fspec.owner, "owner", state.passwd.get(fspec.owner) is not None or fspec.owner in declared_users),
                              (fspec.group, "group", fspec.group is None or state.groups.get(fspec.group) is not None
                               or fspec.group in declared_users)):
        if not known:
            field = fspec.field.rsplit(".", 1)[0] + "." + what
            raise ValidationError(field, name, "no such %s in %s, and not declared in users" % (what, spec.name))
    parent = parents(fspec.path)
    if not state.dirs.get(parent, True) and parent not in result.mkdirs:
        result.mkdirs.append(parent)
    if current.kind != "file":
        if current.kind != "none":
            result.removals.append(fspec.path)   # a link or a device in the way
        result.pushes.append(fspec)
        return True
    uid = None if fspec.owner in pending else state.uid(fspec.owner)
    gid = None if (fspec.group or fspec.owner) in pending else state.gid(fspec.group, fspec.owner)
    content = current.digest != fspec.digest
    meta = (current.mode, current.uid, current.gid) != (fspec.mode, uid, gid)
    if meta:
        result.meta.append(fspec)
    if content:
        result.pushes.append(fspec)
    return content or meta


def systemctl_script(todo):
    """The systemctl steps of a plan as one shell script (one exec), or "" when there are none.

    enable/disable get --no-reload: their implicit daemon-reload (seconds on a busy host) is not
    needed for the symlinks they make, and a new or changed unit file gets one explicit reload."""
    steps = []
    if todo.daemon_reload:
        steps.append("systemctl daemon-reload")
    for verb, services in (("enable --no-reload", todo.enable), ("disable --no-reload", todo.disable),
                           ("stop", todo.stop), ("restart", [svc for svc, _verb in todo.restart])):
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
            if current.kind == "file":
                old = _text(self.lxd.pull_file(self.spec.name, fspec.path) or b"")
                self.before[fspec.path] = mask_env(old) if secret else old
            elif current.kind != "none":
                self.before[fspec.path] = "<%s>" % current.kind
            if fspec.state == "present":
                self.after[fspec.path] = fspec.masked if secret else _text(fspec.content)

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
        # Owner and mode first, content after: a secret never sits in a file with the old mode.
        fix = ["chown %d:%d -- %s && chmod %04o -- %s" % (state.uid(f.owner), self._gid(f), shlex.quote(f.path),
                                                          f.mode, shlex.quote(f.path)) for f in todo.meta]
        if fix:
            self._sh("set -e\n" + "\n".join(fix))
        special = []
        for fspec in todo.pushes:
            self.lxd.push_file(name, fspec.path, fspec.content, fspec.mode & 0o777,
                               state.uid(fspec.owner), self._gid(fspec))
            if fspec.mode > 0o777:
                special.append("chmod %04o -- %s" % (fspec.mode, shlex.quote(fspec.path)))
        if special:
            self._sh("set -e\n" + "\n".join(special))
        script = systemctl_script(todo)
        if script:
            self._sh(script)

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


def _text(data):
    """File bytes as diff text."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "<binary: %d bytes>" % len(data)
