# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""box_parts: the box description -> its parts: containers, insides, sites and forwards.
The documentation is in box_parts.yml next to this file; the logic in module_utils/_box.py."""
from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.homelab.onebox.plugins.module_utils._box import parse_box
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError


def box_parts(services, owner=None, image=None, proxy_name=None, proxy_memory=None, proxy_cpus=None,
              proxy_priority=None, addresses=None, tls=None):
    options = {"owner": owner, "image": image, "proxy_name": proxy_name, "proxy_memory": proxy_memory,
               "proxy_cpus": proxy_cpus, "proxy_priority": proxy_priority, "tls": tls}
    try:
        return parse_box(services, options, addresses).as_dict()
    except ValidationError as exc:
        raise AnsibleFilterError("box description: %s" % exc.msg)


class FilterModule(object):
    """The box description filter of homelab.onebox."""

    def filters(self):
        return {"box_parts": box_parts}
