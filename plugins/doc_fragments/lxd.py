# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    # How a module reaches the daemon, LXD or Incus. Set once for all modules with
    # module_defaults: {group/homelab.onebox.lxd: {...}}.
    DOCUMENTATION = r"""
options:
  lxd_url:
    description:
      - Where the API of the daemon is, LXD (5.0 or later) or Incus (6.0 or later) - both work alike.
        A unix socket path (C(/var/lib/lxd/unix.socket), C(/var/lib/incus/unix.socket) or
        C(unix:/path)) or an C(https://host:8443) URL.
      - When omitted, the first socket that exists of C($LXD_DIR/unix.socket),
        C($INCUS_DIR/unix.socket), C(/var/lib/lxd/unix.socket) (LXD's Debian package),
        C(/var/snap/lxd/common/lxd/unix.socket) (LXD's snap), C(/var/lib/incus/unix.socket) (Incus)
        and C(/run/incus/unix.socket) (Incus after 6.0). So with both daemons on a host LXD is used
        unless O(lxd_url) or C(INCUS_DIR=/var/lib/incus) (in the module's environment) says otherwise.
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
    description: Project (LXD's or Incus's) to work in. The daemon's default project when omitted.
    type: str
  lxd_timeout:
    description: Seconds to wait for one API request or operation of the daemon before failing.
    type: int
    default: 30
  lock_timeout:
    description:
      - Seconds to wait for another homelab.onebox run on the same daemon to finish. Every
        module holds the daemon's run lock (a file under C(/run/lock) on the host where the
        module runs) from after its input is checked to its end, so two converges never race.
      - At the timeout the run fails naming the process that holds the lock; nothing changed.
    type: int
    default: 300
requirements:
  - pylxd >= 2.3.2 (on the host that runs the module)
"""
