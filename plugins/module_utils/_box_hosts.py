# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The box's containers as inventory hosts (pure logic): each one's host name, groups and variables.

The one place that decides them, for the box role (the box module's ``hosts``, added with
add_host) and the homelab.onebox.box inventory plugin alike:

- host name: the container's name;
- groups: ``onebox`` (every container of a box), ``onebox_SERVICE`` (a service's containers),
  ``onebox_kind_KIND`` (static, app, pool, plain, internal, proxy) and ``onebox_owner_OWNER``;
  a character other than ``[A-Za-z0-9_]`` becomes ``_``. Two names that would make one group
  (a service ``kind-app`` and the kind ``app``; a service ``owner-NAME`` and the owner ``NAME``)
  are refused, naming both;
- variables: ``onebox_owner``, ``onebox_service`` (null for the proxy), ``onebox_kind``,
  ``onebox_domains``, ``onebox_routes``, ``onebox_port``, ``onebox_host_port``,
  ``onebox_forwards`` (as described) and ``onebox_address`` (its IPv4 address, null when none).

What comes from the description is recorded on the container (``marks``: ``user.onebox.service``,
and ``user.onebox.host``, one JSON text of the rest) next to the owner's mark, so a run that has
no description (the inventory plugin) reads the same hosts back (``from_marks``).
"""
from __future__ import annotations

import json
import re

from ansible_collections.homelab.onebox.plugins.module_utils._box_service import KINDS as SERVICE_KINDS
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._instance_set import OWNER_KEY

SERVICE_KEY = "user.onebox.service"
HOST_KEY = "user.onebox.host"
PROXY = "proxy"
KINDS = SERVICE_KINDS + (PROXY,)
ALL = "onebox"
# What user.onebox.host holds (the variable is onebox_ + the key), and its value when not recorded.
DESCRIBED = {"kind": None, "domains": [], "routes": [], "port": None, "host_port": None, "forwards": []}
_NOT_GROUP_CHARACTER = re.compile(r"[^A-Za-z0-9_]")


def group_name(*parts):
    """``onebox_`` and the parts joined by ``_``, each character Ansible refuses in a group turned to ``_``."""
    return "_".join((ALL,) + tuple(_NOT_GROUP_CHARACTER.sub("_", str(part)) for part in parts))


def _host(name, owner, service, described, field=None):
    host = dict(DESCRIBED, name=name, owner=owner, service=service, field=field)
    host.update((key, value) for key, value in described.items() if key in DESCRIBED)
    return host


def box_hosts(box):
    """The containers of a parsed box (_box.BoxParts) as hosts: name, owner, service, field (how an
    error names its service) and the described keys; the groups checked (``check_groups``)."""
    owner = box.options["owner"]
    hosts = []
    for service in box.services:
        described = {"kind": service.kind, "domains": list(service.domains),
                     "routes": [dict(route) for route in service.routes], "port": service.port,
                     "host_port": service.host_port,
                     "forwards": [{k: v for k, v in forward.items() if not k.startswith("_")} for forward in service.forwards]}
        hosts.extend(_host(member, owner, service.name, described, service.where("name")) for member in service.members)
    if box.proxy:
        hosts.append(_host(box.proxy, owner, None, {"kind": PROXY}, "proxy_name"))
    check_groups(hosts)
    return hosts


def marks(host):
    """What a container records of its host: the config keys, set next to the owner's mark."""
    out = {HOST_KEY: json.dumps({key: host[key] for key in DESCRIBED}, sort_keys=True, separators=(",", ":"))}
    if host["service"]:
        out[SERVICE_KEY] = host["service"]   # the proxy has none (LXD drops a key set to "")
    return out


def from_marks(name, config):
    """A container's host as its marks say (the daemon's ``config`` of it), or None when it carries
    no owner's mark. A mark that is missing or unreadable (a container made before the box recorded
    them) leaves those keys unknown: null, or empty lists."""
    owner = (config or {}).get(OWNER_KEY)
    if not owner:
        return None
    try:
        described = json.loads(config.get(HOST_KEY) or "{}")
    except ValueError:
        described = {}
    if not isinstance(described, dict):
        described = {}
    described = {key: value for key, value in described.items()
                 if key in DESCRIBED and isinstance(value, type(DESCRIBED[key]) if DESCRIBED[key] is not None else object)}
    if described.get("kind") not in KINDS:
        described.pop("kind", None)
    return _host(name, owner, config.get(SERVICE_KEY) or None, described)


def groups(host):
    """The groups of a host: onebox, its owner's, its kind's, its service's."""
    out = [ALL, group_name("owner", host["owner"])]
    if host["kind"]:
        out.append(group_name("kind", host["kind"]))
    if host["service"]:
        out.append(group_name(host["service"]))
    return out


def host_vars(host, address=None):
    """The variables of a host (``address``: its IPv4 address, None when it has none)."""
    out = {"onebox_owner": host["owner"], "onebox_service": host["service"]}
    out.update(("onebox_" + key, host[key]) for key in DESCRIBED)
    out["onebox_address"] = address
    return out


def inventory_host(host, address=None):
    """{name, groups, vars}: what add_host and the inventory plugin are given."""
    return {"name": host["name"], "groups": groups(host), "vars": host_vars(host, address)}


def _label(source, field):
    kind, value = source
    if kind == "service":
        return field or "service %s" % value
    return "the %s %s" % (kind, value)


def check_groups(hosts):
    """Every group is one name's: a service's group that is a kind's (all six kinds' groups are
    taken, whether the box has them or not), an owner's, or another service's (``a-b`` and
    ``a_b``) is refused, naming both. One service name in two boxes makes one group of both."""
    taken = {group_name("kind", kind): (("kind", kind), None) for kind in KINDS}
    for host in hosts:
        taken.setdefault(group_name("owner", host["owner"]), (("owner", host["owner"]), None))
    for host in hosts:
        if not host["service"]:
            continue
        group, source = group_name(host["service"]), ("service", host["service"])
        other, other_field = taken.setdefault(group, (source, host["field"]))
        if other != source:
            raise ValidationError(
                host["field"] or "service %s" % host["service"], host["service"],
                "its inventory group %s is also %s's; name the service otherwise (groups are onebox_SERVICE, "
                "onebox_kind_KIND and onebox_owner_OWNER, other characters than letters, digits and _ made _)"
                % (group, _label(other, other_field)))
