# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    # What every module of the collection shares: its authors, and full check and diff mode on a
    # POSIX host. A module adds its own details under the same attribute keys.
    DOCUMENTATION = r"""
author:
  - homelab.onebox developers (@homelab)
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
"""
