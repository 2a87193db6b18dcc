"""The installed homelab.onebox made importable (its extensions/molecule/onebox_verify.py holds the
checks and the outside client), and the ``client`` fixture: a network namespace whose only way in
is the host's address, as another machine's."""
import json
import os
import shutil
import subprocess
import sys


def _collections_root():
    """The directory holding ansible_collections/homelab/onebox, as Ansible finds it
    (ANSIBLE_CONFIG and ANSIBLE_COLLECTIONS_PATH included, as molecule passes them)."""
    beside = os.path.join(os.path.dirname(sys.executable), "ansible-galaxy")
    galaxy = beside if os.access(beside, os.X_OK) else shutil.which("ansible-galaxy") or "ansible-galaxy"
    result = subprocess.run([galaxy, "collection", "list", "homelab.onebox", "--format", "json"],
                            capture_output=True, text=True, timeout=120, check=False)
    for path, found in (json.loads(result.stdout or "{}") if result.returncode == 0 else {}).items():
        if "homelab.onebox" in found:
            return os.path.dirname(path)
    raise RuntimeError("homelab.onebox is not installed where Ansible looks: %s%s" % (result.stdout, result.stderr))


sys.path.insert(0, _collections_root())
from ansible_collections.homelab.onebox.extensions.molecule.onebox_verify import client  # noqa: E402,F401  pylint: disable=wrong-import-position

__all__ = ["client"]
