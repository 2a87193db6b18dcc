# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The inside of a container as declared: input -> checked InsideSpec (users, packages, files, services).

parse_insides() checks every item (values, then duplicates) and returns InsideSpecs; a service
with a command gets its unit and environment file rendered here, as FileSpecs like any declared
file, so what the container should hold is known before anything is read. A setup step
(SetupStep) is a command run in the container, after its files and packages and before its
services are (re)started, when something it depends on changed (_provision.py decides).
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field as dataclass_field

from ansible_collections.homelab.onebox.plugins.module_utils import _validate as v
from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError, ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._provision_source import SourceFile, list_tree

MASK = v.MASK
MARKER = "# Managed by homelab.onebox.lxd_provision: local changes are overwritten."
ENV_DIR = "/etc/onebox"
UNIT_DIR = "/etc/systemd/system"
UNIT_PREFIX = "onebox-"
RESTART_CHOICES = ("always", "on-failure", "on-abnormal", "on-abort", "on-success", "on-watchdog", "no")
SERVICE_STATES = ("started", "stopped")
FILE_STATES = ("present", "absent")
UNIT_TYPES = (".service", ".socket", ".timer", ".path", ".target", ".mount")
# Where a container keeps, per setup step, the digest of what the step last ran against
# (written only after it succeeded; root's only: an environment value goes into the digest).
STAMP_DIR = "/var/lib/onebox/setup"
# Written before a container's setup steps run and removed once its services are restarted: a
# step that fails leaves it, so the next run restarts them even when nothing else changed then
# (the files this one wrote are in place, the step reverted or fixed elsewhere).
RESTART_PENDING = STAMP_DIR + "/.restart-pending"
SETUP_KEYS = ("command", "when_changed", "creates", "user", "timeout", "service")
# The kernel's default fs.nr_open: a larger LimitNOFILE= makes the service fail to start.
OPEN_FILES_MAX = 1048576

_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_UNIT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,200}$")
_OWN_SERVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PROGRAM = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
_ENV_LINE = re.compile(r"^(\s*(?:export\s+)?[A-Za-z_][A-Za-z0-9_]*)\s*=")


class FileSpec:
    """One file the task owns: a declared file, or a service's unit or environment file; its
    bytes are ``content``, or a ``source`` (a SourceFile of the module's host, streamed)."""

    def __init__(self, path, content=b"", mode=0o644, owner="root", group=None, state="present",
                 field="path", label=None, masked=None, restart=True, source=None):
        self.path = path
        self.content = content
        self.source = source
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
        return self.source.digest if self.source is not None else hashlib.sha256(self.content).hexdigest()

    @property
    def size(self):
        return self.source.size if self.source is not None else len(self.content)


class TreeSpec:
    """A directory of the module's host copied to ``path`` in the container: every regular file
    under it (``mode`` for each when given, else its own permission bits), the directories 0755,
    owned like the files; with ``sync``, what is under ``path`` and not in the source goes."""

    def __init__(self, path, src, dirs, files, mode=None, owner="root", group=None, sync=False,
                 field="path", restart=True):
        self.path, self.src = path, src
        self.dirs = dirs              # relative paths of the source's directories, parents first
        self.files = files            # relative path -> SourceFile
        self.mode, self.owner, self.group = mode, owner, group
        self.sync, self.field, self.restart = sync, field, restart
        self.state = "present"

    def full(self, rel):
        """The container path of a relative path of the tree ("" is the tree's own directory)."""
        return self.path + "/" + rel if rel else self.path

    def file_spec(self, rel):
        """One file of the tree as a FileSpec (what the plan pushes or fixes)."""
        source = self.files[rel]
        return FileSpec(self.full(rel), None, source.mode if self.mode is None else self.mode, self.owner,
                        self.group, field=self.field, label="file %s" % self.full(rel), restart=self.restart,
                        source=source)


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
    open_files: int = None        # LimitNOFILE=
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


