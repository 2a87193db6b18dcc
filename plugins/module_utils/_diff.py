# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one diff shape every component returns: a header, the part before and the part after.

Ansible's diff callback prints a list of such entries one after the other, so a module whose
components each return their entries (``result()["diff"]``) shows them in the order they ran.
"""
from __future__ import annotations


def entry(header, before, after):
    """One diff entry of a component: ``header`` names what is compared (``containers``,
    ``inside the containers``, a file's path), ``before`` and ``after`` are text or data."""
    return dict(before_header=header, after_header=header, before=before, after=after)
