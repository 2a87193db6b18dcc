# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The inside of a container, declared: users, packages, files, services (lxd_provision).

Pure logic first (validation, the state-reading shell script and its parser, unit and environment
file rendering, the plan), then Provisioner, which reads, plans and applies for one container
through LxdClient only (exec with a timeout, file push/pull): the container needs ``sh``,
coreutils, ``getent``, ``useradd``, ``dpkg-query``/``apt-get`` and systemd, no Python.
"""
from __future__ import annotations

import hashlib
import re
import shlex

from ansible_collections.homelab.onebox.plugins.module_utils import _validate as v
from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError, ValidationError

MASK = "********"
MARKER = "# Managed by homelab.onebox.lxd_provision: local changes are overwritten."
ENV_DIR = "/etc/onebox"
UNIT_DIR = "/etc/systemd/system"
UNIT_PREFIX = "onebox-"
RESTART_CHOICES = ("always", "on-failure", "on-abnormal", "on-abort", "on-success", "on-watchdog", "no")
SERVICE_STATES = ("started", "stopped")
FILE_STATES = ("present", "absent")
# `systemctl is-enabled` answers that need no `systemctl enable` (or cannot take one).
ENABLED = {"enabled", "enabled-runtime", "static", "indirect", "generated", "transient", "alias"}
RUNNING = {"active", "activating", "reloading", "deactivating"}
UNIT_TYPES = (".service", ".socket", ".timer", ".path", ".target", ".mount")

_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_UNIT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,200}$")
_OWN_SERVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PROGRAM = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
_ENV_LINE = re.compile(r"^(\s*(?:export\s+)?[A-Za-z_][A-Za-z0-9_]*)\s*=")
_APT_NEEDS_LISTS = re.compile(r"Unable to locate package|has no installation candidate|Failed to fetch|404\s+Not Found")

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C",
           "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
APT_OPTIONS = ["-o", "DPkg::Lock::Timeout=120", "-o", "Dpkg::Options::=--force-confdef",
               "-o", "Dpkg::Options::=--force-confold"]


# ---- the declaration ---------------------------------------------------------------------------
class FileSpec:
    """One file the task owns: a declared file, or a service's unit or environment file."""

    def __init__(self, path, content=b"", mode=0o644, owner="root", group=None, state="present",
                 field="path", label=None, masked=None):
        self.path = path
        self.content = content
        self.mode = mode
        self.owner = owner
        self.group = group
        self.state = state
        self.field = field
        self.label = label or "file %s" % path    # its name in `actions`
        self.masked = masked                      # what diff shows instead of the content (secrets)

    @property
    def digest(self):
        return hashlib.sha256(self.content).hexdigest()


class ServiceSpec:
    def __init__(self, name, unit, command=None, user=None, working_directory=None, environment=None,
                 restart="always", state="started", enabled=True, field="services[0]"):
        self.name = name
        self.unit = unit
        self.command = command
        self.user = user
        self.working_directory = working_directory
        self.environment = environment or {}
        self.restart = restart
        self.state = state
        self.enabled = enabled
        self.field = field
        self.unit_file = None
        self.env_file = None
        if command:
            self.unit_file = FileSpec("%s/%s" % (UNIT_DIR, unit), render_unit(self).encode(),
                                      field=field + ".name", label="unit %s" % self.short)
            env_path = env_file_path(name)
            if self.environment:
                self.env_file = FileSpec(env_path, render_env(self.environment).encode(), mode=0o600,
                                         field=field + ".environment", label="environment %s" % self.short,
                                         masked=render_env(self.environment, masked=True))
            else:  # no environment (any more): the file it had is removed
                self.env_file = FileSpec(env_path, state="absent", field=field + ".environment",
                                         label="environment %s" % self.short, masked="")

    @property
    def short(self):
        """The unit's name in actions: ``onebox-app``, ``nginx``."""
        return self.unit[:-len(".service")] if self.unit.endswith(".service") else self.unit

    @property
    def own_files(self):
        return [f for f in (self.unit_file, self.env_file) if f is not None]


