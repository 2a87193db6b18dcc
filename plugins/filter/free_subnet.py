# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""free_subnet: the first candidate IPv4/IPv6 subnet that overlaps no route and no address of the
host. The documentation is in free_subnet.yml next to this file."""
from __future__ import annotations

import ipaddress

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_text


def _network(value, what):
    try:
        return ipaddress.ip_network(to_text(value).strip(), strict=False)
    except ValueError as exc:
        raise AnsibleFilterError("free_subnet: %s %r is not an IP network: %s" % (what, value, exc))


def _used_networks(routes, addresses):
    """(network, origin) for every route destination and interface address, default routes left out."""
    used = []
    for route in routes or []:
        if isinstance(route, str):
            dst = route
            label = "route %s" % route
        elif isinstance(route, dict):
            dst = route.get("dst")
            label = "route %s%s" % (dst, " dev %s" % route["dev"] if route.get("dev") else "")
        else:
            raise AnsibleFilterError("free_subnet: a route must be a dict from `ip -j route` or a string, got %r"
                                     % (route,))
        if not dst or dst == "default":
            continue
        net = _network(dst, "route destination")
        if net.prefixlen == 0:  # 0.0.0.0/0 or ::/0 written out: a default route
            continue
        used.append((net, label))
    for link in addresses or []:
        if isinstance(link, str):
            used.append((_network(link, "address"), "address %s" % link))
            continue
        if not isinstance(link, dict):
            raise AnsibleFilterError("free_subnet: an address entry must be a dict from `ip -j addr` or a "
                                     "string, got %r" % (link,))
        infos = link.get("addr_info", [link] if "local" in link else [])
        for info in infos:
            local = info.get("local")
            if not local:
                continue
            prefix = info.get("prefixlen", 32 if ":" not in local else 128)
            net = _network("%s/%s" % (local, prefix), "address")
            used.append((net, "address %s/%s%s" % (local, prefix,
                                                   " on %s" % link["ifname"] if link.get("ifname") else "")))
    return used


def free_subnet(routes, candidates, addresses=None, gateway=False):
    """Return the first of candidates overlapping no route destination and no address.

    routes: parsed `ip -j route show table all` (or a list of CIDR strings).
    candidates: list of CIDRs, tried in order.
    addresses: parsed `ip -j addr show` (or a list of CIDR strings), optional.
    gateway: return the first host address with the prefix (10.87.0.1/24, what LXD's ipv4.address
    wants) instead of the network (10.87.0.0/24).
    """
    if isinstance(candidates, str):
        candidates = [candidates]
    if not candidates:
        raise AnsibleFilterError("free_subnet: no candidate subnets given")
    if routes is not None and not isinstance(routes, (list, tuple)):
        raise AnsibleFilterError("free_subnet: routes must be a list (parsed `ip -j route show table all`), got %s"
                                 % type(routes).__name__)
    if addresses is not None and not isinstance(addresses, (list, tuple)):
        raise AnsibleFilterError("free_subnet: addresses must be a list (parsed `ip -j addr`), got %s"
                                 % type(addresses).__name__)
    used = _used_networks(routes, addresses)
    clashes = []
    for candidate in candidates:
        net = _network(candidate, "candidate")
        hits = [label for other, label in used if other.version == net.version and net.overlaps(other)]
        if not hits:
            if gateway:
                if net.num_addresses < 4:
                    raise AnsibleFilterError("free_subnet: candidate %s is too small for a bridge" % net)
                return "%s/%d" % (net.network_address + 1, net.prefixlen)
            return str(net)
        clashes.append("%s overlaps %s" % (net, ", ".join(hits)))
    raise AnsibleFilterError("free_subnet: no free subnet among the candidates: %s. Add candidates or choose "
                             "another subnet." % "; ".join(clashes))


class FilterModule(object):
    """Subnet filters of homelab.onebox."""

    def filters(self):
        return {"free_subnet": free_subnet}
