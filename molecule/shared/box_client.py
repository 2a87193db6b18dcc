"""Helpers for verifying the example box from outside: a client in its own network namespace
sends real requests to the host's address on its veth (PREROUTING, like another machine). The
client and its requests are the collection's shipped helper (extensions/molecule/onebox_verify.py,
which users' scenarios import too); this file adds the LXD client the project's scenarios look inside with."""
from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "extensions", "molecule"))
sys.path.insert(0, os.path.join(ROOT, ".collections"))

from onebox_verify import client, http_get, tcp_ping, udp_echo, wait_for  # noqa: E402,F401  pylint: disable=wrong-import-position
from ansible_collections.homelab.onebox.plugins.module_utils._lxd import LxdClient  # noqa: E402

__all__ = ["client", "http_get", "lxd", "tcp_ping", "udp_echo", "wait_for"]


@pytest.fixture(scope="module")
def lxd():
    return LxdClient(timeout=60)