class InstanceSpec:
    def __init__(self, name, field, users=(), packages=(), files=(), services=()):
        self.name = name
        self.field = field
        self.users = list(users)            # [(name, home, field)]
        self.packages = list(packages)
        self.files = list(files)            # declared FileSpecs
        self.services = list(services)

    @property
    def all_files(self):
        return self.files + [f for svc in self.services for f in svc.own_files]

    def user_names(self):
        names = [u[0] for u in self.users] + [f.owner for f in self.all_files if f.state == "present"]
        names += [svc.user or "root" for svc in self.services if svc.command]
        return sorted(set(names))

    def group_names(self):
        return sorted({f.group for f in self.all_files if f.state == "present" and f.group})


def env_file_path(service_name):
    return "%s/%s.env" % (ENV_DIR, service_name)


def _list(value, field):
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValidationError(field, value, "must be a list")
    return value


def _dict(value, field):
    if not isinstance(value, dict):
        raise ValidationError(field, value, "must be a dict")
    return value


def _no_control(value, field, secret=False):
    if not isinstance(value, str):
        raise ValidationError(field, MASK if secret else value, "must be a string")
    bad = sorted(c for c in set(value) if ord(c) < 32 or ord(c) == 127)
    if bad:
        raise ValidationError(field, MASK if secret else value,
                              "must not contain %s" % " ".join(repr(c) for c in bad))
    return value


def env_value(value, field):
    """An environment value as text (numbers and booleans as YAML gives them); one line."""
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, (int, float)):
        value = str(value)
    return _no_control(value, field, secret=True)


def package_name(value, field):
    v.safe_token(value, field)
    if not _PACKAGE.fullmatch(value):
        raise ValidationError(field, value, "must be a Debian package name (lower-case letters, digits, '+', '-', '.')")
    return value


def unit_name(value, field, own):
    """A service name: for a service the module writes, a plain name (its unit is onebox-NAME);
    else the name of an existing unit, ``.service`` added when it has no unit type suffix."""
    v.safe_token(value, field)
    if own:
        if not _OWN_SERVICE.fullmatch(value) or ".." in value:
            raise ValidationError(field, value, "must be 1-64 letters, digits, '_', '.' or '-'")
        return UNIT_PREFIX + value + ".service"
    if not _UNIT.fullmatch(value) or ".." in value:
        raise ValidationError(field, value, "must be a systemd unit name (letters, digits, '_', '.', '@', ':', '-')")
    return value if value.endswith(UNIT_TYPES) else value + ".service"


def command_argv(value, field):
    words = _list(value, field)
    if not words:
        raise ValidationError(field, value, "must be a non-empty list of arguments")
    out = []
    for index, word in enumerate(words):
        if isinstance(word, (int, float)) and not isinstance(word, bool):
            word = str(word)
        out.append(_no_control(word, "%s[%d]" % (field, index)))
    program = out[0]
    if program.startswith("/"):
        v.absolute_path(program, field + "[0]")
    elif not _PROGRAM.fullmatch(program):
        raise ValidationError(field + "[0]", program, "must be an absolute path or a plain program name")
    return out


def file_spec(item, field):
    item = _dict(item, field)
    state = v.one_of(item.get("state") or "present", FILE_STATES, field + ".state")
    path = v.absolute_path(item.get("path"), field + ".path")
    if path == "/" or item["path"].endswith("/"):
        raise ValidationError(field + ".path", item["path"], "must name a file, not a directory")
    if state == "absent":
        return FileSpec(path, state="absent", field=field + ".path", label="remove %s" % path)
    content = item.get("content")
    if content is None:
        raise ValidationError(field + ".content", content, "is required when state is present (use '' for an empty file)")
    if not isinstance(content, str):
        raise ValidationError(field + ".content", content, "must be a string")
    mode = v.file_mode("0644" if item.get("mode") is None else item["mode"], field + ".mode")
    owner = v.posix_name(item.get("owner") or "root", field + ".owner")
    group = item.get("group")
    if group is not None:
        v.posix_name(group, field + ".group")
    return FileSpec(path, content.encode("utf-8"), mode, owner, group, field=field + ".path")