class SetupStep:
    """One setup step of a container: ``command`` (argv) run as ``user`` in its service's working
    directory with its service's environment (``/`` and none without a service), within
    ``timeout`` seconds (None: the package timeout); again whenever what ``when_changed`` names
    (declared paths, packages, environment keys) changed, or ``creates`` is missing."""

    def __init__(self, index, command, user, service=None, when_changed=(), creates=None, timeout=None,
                 field="setup[0]"):
        self.index, self.command, self.user, self.service = index, command, user, service
        self.when_changed, self.creates, self.timeout, self.field = list(when_changed), creates, timeout, field

    @property
    def working_directory(self):
        return (self.service.working_directory if self.service else None) or "/"

    @property
    def environment(self):
        return self.service.environment if self.service else {}

    @property
    def label(self):
        """Its name in ``actions``: ``setup shop[0]`` (``setup[0]`` without a service)."""
        return "setup %s[%d]" % (self.service.name, self.index) if self.service else "setup[%d]" % self.index

    @property
    def stamp(self):
        """The file that holds the digest of what it last ran against: STAMP_DIR/SERVICE.N."""
        return "%s/%s.%d" % (STAMP_DIR, self.service.name if self.service else "container", self.index)


class InsideSpec:
    """What one container must hold: its users, packages, files and services, and its setup steps."""

    def __init__(self, name, field, users=(), packages=(), files=(), services=(), trees=()):
        self.name = name
        self.field = field
        self.users = list(users)            # [(name, home, field)]
        self.packages = list(packages)
        self.files = list(files)            # declared FileSpecs
        self.services = list(services)
        self.trees = list(trees)            # declared TreeSpecs (a src that is a directory)
        self.setup = []                     # SetupSteps, in the order they run (parse_inside sets them)

    @property
    def all_files(self):
        return self.files + [f for svc in self.services for f in svc.own_files]

    def user_names(self):
        names = [u[0] for u in self.users] + [f.owner for f in self.all_files + self.trees if f.state == "present"]
        names += [svc.user or "root" for svc in self.services if svc.command]
        names += [step.user for step in self.setup]
        return sorted(set(names))

    def group_names(self):
        return sorted({f.group for f in self.all_files + self.trees if f.state == "present" and f.group})


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


def setup_command(value, field):
    """A setup step's command: a string is one shell line (or script) run as ``/bin/sh -c LINE``, a
    list the program and its arguments as they are. It goes to LXD's exec as an argument list (no
    unit file, no quoting), so a word may hold a newline (a script); never a NUL."""
    if isinstance(value, str):
        if not value.strip() or "\0" in value:
            raise ValidationError(field, value, "must be a shell line (not empty, no NUL) or a list of arguments")
        return ["/bin/sh", "-c", value]
    words = v.items(value, field)
    if not words:
        raise ValidationError(field, value, "must be a shell line or a non-empty list of arguments")
    out = []
    for index, word in enumerate(words):
        if isinstance(word, (int, float)) and not isinstance(word, bool):
            word = str(word)
        if not isinstance(word, str) or "\0" in word:
            raise ValidationError("%s[%d]" % (field, index), word, "must be text without NUL")
        out.append(word)
    if out[0].startswith("/"):
        v.absolute_path(out[0], field + "[0]")
    elif not _PROGRAM.fullmatch(out[0]):
        raise ValidationError(field + "[0]", out[0], "must be an absolute path or a plain program name")
    return out


def covers(top, path):
    """Whether ``path`` is ``top`` or under it (both normalised absolute paths)."""
    return path == top or path.startswith(top.rstrip("/") + "/")


def setup_dependency(value, field, paths, packages, environment, trees=()):
    """One ``when_changed`` entry, checked: an absolute path that is a declared file's or a directory
    holding declared files (or a path inside a declared tree, ``trees``), else a declared package
    or an environment key of the step's service. -> the entry (a path normalised)."""
    v.no_control(value, field)
    if value.startswith("/"):
        path = v.absolute_path(value, field)
        if any(covers(path, p) for p in paths) or any(covers(t, path) for t in trees):
            return path
        raise ValidationError(field, value, "is not a declared file's path, nor a directory holding declared files")
    if value in packages or value in environment:
        return value
    raise ValidationError(field, value, "is none of the declared files (an absolute path), packages (%s) or "
                          "environment keys of the service (%s)"
                          % (", ".join(packages) or "none", ", ".join(sorted(environment)) or "none"))


