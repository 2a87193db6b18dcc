# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lxd connection: runs Ansible's tasks in a container of the box over the daemon's REST API,
through the local broker (plugin_utils._lxd_broker) that holds the one client (module_utils._lxd).

This file imports only the standard library and Ansible: Ansible forks a worker per task and host,
and pylxd's import there would cost more than the task (docs/connection.md)."""
from __future__ import annotations

DOCUMENTATION = r"""
name: lxd
short_description: Run tasks in a container of the box over the LXD or Incus API
description:
  - Runs tasks in a container (an instance of type container) of LXD or Incus through the daemon's
    REST API (exec with recorded output, the files API), with the collection's one client, instead
    of the C(lxc) command line (community.general.lxd).
  - The API client lives in a small local process, the broker, that this plugin starts on first use
    and that exits by itself after O(persist) idle seconds (like SSH's ControlPersist), so a task
    pays for no library import and no new connection to the daemon. See docs/connection.md.
  - Over the local socket the broker starts, once per container and user, a small Python program in
    the container (the agent, one exec whose stdin and stdout stay open) that runs the commands
    itself, about 2 ms a command instead of an exec of its own (40 ms). Without python3 in the
    container, or over C(https://), each command is an exec of its own.
  - Needs pylxd (2.3.2 or later) in the Python that runs ansible-playbook (the controller).
version_added: 0.3.0
author:
  - homelab.onebox developers (@homelab)
options:
  remote_addr:
    description:
      - The container's name on the daemon.
      - O(remote_addr) from C(ansible_host) wins over C(onebox_lxd_instance), which wins over the
        inventory name.
    type: str
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: onebox_lxd_instance
      - name: ansible_host
  remote_user:
    description:
      - The user the tasks run as in the container. A user other than root is looked up once (its
        uid, gid and home, with C(getent passwd) run as root) and commands run with its uid and gid,
        C(HOME), C(USER) and C(LOGNAME) set, in its home directory. Its supplementary groups are
        not set.
    type: str
    default: root
    vars:
      - name: ansible_user
    keyword:
      - name: remote_user
  url:
    description:
      - Where the daemon's API is, as the box role's C(onebox_lxd_url) says it; the same variable.
      - Empty or unset - this machine's own daemon, found as the modules find it (C($LXD_DIR),
        C($INCUS_DIR), then LXD's and Incus' usual sockets). C(unix:/path) or a socket path; or
        C(https://host:8443) with O(client_cert), O(client_key) and O(verify).
      - C(ssh://HOST) (the box converged over SSH) is refused - this connection needs the daemon's
        C(https://) address (docs/daemons.md).
    type: str
    vars:
      - name: onebox_lxd_url
  client_cert:
    description: Client certificate (PEM file) for an C(https://) O(url), trusted by the daemon.
    type: path
    vars:
      - name: onebox_lxd_client_cert
  client_key:
    description: Key of O(client_cert).
    type: path
    vars:
      - name: onebox_lxd_client_key
  verify:
    description:
      - For an C(https://) O(url) - the daemon's own certificate (its C(server.crt), copied to the
        controller) to pin, or C(false) to not check it. Unset - checked against the system's CAs.
    type: str
    vars:
      - name: onebox_lxd_verify
  project:
    description: The daemon's project the containers are in (unset - the default project).
    type: str
    vars:
      - name: onebox_lxd_project
  exec_timeout:
    description:
      - Seconds a command may run. A command running longer is killed inside the container with its
        process group (TERM, then KILL 5 s later) and its task fails naming the container and this option.
    type: int
    default: 3600
    vars:
      - name: onebox_lxd_exec_timeout
  persist:
    description:
      - Seconds the broker stays after its last request before it exits by itself.
    type: float
    default: 60
    vars:
      - name: onebox_lxd_persist
  pipelining:
    description:
      - Run modules with their code sent as the command's input (one request to the agent; without
        one, a files-API write and an exec) instead of copying them into a temporary directory first
        (four to five commands and a file).
    type: boolean
    default: true
    vars:
      - name: ansible_pipelining
      - name: onebox_lxd_pipelining
notes:
  - Become works without a password only (exec has no terminal to answer a prompt) - connect as root
    and use C(become_method=su) (in every Debian container) or C(sudo) (when installed) to become another user.
  - A command's processes are killed at O(exec_timeout) unless they left its process group (a daemon
    started with C(setsid) keeps running).
"""

EXAMPLES = r"""
# inventory: the box's containers as hosts of their own
# all:
#   children:
#     box:
#       vars:
#         ansible_connection: homelab.onebox.lxd
#       hosts:
#         web-1: {}
#         db: {ansible_host: shop-db}

- name: Run a role in the box's containers
  hosts: box
  gather_facts: true
  roles:
    - my_role
"""

import math
import os

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

from ansible_collections.homelab.onebox.plugins.plugin_utils import _lxd_broker as broker

display = Display()

DAEMON_OPTIONS = ("url", "client_cert", "client_key", "verify", "project")
REQUEST_TIMEOUT = 120  # seconds for a request that is not a command (state, user, the first answer)


