"""An in-memory LXD for unit tests: the LxdClient methods the collection calls, no daemon, no waits.

Instances are dicts shaped as LXD's API returns them (``name``, ``status``, ``config``,
``devices``, ``expanded_devices``, ``profiles``, ``ephemeral`` and, when asked for, ``state``).
Every call is recorded in order in ``calls`` as a tuple ``(method, name, ...)``; ``fail(method,
name)`` makes that call raise an LxdError for that instance; ``on_exec`` answers commands run
inside. A started container holds its eth0 static address at once, or one from 10.0.0.100 up;
its services stay up once started (the check after a start, unanswered, hears them running).

Import it as ``from unit.fake_lxd import FakeLxd`` (``tests/`` is on sys.path under pytest).
"""
from __future__ import annotations

import copy
import itertools
import re
import threading

from ansible_collections.homelab.onebox.plugins.module_utils._lxd import ExecResult, LxdClient, LxdError, LxdNotFound

NETWORK = "lxdbr0"
GATEWAY = "10.0.0.1/24"
DEFAULT_PROFILE = {"name": "default", "devices": {
    "eth0": {"type": "nic", "name": "eth0", "network": NETWORK},
    "root": {"type": "disk", "path": "/", "pool": "default"}}}


class FakeLxd:
    """Holds ``instances`` (name -> instance dict); ``images``: the local aliases."""

    # The real ones, which only call methods this fake has.
    ipv4_addresses = LxdClient.ipv4_addresses
    wait_ipv4 = LxdClient.wait_ipv4
    run = LxdClient.run

    def __init__(self, instances=(), images=("debian/12",), cpus=4, profiles=None, networks=None):
        self.timeout = 30
        self.local_dir = None  # where networks/<name>/dnsmasq.leases are read; None: not a local daemon
        self.instances_by_name = {}
        self.images = {alias: {"name": alias, "target": "f%063d" % i} for i, alias in enumerate(images)}
        self.cpus = cpus
        self.profiles = profiles if profiles is not None else {"default": DEFAULT_PROFILE}
        self.networks = networks if networks is not None else {
            NETWORK: {"name": NETWORK, "config": {"ipv4.address": GATEWAY}}}
        self.files = {}  # (instance, path) -> bytes
        self.volumes = {}  # (pool, name) -> volume dict (name, type, config, description)
        self.leases = {}  # network -> [address] of the leases LXD's API lists (beside the gateway)
        self.calls = []
        self.failures = {}  # (method, name) -> LxdError to raise
        self.on_exec = None  # (name, command, kwargs) -> ExecResult, (rc, out, err) or None (exit 0)
        self._lock = threading.RLock()
        self._dynamic = itertools.count(100)
        for instance in instances:  # names, or dicts of add()'s arguments
            if isinstance(instance, dict):
                self.add(**instance)
            else:
                self.add(instance)

    # ---- setting up and looking --------------------------------------------------------
    def add(self, name, status="Stopped", config=None, devices=None, profiles=("default",), ephemeral=False):
        """Put an instance there, as if made earlier (not recorded as a call)."""
        with self._lock:
            self.instances_by_name[name] = self._expand({
                "name": name, "status": status, "config": dict(config or {}), "devices": copy.deepcopy(devices or {}),
                "profiles": list(profiles), "ephemeral": ephemeral, "type": "container"})
            self._address(self.instances_by_name[name])
        return self.instances_by_name[name]

    def fail(self, method, name, message="fake failure"):
        """Make ``method`` (e.g. "create_instance", "change_state", "exec") fail for instance ``name``."""
        self.failures[(method, name)] = LxdError("%s instance %s: %s" % (method, name, message))

    def names(self, method):
        """The instance names ``method`` was called for, in call order."""
        return [call[1] for call in self.calls if call[0] == method]

    def changes(self):
        """The calls that change something (no reads), in order."""
        reads = {"instance", "instances", "instance_state", "host_cpus", "image_alias", "image",
                 "network", "network_leases", "profile", "pull_file", "volume", "custom_volumes"}
        return [call for call in self.calls if call[0] not in reads]

    def _record(self, method, name, *args):
        with self._lock:
            self.calls.append((method, name) + args)
        failure = self.failures.get((method, name))
        if failure is not None:
            raise failure

    def _get(self, name, what):
        instance = self.instances_by_name.get(name)
        if instance is None:
            raise LxdNotFound("%s: not found (Instance not found)" % what)
        return instance

    def _expand(self, instance):
        devices = {}
        for profile in instance.get("profiles") or []:
            devices.update(copy.deepcopy((self.profiles.get(profile) or {}).get("devices") or {}))
        devices.update(copy.deepcopy(instance.get("devices") or {}))
        instance["expanded_devices"] = devices
        return instance

    def _address(self, instance):
        """The state LXD would report: a running container holds its address at once."""
        if instance["status"] != "Running":
            instance["state"] = {"status": instance["status"], "network": {}}
            return
        eth0 = instance["expanded_devices"].get("eth0") or {}
        held = ((instance.get("state") or {}).get("network") or {}).get("eth0", {}).get("addresses")
        address = eth0.get("ipv4.address") or (held[0]["address"] if held else "10.0.0.%d" % next(self._dynamic))
        instance["state"] = {"status": "Running", "network": {
            "lo": {"addresses": [{"family": "inet", "address": "127.0.0.1", "scope": "local"}]},
            "eth0": {"addresses": [{"family": "inet", "address": address, "scope": "global"}]}}}

    @staticmethod
    def _view(instance, state):
        view = copy.deepcopy(instance)
        if not state:
            view.pop("state", None)
        return view

    # ---- LxdClient ---------------------------------------------------------------------
    def instance(self, name, state=True):
        self._record("instance", name)
        with self._lock:
            instance = self.instances_by_name.get(name)
            return None if instance is None else self._view(instance, state)

    def instances(self, state=False):
        self._record("instances", None)
        with self._lock:
            return [self._view(i, state) for _n, i in sorted(self.instances_by_name.items())]

    def host_cpus(self):
        self._record("host_cpus", None)
        return self.cpus

    def instance_state(self, name):
        self._record("instance_state", name)
        with self._lock:
            return copy.deepcopy(self._get(name, "state of instance %s" % name)["state"])

    def create_instance(self, body, timeout=None, target=None):
        name = body.get("name")
        # The cluster member asked for, recorded only when one is (the calls of a standalone daemon).
        self._record("create_instance", name, copy.deepcopy(body), *([target] if target else []))
        with self._lock:
            if name in self.instances_by_name:
                raise LxdError("create instance %s: Instance \"%s\" already exists" % (name, name))
            source = body.get("source") or {}
            config = {}
            if source.get("type") == "copy":
                original = self._get(source["source"].split("/")[0], "create instance %s" % name)
                config = {k: val for k, val in original["config"].items() if not k.startswith("volatile.")}
            elif source.get("alias") and not source.get("server") and source["alias"] not in self.images:
                raise LxdError("create instance %s: Image not found" % name)
            config.update(body.get("config") or {})
            self.add(name, "Stopped", config, body.get("devices"), body.get("profiles", ["default"]),
                     bool(body.get("ephemeral")))

    def patch_instance(self, name, body):
        self._record("patch_instance", name, copy.deepcopy(body))
        with self._lock:
            instance = self._get(name, "update instance %s" % name)
            instance["config"].update(body.get("config") or {})
            instance["devices"].update(copy.deepcopy(body.get("devices") or {}))
            for key in ("profiles", "ephemeral"):
                if key in body:
                    instance[key] = body[key]
            self._expand(instance)

    def put_instance(self, name, body):
        self._record("put_instance", name, copy.deepcopy(body))
        with self._lock:
            instance = self._get(name, "update instance %s" % name)
            for key in ("config", "devices", "profiles", "ephemeral"):
                if key in body:
                    instance[key] = copy.deepcopy(body[key])
            self._expand(instance)

    def change_state(self, name, action, force=False, timeout=None):
        self._record("change_state", name, action)
        with self._lock:
            instance = self._get(name, "%s instance %s" % (action, name))
            if action == "stop" and instance["status"] != "Running":
                raise LxdError("stop instance %s: The instance is already stopped" % name)
            if action == "start" and instance["status"] == "Running":
                raise LxdError("start instance %s: The instance is already running" % name)
            instance["status"] = "Stopped" if action == "stop" else "Running"
            if action == "restart":
                instance["state"] = None  # a fresh DHCP request
            self._address(instance)

    def delete_instance(self, name):
        self._record("delete_instance", name)
        with self._lock:
            instance = self._get(name, "delete instance %s" % name)
            if instance["status"] == "Running":
                raise LxdError("delete instance %s: Instance is running" % name)
            del self.instances_by_name[name]

    def exec(self, name, command, timeout=60, environment=None, cwd=None, user=None, group=None):
        self._record("exec", name, list(command))
        with self._lock:
            if self._get(name, "exec %s in %s" % (command[0], name))["status"] != "Running":
                raise LxdError("exec %s in %s: Instance is not running" % (command[0], name))
        answer = None
        if self.on_exec is not None:
            answer = self.on_exec(name, list(command), dict(timeout=timeout, environment=environment, cwd=cwd,
                                                            user=user, group=group))
        return ExecResult(*answer) if answer is not None else ExecResult(0, _started(command), "")

    def pull_file(self, name, path):
        self._record("pull_file", name, path)
        return self.files.get((name, path))

    def push_file(self, name, path, data, mode=0o644, uid=0, gid=0):
        self._record("push_file", name, path, mode, uid, gid)
        with self._lock:
            self._get(name, "write %s in %s" % (path, name))
            if hasattr(data, "read"):  # a file object, streamed by the real client
                data = data.read()
            self.files[(name, path)] = data.encode("utf-8") if isinstance(data, str) else bytes(data)

    def image_alias(self, alias):
        self._record("image_alias", alias)
        return copy.deepcopy(self.images.get(alias))

    def image(self, fingerprint):
        self._record("image", fingerprint)
        return next(({"fingerprint": i["target"]} for i in self.images.values() if i["target"] == fingerprint), None)

    def network(self, name):
        self._record("network", name)
        return copy.deepcopy(self.networks.get(name))

    def network_leases(self, name):
        self._record("network_leases", name)
        gateway = self.networks[name]["config"]["ipv4.address"].split("/")[0]
        dynamic = [{"address": a, "type": "dynamic"} for a in self.leases.get(name, [])]
        return [{"address": gateway, "type": "gateway"}] + dynamic

    def volume(self, pool, name):
        self._record("volume", name, pool)
        return copy.deepcopy(self.volumes.get((pool, name)))

    def custom_volumes(self, pool):
        """As LXD lists them: each with ``used_by``, the instances whose devices mount it."""
        self._record("custom_volumes", None, pool)
        with self._lock:
            return [dict(copy.deepcopy(volume), used_by=["/1.0/instances/%s" % n for n, i in sorted(self.instances_by_name.items())
                                                         if any(d.get("source") == name and d.get("pool") == pool
                                                                for d in i["devices"].values())])
                    for (at, name), volume in sorted(self.volumes.items()) if at == pool]

    def patch_volume(self, pool, name, body):
        self._record("patch_volume", name, pool, copy.deepcopy(body))
        with self._lock:
            volume = self.volumes.get((pool, name))
            if volume is None:
                raise LxdNotFound("update storage volume %s/%s: not found" % (pool, name))
            volume.setdefault("config", {}).update(body.get("config") or {})

    def create_volume(self, pool, body):
        self._record("create_volume", body["name"], pool)
        with self._lock:
            if (pool, body["name"]) in self.volumes:
                raise LxdError("create storage volume %s/%s: Volume by that name already exists" % (pool, body["name"]))
            self.volumes[(pool, body["name"])] = copy.deepcopy(body)

    def delete_volume(self, pool, name):
        self._record("delete_volume", name, pool)
        with self._lock:
            if any(d.get("source") == name and d.get("pool") == pool for i in self.instances_by_name.values()
                   for d in i["devices"].values()):
                raise LxdError("delete storage volume %s/%s: The storage volume is still in use" % (pool, name))
            if self.volumes.pop((pool, name), None) is None:
                raise LxdNotFound("delete storage volume %s/%s: not found" % (pool, name))

    def profile(self, name):
        self._record("profile", name)
        return copy.deepcopy(self.profiles.get(name))

    def close(self):
        pass


def _started(command):
    """What the check after a (re)start (_provision.started_check_lines) prints of units that stay up."""
    script = command[-1] if command[:2] == ["sh", "-c"] else ""
    return "".join("R%s ActiveState=active\nR%s SubState=running\nR%s NRestarts=0\n" % (i, i, i)
                   for i in re.findall(r"sed 's/\^/R(\d+) /'", script))
