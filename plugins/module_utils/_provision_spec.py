# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The inside of a container as declared: input -> checked InsideSpec (users, packages, files, services).

parse_insides() checks every item (values, then duplicates) and returns InsideSpecs; a service
with a command gets its unit and environment file rendered here, as FileSpecs like any declared
file, so what the container should hold is known before anything is read.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field as dataclass_field

from ansible_collections.homelab.onebox.plugins.module_utils import _validate as v
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError

MASK = v.MASK
MARKER = "# Managed by homelab.onebox.lxd_provision: local changes are overwritten."
ENV_DIR = "/etc/onebox"
UNIT_DIR = "/etc/systemd/system"
UNIT_PREFIX = "onebox-"
RESTART_CHOICES = ("always", "on-failure", "on-abnormal", "on-abort", "on-success", "on-watchdog", "no")
SERVICE_STATES = ("started", "stopped")
FILE_STATES = ("present", "absent")
UNIT_TYPES = (".service", ".socket", ".timer", ".path", ".target", ".mount")

_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_UNIT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,200}$")
_OWN_SERVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PROGRAM = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
_ENV_LINE = re.compile(r"^(\s*(?:export\s+)?[A-Za-z_][A-Za-z0-9_]*)\s*=")


class FileSpec:
    """One file the task owns: a declared file, or a service's unit or environment file."""

    def __init__(self, path, content=b"", mode=0o644, owner="root", group=None, state="present",
                 field="path", label=None, masked=None, restart=True):
        self.path = path
        self.content = content
        self.mode = mode
        self.owner = owner
        self.group = group
        self.state = state
        self.field = field
        self.label = label or "file %s" % path    # its name in `actions`
        self.masked = masked                      # what diff shows instead of the content (secrets)
        self.restart = restart                    # a change restarts the container's services

    @property
    def digest(self):
        return hashlib.sha256(self.content).hexdigest()


@dataclass(eq=False)  # compared as objects, as the other specs are
class ServiceSpec:
    """One systemd service: a unit the module writes (with a command) or an existing one."""

    name: str
    unit: str
    command: list = None
    user: str = None
    working_directory: str = None
    environment: dict = None
    restart: str = "always"
    state: str = "started"
    enabled: bool = True
    field: str = "services[0]"
    unit_file: FileSpec = dataclass_field(default=None, init=False)
    env_file: FileSpec = dataclass_field(default=None, init=False)

    def __post_init__(self):
        self.environment = self.environment or {}
        if not self.command:
            return
        self.unit_file = FileSpec("%s/%s" % (UNIT_DIR, self.unit), render_unit(self).encode(),
                                  field=self.field + ".name", label="unit %s" % self.short)
        env_path = env_file_path(self.name)
        if self.environment:
            self.env_file = FileSpec(env_path, render_env(self.environment).encode(), mode=0o600,
                                     field=self.field + ".environment", label="environment %s" % self.short,
                                     masked=render_env(self.environment, masked=True))
        else:  # no environment (any more): the file it had is removed
            self.env_file = FileSpec(env_path, state="absent", field=self.field + ".environment",
                                     label="environment %s" % self.short, masked="")

    @property
    def short(self):
        """The unit's name in actions: ``onebox-app``, ``nginx``."""
        return self.unit[:-len(".service")] if self.unit.endswith(".service") else self.unit

    @property
    def own_files(self):
        return [f for f in (self.unit_file, self.env_file) if f is not None]


class InsideSpec:
    """What one container must hold: its users, packages, files and services."""

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


# ---- checking the input -----------------------------------------------------------------------
def env_value(value, field):
    """An environment value as text (numbers and booleans as YAML gives them); one line."""
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, (int, float)):
        value = str(value)
    return v.no_control(value, field, secret=True)


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
    words = v.items(value, field)
    if not words:
        raise ValidationError(field, value, "must be a non-empty list of arguments")
    out = []
    for index, word in enumerate(words):
        if isinstance(word, (int, float)) and not isinstance(word, bool):
            word = str(word)
        out.append(v.no_control(word, "%s[%d]" % (field, index)))
    program = out[0]
    if program.startswith("/"):
        v.absolute_path(program, field + "[0]")
    elif not _PROGRAM.fullmatch(program):
        raise ValidationError(field + "[0]", program, "must be an absolute path or a plain program name")
    return out