def parse_setup(item, field, index, services, spec):
    """One ``setup`` item of a container -> SetupStep; ``services``: name -> ServiceSpec of the
    container's services with a command (a step named after one runs as it does)."""
    item = v.mapping(item, field, SETUP_KEYS)
    if item.get("command") is None:
        raise ValidationError(field + ".command", None, "every setup step runs a command")
    command = setup_command(item["command"], field + ".command")
    service = None
    if item.get("service") is not None:
        service = services.get(item["service"])
        if service is None:
            raise ValidationError(field + ".service", item["service"], "names no service of this container with a "
                                  "command (%s)" % (", ".join(sorted(services)) or "none"))
    user = v.posix_name(item.get("user") or (service.user if service else None) or "root", field + ".user")
    paths = [f.path for f in spec.files] + [t.path for t in spec.trees]
    when = [setup_dependency(entry, "%s.when_changed[%d]" % (field, i), paths, spec.packages,
                             service.environment if service else {}, [t.path for t in spec.trees])
            for i, entry in enumerate(v.items(item.get("when_changed"), field + ".when_changed"))]
    creates = item.get("creates")
    if creates is not None:
        creates = v.absolute_path(creates, field + ".creates")
    timeout = item.get("timeout")
    if timeout is not None:
        timeout = v.whole(timeout, field + ".timeout", 1)
    return SetupStep(index, command, user, service, when, creates, timeout, field)


def parse_file(item, field):
    """One ``files`` item -> FileSpec, or TreeSpec when its ``src`` is a directory (its listing
    read now: a source that is not there fails before anything changes)."""
    item = v.mapping(item, field)
    state = v.one_of(item.get("state") or "present", FILE_STATES, field + ".state")
    path = v.absolute_path(item.get("path"), field + ".path")
    restart = v.boolean(True if item.get("restart") is None else item["restart"], field + ".restart")
    content, src = item.get("content"), item.get("src")
    sync = v.boolean(item.get("sync") or False, field + ".sync")
    if src is not None and state == "absent":
        raise ValidationError(field + ".src", src, "only a present file has a source (state is absent)")
    if src is not None and content is not None:
        raise ValidationError(field + ".src", src, "give content or src, not both")
    if src is not None:
        source = parse_src(src, field + ".src")
        if isinstance(source, tuple):
            if path == "/":
                raise ValidationError(field + ".path", item["path"], "must not be / (the directory the tree goes to)")
            return TreeSpec(path, src, source[0], source[1], _mode(item, field, None), *_owner(item, field),
                            sync=sync, field=field + ".path", restart=restart)
        if sync:
            raise ValidationError(field + ".sync", item["sync"], "only a directory src is synced (%s is a file)" % src)
    if path == "/" or item["path"].endswith("/"):
        raise ValidationError(field + ".path", item["path"], "must name a file, not a directory")
    if sync:
        raise ValidationError(field + ".sync", item["sync"], "only a directory src is synced")
    if state == "absent":
        return FileSpec(path, state="absent", field=field + ".path", label="remove %s" % path, restart=restart)
    if src is not None:
        return FileSpec(path, None, _mode(item, field, source.mode), *_owner(item, field), field=field + ".path",
                        restart=restart, source=source)
    if content is None:
        raise ValidationError(field + ".content", content, "is required when state is present, or src (use '' for "
                              "an empty file)")
    content = v.text(content, field + ".content")
    return FileSpec(path, content.encode("utf-8"), _mode(item, field, 0o644), *_owner(item, field),
                    field=field + ".path", restart=restart)


def _mode(item, field, default):
    return default if item.get("mode") is None else v.file_mode(item["mode"], field + ".mode")


