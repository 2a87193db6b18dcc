# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One service of the box description, parsed: its keys checked and named as the user wrote them.

``parse_service`` takes one item of ``onebox_services`` and returns a BoxService, or raises
ValidationError naming the service and the field (``services[web].port``). What needs the whole
description (names, domains, host ports and volume names claimed twice) is _box.py's.

A service's ``volumes`` are custom storage volumes mounted into each of its containers, named
``OWNER-SERVICE-NAME`` (``OWNER-shared-NAME`` when ``shared``); ``service.volumes`` is a list of
dicts with exactly the keys name, volume, path, size, readonly, shared and device, which other
parts (the backups) rely on. A service written ``{name, state: absent, purge}`` builds nothing:
it names a removed service whose volumes a purge deletes.
"""
from __future__ import annotations

from ansible_collections.homelab.onebox.plugins.module_utils import _validate as v
from ansible_collections.homelab.onebox.plugins.module_utils._box_tls import parse_service_tls
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._provision_spec import (
    RESTART_CHOICES, open_files_limit, setup_command, setup_dependency)

KINDS = ("static", "app", "pool", "plain", "internal")
METHODS = ("round_robin", "least_conn", "ip_hash")
# Keys a service may have; anything else is a typo the user should hear about.
SERVICE_KEYS = {
    "name", "kind", "description", "image", "domains", "routes", "port", "host_port", "forwards",
    "count", "method", "memory", "memory_swap", "cpus", "boot", "files", "packages", "user",
    "command", "environment", "working_directory", "proxy", "adopt", "allow_host_listener", "tls",
    "volumes", "backup", "backup_command", "state", "purge", "health", "setup", "restart", "open_files", "after",
}
# A removed service (state: absent) says only which one, and whether its volumes go with it.
ABSENT_KEYS = {"name", "state", "purge"}
VOLUME_KEYS = {"name", "path", "size", "readonly", "shared"}
# The name part of a shared volume (OWNER-shared-NAME) in place of a service's name.
SHARED = "shared"
# A volume's disk device in the container is vol-NAME: the box owns the devices of this prefix
# (one no longer described leaves the container).
VOLUME_DEVICE_PREFIX = "vol-"
ROUTE_KEYS = {"domain", "path", "strip_prefix"}
FORWARD_KEYS = {"proto", "port", "target_port", "source", "host_address", "comment", "allow_host_listener"}
HEALTH_KEYS = {"http", "tcp", "expect", "timeout"}
SETUP_KEYS = {"command", "when_changed", "creates", "user", "timeout"}
# What a health check waits for when the service does not say: a 200, for up to a minute.
HEALTH_EXPECT = 200
HEALTH_TIMEOUT = 60
# The port the proxy serves HTTP on, and a service's port when it runs no command (the image's nginx).
HTTP_PORT = 80


def _where(index, service, key=None):
    """Field path naming the service: services[web].port, or services[3].name for a bad name."""
    name = service.get("name") if isinstance(service, dict) else None
    try:
        label = v.instance_name(name)
    except ValidationError:
        label = index
    return "services[%s]" % label + ("." + key if key else "")


def parse_service(index, raw, defaults):
    """Item ``index`` of the description -> BoxService (``defaults``: the box's image)."""
    return BoxService(index, raw, defaults)


class BoxService:
    """One parsed service of the description."""

    def __init__(self, index, raw, defaults):
        self.index, self.raw = index, raw
        where = self.where
        if not isinstance(raw, dict):
            raise ValidationError(where(), raw, "a service must be a dict")
        unknown = sorted(set(raw) - SERVICE_KEYS)
        if unknown:
            raise ValidationError(where(unknown[0]), raw[unknown[0]],
                                  "unknown key (known: %s)" % ", ".join(sorted(SERVICE_KEYS)))
        if "name" not in raw:
            raise ValidationError(where("name"), None, "every service needs a name")
        self.name = v.instance_name(raw["name"], where("name"))
        self.state = v.one_of(raw.get("state", "present"), ("present", "absent"), where("state"))
        if self.state == "absent":
            self._removed()
            return
        if "purge" in raw:
            raise ValidationError(where("purge"), raw["purge"], "only a removed service (state: absent) is purged")
        self.kind = v.one_of(raw.get("kind", "app" if raw.get("command") else "static"), KINDS, where("kind"))
        self.image = v.safe_token(raw.get("image", defaults["image"]), where("image"))
        self.domains = [v.domain(d, "%s[%d]" % (where("domains"), i))
                        for i, d in enumerate(self._list("domains"))]
        self.routes = [self._route(i, r) for i, r in enumerate(self._list("routes"))]
        self.forwards = [self._forward(i, f) for i, f in enumerate(self._list("forwards"))]
        self.host_port = v.port(raw["host_port"], where("host_port")) if raw.get("host_port") is not None else None
        self.command = self._command("command")
        default_port = None if self.command else HTTP_PORT
        self.port = v.port(raw["port"], where("port")) if raw.get("port") is not None else default_port
        self.count = 1
        self.method = "round_robin"
        if self.kind == "pool":
            self.count = v.whole(raw.get("count"), where("count"), 1)
            self.method = v.one_of(raw.get("method", "round_robin"), METHODS, where("method"))
        elif "count" in raw or "method" in raw:
            key = "count" if "count" in raw else "method"
            raise ValidationError(where(key), raw[key], "only a pool (kind: pool) has members")
        self.http = bool(self.domains or self.routes or self.host_port)
        if self.http and self.port is None:
            raise ValidationError(where("port"), None,
                                  "the proxy reaches this service over HTTP: give the port its command listens on")
        if self.kind in ("plain", "internal") and self.http:
            key = "domains" if self.domains else "routes" if self.routes else "host_port"
            raise ValidationError(where(key), raw[key], "a %s service is not reached through the proxy" % self.kind)
        if self.kind == "internal" and self.forwards:
            raise ValidationError(where("forwards"), raw["forwards"],
                                  "an internal service is never exposed on the host")
        if self.kind == "pool" and self.forwards:
            raise ValidationError(where("forwards"), raw["forwards"],
                                  "a pool is reached through the proxy (domains or host_port), not a plain forward")
        if self.kind == "app" and not self.command:
            raise ValidationError(where("command"), None, "an app runs a command")
        if raw.get("tls") is not None and not (self.domains or self.routes):
            raise ValidationError(where("tls"), raw["tls"], "HTTPS is for a service's domains and routes; this one has none")
        self.tls = parse_service_tls(raw.get("tls"), where("tls"), defaults.get("tls"))
        self.limits = self._limits()
        self.boot = self._boot()
        self.files = self._files()
        self.packages = [v.safe_token(p, "%s[%d]" % (where("packages"), i)) for i, p in enumerate(self._list("packages"))]
        self.user = v.instance_name(raw.get("user", self.name), where("user")) if self.command else None
        self.working_directory = raw.get("working_directory", "/srv/%s" % self.name)
        if not isinstance(self.working_directory, str) or not self.working_directory.startswith("/"):
            raise ValidationError(where("working_directory"), self.working_directory, "must be an absolute path")
        self.environment = raw.get("environment") or {}
        if not isinstance(self.environment, dict):
            raise ValidationError(where("environment"), "(hidden)", "must be a dict of names to values")
        self.proxy = raw.get("proxy") or {}
        if not isinstance(self.proxy, dict):
            raise ValidationError(where("proxy"), self.proxy, "must be a dict of nginx_site proxy settings")
        # Explicit words for what is otherwise refused: taking over a container that exists without
        # the owner's mark, and forwarding a port the host itself listens on.
        self.adopt = v.flag(raw.get("adopt", False), where("adopt"))
        self.allow_host_listener = v.flag(raw.get("allow_host_listener", False), where("allow_host_listener"))
        if self.allow_host_listener and not (self.forwards or self.host_port):
            raise ValidationError(where("allow_host_listener"), True, "this service forwards no host port")
        self.volumes = self._volumes(defaults.get("owner", "onebox"))
        # Parsed here for the backups, which read them: whether the service's volumes are backed
        # up, and the command run in its container first (a database dump onto a volume).
        self.backup = v.flag(raw.get("backup", True), where("backup"))
        self.backup_command = self._command("backup_command")
        if isinstance(raw.get("backup_command"), str):
            # A line is a shell's (a dump redirected onto a volume); a list runs as it is.
            self.backup_command = ["/bin/sh", "-c", raw["backup_command"]]
        self.health = self._health()
        self._process()
        self.setup = self._setup()
        self.after = self._after()
        self.purge = False

    def _removed(self):
        """A service written {name, state: absent, purge}: nothing is built for it; with purge its
        volumes are deleted once its containers are gone. Without purge it is as if left out."""
        extra = sorted(set(self.raw) - ABSENT_KEYS)
        if extra:
            raise ValidationError(self.where(extra[0]), self.raw[extra[0]],
                                  "a service with state: absent builds nothing: it takes only name, state and purge")
        self.purge = v.flag(self.raw.get("purge", False), self.where("purge"))
        self.volumes = []
        self.health, self.setup, self.after = None, [], []

    def where(self, key=None):
        return _where(self.index, self.raw, key)

    def _list(self, key):
        return v.items(self.raw.get(key) or None, self.where(key))

    def _route(self, index, raw):
        where = "%s[%d]" % (self.where("routes"), index)
        if not isinstance(raw, dict):
            raise ValidationError(where, raw, "a route is a dict with domain and path")
        unknown = sorted(set(raw) - ROUTE_KEYS)
        if unknown:
            raise ValidationError("%s.%s" % (where, unknown[0]), raw[unknown[0]], "unknown key")
        if not raw.get("domain"):
            raise ValidationError(where + ".domain", raw.get("domain"), "a path route needs the domain it lives under")
        path = v.url_path(raw.get("path", ""), where + ".path")
        return {"domain": v.domain(raw["domain"], where + ".domain"), "path": path,
                "strip_prefix": bool(raw.get("strip_prefix", False))}

    def _forward(self, index, raw):
        where = "%s[%d]" % (self.where("forwards"), index)
        if not isinstance(raw, dict) or "port" not in raw:
            raise ValidationError(where, raw, "a forward is a dict with at least port")
        unknown = sorted(set(raw) - FORWARD_KEYS)
        if unknown:
            raise ValidationError("%s.%s" % (where, unknown[0]), raw[unknown[0]], "unknown key")
        proto = v.one_of(raw.get("proto", "tcp"), ("tcp", "udp"), where + ".proto")
        low, high = v.port_range(raw["port"], where + ".port")
        forward = dict(raw, proto=proto)
        forward["_range"] = (low, high)
        if raw.get("target_port") is not None:
            v.port_range(raw["target_port"], where + ".target_port")
        return forward

    def _command(self, key):
        """``command`` or ``backup_command``: a command line (split on spaces) or a list of
        arguments -> the list, or None when not given."""
        command = self.raw.get(key)
        if command is None:
            return None
        if isinstance(command, str):
            command = command.split()
        if not isinstance(command, list) or not command or not all(isinstance(a, str) and a for a in command):
            raise ValidationError(self.where(key), self.raw.get(key), "must be a command line or a list of arguments")
        if any("\n" in a for a in command):
            raise ValidationError(self.where(key), self.raw.get(key), "must not contain a newline")
        return command

    def _volumes(self, owner):
        """``volumes`` -> [{name, volume, path, size, readonly, shared, device}]."""
        volumes, names, paths = [], {}, {}
        for index, raw in enumerate(self._list("volumes")):
            where = "%s[%d]" % (self.where("volumes"), index)
            if not isinstance(raw, dict):
                raise ValidationError(where, raw, "a volume is a dict with name and path")
            unknown = sorted(set(raw) - VOLUME_KEYS)
            if unknown:
                raise ValidationError("%s.%s" % (where, unknown[0]), raw[unknown[0]],
                                      "unknown key (known: %s)" % ", ".join(sorted(VOLUME_KEYS)))
            for key in ("name", "path"):
                if raw.get(key) is None:
                    raise ValidationError("%s.%s" % (where, key), None, "every volume needs a %s" % key)
            name = v.lower_name(raw["name"], where + ".name")
            path = v.absolute_path(raw["path"], where + ".path")
            if path == "/":
                raise ValidationError(where + ".path", raw["path"], "is the container's own root; mount the volume under it")
            size = None
            if raw.get("size") is not None:
                if v.size_bytes(raw["size"], where + ".size") == 0:
                    raise ValidationError(where + ".size", raw["size"], "must be more than nothing")
                size = str(raw["size"]).replace(" ", "")
            readonly = v.flag(raw.get("readonly", False), where + ".readonly")
            shared = v.flag(raw.get("shared", False), where + ".shared")
            for key, value, seen in (("name", name, names), ("path", path, paths)):
                if value in seen:
                    raise ValidationError("%s.%s" % (where, key), raw[key], "declared twice (also %s)" % seen[value])
                seen[value] = where
            if self.kind == "pool" and not shared:
                raise ValidationError(where + ".shared", False,
                                      "every member of a pool would mount this one volume and share its data by "
                                      "accident; use shared: true to mean it")
            volumes.append({"name": name, "volume": "%s-%s-%s" % (owner, SHARED if shared else self.name, name),
                            "path": path, "size": size, "readonly": readonly, "shared": shared,
                            "device": VOLUME_DEVICE_PREFIX + name})
        return volumes

    def _health(self):
        """``health`` -> None, or {http: PATH or None, tcp: PORT or None, expect: CODE (http only,
        else None), timeout: SECONDS}: exactly one of http and tcp; http asks the service's port."""
        raw, where = self.raw.get("health"), self.where("health")
        if raw is None:
            return None
        v.mapping(raw, where, HEALTH_KEYS)
        if ("http" in raw) == ("tcp" in raw):
            raise ValidationError(where, raw, "takes exactly one of http (a path) and tcp (a port)")
        health = {"http": None, "tcp": None, "expect": None,
                  "timeout": v.whole(raw.get("timeout", HEALTH_TIMEOUT), where + ".timeout", 1)}
        if "tcp" in raw:
            health["tcp"] = v.port(raw["tcp"], where + ".tcp")
            if "expect" in raw:
                raise ValidationError(where + ".expect", raw["expect"], "an HTTP status: only with http")
            return health
        health["http"] = v.url_path(raw["http"], where + ".http")
        if self.port is None:
            raise ValidationError(where + ".http", raw["http"], "the service has no port to ask: give its port")
        health["expect"] = v.integer(raw.get("expect", HEALTH_EXPECT), where + ".expect", 100, 599)
        return health

    def _process(self):
        """``restart`` (systemd's Restart=, default always) and ``open_files`` (LimitNOFILE=) of the
        unit the box writes: only a service with a command has one."""
        self.restart, self.open_files = "always", None
        for key in ("restart", "open_files"):
            if key in self.raw and not self.command:
                raise ValidationError(self.where(key), self.raw[key], "only a service with a command has a process "
                                      "the box runs (its unit)")
        if "restart" in self.raw:
            self.restart = v.one_of(self.raw["restart"], RESTART_CHOICES, self.where("restart"))
        if self.raw.get("open_files") is not None:
            self.open_files = open_files_limit(self.raw["open_files"], self.where("open_files"))

    def _setup(self):
        """``setup`` -> [{command, when_changed, creates, user, timeout}]: commands run in each of
        its containers after its files and packages, before it is (re)started (_provision)."""
        paths = [v.absolute_path(f["path"], "%s[%d].path" % (self.where("files"), i)) for i, f in enumerate(self.files)]
        trees = [path for path, f in zip(paths, self.files) if f.get("src") is not None]  # a src may be a directory
        environment = self.environment if self.command else {}   # a step has its service's environment
        steps = []
        for index, raw in enumerate(self._list("setup")):
            where = "%s[%d]" % (self.where("setup"), index)
            if not isinstance(raw, dict) or raw.get("command") is None:
                raise ValidationError(where, raw, "a setup step is a dict with a command (and when_changed, creates, "
                                                  "user, timeout)")
            unknown = sorted(set(raw) - SETUP_KEYS)
            if unknown:
                raise ValidationError("%s.%s" % (where, unknown[0]), raw[unknown[0]],
                                      "unknown key (known: %s)" % ", ".join(sorted(SETUP_KEYS)))
            when = [setup_dependency(entry, "%s.when_changed[%d]" % (where, i), paths, self.packages, environment, trees)
                    for i, entry in enumerate(v.items(raw.get("when_changed"), where + ".when_changed", scalar=True))]
            step = {"command": setup_command(raw["command"], where + ".command"), "when_changed": when,
                    "creates": None, "user": v.posix_name(raw.get("user", self.user or "root"), where + ".user"),
                    "timeout": None}
            if raw.get("creates") is not None:
                step["creates"] = v.absolute_path(raw["creates"], where + ".creates")
            if raw.get("timeout") is not None:
                step["timeout"] = v.whole(raw["timeout"], where + ".timeout", 1)
            steps.append(step)
        return steps

    def _after(self):
        """``after``: the services whose containers start before this one's at boot (their names;
        that they exist, and the order they make, are the whole box's: _box.py)."""
        after = []
        for index, name in enumerate(self._list("after")):
            where = "%s[%d]" % (self.where("after"), index)
            v.instance_name(name, where)
            if name == self.name:
                raise ValidationError(where, name, "a service cannot start after itself")
            if name in after:
                raise ValidationError(where, name, "named twice")
            after.append(name)
        return after

    def _limits(self):
        return v.limits(self.raw.get("memory"), self.raw.get("memory_swap"), self.raw.get("cpus"), self.where)

    def _boot(self):
        boot = self.raw.get("boot") or {}
        if not isinstance(boot, dict) or set(boot) - {"priority", "delay", "autostart"}:
            raise ValidationError(self.where("boot"), boot, "takes autostart, priority and delay")
        out = {"autostart": bool(boot.get("autostart", True))}
        for key in ("priority", "delay"):
            if boot.get(key) is not None:
                out["autostart_" + key] = v.whole(boot[key], "%s.%s" % (self.where("boot"), key))
        return out

    def _files(self):
        files, seen = [], set()
        for index, raw in enumerate(self._list("files")):
            where = "%s[%d]" % (self.where("files"), index)
            if not isinstance(raw, dict) or not isinstance(raw.get("path"), str):
                raise ValidationError(where, raw, "a file is a dict with path and content or src (or state: absent)")
            path = raw["path"]
            if not path.startswith("/") or ".." in path.split("/") or "\n" in path:
                raise ValidationError(where + ".path", path, "must be an absolute path without '..' or newlines")
            if path in seen:
                raise ValidationError(where + ".path", path, "declared twice")
            seen.add(path)
            if raw.get("src") is not None:
                if not isinstance(raw["src"], str) or not raw["src"]:
                    raise ValidationError(where + ".src", raw["src"], "must be a path on the controller")
            elif raw.get("state", "present") == "present" and not isinstance(raw.get("content"), str):
                raise ValidationError(where + ".content", raw.get("content"), "must be the file's text (or src: a "
                                      "file or directory on the controller)")
            files.append(dict(raw))
        return files

    @property
    def members(self):
        """Container names: one for a service, NAME-1..NAME-N for a pool."""
        if self.kind == "pool":
            return ["%s-%d" % (self.name, i) for i in range(1, self.count + 1)]
        return [self.name]


def file_fields(services):
    """(field, item) of every ``files`` item of a description not yet validated, named as the
    user wrote it (``services[web].files[2]``): the items whose ``src`` the action plugin resolves
    on the controller."""
    for index, service in enumerate(services if isinstance(services, list) else ()):
        files = service.get("files") if isinstance(service, dict) else None
        for number, item in enumerate(files if isinstance(files, list) else ()):
            if isinstance(item, dict):
                yield "%s[%d]" % (_where(index, service, "files"), number), item


def secret_values(services):
    """Every service's secrets (environment values, a provided TLS key), from a description not yet validated."""
    for service in services if isinstance(services, list) else ():
        environment = service.get("environment") if isinstance(service, dict) else None
        if isinstance(environment, dict):
            for value in environment.values():
                if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                    yield str(value)
        tls = service.get("tls") if isinstance(service, dict) else None
        if isinstance(tls, dict) and isinstance(tls.get("key"), str):
            yield tls["key"]