def service_spec(item, field):
    item = _dict(item, field)
    command = item.get("command")
    own = command is not None
    unit = unit_name(item.get("name"), field + ".name", own)
    if own:
        command = command_argv(command, field + ".command")
    else:
        for key in ("user", "working_directory", "environment"):
            if item.get(key):
                raise ValidationError("%s.%s" % (field, key), item[key],
                                      "only applies to a service with a command (the module writes its unit)")
    user = item.get("user")
    if user is not None:
        v.posix_name(user, field + ".user")
    workdir = item.get("working_directory")
    if workdir is not None:
        workdir = v.absolute_path(workdir, field + ".working_directory")
    environment = {}
    for key, value in _dict(item.get("environment") or {}, field + ".environment").items():
        v.env_name(key, field + ".environment")
        environment[key] = env_value(value, "%s.environment.%s" % (field, key))
    restart = v.one_of(item.get("restart") or "always", RESTART_CHOICES, field + ".restart")
    state = v.one_of(item.get("state") or "started", SERVICE_STATES, field + ".state")
    enabled = item.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ValidationError(field + ".enabled", enabled, "must be true or false")
    return ServiceSpec(item["name"], unit, command, user, workdir, environment, restart, state, enabled, field)


def instance_spec(item, field):
    item = _dict(item, field)
    name = v.instance_name(item.get("name"), field + ".name")
    users, seen_users = [], {}
    for index, user in enumerate(_list(item.get("users"), field + ".users")):
        where = "%s.users[%d]" % (field, index)
        user = _dict(user, where)
        uname = v.posix_name(user.get("name"), where + ".name")
        if uname in seen_users:
            raise ValidationError(where + ".name", uname, "declared twice (also %s)" % seen_users[uname])
        seen_users[uname] = where
        home = user.get("home")
        if home is not None:
            home = v.absolute_path(home, where + ".home")
        users.append((uname, home, where))
    packages = []
    for index, pkg in enumerate(_list(item.get("packages"), field + ".packages")):
        pkg = package_name(pkg, "%s.packages[%d]" % (field, index))
        if pkg not in packages:
            packages.append(pkg)
    files = [file_spec(f, "%s.files[%d]" % (field, index))
             for index, f in enumerate(_list(item.get("files"), field + ".files"))]
    services = [service_spec(s, "%s.services[%d]" % (field, index))
                for index, s in enumerate(_list(item.get("services"), field + ".services"))]
    seen = {}
    for svc in services:
        if svc.unit in seen:
            raise ValidationError(svc.field + ".name", svc.name, "declared twice (also %s)" % seen[svc.unit])
        seen[svc.unit] = svc.field
    spec = InstanceSpec(name, field, users, packages, files, services)
    paths = {}
    for fspec in spec.all_files:
        if fspec.path in paths:
            raise ValidationError(fspec.field, fspec.path, "declared twice (also %s)" % paths[fspec.path])
        paths[fspec.path] = fspec.field
    return spec


def instance_specs(items, field="instances"):
    """Every item validated (values, then duplicates) before anything is read or written."""
    specs, seen = [], {}
    for index, item in enumerate(_list(items, field)):
        spec = instance_spec(item, "%s[%d]" % (field, index))
        if spec.name in seen:
            raise ValidationError(spec.field + ".name", spec.name, "declared twice (also %s)" % seen[spec.name])
        seen[spec.name] = spec.field
        specs.append(spec)
    return specs


def check_instances(specs, current):
    """Every declared container exists and runs (``current``: name -> LXD instance record)."""
    for spec in specs:
        inst = current.get(spec.name)
        if inst is None:
            raise ValidationError(spec.field + ".name", spec.name, "no such container")
        if inst.get("status") != "Running":
            raise ValidationError(spec.field + ".name", spec.name,
                                  "container is %s; it must be running" % inst.get("status"))


# ---- rendering ---------------------------------------------------------------------------------
def systemd_quote(word):
    """One argv word for ExecStart=: double-quoted with C escapes, ``%`` (specifiers) and ``$``
    (variable expansion) doubled, so systemd passes it through unchanged."""
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return '"%s"' % escaped


def env_quote(value):
    """A value for an EnvironmentFile: double-quoted, the four characters systemd unescapes
    there (backslash, double quote, backquote, dollar) escaped."""
    return '"%s"' % re.sub(r'([\\"`$])', r"\\\1", value)


