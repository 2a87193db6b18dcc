# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one place that talks to LXD.

Built on pylxd's client, using its raw API node (``client.api``) rather than its model objects:
the models re-read the instance on every attribute sync and exec through websockets, which was
measured at ~100 ms a call and lost output under load. Here every call is one REST round trip,
every wait has a timeout, and every LXD/pylxd/requests failure becomes an LxdError.
"""
from __future__ import annotations

import ipaddress
import os
import threading
import time
import traceback
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

from ansible_collections.homelab.onebox.plugins.module_utils import _dhcp
from ansible_collections.homelab.onebox.plugins.module_utils import _validate as v
from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError, ValidationError

try:
    import pylxd
    import pylxd.exceptions
    import requests.exceptions
except ImportError:  # pragma: no cover - reported by OneboxModule.lxd
    PYLXD_IMPORT_ERROR = traceback.format_exc()
else:
    PYLXD_IMPORT_ERROR = None

# Debian's package, the snap, Incus: the first that exists wins (after $LXD_DIR).
SOCKET_PATHS = (
    "/var/lib/lxd/unix.socket",
    "/var/snap/lxd/common/lxd/unix.socket",
    "/var/lib/incus/unix.socket",
)

ExecResult = namedtuple("ExecResult", "rc stdout stderr")


class LxdError(OneboxError):
    """Anything that went wrong talking to LXD, with LXD's own words in the message."""


class LxdNotFound(LxdError):
    pass


def find_socket(environ=None, exists=os.path.exists):
    """The LXD socket to use when the user named none, or None when there is none."""
    environ = os.environ if environ is None else environ
    candidates = []
    if environ.get("LXD_DIR"):
        candidates.append(os.path.join(environ["LXD_DIR"], "unix.socket"))
    candidates.extend(SOCKET_PATHS)
    for path in candidates:
        if exists(path):
            return path
    return None


def endpoint_from_url(url, environ=None, exists=os.path.exists):
    """Map the user's ``lxd_url`` to what pylxd.Client takes: a socket path or an https URL."""
    if not url:
        path = find_socket(environ, exists)
        if path is None:
            raise LxdError(
                "no LXD socket found (looked at $LXD_DIR/unix.socket and %s); is LXD installed and "
                "running? Set lxd_url to its socket or https URL." % ", ".join(SOCKET_PATHS))
        return path
    if url.startswith("unix:"):
        url = url[len("unix:"):]
        url = "/" + url.lstrip("/")
    if url.startswith("/"):
        if not exists(url):
            raise LxdError("lxd_url: LXD socket %s does not exist; is LXD running?" % url)
        return url
    if url.startswith("https://"):
        return url
    raise LxdError("lxd_url: invalid value %r: must be a socket path, unix:/path or https://host:port" % url)


def describe_error(exc):
    """LXD's own error text out of a pylxd/requests exception."""
    if PYLXD_IMPORT_ERROR is None and isinstance(exc, pylxd.exceptions.LXDAPIException):
        try:
            return exc.response.json().get("error") or str(exc)
        except ValueError:
            return str(exc) or exc.response.text
    return str(exc) or exc.__class__.__name__


