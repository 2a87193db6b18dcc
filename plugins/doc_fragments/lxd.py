# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    # How a module reaches the LXD daemon. Set once for all modules with
    # module_defaults: {group/homelab.onebox.lxd: {...}}.
    DOCUMENTATION = r"""
options:
  lxd_url:
    description:
      - Where the LXD API is. A unix socket path (C(/var/lib/lxd/unix.socket) or C(unix:/path)) or
        an C(https://host:8443) URL.
      - When omitted, the first socket that exists of C($LXD_DIR/unix.socket),
        C(/var/lib/lxd/unix.socket) (Debian package), C(/var/snap/lxd/common/lxd/unix.socket) (snap)
        and C(/var/lib/incus/unix.socket) (Incus).
    type: str
  lxd_client_cert:
    description: Client certificate (PEM) for an C(https://) O(lxd_url).
    type: path
  lxd_client_key:
    description: Key of O(lxd_client_cert).
    type: path
  lxd_verify:
    description:
      - For an C(https://) O(lxd_url), whether to verify the server certificate (V(true)/V(false)),
        or the path of a CA bundle or of the server's certificate to verify it against.
    type: raw
    default: true
  lxd_project:
    description: LXD project to work in. The daemon's default project when omitted.
    type: str
  lxd_timeout:
    description: Seconds to wait for one LXD API request or operation before failing.
    type: int
    default: 30
  lock_timeout:
    description:
      - Seconds to wait for another homelab.onebox run on the same LXD daemon to finish. Every
        module holds the daemon's run lock (a file under C(/run/lock) on the host where the
        module runs) from after its input is checked to its end, so two converges never race.
      - At the timeout the run fails naming the process that holds the lock; nothing changed.
    type: int
    default: 300
requirements:
  - pylxd >= 2.3 (on the host that runs the module)
"""
