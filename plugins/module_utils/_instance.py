# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One declared LXD instance (InstanceSpec): parsed from the options, in LXD's own terms, and
compared with the instance there: the body that creates it, the patch that updates it, the views
a diff shows.

Pure except for the few look-ups create_body/patch_body make (image, source, network), so the
comparison logic is unit-tested without a daemon.
"""
from __future__ import annotations

import os

from ansible_collections.homelab.onebox.plugins.module_utils import _addresses
from ansible_collections.homelab.onebox.plugins.module_utils import _validate as v
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError

INSTANCE_STATES = ("present", "started", "stopped", "restarted", "absent")
# The image a container was made from, as declared (alias or fingerprint), when its spec records
# it in this config key (the box does): a container whose record names another image is
# re-created from the declared one, since LXD never changes an instance's image in place. A
# container without the record is not re-created for that alone; the record is written.
IMAGE_KEY = "user.onebox.image"
# What the options need besides their types (lxd_instance's module, each item of lxd_instances).
OPTION_RULES = dict(mutually_exclusive=[("image", "copy_from")],
                    required_by={"memory_swap": "memory", "image_server": "image"})


def to_lxd_value(value):
    """LXD stores every config value as a string: True -> "true", 3 -> "3"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def own_config(config):
    """The instance's config without LXD's own volatile.* bookkeeping."""
    return {k: v for k, v in (config or {}).items() if not k.startswith("volatile.")}


def host_uses_cgroup2(exists=os.path.exists):
    return exists("/sys/fs/cgroup/cgroup.controllers")


class InstanceSpec:
    """What one task declares about one instance, validated (by parse_instance) and in LXD's own
    terms."""

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
            target=dict(type="str"),
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
        # A device name prefix whose devices are this spec's alone: one of them the spec no longer
        # declares leaves the instance (the box's volumes, vol-NAME). None: undeclared devices stay.
        self.owned_devices = None
        # The fingerprint the spec's image alias points at now, when the instance must follow it
        # (a rebuilt base image under the same alias); None: an alias moving re-creates nothing.
        self.image_fingerprint = None
        # The cluster member a new instance is made on (None: the daemon's choice); an existing
        # one is never moved.
        self.target = None

    def check_host(self, lxd, field="cpus"):
        """What only the daemon's host can say: limits.cpu beyond its CPUs would never be met."""
        if self.state != "absent" and "limits.cpu" in self.config:
            v.cpus(self.config["limits.cpu"], field, host_cpus=lxd.host_cpus())

    @property
    def static_ipv4(self):
        """The declared static address once ``auto`` is resolved, else None."""
        return self.ipv4_address if self.ipv4_address not in (None, "auto") else None

    # ---- comparing -------------------------------------------------------------------------
    def desired_devices(self, lxd, profiles):
        devices = dict(self.devices)
        if self.ipv4_address is not None:
            devices["eth0"] = _addresses.static_nic(lxd, self.ipv4_address, self.network, profiles)
        return devices

    def replaced_image(self, current):
        """The image ``current`` records when the spec records another (the instance is then
        re-created), else None. Following the alias (``image_fingerprint``), an instance made from
        another image than the one the alias names now is replaced too (LXD records the one it was
        made from as volatile.base_image): its old image is then named by fingerprint."""
        config = (current or {}).get("config") or {}
        wanted, had = self.config.get(IMAGE_KEY), config.get(IMAGE_KEY)
        if wanted is not None and had is not None and had != wanted:
            return had
        base = config.get("volatile.base_image")
        if current is not None and self.image_fingerprint and base and base != self.image_fingerprint:
            return "%s (%s)" % (had or self.image, base[:12])
        return None

    def why_replaced(self, current):
        """``image OLD -> NEW`` when ``current`` is to be re-created from another image, else None."""
        replaced = self.replaced_image(current)
        if replaced is None:
            return None
        new = "%s (%s)" % (self.image, self.image_fingerprint[:12]) if self.image_fingerprint else self.image
        return "image %s -> %s" % (replaced, new)

    def stale_devices(self, current):
        """The owned devices (``owned_devices``) of ``current`` the spec no longer declares."""
        if not self.owned_devices:
            return []
        return sorted(name for name in (current.get("devices") or {})
                      if name.startswith(self.owned_devices) and name not in self.devices)

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

    def put_body(self, current, patch, stale):
        """The PUT that applies ``patch`` and removes the devices ``stale``: LXD's PATCH merges
        devices by name and never removes one, so the whole instance is sent back (its volatile
        keys unchanged, as `lxc config edit` does)."""
        devices = dict(current.get("devices") or {}, **patch.get("devices", {}))
        body = {"config": dict(current.get("config") or {}, **patch.get("config", {})),
                "devices": {k: d for k, d in devices.items() if k not in stale},
                "profiles": patch.get("profiles", current.get("profiles") or []),
                "ephemeral": patch.get("ephemeral", bool(current.get("ephemeral"))),
                "description": current.get("description") or ""}
        if current.get("architecture"):
            body["architecture"] = current["architecture"]
        return body

    # ---- what the user sees ----------------------------------------------------------------
    def view(self, current):
        """The part of ``current`` this task manages, for diff before/after."""
        if not current:
            return {}
        config = own_config(current.get("config"))
        devices = current.get("devices") or {}
        managed_devices = (set(self.devices) | ({"eth0"} if self.ipv4_address else set())
                           | set(self.stale_devices(current)))
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
    def predicted_after_put(current, body):
        return dict(current, **{key: body[key] for key in ("config", "devices", "profiles", "ephemeral")})

    @staticmethod
    def predicted_after_patch(current, patch):
        after = dict(current)
        after["config"] = dict(current.get("config") or {}, **patch.get("config", {}))
        after["devices"] = dict(current.get("devices") or {}, **patch.get("devices", {}))
        for key in ("profiles", "ephemeral"):
            if key in patch:
                after[key] = patch[key]
        return after