class LxdClient:
    """A connection to one LXD daemon. Create with ``LxdClient.from_params(module.params)``."""

    def __init__(self, url=None, client_cert=None, client_key=None, verify=True, project=None, timeout=30):
        self.timeout = timeout
        endpoint = endpoint_from_url(url)
        cert = (client_cert, client_key) if client_cert else None
        if isinstance(verify, str) and verify.lower() in ("true", "yes", "false", "no"):
            verify = verify.lower() in ("true", "yes")
        try:
            self._client = pylxd.Client(endpoint=endpoint, cert=cert, verify=verify,
                                        project=project, timeout=timeout)
        except Exception as exc:  # pylxd raises ClientConnectionFailed, requests raises its own
            raise LxdError("cannot connect to LXD at %s: %s" % (endpoint, describe_error(exc)))
        self.api = self._client.api
        self.server = self._client.host_info
        # A local daemon's directory: its bridges' dnsmasq lease files are read there.
        self.local_dir = os.path.dirname(endpoint) if endpoint.startswith("/") else None
        self._pool = None
        self._lock = threading.Lock()
        self._read_once = {}

    @classmethod
    def from_params(cls, params):
        return cls(url=params.get("lxd_url"), client_cert=params.get("lxd_client_cert"),
                   client_key=params.get("lxd_client_key"), verify=params.get("lxd_verify", True),
                   project=params.get("lxd_project"), timeout=params.get("lxd_timeout") or 30)

    # ---- raw requests -------------------------------------------------------------------
    def request(self, method, node, what, **kwargs):
        """One API call. Returns the response; raises LxdNotFound on 404, LxdError otherwise."""
        try:
            return getattr(node, method)(**kwargs)
        except pylxd.exceptions.NotFound as exc:
            raise LxdNotFound("%s: not found (%s)" % (what, describe_error(exc)))
        except (pylxd.exceptions.LXDAPIException, requests.exceptions.RequestException) as exc:
            raise LxdError("%s: %s" % (what, describe_error(exc)))

    def metadata(self, method, node, what, **kwargs):
        return self.request(method, node, what, **kwargs).json()["metadata"]

    def wait(self, response, what, timeout=None):
        """Wait for the operation a response started; return the operation's metadata."""
        body = response.json()
        if body.get("type") != "async":
            return body.get("metadata")
        timeout = self.timeout if timeout is None else timeout
        op_id = body["operation"].rstrip("/").split("/")[-1]
        deadline = time.monotonic() + timeout
        while True:
            # LXD caps one wait; loop so a long operation (an image unpack) can still finish.
            left = max(1, int(deadline - time.monotonic() + 0.999))
            op = self.metadata("get", self.api.operations[op_id].wait, what,
                               params={"timeout": left}, timeout=left + 10)
            if op["status"] == "Success":
                return op
            if op["status"] in ("Failure", "Cancelled"):
                raise LxdError("%s: %s" % (what, op.get("err") or op["status"]))
            if time.monotonic() >= deadline:
                # Best effort: ask LXD to cancel; not every operation can be cancelled.
                try:
                    self.api.operations[op_id].delete()
                except Exception:  # pylint: disable=broad-except
                    pass
                raise LxdError("%s: did not finish within %s s" % (what, timeout))

    # ---- instances ----------------------------------------------------------------------
    def instance(self, name, state=True):
        """The instance with its state (one round trip, recursion=1), or None when absent.
        ``state=False``: without it, which spares LXD collecting it (it enters the container)."""
        try:
            return self.metadata("get", self.api.instances[name], "instance %s" % name,
                                 params={"recursion": 1 if state else 0})
        except LxdNotFound:
            return None

    def instances(self, state=False):
        """Every instance in one request; ``state=True``: with its state (addresses, status)."""
        return self.metadata("get", self.api.instances, "list instances", params={"recursion": 2 if state else 1})

    def instance_names(self):
        return [url.rstrip("/").split("/")[-1]
                for url in self.metadata("get", self.api.instances, "list instances")]

    def host_cpus(self):
        """How many CPUs the daemon's host has (limits.cpu beyond them cannot be met)."""
        return self._remembered("resources", "cpu", lambda: int(
            self.metadata("get", self.api.resources, "host resources")["cpu"]["total"]))

    def instance_state(self, name):
        return self.metadata("get", self.api.instances[name].state, "state of instance %s" % name)

    def create_instance(self, body, timeout=None):
        what = "create instance %s" % body.get("name")
        self.wait(self.request("post", self.api.instances, what, json=body), what,
                  timeout=timeout or max(self.timeout, 120))

    def patch_instance(self, name, body):
        what = "update instance %s" % name
        self.wait(self.request("patch", self.api.instances[name], what, json=body), what)

    def change_state(self, name, action, force=False, timeout=None):
        what = "%s instance %s" % (action, name)
        timeout = self.timeout if timeout is None else timeout
        body = {"action": action, "timeout": timeout, "force": force}
        self.wait(self.request("put", self.api.instances[name].state, what, json=body), what,
                  timeout=timeout + 10)

    def delete_instance(self, name):
        what = "delete instance %s" % name
        self.wait(self.request("delete", self.api.instances[name], what), what)

    def ipv4_addresses(self, state, nic=None):
        """Global IPv4 addresses of an instance state, on one NIC or on all but loopback."""
        found = []
        for ifname, net in sorted(((state or {}).get("network") or {}).items()):
            if ifname == "lo" or (nic and ifname != nic):
                continue
            found.extend(a["address"] for a in net.get("addresses") or []
                         if a.get("family") == "inet" and a.get("scope") == "global")
        return found

    def wait_ipv4(self, name, nic=None, timeout=60, interval=0.25):
        """Poll until the instance has an IPv4 address; fail (never return empty) on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.instance_state(name)
            addresses = self.ipv4_addresses(state, nic)
            if addresses:
                return addresses, state
            if state.get("status") != "Running":
                raise LxdError("instance %s is %s, it will get no IPv4 address" % (name, state.get("status")))
            if time.monotonic() >= deadline:
                raise LxdError(
                    "instance %s has no IPv4 address on %s after %s s (is DHCP running in the image, "
                    "or is the static address outside the bridge's subnet?)" % (name, nic or "any NIC", timeout))
            time.sleep(interval)

    # ---- exec and files -----------------------------------------------------------------
    def exec(self, name, command, timeout=60, environment=None, cwd=None, user=None, group=None):
        """Run ``command`` (argv list) in the instance; return ExecResult(rc, stdout, stderr).

        Uses record-output (no websockets): measured ~20 ms a call here and never lost output.
        Fails when the command outlives ``timeout`` or when LXD recorded no output files.
        """
        if isinstance(command, str) or not command:
            raise LxdError("exec in %s: command must be a non-empty list of arguments" % name)
        body = {"command": [str(arg) for arg in command], "environment": environment or {},
                "wait-for-websocket": False, "record-output": True, "interactive": False}
        if cwd:
            body["cwd"] = cwd
        if user is not None:
            body["user"] = int(user)
        if group is not None:
            body["group"] = int(group)
        what = "exec %s in %s" % (command[0], name)
        op = self.wait(self.request("post", self.api.instances[name].exec, what, json=body), what,
                       timeout=timeout)
        meta = op.get("metadata") or {}
        logs = meta.get("output") or {}
        if "return" not in meta or "1" not in logs or "2" not in logs:
            raise LxdError("%s: LXD returned no exit code or output record: %r" % (what, meta))
        nodes = [self.api.instances[name].logs[logs[fd].rstrip("/").split("/")[-1]] for fd in ("1", "2")]
        # Both records at once (stderr beside, stdout here); their deletion runs in the background
        # and is awaited in close().
        stderr_read = self._workers().submit(self.request, "get", nodes[1], what, is_api=False)
        stdout = self.request("get", nodes[0], what, is_api=False).content.decode("utf-8", "replace")
        stderr = stderr_read.result().content.decode("utf-8", "replace")
        for node in nodes:
            self._workers().submit(self._forget_log, node)
        return ExecResult(int(meta["return"]), stdout, stderr)

    def _workers(self):
        with self._lock:  # a set of instances execs from several threads
            if self._pool is None:
                # Enough for every exec of a set at once (box and lxd_instances work on up to
                # ``parallel`` containers): a read queued behind others' clean-ups is a slow exec.
                self._pool = ThreadPoolExecutor(max_workers=16)
            return self._pool

    @staticmethod
    def _forget_log(node):
        # The record stays on the host until deleted; a failure to delete is not the caller's.
        try:
            node.delete()
        except Exception:  # pylint: disable=broad-except
            pass

    def close(self):
        """Finish background clean-ups (exec records). Safe to call more than once."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def run(self, name, command, timeout=60, **kwargs):
        """exec that fails unless the command exits 0; returns stdout."""
        result = self.exec(name, command, timeout=timeout, **kwargs)
        if result.rc != 0:
            output = (result.stderr or result.stdout).strip()[-2000:]
            raise LxdError("in %s, %s exited %d: %s" % (name, " ".join(command), result.rc, output),
                           rc=result.rc, stdout=result.stdout, stderr=result.stderr)
        return result.stdout

    def _files(self, name):
        return self.api.instances[name].files

    def pull_file(self, name, path):
        """The file's bytes, or None when it does not exist."""
        what = "read %s in %s" % (path, name)
        try:
            response = self.request("get", self._files(name), what, params={"path": path}, is_api=False)
        except LxdNotFound:
            return None
        if response.headers.get("X-LXD-type") == "directory":
            raise LxdError("%s: is a directory" % what)
        return response.content

    def push_file(self, name, path, data, mode=0o644, uid=0, gid=0):
        """Write a file. LXD applies mode/uid/gid only when it creates the file (over an existing
        one it keeps the old ones) and only the permission bits of the mode (no setuid/setgid/
        sticky): change those with chmod/chown through exec."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        headers = {"X-LXD-type": "file", "X-LXD-mode": "0%o" % mode, "X-LXD-uid": str(uid),
                   "X-LXD-gid": str(gid), "X-LXD-write": "overwrite",
                   "Content-Type": "application/octet-stream"}
        self.request("post", self._files(name), "write %s in %s" % (path, name),
                     params={"path": path}, data=data, headers=headers)

    def make_directory(self, name, path, mode=0o755, uid=0, gid=0):
        headers = {"X-LXD-type": "directory", "X-LXD-mode": "0%o" % mode,
                   "X-LXD-uid": str(uid), "X-LXD-gid": str(gid)}
        self.request("post", self._files(name), "mkdir %s in %s" % (path, name),
                     params={"path": path}, headers=headers)

    def delete_file(self, name, path):
        """Remove a file; a file already gone is not an error."""
        try:
            self.request("delete", self._files(name), "delete %s in %s" % (path, name),
                         params={"path": path})
        except LxdNotFound:
            pass

    # ---- images -------------------------------------------------------------------------
    def image_alias(self, alias):
        """The alias's record ({name, target, ...}) or None."""
        try:
            return self.metadata("get", self.api.images.aliases[quote(alias, safe="")], "image alias %s" % alias)
        except LxdNotFound:
            return None

    def image(self, fingerprint):
        try:
            return self.metadata("get", self.api.images[fingerprint], "image %s" % fingerprint)
        except LxdNotFound:
            return None

    def network(self, name):
        """A network's record, or None. Read once per client: a module run changes no network."""
        node = self.api.networks[name]
        return self._remembered("network", name, lambda: self.metadata("get", node, "network %s" % name))

    def network_leases(self, name):
        """DHCP leases (and the gateway) of a managed network, one request."""
        return self.metadata("get", self.api.networks[name].leases, "leases of network %s" % name)

    def dnsmasq_leases(self, network):
        """Every IPv4 lease the bridge's dnsmasq holds, with those of machines that are gone (which
        network_leases does not list); [] for a daemon on another host."""
        if self.local_dir is None:
            return []
        return _dhcp.read_leases(_dhcp.lease_file(self.local_dir, network))

    def release_stale_lease(self, network, address, owner, timeout=5):
        """Make dnsmasq drop its lease of ``address`` when that lease is of a MAC no instance has.

        Returns whether a lease was released. A lease of ``owner`` (the instance the address is
        for) is kept; a lease of another instance is an error naming it: that instance holds the
        address, and releasing it would only hand it round."""
        lease = next((l for l in self.dnsmasq_leases(network) if l.address == address), None)
        if lease is None:
            return False
        for inst in self.instances():
            macs = [value.lower() for key, value in (inst.get("config") or {}).items()
                    if key.startswith("volatile.") and key.endswith(".hwaddr")]
            macs += [(d.get("hwaddr") or "").lower() for d in (inst.get("devices") or {}).values()]
            if lease.mac in macs and inst["name"] == owner:
                return False
            if lease.mac in macs:
                raise LxdError("%s is leased by %s's DHCP server to instance %s (%s): give one of them "
                               "another address" % (address, network, inst["name"], lease.mac))
        gateway = (((self.network(network) or {}).get("config") or {}).get("ipv4.address") or "").split("/")[0]
        if not gateway:
            return False
        try:
            _dhcp.send_release(lease, network, gateway)
        except OSError as exc:
            raise LxdError("release the stale lease of %s on %s: %s" % (address, network, exc))
        deadline = time.monotonic() + timeout
        while any(l.address == address and l.mac == lease.mac for l in self.dnsmasq_leases(network)):
            if time.monotonic() >= deadline:
                raise LxdError("%s's DHCP server kept its lease of %s to %s (a machine no longer there) "
                               "after a release" % (network, address, lease.mac))
            time.sleep(0.1)
        return True

    def profile(self, name):
        """A profile's record, or None. Read once per client: a module run changes no profile."""
        node = self.api.profiles[name]
        return self._remembered("profile", name, lambda: self.metadata("get", node, "profile %s" % name))

    def _remembered(self, kind, name, read):
        # Every instance of a set asks for the same profile and network: one request each.
        key = (kind, name)
        with self._lock:
            if key in self._read_once:
                return self._read_once[key]
        try:
            value = read()
        except LxdNotFound:
            value = None
        with self._lock:
            self._read_once[key] = value
        return value