def render_env(environment, masked=False):
    lines = [MARKER]
    for key in sorted(environment):
        lines.append("%s=%s" % (key, MASK if masked else env_quote(environment[key])))
    return "\n".join(lines) + "\n"


def mask_env(text):
    """An environment file as diff may show it: every value replaced by the mask."""
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            out.append(line)
            continue
        match = _ENV_LINE.match(line)
        out.append("%s=%s" % (match.group(1), MASK) if match else MASK)
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def render_unit(svc):
    lines = [MARKER, "[Unit]", "Description=%s (homelab.onebox)" % svc.name, "After=network.target"]
    if svc.restart != "no":
        lines.append("StartLimitIntervalSec=0")   # restarted however often it dies
    lines += ["", "[Service]", "Type=simple", "User=%s" % (svc.user or "root")]
    if svc.working_directory:
        lines.append("WorkingDirectory=%s" % svc.working_directory.replace("%", "%%"))
    if svc.environment:
        lines.append("EnvironmentFile=%s" % env_file_path(svc.name))
    lines += ["ExecStart=%s" % " ".join(systemd_quote(word) for word in svc.command),
              "Restart=%s" % svc.restart, "RestartSec=1", "",
              "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def text(data):
    """File bytes as diff text."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "<binary: %d bytes>" % len(data)


# ---- reading the container's state ----------------------------------------------------------------
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
                  "  units=$(systemctl show -p LoadState -p UnitFileState -p ActiveState -- %s 2>&1)"
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
    dirs = sorted({parents(f.path) for f in spec.all_files if f.state == "present"})
    lines += ["if [ -d %s ]; then echo 'D 1 %s'; else echo 'D 0 %s'; fi" % (shlex.quote(d), i, i)
              for i, d in enumerate(dirs)]
    lines += id_lines(spec.user_names(), spec.group_names())
    if spec.packages:
        lines.append('echo "A $(ls /var/lib/apt/lists 2>/dev/null | grep -c _Packages)"')
        lines.append("dpkg-query -W -f='P ${Package} ${db:Status-Abbrev}\\n' -- %s 2>/dev/null"
                     % words(spec.packages))
    lines.append("echo END")
    return "\n".join(lines) + "\n"


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
    def __init__(self, kind, mode=None, uid=None, gid=None, digest=None):
        self.kind, self.mode, self.uid, self.gid, self.digest = kind, mode, uid, gid, digest


class State:
    """What one container has of what its spec declares."""

    def __init__(self):
        self.files = []          # FileState per spec.all_files
        self.dirs = {}           # parent directory -> exists
        self.passwd = {}         # user -> (uid, gid, home) or None
        self.groups = {}         # group -> gid or None
        self.units = []          # (is-enabled, is-active) per spec.services
        self.packages = {}       # package -> dpkg status abbreviation ("ii " when installed)
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
    unit), or None when the output does not hold ``count`` blocks."""
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
    return [("" if b.get("LoadState") == "not-found" else b.get("UnitFileState", ""), b["ActiveState"])
            for b in blocks]


def parse_state(spec, output, where="container"):
    lines = output.splitlines()
    not_ready = init_not_ready(where, lines)
    if not_ready is not None:
        raise not_ready
    if "END" not in lines:
        raise OneboxError("reading the state of %s: the output is missing or cut short: %r" % (where, output[-500:]))
    state = State()
    dirs = sorted({parents(f.path) for f in spec.all_files if f.state == "present"})
    found, digests, units = {}, {}, []
    for line in lines:
        tag, _sep, rest = line.partition(" ")
        if tag == "F":
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
                state.packages[name] = status
    for fspec in spec.all_files:
        current = found.get(fspec.path, FileState("none"))
        current.digest = digests.get(fspec.path)
        state.files.append(current)
    parse_ids(state, spec.user_names(), spec.group_names(), lines)
    state.units = parse_units(units, len(spec.services))
    if state.units is None:
        raise OneboxError("reading the state of %s: systemctl gave no state for the units %s (is systemd "
                          "the container's init, and running?): %r"
                          % (where, ", ".join(svc.unit for svc in spec.services), "\n".join(units)[-500:]))
    return state


# ---- the plan ---------------------------------------------------------------------------------
class Plan:
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


def plan(spec, state):
    """Compare the declaration with the container's state; raise ValidationError for a
    declaration the container cannot satisfy (unknown user or group, a directory in a file's place)."""
    result = Plan()
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
                user_files_changed = True
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


# ---- one container, through the LXD API -------------------------------------------------------------
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


class Provisioner:
    """Read, plan, diff and apply for one container."""

    def __init__(self, lxd, spec, timeout=120, package_timeout=600):
        self.lxd, self.spec = lxd, spec
        self.timeout, self.package_timeout = timeout, package_timeout
        self.state = None
        self.plan = None
        self.diff = None

    def sh(self, script, timeout=None, **kwargs):
        return self.lxd.run(self.spec.name, ["sh", "-c", script], timeout=timeout or self.timeout, **kwargs)

    def read(self):
        output = self.sh(state_script(self.spec, self.timeout))
        self.state = parse_state(self.spec, output, self.spec.name)
        self.plan = plan(self.spec, self.state)
        return self.plan

    def read_diff(self):
        """Before/after text of every changed file (pulled only now, only those)."""
        before, after = {}, {}
        for fspec, current in self.plan.changed_files:
            secret = fspec.masked is not None
            if current.kind == "file":
                old = text(self.lxd.pull_file(self.spec.name, fspec.path) or b"")
                before[fspec.path] = mask_env(old) if secret else old
            elif current.kind != "none":
                before[fspec.path] = "<%s>" % current.kind
            if fspec.state == "present":
                after[fspec.path] = fspec.masked if secret else text(fspec.content)
        self.diff = {"before": before, "after": after}
        return self.diff

    def apply(self):
        name, todo, state = self.spec.name, self.plan, self.state
        if todo.packages:
            self.install(todo.packages)
        if todo.users:
            self.create_users(todo.users)
        if todo.mkdirs:
            self.lxd.run(name, ["sh", "-c", 'umask 022 && mkdir -p -- "$@"', "sh"] + todo.mkdirs, timeout=self.timeout)
        if todo.removals:
            self.lxd.run(name, ["rm", "-f", "--"] + todo.removals, timeout=self.timeout)
        # Owner and mode first, content after: a secret never sits in a file with the old mode.
        fix = ["chown %d:%d -- %s && chmod %04o -- %s" % (state.uid(f.owner), self._gid(f), shlex.quote(f.path),
                                                          f.mode, shlex.quote(f.path)) for f in todo.meta]
        if fix:
            self.sh("set -e\n" + "\n".join(fix))
        special = []
        for fspec in todo.pushes:
            self.lxd.push_file(name, fspec.path, fspec.content, fspec.mode & 0o777,
                               state.uid(fspec.owner), self._gid(fspec))
            if fspec.mode > 0o777:
                special.append("chmod %04o -- %s" % (fspec.mode, shlex.quote(fspec.path)))
        if special:
            self.sh("set -e\n" + "\n".join(special))
        self.systemctl(todo)

    def systemctl(self, todo):
        script = systemctl_script(todo)
        if script:
            self.sh(script)

    def _gid(self, fspec):
        gid = self.state.gid(fspec.group, fspec.owner)
        if gid is None:
            raise OneboxError("in %s: cannot find the group of %s (%s)"
                              % (self.spec.name, fspec.path, fspec.group or fspec.owner))
        return gid

    def create_users(self, users):
        lines = ["set -e"]
        for uname, home in users:
            argv = ["useradd", "--system", "--create-home", "--shell", "/usr/sbin/nologin"]
            if home:
                argv += ["--home-dir", home]
            lines.append("getent passwd %s >/dev/null || %s" % (shlex.quote(uname), " ".join(shlex.quote(a) for a in argv + [uname])))
        names, groups = self.spec.user_names(), self.spec.group_names()
        output = self.sh("\n".join(lines + id_lines(names, groups)))
        parse_ids(self.state, names, groups, output.splitlines())

    def install(self, packages):
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
        return {"name": self.spec.name, "changed": self.plan.changed, "actions": list(self.plan.actions)}
