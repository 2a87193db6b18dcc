# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Debian's updates inside one container: what apt would upgrade, and the upgrade with its services restarted.

The box's ``upgrade`` (playbooks/upgrade.yml) runs this in every container it keeps: the package
lists refreshed, the pending upgrades read from apt's simulation (nothing pending: nothing else
happens, the container is not touched), then installed - keeping the configuration files the
box wrote (``--force-confold``) - and the container's services restarted, so no process goes on
running the old libraries. The box takes the turns (a pool's members one at a time, drained) and
waits for health afterwards.
"""
from __future__ import annotations

import re

from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError
from ansible_collections.homelab.onebox.plugins.module_utils._provision import APT_ENV, APT_OPTIONS

# A line of `apt-get -s upgrade`: "Inst libssl3 [3.0.15-1~deb12u1] (3.0.17-1~deb12u2 Debian-Security:12/stable-security [amd64])"
_INST = re.compile(r"^Inst (\S+) \[([^\]]+)\] \((\S+)")


def parse_pending(simulation):
    """apt's simulation -> [{name, from, to}] of the packages it would upgrade (new installs of
    an upgrade are left to it: only upgrades of installed packages are listed)."""
    pending = []
    for line in simulation.splitlines():
        match = _INST.match(line)
        if match:
            pending.append({"name": match.group(1), "from": match.group(2), "to": match.group(3)})
    return pending


class Upgrade:
    """One container's upgrade: ``pending()`` (refreshing the lists unless in check mode), then
    ``apply(units)`` outside check mode."""

    def __init__(self, lxd, name, timeout=600, check_mode=False):
        self.lxd, self.name, self.timeout, self.check_mode = lxd, name, timeout, check_mode
        self.packages = []

    def pending(self):
        """The packages an upgrade would change. In check mode the lists the container has are read
        as they are (refreshing them would change the container)."""
        if not self.check_mode:
            self.lxd.run(self.name, ["apt-get", "-q", "update"] + APT_OPTIONS[:2], timeout=self.timeout,
                         environment=APT_ENV)
        simulation = self.lxd.run(self.name, ["apt-get", "-q", "-s", "upgrade"], timeout=self.timeout,
                                  environment=APT_ENV)
        self.packages = parse_pending(simulation)
        return self.packages

    def apply(self, units):
        """Install the pending upgrades and restart ``units`` (the container's services)."""
        result = self.lxd.exec(self.name, ["apt-get", "-q", "-y", "upgrade"] + APT_OPTIONS, timeout=self.timeout,
                               environment=APT_ENV)
        if result.rc != 0:
            raise OneboxError("in %s, apt-get upgrade exited %d: %s" % (self.name, result.rc,
                                                                        (result.stderr or result.stdout).strip()[-2000:]),
                              rc=result.rc)
        if units:
            self.lxd.run(self.name, ["systemctl", "restart", "--"] + list(units), timeout=self.timeout)
