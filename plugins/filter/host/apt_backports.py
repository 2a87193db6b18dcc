# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""apt_backports: whether apt's sources name a backports suite, and the entry that adds it from the
mirror the release's own entry names. The documentation is in apt_backports.yml next to this file.

In plugins/filter/host/ (homelab.onebox.host.*): a task using a filter of this directory imports
only its files, not the top-level ones (box_parts and its module_utils), which keeps
homelab.onebox.lxd_host's fast path fast."""
from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_text


def _targets(indextargets):
    """(type, suite, component, uri, fetched) of each line `TYPE SUITE COMPONENT URI [FETCHED]`."""
    if isinstance(indextargets, (list, tuple)):
        lines = [to_text(line) for line in indextargets]
    else:
        lines = to_text(indextargets or "").splitlines()
    targets = []
    for line in lines:
        words = line.split()
        if len(words) < 4:
            continue
        fetched = len(words) > 4 and words[4].lower() in ("1", "yes", "true")
        targets.append((words[0], words[1], words[2], words[3], fetched))
    return targets


def apt_backports(indextargets, suite, component="main"):
    """What to do about SUITE (e.g. bookworm-backports) in apt's sources.

    indextargets: lines `TARGET_OF RELEASE COMPONENT REPO_URI FETCHED` (from `apt-get indextargets
    --format`, FETCHED 1 when the list file is there), as text or a list.
    Returns {present, fetched, mirror, line}: present when a deb entry names the suite (fetched when
    its package list is downloaded too), mirror the URI of the entry naming the release itself (the
    suite without its -backports), line the sources.list entry that adds the suite from that mirror.
    """
    suite = to_text(suite).strip()
    if not suite:
        raise AnsibleFilterError("apt_backports: no suite given")
    release = suite[:-len("-backports")] if suite.endswith("-backports") else suite
    targets = [t for t in _targets(indextargets) if t[0] == "deb"]
    mine = [t for t in targets if t[1] == suite]
    mirrors = [t[3] for t in targets if t[1] == release and t[2] == component]
    mirrors += [t[3] for t in targets if t[1] == release and t[3] not in mirrors]
    mirror = mirrors[0] if mirrors else ""
    if not mine and not mirror:
        raise AnsibleFilterError(
            "apt_backports: apt's sources name neither %s nor %s (no mirror to take it from): add a line such as "
            "`deb <your Debian mirror> %s %s` to /etc/apt/sources.list.d/" % (suite, release, suite, component))
    return {
        "present": bool(mine),
        "fetched": any(t[4] for t in mine),
        "mirror": mirror,
        "line": "deb %s %s %s" % (mirror.rstrip("/"), suite, component) if mirror else "",
    }


class FilterModule(object):
    """apt source filters of homelab.onebox."""

    def filters(self):
        return {"apt_backports": apt_backports}