def daemon_options(get):
    """The broker's key: the daemon options (``get``: the plugin's get_option), the URL checked."""
    options = {name: get(name) for name in DAEMON_OPTIONS}
    url = options["url"]
    if url in (None, ""):
        options["url"] = None
    elif not isinstance(url, str):
        raise AnsibleConnectionFailure("onebox_lxd_url: %r is not an address of the daemon" % (url,))
    elif url.startswith("ssh://"):
        raise AnsibleConnectionFailure(
            "onebox_lxd_url is %s: the box's daemon is on that host reached over SSH, and the lxd connection "
            "talks to the daemon's API itself: it needs the daemon's https:// address in onebox_lxd_url "
            "(with onebox_lxd_client_cert, onebox_lxd_client_key and onebox_lxd_verify; docs/daemons.md)" % url)
    elif not (url.startswith("unix:") or url.startswith("/") or url.startswith("https://")):
        raise AnsibleConnectionFailure(
            "onebox_lxd_url %r cannot be reached: give a socket path, unix:/path or https://host:port" % url)
    if options["verify"] in ("",):
        options["verify"] = None
    return options


def positive(name, value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not math.isfinite(number) or number <= 0:
        raise AnsibleError("onebox_lxd_%s: %r is not a number of seconds above 0" % (name, value))
    return number


class Connection(ConnectionBase):
    """Tasks in a container, over the daemon's API through the broker."""

    transport = "homelab.onebox.lxd"
    has_pipelining = True
    has_tty = False
    default_user = "root"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._channel = None
        self._where = None     # (daemon, endpoint) as the broker said
        self._user = None      # None (root) or {name, uid, gid, home}
        self._open = broker.open_broker

    # ---- the broker ---------------------------------------------------------------------
    def _instance(self):
        return self.get_option("remote_addr")

    def _request(self, op, wait=REQUEST_TIMEOUT, **fields):
        try:
            return self._channel.request(op, wait, **fields)
        except broker.BrokerError as exc:
            if exc.kind in ("unreachable", "gone"):
                self.close()
                raise AnsibleConnectionFailure(str(exc))
            if exc.kind == "notfound":
                raise AnsibleFileNotFound(str(exc))
            raise AnsibleError(str(exc))

    def _connect(self):
        if self._connected:
            return self
        name = self._instance()
        options = daemon_options(self.get_option)
        persist = positive("persist", self.get_option("persist"))
        try:
            self._channel, hello = self._open(options, persist)
        except broker.BrokerError as exc:
            raise AnsibleConnectionFailure("container %s: %s" % (name, exc))
        except OSError as exc:
            raise AnsibleConnectionFailure("container %s: the lxd connection's broker cannot be reached: %s" % (name, exc))
        self._where = (hello.get("daemon"), hello.get("endpoint"))
        status = self._request("state", name=name)["status"]
        if status != "Running":
            self.close()
            raise AnsibleConnectionFailure(broker.not_running_message(name, status, *self._where))
        user = self.get_option("remote_user") or "root"
        display.vvv("ESTABLISH LXD CONNECTION FOR USER: %s (broker pid %s, %s)"
                    % (user, hello.get("pid"), broker.where(*self._where)), host=name)
        self._user = None
        if user != "root":
            found = self._request("user", name=name, user=user)
            self._user = {"name": user, "uid": found["uid"], "gid": found["gid"], "home": found["home"]}
        self._connected = True
        return self

    # ---- what Ansible calls ---------------------------------------------------------------
    def exec_command(self, cmd, in_data=None, sudoable=True):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        name = self._instance()
        if sudoable and self.become and self.become.expect_prompt():
            raise AnsibleError(
                "container %s: become_method %s with a password cannot answer its prompt (the API's exec has no "
                "terminal): connect as root (ansible_user) and become without a password - su is in every "
                "Debian container, sudo only where it is installed" % (name, self.become.name))
        timeout = int(positive("exec_timeout", self.get_option("exec_timeout")))
        display.vvv("EXEC %s%s" % (to_text(cmd), " (with %d bytes of input)" % len(in_data) if in_data else ""), host=name)
        answer = self._request("exec", wait=timeout + broker.MARGIN * 2, name=name, command=to_text(cmd),
                               stdin=broker.to_b64(to_bytes(in_data)) if in_data is not None else None,
                               user=self._user, timeout=timeout)
        if answer["timed_out"]:
            raise AnsibleError(
                "container %s: the command ran longer than onebox_lxd_exec_timeout (%d s) and was killed inside the "
                "container; raise onebox_lxd_exec_timeout for longer commands, or run them with async: %s"
                % (name, timeout, to_text(cmd)[:300]))
        return answer["rc"], broker.from_b64(answer["stdout"]), broker.from_b64(answer["stderr"])

    def _owner(self):
        return (self._user["uid"], self._user["gid"]) if self._user else (0, 0)

    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        name = self._instance()
        display.vvv("PUT %s TO %s" % (in_path, out_path), host=name)
        local = os.path.abspath(to_text(in_path))
        if not os.path.isfile(local):
            raise AnsibleFileNotFound("file to copy into container %s not found: %s" % (name, local))
        uid, gid = self._owner()
        timeout = int(positive("exec_timeout", self.get_option("exec_timeout")))
        self._request("put", wait=timeout + broker.MARGIN, name=name, local=local, remote=to_text(out_path),
                      uid=uid, gid=gid, mode=0o600)

    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        name = self._instance()
        display.vvv("FETCH %s TO %s" % (in_path, out_path), host=name)
        timeout = int(positive("exec_timeout", self.get_option("exec_timeout")))
        self._request("fetch", wait=timeout + broker.MARGIN, name=name, remote=to_text(in_path),
                      local=os.path.abspath(to_text(out_path)))

    def close(self):
        """The line to the broker closes; the broker stays for the next task (``persist``)."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        self._connected = False

    def reset(self):
        """A fresh line to the broker and a fresh look at the container and its user."""
        self.close()
        self._connect()
