# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The local connection under another name, for tests: the collection's action plugins take a
connection that is not local for one to another host, so a task run through this one takes the
path of a remote host (its sources archived, copied with put_file into the task's temporary
directory, unpacked by the module) while everything still happens on this machine."""
from __future__ import annotations

from ansible.plugins.connection.local import Connection as LocalConnection

DOCUMENTATION = """
    name: onebox_elsewhere
    short_description: the local connection, reported as another transport (tests only)
    description:
        - Runs on the controller as the local connection does, but says it is not local, so an action
          plugin treats the host as remote.
    author: homelab.onebox developers (@homelab)
    options:
        become_success_timeout:
            type: int
            default: 10
            description: As the local connection's.
        become_strip_preamble:
            type: bool
            default: true
            description: As the local connection's.
    extends_documentation_fragment:
        - connection_pipelining
"""


class Connection(LocalConnection):
    transport = "onebox_elsewhere"