def to_lxd_value(value):
    """LXD stores every config value as a string: True -> "true", 3 -> "3"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def normalise_config(config):
    return {str(k): to_lxd_value(v) for k, v in (config or {}).items()}


# ---- declared instances: validation, create body, diff ------------------------------------
INSTANCE_STATES = ("present", "started", "stopped", "restarted", "absent")


def own_config(config):
    """The instance's config without LXD's own volatile.* bookkeeping."""
    return {k: v for k, v in (config or {}).items() if not k.startswith("volatile.")}


def host_uses_cgroup2(exists=os.path.exists):
    return exists("/sys/fs/cgroup/cgroup.controllers")


class InstanceSpec:
    """What one task declares about one instance, validated and in LXD's own terms.

    Pure except for the few look-ups create_body/patch_body make (image, source, network), so
    the comparison logic is unit-tested without a daemon.
    """

    @staticmethod
    def argument_spec():
        return dict(
            name=dict(type="str", required=True),
            state=dict(type="str", default="started", choices=list(INSTANCE_STATES)),
            image=dict(type="str"),
            image_server=dict(type="str"),
            image_protocol=dict(type="str", default="simplestreams", choices=["simplestreams", "lxd"]),
            copy_from=dict(type="str"),
            config=dict(type="dict", default={}),
            memory=dict(type="str"),
            memory_swap=dict(type="str"),
            cpus=dict(type="str"),
            autostart=dict(type="bool"),
            autostart_priority=dict(type="int"),
            autostart_delay=dict(type="int"),
            profiles=dict(type="list", elements="str"),
            devices=dict(type="dict", default={}),
            ipv4_address=dict(type="str"),
            network=dict(type="str"),
            ephemeral=dict(type="bool"),
            wait_for_ipv4=dict(type="bool", default=True),
            wait_timeout=dict(type="int", default=60),
            force_stop=dict(type="bool", default=False),
        )

    def __init__(self, name, config=None, devices=None, profiles=None, ephemeral=None, image=None,
                 image_server=None, image_protocol="simplestreams", copy_from=None,
                 ipv4_address=None, network=None, state="started", wait_for_ipv4=True,
                 wait_timeout=60, force_stop=False, adopt=False):
        self.name = name
        self.config = config or {}
        self.devices = devices or {}
        self.profiles = profiles
        self.ephemeral = ephemeral
        self.image = image
        self.image_server = image_server
        self.image_protocol = image_protocol
        self.copy_from = copy_from
        self.ipv4_address = ipv4_address
        self.network = network
        self.state = state
        self.wait_for_ipv4 = wait_for_ipv4
        self.wait_timeout = wait_timeout
        self.force_stop = force_stop
        self.adopt = adopt  # an owned set may take this container over from another owner, or none
        self.field = name   # how an error names it: instances[2], services[web]

    @classmethod
    def from_params(cls, params, cgroup2=None):
        name = v.instance_name(params["name"], "name")
        config = {}
        for key, value in (params.get("config") or {}).items():
            if not isinstance(key, str) or not key or any(c.isspace() for c in key):
                raise ValidationError("config", key, "keys must be non-empty strings without spaces")
            if key.startswith("volatile."):
                raise ValidationError("config", key, "volatile.* keys are LXD's own and cannot be set")
            if isinstance(value, (dict, list)):
                raise ValidationError("config.%s" % key, value, "must be a string, number or boolean")
            config[key] = to_lxd_value(value)

        typed = {}
        if params.get("memory") is not None:
            typed["limits.memory"] = v.memory(params["memory"], "memory")
        if params.get("memory_swap") is not None:
            typed["raw.lxc"] = cls._swap_raw_lxc(params, cgroup2)
            if "raw.lxc" in config:
                raise ValidationError("memory_swap", params["memory_swap"],
                                      "is applied through raw.lxc; do not also set config raw.lxc")
        if params.get("cpus") is not None:
            typed["limits.cpu"] = v.cpus(params["cpus"], "cpus")
        if params.get("autostart") is not None:
            typed["boot.autostart"] = to_lxd_value(params["autostart"])
        for option, key in (("autostart_priority", "boot.autostart.priority"),
                            ("autostart_delay", "boot.autostart.delay")):
            if params.get(option) is not None:
                if params[option] < 0:
                    raise ValidationError(option, params[option], "must be 0 or more")
                typed[key] = str(params[option])
        for key, value in typed.items():
            if key in config and config[key] != value:
                raise ValidationError("config", key, "is also set by a typed option, with another value")
        config.update(typed)

        devices = {}
        for dev_name, device in (params.get("devices") or {}).items():
            v.safe_token(dev_name, "devices")
            if not isinstance(device, dict) or not device.get("type"):
                raise ValidationError("devices.%s" % dev_name, device, "must be a dict with a 'type' key")
            devices[dev_name] = normalise_config(device)

        ipv4 = params.get("ipv4_address")
        if ipv4 is not None and ipv4 != "auto":
            ipv4 = v.ipv4_address(ipv4, "ipv4_address")
        if ipv4 is not None:
            if "eth0" in devices:
                raise ValidationError("ipv4_address", ipv4, "sets device eth0; do not also declare devices.eth0")
        network = params.get("network")
        if network is not None:
            v.instance_name(network, "network")

        profiles = params.get("profiles")
        if profiles is not None:
            for index, profile in enumerate(profiles):
                v.safe_token(profile, "profiles[%d]" % index)

        for option in ("image", "copy_from"):
            if params.get(option) is not None:
                v.safe_token(params[option], option)
        if params.get("copy_from"):
            source = params["copy_from"].split("/", 1)
            v.instance_name(source[0], "copy_from")
            if len(source) > 1:
                v.safe_token(source[1], "copy_from")
        if params.get("wait_timeout") is not None and params["wait_timeout"] <= 0:
            raise ValidationError("wait_timeout", params["wait_timeout"], "must be more than 0 seconds")

        return cls(name, config, devices, profiles, params.get("ephemeral"), params.get("image"),
                   params.get("image_server"), params.get("image_protocol") or "simplestreams",
                   params.get("copy_from"), ipv4, network, params.get("state") or "started",
                   params.get("wait_for_ipv4", True), params.get("wait_timeout") or 60,
                   bool(params.get("force_stop")), bool(params.get("adopt")))

    @staticmethod
    def _swap_raw_lxc(params, cgroup2):
        """RAM+swap has no LXD key: set the cgroup limit through raw.lxc, v1 or v2 as the host runs."""
        v.memory_swap(params["memory_swap"], "memory_swap", params["memory"], "memory")
        ram = v.size_bytes(params["memory"], "memory")
        total = v.size_bytes(params["memory_swap"], "memory_swap")
        if host_uses_cgroup2() if cgroup2 is None else cgroup2:
            return "lxc.cgroup2.memory.swap.max = %d" % (total - ram)
        return "lxc.cgroup.memory.memsw.limit_in_bytes = %d" % total

    def check_host(self, lxd, field="cpus"):
        """What only the daemon's host can say: limits.cpu beyond its CPUs would never be met."""
        if self.state != "absent" and "limits.cpu" in self.config:
            v.cpus(self.config["limits.cpu"], field, host_cpus=lxd.host_cpus())

    @property
    def static_ipv4(self):
        """The declared static address once ``auto`` is resolved, else None."""
        return self.ipv4_address if self.ipv4_address not in (None, "auto") else None

    # ---- comparing -------------------------------------------------------------------------
    def eth0_network(self, lxd, profiles):
        """(name, record) of the network for the static address: declared, or the profiles' eth0's."""
        network = self.network
        if network is None:
            for profile_name in profiles or ["default"]:
                profile = lxd.profile(profile_name) or {}
                nic = (profile.get("devices") or {}).get("eth0") or {}
                network = nic.get("network") or network
        if network is None:
            raise LxdError("ipv4_address: no network given and no eth0 NIC in profiles %s; set network"
                           % (profiles or ["default"]))
        info = lxd.network(network)
        if info is None:
            raise LxdError("network: unknown network %r" % network)
        return network, info

    def _eth0(self, lxd, profiles):
        """The static-address NIC, on the declared network or the one the profiles give eth0."""
        network, info = self.eth0_network(lxd, profiles)
        if self.ipv4_address == "auto":
            raise LxdError("ipv4_address: 'auto' must be resolved with assign_addresses() first")
        self._check_in_subnet(network, (info.get("config") or {}).get("ipv4.address"))
        return {"type": "nic", "name": "eth0", "network": network, "ipv4.address": self.ipv4_address}

    def _check_in_subnet(self, network, cidr):
        if not cidr or cidr in ("none", "auto"):
            return
        gateway = ipaddress.ip_interface(cidr)
        address = ipaddress.ip_address(self.ipv4_address)
        if address not in gateway.network or address in (gateway.ip, gateway.network.network_address,
                                                         gateway.network.broadcast_address):
            raise ValidationError("ipv4_address", self.ipv4_address,
                                  "must be a host address in %s's subnet %s, not its gateway"
                                  % (network, gateway.network))

    def desired_devices(self, lxd, profiles):
        devices = dict(self.devices)
        if self.ipv4_address is not None:
            devices["eth0"] = self._eth0(lxd, profiles)
        return devices

    def create_body(self, lxd, pending=()):
        """The POST body that creates the instance. ``pending``: names a check-mode run would
        have created by now (a copy source declared in the same set)."""
        if self.copy_from:
            original = lxd.instance(self.copy_from.split("/")[0])
            if original is None and self.copy_from.split("/")[0] in pending:
                original = {}
            if original is None:
                raise ValidationError("copy_from", self.copy_from, "no such instance")
            source = {"type": "copy", "source": self.copy_from, "instance_only": True}
        elif self.image and self.image_server:
            source = {"type": "image", "mode": "pull", "server": self.image_server,
                      "protocol": self.image_protocol, "alias": self.image}
        elif self.image:
            if lxd.image_alias(self.image) is not None:
                source = {"type": "image", "alias": self.image}
            elif len(self.image) >= 12 and lxd.image(self.image) is not None:
                source = {"type": "image", "fingerprint": self.image}
            else:
                raise ValidationError("image", self.image, "no local image has this alias or fingerprint")
        else:
            raise ValidationError("image", None, "instance %s does not exist: give image or copy_from to create it"
                                  % self.name)
        body = {"name": self.name, "type": "container", "source": source, "config": dict(self.config),
                "devices": self.desired_devices(lxd, self.profiles)}
        if self.profiles is not None:
            body["profiles"] = list(self.profiles)
        elif self.copy_from:
            # A copy request without profiles gets none (and so no root disk): keep the original's.
            body["profiles"] = list(original.get("profiles") or [])
        if self.ephemeral is not None:
            body["ephemeral"] = self.ephemeral
        return body

    def patch_body(self, current, lxd):
        """The PATCH that makes ``current`` match what is declared, or {} when it already does."""
        patch = {}
        config = {k: val for k, val in self.config.items() if (current.get("config") or {}).get(k) != val}
        if config:
            patch["config"] = config
        profiles = self.profiles if self.profiles is not None else current.get("profiles")
        devices = {k: d for k, d in self.desired_devices(lxd, profiles).items()
                   if (current.get("devices") or {}).get(k) != d}
        if devices:
            patch["devices"] = devices
        if self.profiles is not None and list(self.profiles) != list(current.get("profiles") or []):
            patch["profiles"] = list(self.profiles)
        if self.ephemeral is not None and self.ephemeral != current.get("ephemeral"):
            patch["ephemeral"] = self.ephemeral
        return patch

    # ---- what the user sees ----------------------------------------------------------------
    def view(self, current):
        """The part of ``current`` this task manages, for diff before/after."""
        if not current:
            return {}
        config = own_config(current.get("config"))
        devices = current.get("devices") or {}
        managed_devices = set(self.devices) | ({"eth0"} if self.ipv4_address else set())
        view = {"name": current.get("name"), "status": current.get("status"),
                "config": {k: config[k] for k in sorted(self.config) if k in config} if self.config else config,
                "devices": ({k: devices[k] for k in sorted(managed_devices) if k in devices}
                            if managed_devices else devices),
                "profiles": current.get("profiles") or []}
        if self.ephemeral is not None:
            view["ephemeral"] = current.get("ephemeral")
        return view

    @staticmethod
    def returned(current):
        return {"name": current.get("name"), "status": current.get("status"),
                "config": own_config(current.get("config")), "devices": current.get("devices") or {},
                "profiles": current.get("profiles") or [], "ephemeral": bool(current.get("ephemeral"))}

    @staticmethod
    def predicted(body):
        """What a check-mode run expects a new instance to look like."""
        return {"name": body["name"], "status": "Stopped", "config": dict(body.get("config") or {}),
                "devices": dict(body.get("devices") or {}), "profiles": body.get("profiles", ["default"]),
                "ephemeral": body.get("ephemeral", False), "state": None}

    @staticmethod
    def predicted_after_patch(current, patch):
        after = dict(current)
        after["config"] = dict(current.get("config") or {}, **patch.get("config", {}))
        after["devices"] = dict(current.get("devices") or {}, **patch.get("devices", {}))
        for key in ("profiles", "ephemeral"):
            if key in patch:
                after[key] = patch[key]
        return after


