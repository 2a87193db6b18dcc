# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    # What a module whose files may come from the controller (a files item's src) shares: the
    # option its action plugin sets.
    DOCUMENTATION = r"""
options:
  src_archives:
    description:
      - Set by the module's action plugin, not by a playbook. When the task's connection is not
        local, each C(src) of a C(files) item (resolved on the controller) mapped to the archive
        of it the action plugin copied into the task's temporary directory on the host; the module
        unpacks each and reads the copy instead.
      - The action plugin resolves each C(src) on the controller (a relative one as
        M(ansible.builtin.copy) does - the role's C(files/), the playbook's C(files/) and directory)
        and checks that it exists, before the module runs.
    type: dict
"""
