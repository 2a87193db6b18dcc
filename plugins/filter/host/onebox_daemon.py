# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""onebox_daemon: which container daemon (LXD or Incus) a host gets, and how to reach it, from its
/etc/os-release and the wanted value of onebox_lxd_host_daemon. The documentation is in
onebox_daemon.yml next to this file.

In plugins/filter/host/ (homelab.onebox.host.*): a task using a filter of this directory imports
only its files, not the top-level ones (box_parts and its module_utils), which keeps
homelab.onebox.lxd_host's fast path fast."""
from __future__ import annotations

import shlex

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_text

VARIABLE = "onebox_lxd_host_daemon"
WANTED = ("auto", "lxd", "incus")

# Debian's code names and their release numbers (testing and unstable have no VERSION_ID).
DEBIAN_CODENAMES = {"buster": 10, "bullseye": 11, "bookworm": 12, "trixie": 13, "forky": 14, "duke": 15}

# What each daemon is, as Debian packages it.
DAEMONS = {
    "lxd": {
        "daemon": "lxd",
        "packages": ["lxd"],
        "command": "lxc",
        "socket": "/var/lib/lxd/unix.socket",
        "daemon_binary": "lxd",
        "group": "lxd",
        "log": "/var/log/lxd/lxd.log",
        "systemd_units": ["lxd.socket", "lxd.service", "lxd-containers.service"],
        "network": "lxdbr0",
        "dir_env": "LXD_DIR",
        "path": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    },
    "incus": {
        "daemon": "incus",
        # incus-base: the daemon for containers (plain `incus` pulls ~200 packages for VMs);
        # it depends on incus-client (the `incus` command). dnsmasq-base (the bridge's DHCP and
        # DNS) is only a recommendation of it, and recommendations are not installed.
        "packages": ["incus-base", "dnsmasq-base"],
        "command": "incus",
        "socket": "/var/lib/incus/unix.socket",
        "daemon_binary": "/usr/libexec/incus/incusd",
        "group": "incus-admin",
        "log": "/var/log/incus/incusd.log",
        "systemd_units": ["incus.socket", "incus.service", "incus-startup.service"],
        "network": "incusbr0",
        "dir_env": "INCUS_DIR",
        # /etc/default/incus puts Incus's helpers first.
        "path": "/usr/libexec/incus:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    },
}


def parse_os_release(text):
    """The KEY=VALUE pairs of an os-release file (values unquoted as a shell would)."""
    fields = {}
    for line in to_text(text).splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        try:
            words = shlex.split(value, posix=True)
        except ValueError:
            words = [value.strip("\"'")]
        fields[key.strip()] = " ".join(words)
    return fields


def _describe(fields):
    return fields.get("PRETTY_NAME") or " ".join(
        part for part in (fields.get("NAME") or fields.get("ID") or "an unknown system", fields.get("VERSION", ""))
        if part)


def _debian_release(fields):
    """(number or None for testing/unstable, code name or "") of a Debian system."""
    codename = fields.get("VERSION_CODENAME", "")
    if not codename:
        # Older files: VERSION="12 (bookworm)".
        version = fields.get("VERSION", "")
        if "(" in version and version.endswith(")"):
            codename = version[version.index("(") + 1:-1].strip()
    version_id = fields.get("VERSION_ID", "")
    if version_id:
        try:
            number = int(version_id.split(".")[0])
        except ValueError:
            raise AnsibleFilterError("onebox_daemon: Debian's VERSION_ID %r in /etc/os-release is not a number"
                                     % version_id)
        if not codename:
            codename = {v: k for k, v in DEBIAN_CODENAMES.items()}.get(number, "")
        return number, codename
    # No VERSION_ID: testing or unstable (every released Debian has one), or a known code name.
    if codename in DEBIAN_CODENAMES:
        return DEBIAN_CODENAMES[codename], codename
    return None, codename


def onebox_daemon(os_release, wanted="auto"):
    """The daemon for a host: os_release is the text of /etc/os-release (or its parsed dict),
    wanted is onebox_lxd_host_daemon's value (auto, lxd or incus)."""
    wanted_text = to_text(wanted).strip().lower() if wanted is not None else "auto"
    if wanted_text not in WANTED:
        raise AnsibleFilterError("%s: %r is not one of %s" % (VARIABLE, wanted, ", ".join(WANTED)))
    if isinstance(os_release, dict):
        fields = dict((to_text(k), to_text(v)) for k, v in os_release.items())
    elif isinstance(os_release, (str, bytes)):
        fields = parse_os_release(os_release)
    else:
        raise AnsibleFilterError("onebox_daemon: give the text of /etc/os-release or its parsed dict, got %s"
                                 % type(os_release).__name__)
    os_id = fields.get("ID", "").lower()
    described = _describe(fields)
    if os_id == "ubuntu":
        raise AnsibleFilterError(
            "%s=%s: %s is not supported: Ubuntu ships LXD as a snap, and this role installs Debian's packages "
            "only (LXD from the snap is not supported). Use a Debian 12 or later host."
            % (VARIABLE, wanted_text, described))
    if os_id != "debian":
        raise AnsibleFilterError(
            "%s=%s: %s (ID=%s) is not supported: the role knows Debian's lxd and incus packages only "
            "(Debian 12 or later)." % (VARIABLE, wanted_text, described, os_id or "missing"))
    number, codename = _debian_release(fields)
    if number is not None and number < 12:
        raise AnsibleFilterError(
            "%s=%s: %s has neither an lxd nor an incus package; the role needs Debian 12 (bookworm) or later."
            % (VARIABLE, wanted_text, described))
    newer = number is None or number >= 13  # Debian 13 on, testing and unstable: incus only
    if wanted_text == "lxd" and newer:
        raise AnsibleFilterError(
            "%s=lxd: %s has no lxd package (Debian dropped LXD after Debian 12 for Incus); set %s to incus "
            "or auto." % (VARIABLE, described, VARIABLE))
    daemon = "incus" if newer or wanted_text == "incus" else "lxd"
    apt_release = ""
    release_packages = []
    if daemon == "incus" and not newer:
        # Debian 12: Incus 6.0 LTS comes from bookworm-backports (the daemon and, through its
        # exact-version dependency, its client); the rest from the release itself.
        apt_release = "%s-backports" % (codename or "bookworm")
        release_packages = ["incus-base"]
    choice = dict(DAEMONS[daemon])
    choice.update({
        "packages": list(choice["packages"]),
        "apt_release_packages": release_packages,
        "systemd_units": list(choice["systemd_units"]),
        "apt_release": apt_release,
        "wanted": wanted_text,
        "os": described,
        "os_release": number,
        "os_codename": codename,
    })
    return choice


class FilterModule(object):
    """The container daemon of homelab.onebox's host."""

    def filters(self):
        return {"onebox_daemon": onebox_daemon}
