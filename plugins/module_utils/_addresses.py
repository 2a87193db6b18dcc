# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Static IPv4 addresses of containers: the network of eth0, ``auto`` choice, stale DHCP leases.

A static address is an eth0 NIC with ``ipv4.address`` on an LXD bridge. ``auto`` takes the lowest
free address of the bridge's subnet; a lease that dnsmasq still holds for a machine that is gone
(which LXD's API no longer lists) is read from its lease file and released (see _dhcp.py).
"""
from __future__ import annotations

import ipaddress
import time

from ansible_collections.homelab.onebox.plugins.module_utils import _dhcp
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._lxd import LxdError

# First host offset handed out by ipv4_address: auto (.1 is usually the gateway; keep a few spare).
AUTO_ADDRESS_OFFSET = 10


def eth0_network(lxd, network, profiles):
    """(name, record) of the network for a static address: ``network`` when declared, else the
    one the profiles give eth0."""
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


def static_nic(lxd, address, network, profiles):
    """The eth0 NIC that gives ``address``, on the declared network or the one the profiles give
    eth0; the address must be a host of that network's subnet."""
    network, info = eth0_network(lxd, network, profiles)
    if address == "auto":
        raise LxdError("ipv4_address: 'auto' must be resolved with assign_addresses() first")
    _check_in_subnet(address, network, (info.get("config") or {}).get("ipv4.address"))
    return {"type": "nic", "name": "eth0", "network": network, "ipv4.address": address}


def _check_in_subnet(address, network, cidr):
    if not cidr or cidr in ("none", "auto"):
        return
    gateway = ipaddress.ip_interface(cidr)
    if ipaddress.ip_address(address) not in gateway.network or ipaddress.ip_address(address) in (
            gateway.ip, gateway.network.network_address, gateway.network.broadcast_address):
        raise ValidationError("ipv4_address", address, "must be a host address in %s's subnet %s, not its gateway"
                              % (network, gateway.network))


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
        network, info = eth0_network(lxd, spec.network, spec.profiles or instance.get("profiles"))
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
            used.update(lease.address for lease in dnsmasq_leases(lxd, network))
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


def dnsmasq_leases(lxd, network):
    """Every IPv4 lease the bridge's dnsmasq holds, with those of machines that are gone (which
    network_leases does not list); [] for a daemon on another host."""
    if lxd.local_dir is None:
        return []
    return _dhcp.read_leases(_dhcp.lease_file(lxd.local_dir, network))


def release_stale_lease(lxd, network, address, owner, timeout=5):
    """Make dnsmasq drop its lease of ``address`` when that lease is of a MAC no instance has.

    Returns whether a lease was released. A lease of ``owner`` (the instance the address is
    for) is kept; a lease of another instance is an error naming it: that instance holds the
    address, and releasing it would only hand it round."""
    lease = next((held for held in dnsmasq_leases(lxd, network) if held.address == address), None)
    if lease is None:
        return False
    for inst in lxd.instances():
        macs = [value.lower() for key, value in (inst.get("config") or {}).items()
                if key.startswith("volatile.") and key.endswith(".hwaddr")]
        macs += [(d.get("hwaddr") or "").lower() for d in (inst.get("devices") or {}).values()]
        if lease.mac in macs and inst["name"] == owner:
            return False
        if lease.mac in macs:
            raise LxdError("%s is leased by %s's DHCP server to instance %s (%s): give one of them "
                           "another address" % (address, network, inst["name"], lease.mac))
    gateway = (((lxd.network(network) or {}).get("config") or {}).get("ipv4.address") or "").split("/")[0]
    if not gateway:
        return False
    try:
        _dhcp.send_release(lease, network, gateway)
    except OSError as exc:
        raise LxdError("release the stale lease of %s on %s: %s" % (address, network, exc))
    deadline = time.monotonic() + timeout
    while any(held.address == address and held.mac == lease.mac for held in dnsmasq_leases(lxd, network)):
        if time.monotonic() >= deadline:
            raise LxdError("%s's DHCP server kept its lease of %s to %s (a machine no longer there) "
                           "after a release" % (network, address, lease.mac))
        time.sleep(0.1)
    return True