_UNREAD = object()


class InstanceReconciler:
    """Bring one instance to what its spec declares: read (unless given), diff, act outside check mode.

    Used by lxd_instance for one instance and by lxd_instances for each of a set; ``current`` lets
    the set read every instance in one request first.
    """

    def __init__(self, lxd, spec, check_mode=False, diff=False, current=_UNREAD, pending=(), state_of=None):
        self.lxd, self.spec, self.check_mode, self.diff = lxd, spec, check_mode, diff
        self.current = current
        # name -> state read for a whole set at once (InstanceSet): an instance this run leaves
        # untouched needs no request of its own for its addresses.
        self.state_of = state_of
        self.pending = pending
        self.actions = []
        self._reached = None  # (before, current) once run() has brought the instance there
        self._settled = None

    def run(self, settle=True):
        """Reconcile; the result. With ``settle=False`` the wait for the address is left to
        settle(), so work inside a just-started container can go on while it asks for its lease."""
        lxd, spec, name = self.lxd, self.spec, self.spec.name
        current = lxd.instance(name) if self.current is _UNREAD else self.current
        before = spec.view(current)
        if spec.state == "absent":
            if current is not None:
                self._act("delete", lambda: self._delete(current))
            return self._result(before, {}, None)

        if current is None:
            body = spec.create_body(lxd, self.pending)  # fails on an unknown image or source first
            if not self.check_mode:
                self._release_stale_lease(body)  # or fails, before anything is made, on a holder
            self._act("create", lambda: lxd.create_instance(body, timeout=max(120, spec.wait_timeout)))
            current = spec.predicted(body) if self.check_mode else lxd.instance(name, state=False)
        else:
            patch = spec.patch_body(current, lxd)
            if patch:
                self._act("update", lambda: lxd.patch_instance(name, patch))
                current = (spec.predicted_after_patch(current, patch) if self.check_mode
                           else lxd.instance(name, state=False))

        # Before the container asks for its address (a new one was seen to before it was made).
        if (not self.check_mode and "create" not in self.actions
                and spec.state in ("started", "restarted") and current.get("status") != "Running"):
            self._release_stale_lease(current)
        current = self._run_state(current)
        self._reached = (before, current)
        if settle:
            return self.settle()
        return self._result(before, spec.view(current), current, lxd.ipv4_addresses(current.get("state")))

    def settle(self):
        """After run(): wait for the address (as wait_for_ipv4 says); the final result. Once."""
        if self._settled is None:
            before, current = self._reached
            state = current.get("state")
            if state is None and current.get("status") == "Running" and "create" not in self.actions:
                # Read without state: addresses need it.
                state = self.state_of(self.spec.name) if self.state_of and not self.actions else None
                state = state or self.lxd.instance_state(self.spec.name)
            if self.spec.state in ("started", "restarted") and self.spec.wait_for_ipv4:
                state = self._settle_address(current, state)
            self._settled = self._result(before, self.spec.view(current), current, self.lxd.ipv4_addresses(state))
        return self._settled

    def _settle_address(self, current, state):
        """Wait for an IPv4 address; a declared static one must be the address eth0 holds.

        A container can hold another lease than its reservation: one DHCP'd before the reservation
        reached the bridge's DHCP server, or kept after the static address changed; or the address
        was still leased to a machine that is gone. It never moves by itself before the lease runs
        out, so a stale lease of the address is released and the container restarted once (a fresh
        DHCP request); a forward or an upstream at the static address would otherwise reach nobody."""
        lxd, spec, name = self.lxd, self.spec, self.spec.name
        static = spec.static_ipv4
        nic = "eth0" if static else None
        held = lxd.ipv4_addresses(state, nic)
        if self.check_mode:
            if static and held and static not in held:
                self.actions.append("restart")  # what a real run would do
            return state
        if held and (not static or static in held):
            return state
        if not held:
            held, state = lxd.wait_ipv4(name, nic=nic, timeout=spec.wait_timeout)
        if static and static not in held:
            self._release_stale_lease(current)
            self._act("restart", lambda: lxd.change_state(name, "restart", force=spec.force_stop,
                                                          timeout=spec.wait_timeout))
            held, state = lxd.wait_ipv4(name, nic=nic, timeout=spec.wait_timeout)
            if static not in held:
                raise LxdError("instance %s holds %s on eth0, not its static address %s, even after a restart "
                               "(does another machine on the bridge hold a lease of %s?)"
                               % (name, ", ".join(held), static, static))
        return state

    def _release_stale_lease(self, instance):
        """A lease of the static address left by a machine that is gone would block it for the
        lease time (an hour by default): released, so the container gets its address.
        ``instance``: the instance, or the body that creates it (its eth0 names the network)."""
        static = self.spec.static_ipv4
        network = ((instance.get("devices") or {}).get("eth0") or {}).get("network")
        if static and network:
            self.lxd.release_stale_lease(network, static, self.spec.name)

    def _run_state(self, current):
        lxd, spec, name = self.lxd, self.spec, self.spec.name
        running = current.get("status") == "Running"
        if spec.state == "started" and not running:
            self._act("start", lambda: lxd.change_state(name, "start", timeout=spec.wait_timeout))
        elif spec.state == "stopped" and running:
            self._act("stop", lambda: lxd.change_state(name, "stop", force=spec.force_stop, timeout=spec.wait_timeout))
        elif spec.state == "restarted":
            action = "restart" if running else "start"
            self._act(action, lambda: lxd.change_state(name, action, force=spec.force_stop, timeout=spec.wait_timeout))
        else:
            return current
        if self.check_mode:
            return dict(current, status="Stopped" if spec.state == "stopped" else "Running")
        return lxd.instance(name, state=False)

    def _delete(self, current):
        if current.get("status") == "Running":
            self.lxd.change_state(self.spec.name, "stop", force=self.spec.force_stop, timeout=self.spec.wait_timeout)
        self.lxd.delete_instance(self.spec.name)

    def _act(self, action, change):
        self.actions.append(action)
        if not self.check_mode:
            change()

    def _result(self, before, after, current, addresses=None):
        result = {
            "changed": bool(self.actions),
            "actions": self.actions,
            "instance": self.spec.returned(current) if current else {},
            "addresses": addresses or [],
        }
        if self.diff:
            result["diff"] = {"before": before, "after": after}
        return result