def parse_file(item, field):
    item = v.mapping(item, field)
    state = v.one_of(item.get("state") or "present", FILE_STATES, field + ".state")
    path = v.absolute_path(item.get("path"), field + ".path")
    if path == "/" or item["path"].endswith("/"):
        raise ValidationError(field + ".path", item["path"], "must name a file, not a directory")
    restart = v.boolean(True if item.get("restart") is None else item["restart"], field + ".restart")
    if state == "absent":
        return FileSpec(path, state="absent", field=field + ".path", label="remove %s" % path, restart=restart)
    content = item.get("content")
    if content is None:
        raise ValidationError(field + ".content", content, "is required when state is present (use '' for an empty file)")
    content = v.text(content, field + ".content")
    mode = v.file_mode("0644" if item.get("mode") is None else item["mode"], field + ".mode")
    owner = v.posix_name(item.get("owner") or "root", field + ".owner")
    group = item.get("group")
    if group is not None:
        v.posix_name(group, field + ".group")
    return FileSpec(path, content.encode("utf-8"), mode, owner, group, field=field + ".path", restart=restart)


def parse_service(item, field):
    item = v.mapping(item, field)
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
    for key, value in v.mapping(item.get("environment") or {}, field + ".environment").items():
        v.env_name(key, field + ".environment")
        environment[key] = env_value(value, "%s.environment.%s" % (field, key))
    restart = v.one_of(item.get("restart") or "always", RESTART_CHOICES, field + ".restart")
    state = v.one_of(item.get("state") or "started", SERVICE_STATES, field + ".state")
    enabled = item.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ValidationError(field + ".enabled", enabled, "must be true or false")
    return ServiceSpec(item["name"], unit, command, user, workdir, environment, restart, state, enabled, field)


def _once(seen, key, where, field, value):
    """``key`` (a name, unit or path) not in ``seen`` yet, else refused naming where it was first."""
    if key in seen:
        raise ValidationError(field, value, "declared twice (also %s)" % seen[key])
    seen[key] = where


def parse_inside(item, field):
    """One container's item -> InsideSpec (every value checked, nothing read yet)."""
    item = v.mapping(item, field)
    name = v.instance_name(item.get("name"), field + ".name")
    users, seen_users = [], {}
    for index, user in enumerate(v.items(item.get("users"), field + ".users")):
        where = "%s.users[%d]" % (field, index)
        user = v.mapping(user, where)
        uname = v.posix_name(user.get("name"), where + ".name")
        _once(seen_users, uname, where, where + ".name", uname)
        home = user.get("home")
        if home is not None:
            home = v.absolute_path(home, where + ".home")
        users.append((uname, home, where))
    packages = []
    for index, pkg in enumerate(v.items(item.get("packages"), field + ".packages")):
        pkg = package_name(pkg, "%s.packages[%d]" % (field, index))
        if pkg not in packages:
            packages.append(pkg)
    files = [parse_file(f, "%s.files[%d]" % (field, index))
             for index, f in enumerate(v.items(item.get("files"), field + ".files"))]
    services = [parse_service(s, "%s.services[%d]" % (field, index))
                for index, s in enumerate(v.items(item.get("services"), field + ".services"))]
    seen = {}
    for svc in services:
        _once(seen, svc.unit, svc.field, svc.field + ".name", svc.name)
    spec = InsideSpec(name, field, users, packages, files, services)
    paths = {}
    for fspec in spec.all_files:
        _once(paths, fspec.path, fspec.field, fspec.field, fspec.path)
    return spec


def parse_insides(items, field="instances"):
    """Every item checked (values, then duplicates) before anything is read or written."""
    specs, seen = [], {}
    for index, item in enumerate(v.items(items, field)):
        spec = parse_inside(item, "%s[%d]" % (field, index))
        _once(seen, spec.name, spec.field, spec.field + ".name", spec.name)
        specs.append(spec)
    return specs


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
