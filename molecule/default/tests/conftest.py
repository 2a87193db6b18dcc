"""The outside client and the LXD client, shared by every scenario (../../shared/box_client.py)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
from box_client import client, lxd  # noqa: E402,F401  pylint: disable=wrong-import-position

__all__ = ["client", "lxd"]