def _owner(item, field):
    owner = v.posix_name(item.get("owner") or "root", field + ".owner")
    group = item.get("group")
    if group is not None:
        v.posix_name(group, field + ".group")
    return owner, group


def parse_src(src, field):
    """A ``src`` on the module's host -> SourceFile, or (directories, files) of a directory."""
    v.text(src, field)
    if not os.path.isabs(src):
        raise ValidationError(field, src, "must be an absolute path (the collection's action plugin resolves a "
                              "relative one on the controller: is the module run without it?)")
    try:
        if os.path.isdir(src):
            return list_tree(src)
        if os.path.isfile(src):
            return SourceFile(src)
    except (OSError, OneboxError) as exc:
        raise ValidationError(field, src, "cannot be read: %s" % (getattr(exc, "msg", None) or exc))
    if os.path.exists(src):
        raise ValidationError(field, src, "must be a regular file or a directory")
    raise ValidationError(field, src, "no such file or directory")


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
    open_files = item.get("open_files")
    if open_files is not None:
        if not own:
            raise ValidationError(field + ".open_files", open_files, "only applies to a service with a command")
        open_files = open_files_limit(open_files, field + ".open_files")
    return ServiceSpec(item["name"], unit, command, user, workdir, environment, restart, state, enabled, field,
                       open_files)


def open_files_limit(value, field):
    """``open_files``: LimitNOFILE=, 1 to OPEN_FILES_MAX."""
    v.whole(value, field, 1)
    if value > OPEN_FILES_MAX:
        raise ValidationError(field, value, "must be at most %d (the kernel's fs.nr_open: a service asking for "
                              "more does not start)" % OPEN_FILES_MAX)
    return value


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
    declared = [parse_file(f, "%s.files[%d]" % (field, index))
                for index, f in enumerate(v.items(item.get("files"), field + ".files"))]
    files = [f for f in declared if isinstance(f, FileSpec)]
    trees = [f for f in declared if isinstance(f, TreeSpec)]
    services = [parse_service(s, "%s.services[%d]" % (field, index))
                for index, s in enumerate(v.items(item.get("services"), field + ".services"))]
    seen = {}
    for svc in services:
        _once(seen, svc.unit, svc.field, svc.field + ".name", svc.name)
    spec = InsideSpec(name, field, users, packages, files, services, trees)
    own = {svc.name: svc for svc in services if svc.command}
    spec.setup = [parse_setup(step, "%s.setup[%d]" % (field, index), index, own, spec)
                  for index, step in enumerate(v.items(item.get("setup"), field + ".setup"))]
    paths = {}
    for fspec in spec.all_files + spec.trees:
        _once(paths, fspec.path, fspec.field, fspec.field, fspec.path)
    _check_trees(spec)
    return spec


def _check_trees(spec):
    """No declared path inside another tree: two trees would fight over their files; a file (or
    a service's unit) under a synced tree would be removed by it and written again at every run,
    and one under another tree must not be one of its files."""
    for tree in spec.trees:
        inside = tree.path + "/"
        for other in spec.all_files + spec.trees:
            if other is tree or not other.path.startswith(inside):
                continue
            rel = other.path[len(inside):]
            if isinstance(other, TreeSpec) or tree.sync or rel in tree.files or rel in tree.dirs:
                raise ValidationError(other.field, other.path, "is inside the tree of %s (src %s%s)"
                                      % (tree.field, tree.src, ", synced" if tree.sync else ""))


def file_fields(items, field="instances"):
    """(field, item) of every ``files`` item of ``instances`` not yet validated
    (``instances[0].files[1]``): the items whose ``src`` the action plugin resolves."""
    for index, item in enumerate(items if isinstance(items, list) else ()):
        files = item.get("files") if isinstance(item, dict) else None
        for number, fitem in enumerate(files if isinstance(files, list) else ()):
            if isinstance(fitem, dict):
                yield "%s[%d].files[%d]" % (field, index, number), fitem


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
              "Restart=%s" % svc.restart, "RestartSec=1"]
    if svc.open_files:
        lines.append("LimitNOFILE=%d" % svc.open_files)
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)