# First host offset handed out by ipv4_address: auto (.1 is usually the gateway; keep a few spare).
AUTO_ADDRESS_OFFSET = 10


def assign_addresses(lxd, specs, current):
    """Resolve ``ipv4_address: auto`` into a static address, in place.

    An instance that already has a static eth0 address in the network's subnet keeps it (so a
    forward or an upstream never moves); a new one gets the lowest address from offset 10 up that
    no instance device, DHCP lease or gateway uses. ``current``: name -> instance (with devices).
    """
    taken = {}
    for spec in specs:
        if spec.ipv4_address != "auto":
            continue
        instance = current.get(spec.name) or {}
        network, info = spec.eth0_network(lxd, spec.profiles or instance.get("profiles"))
        cidr = (info.get("config") or {}).get("ipv4.address")
        if not cidr or cidr in ("none", "auto"):
            raise LxdError("ipv4_address: network %s has no IPv4 subnet to take an address from" % network)
        subnet = ipaddress.ip_interface(cidr).network
        mine = ((instance.get("devices") or {}).get("eth0") or {}).get("ipv4.address")
        if mine and ipaddress.ip_address(mine) in subnet:
            spec.ipv4_address = mine
            continue
        if network not in taken:
            used = {str(ipaddress.ip_interface(cidr).ip)}
            used.update(lease["address"] for lease in lxd.network_leases(network) or [])
            # dnsmasq gives nobody an address it still leases to a machine that is gone.
            used.update(lease.address for lease in lxd.dnsmasq_leases(network))
            for other in current.values():
                for device in (other.get("expanded_devices") or other.get("devices") or {}).values():
                    if device.get("type") == "nic" and device.get("ipv4.address"):
                        used.add(device["ipv4.address"])
            used.update(s.static_ipv4 for s in specs if s.static_ipv4)
            taken[network] = used
        for host in subnet.hosts():
            if int(host) - int(subnet.network_address) >= AUTO_ADDRESS_OFFSET and str(host) not in taken[network]:
                spec.ipv4_address = str(host)
                taken[network].add(spec.ipv4_address)
                break
        else:
            raise LxdError("ipv4_address: no free address left in %s (%s) for %s" % (network, subnet, spec.name))