def parse_instance(params, cgroup2=None):
    """lxd_instance's options (or one item of lxd_instances, type-checked) -> InstanceSpec.
    ``cgroup2``: whether the host runs cgroup v2 (None: look)."""
    name = v.instance_name(params["name"], "name")
    config = _parse_config(params.get("config"))
    for key, value in _typed_config(params, cgroup2).items():
        if key == "raw.lxc" and "raw.lxc" in config:
            raise ValidationError("memory_swap", params["memory_swap"],
                                  "is applied through raw.lxc; do not also set config raw.lxc")
        if key in config and config[key] != value:
            raise ValidationError("config", key, "is also set by a typed option, with another value")
        config[key] = value

    devices = {}
    for dev_name, device in (params.get("devices") or {}).items():
        v.safe_token(dev_name, "devices")
        if not isinstance(device, dict) or not device.get("type"):
            raise ValidationError("devices.%s" % dev_name, device, "must be a dict with a 'type' key")
        devices[dev_name] = {str(k): to_lxd_value(value) for k, value in device.items()}

    ipv4 = params.get("ipv4_address")
    if ipv4 is not None and ipv4 != "auto":
        ipv4 = v.ipv4_address(ipv4, "ipv4_address")
    if ipv4 is not None and "eth0" in devices:
        raise ValidationError("ipv4_address", ipv4, "sets device eth0; do not also declare devices.eth0")
    if params.get("network") is not None:
        v.instance_name(params["network"], "network")
    for index, profile in enumerate(params.get("profiles") or []):
        v.safe_token(profile, "profiles[%d]" % index)
    for option in ("image", "copy_from"):
        if params.get(option) is not None:
            v.safe_token(params[option], option)
    if params.get("copy_from"):
        source = params["copy_from"].split("/", 1)
        v.instance_name(source[0], "copy_from")
        if len(source) > 1:
            v.safe_token(source[1], "copy_from")
    if params.get("wait_timeout") is not None:
        v.whole(params["wait_timeout"], "wait_timeout", 1)

    spec = InstanceSpec(name, config, devices, params.get("profiles"), params.get("ephemeral"), params.get("image"),
                        params.get("image_server"), params.get("image_protocol") or "simplestreams",
                        params.get("copy_from"), ipv4, params.get("network"), params.get("state") or "started",
                        params.get("wait_for_ipv4", True), params.get("wait_timeout") or 60,
                        bool(params.get("force_stop")), bool(params.get("adopt")))
    if params.get("target") is not None:
        spec.target = v.safe_token(params["target"], "target")
    return spec


def _parse_config(raw):
    config = {}
    for key, value in (raw or {}).items():
        if not isinstance(key, str) or not key or any(c.isspace() for c in key):
            raise ValidationError("config", key, "keys must be non-empty strings without spaces")
        if key.startswith("volatile."):
            raise ValidationError("config", key, "volatile.* keys are LXD's own and cannot be set")
        if isinstance(value, (dict, list)):
            raise ValidationError("config.%s" % key, value, "must be a string, number or boolean")
        config[key] = to_lxd_value(value)
    return config


def _typed_config(params, cgroup2):
    """The config keys the typed options set: limits (one check, _validate.limits), boot."""
    limits = v.limits(params.get("memory"), params.get("memory_swap"), params.get("cpus"))
    typed = {}
    if "memory" in limits:
        typed["limits.memory"] = limits["memory"]
    if "memory_swap" in limits:
        typed["raw.lxc"] = _swap_raw_lxc(limits["memory"], limits["memory_swap"], cgroup2)
    if "cpus" in limits:
        typed["limits.cpu"] = limits["cpus"]
    if params.get("autostart") is not None:
        typed["boot.autostart"] = to_lxd_value(params["autostart"])
    for option, key in (("autostart_priority", "boot.autostart.priority"),
                        ("autostart_delay", "boot.autostart.delay")):
        if params.get(option) is not None:
            typed[key] = str(v.whole(params[option], option))
    return typed


def _swap_raw_lxc(memory, memory_swap, cgroup2):
    """RAM+swap has no LXD key: set the cgroup limit through raw.lxc, v1 or v2 as the host runs."""
    ram, total = v.size_bytes(memory, "memory"), v.size_bytes(memory_swap, "memory_swap")
    if host_uses_cgroup2() if cgroup2 is None else cgroup2:
        return "lxc.cgroup2.memory.swap.max = %d" % (total - ram)
    return "lxc.cgroup.memory.memsw.limit_in_bytes = %d" % total
