#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: box_info
short_description: The box as it is - its services, containers, sites, forwards, certificates and backups, as data, a table and a picture
version_added: "0.2.0"
description:
  - Reads the box of O(owner) as it is now, changing nothing - every container carrying the owner's
    mark (state, addresses, CPU and memory limits, uptime, volumes), what the proxy's sites route
    where (each domain and path, each host port of the proxy, to which containers; pool members
    drained), the owner's forwards (its DNAT chains), each HTTPS site's certificate (what serves it
    and when it expires), and the last backup of each service (when backups were set up).
  - Groups all of it by service - with O(services), the description's services; without, each
    container is a service of its own, pool members (C(NAME-1), C(NAME-2)...) under their pool.
  - With O(services) (the box module's description), also says what differs - described but
    missing or not running, present but not described (containers, domains and paths, forwards).
  - Returns the data, RV(table) (text lines, one row per container, readable in a terminal) and
    RV(dot), the Graphviz source of a picture of the box (domains, the proxy, the containers, the
    host ports), which C(dot -Tsvg) draws (the C(homelab.onebox.status) playbook does).
  - "Cheap: one listing of the daemon's instances with their state, one command in the proxy (its
    site files and C(onebox-tls status)), one C(iptables-save) and two small files on the host,
    all at once."
  - Takes no run lock - a status never waits for a converge; read during one, it shows that moment.
extends_documentation_fragment:
  - homelab.onebox.lxd
  - homelab.onebox.module
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    details: It changes nothing, in check mode or not; RV(changed) is always false.
  diff_mode:
    support: none
  platform:
    details: The box's host (it reads the host's iptables and the backups' record there).
options:
  owner:
    description: The box's owner (C(onebox_owner)), whose mark its containers carry.
    type: str
    required: true
  services:
    description:
      - The box description (as the P(homelab.onebox.box#module) module takes it), optional. Given,
        the containers are grouped by its services, and RV(differences) says what is described but
        missing, and what is present but not described. It is checked as a converge checks it (an
        error names the service and the field); nothing is pushed or run.
    type: list
    elements: dict
  tls:
    description: The box's HTTPS options (C(onebox_tls)), as the box module takes them; needed with a description whose services use ACME.
    type: dict
  proxy:
    description: The proxy container, as the box module's O(homelab.onebox.box#module:proxy).
    type: dict
    default: {}
    suboptions:
      name:
        description: Its name. Default C(OWNER-proxy).
        type: str
      conf_dir:
        description: Where its site files are.
        type: path
        default: /etc/nginx/conf.d
      sites:
        description: The sites beyond the description's (C(onebox_proxy_sites)), so their domains count as described.
        type: list
        elements: dict
        default: []
  forwards:
    description: Where the box's forwards are, as the box module's O(homelab.onebox.box#module:forwards).
    type: dict
    default: {}
    suboptions:
      chain_prefix:
        description: Their chains' prefix. Default the one whose jumps name O(owner), else the one O(owner) gives.
        type: str
      backend:
        description: As O(homelab.onebox.dnat#module:backend).
        type: str
        choices: [auto, nft, legacy]
        default: auto
      extra:
        description: The forwards beyond the description's (C(onebox_forward_extra)), so they count as described.
        type: list
        elements: dict
        default: []
notes:
  - Runs on the box's host, as the box module does. Needs pylxd there.
  - Uptime is the time since the daemon last started the container (its C(last_used_at)).
  - O(lock_timeout) is accepted as by every module of the collection, and unused.
seealso:
  - module: homelab.onebox.box
  - module: homelab.onebox.backup
"""

EXAMPLES = r"""
- name: The box, read
  homelab.onebox.box_info:
    owner: mybox
    services: "{{ onebox_services }}"
  register: status

- name: Shown as a table
  ansible.builtin.debug:
    msg: "{{ status.table }}"

- name: Drawn (Debian's graphviz on the controller)
  ansible.builtin.command:
    cmd: dot -Tsvg -o /tmp/mybox.svg
    stdin: "{{ status.dot }}"
  delegate_to: localhost
  changed_when: false
"""

RETURN = r"""
changed:
  description: Always false.
  returned: always
  type: bool
owner:
  description: The owner read.
  returned: always
  type: str
daemon:
  description: The daemon that answered (V(LXD) or V(Incus)) and its version.
  returned: always
  type: str
  sample: LXD 5.0.2
read_at:
  description: When the box was read (UTC).
  returned: always
  type: str
services:
  description:
    - Each service, with C(name), C(kind) (from the description; null without), C(described),
      C(containers), C(domains) (what the proxy routes to it by name), C(host_ports) (what the proxy
      serves on a port of its own), C(forwards) (the host's ports forwarded to it) and C(backup).
    - A container - C(name), C(status) (V(Running), V(Stopped)..., V(Missing) for one described and
      not there), C(addresses), C(static_address), C(cpus), C(memory), C(memory_usage) (bytes),
      C(autostart), C(autostart_priority), C(started), C(uptime_seconds), C(image), C(volumes)
      (C(name), C(path), C(readonly)), C(drained) (marked down in its pool's upstream).
    - A domain entry - C(domain), C(path), C(url), C(https), C(port), C(site) (the proxy's site),
      C(containers) (where it goes; an address when no container of the box holds it),
      C(target_port), C(down) (pool members marked down), C(certificate) (C(name), C(mode),
      C(serving), C(not_after), C(days_left), C(names); null for plain HTTP).
    - A forward - C(proto), C(port) (V(80), V(7000-7010)), C(address), C(target_port),
      C(host_address), C(sources), C(comment), C(container).
    - C(backup) - C(included), C(last_time), C(ok), C(error), C(last_good_time), C(age_seconds); null
      when the box has no backups set up.
  returned: always
  type: list
  elements: dict
proxy:
  description: The proxy - C(name), C(container), C(sites_read), C(sites), C(forwards), C(backup); null when the box has none.
  returned: always
  type: dict
forwards:
  description: Every forward of the owner, as in RV(services).
  returned: always
  type: list
  elements: dict
unreached_forwards:
  description: Forwards whose address no container of the box holds.
  returned: always
  type: list
  elements: dict
certificates:
  description: Every certificate the proxy's TLS agent keeps (C(name), C(mode), C(serving), C(not_after), C(days_left), C(names)).
  returned: always
  type: list
  elements: dict
backups:
  description: Whether the box has a backup record (its backups set up, or run once).
  returned: always
  type: bool
differences:
  description:
    - With O(services) - C(missing_containers), C(stopped_containers), C(undescribed_containers),
      C(missing_domains), C(undescribed_domains) (C(DOMAIN/PATH)), C(missing_forwards),
      C(undescribed_forwards) (C(PROTO/PORT)). Null without O(services).
  returned: always
  type: dict
notes:
  description: What could not be read, and why (the proxy not running, say).
  returned: always
  type: list
  elements: str
table:
  description: The status as text lines - a heading, one row per container, then the differences and notes.
  returned: always
  type: list
  elements: str
  sample:
    - "box mybox (LXD 5.0.2): 2 services, 3 containers (3 running), 1 domain, 3 forwards; read 2026-12-03T06:00:00Z"
    - "SERVICE  CONTAINER    STATE    ADDRESS     LIMITS     UPTIME  REACHED AT"
    - "-------  -----------  -------  ----------  ---------  ------  -------------------------"
    - "www      www          Running  10.87.0.10  mem 256MiB  2h 5m   http://www.example.org/"
    - "vpn      vpn          Running  10.87.0.11  -          2h 5m   host udp/51820"
    - "proxy    mybox-proxy  Running  10.87.0.12  -          2h 5m   host tcp/80"
graph:
  description: What the picture shows - C(nodes) (C(id), C(kind), C(label), C(group), C(state)) and C(edges) (C(from), C(to), C(label)).
  returned: always
  type: dict
dot:
  description: The picture as Graphviz source (C(dot -Tsvg) draws it).
  returned: always
  type: str
"""

import json
import time
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.homelab.onebox.plugins.module_utils import _backup_agent
from ansible_collections.homelab.onebox.plugins.module_utils import _box_graph
from ansible_collections.homelab.onebox.plugins.module_utils import _box_info
from ansible_collections.homelab.onebox.plugins.module_utils import _dnat
from ansible_collections.homelab.onebox.plugins.module_utils import _validate
from ansible_collections.homelab.onebox.plugins.module_utils._box import parse_box
from ansible_collections.homelab.onebox.plugins.module_utils._box_service import secret_values
from ansible_collections.homelab.onebox.plugins.module_utils._box_tls import AGENT_PATH, tls_secrets
from ansible_collections.homelab.onebox.plugins.module_utils._dnat_host import DnatManager
from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError
from ansible_collections.homelab.onebox.plugins.module_utils._lxd import LxdNotFound
from ansible_collections.homelab.onebox.plugins.module_utils._module import OneboxModule

ARGUMENT_SPEC = dict(
    owner=dict(type="str", required=True),
    services=dict(type="list", elements="dict"),
    tls=dict(type="dict"),  # checked as the box module's (parse_box), which names a bad key
    proxy=dict(type="dict", default={}, apply_defaults=True, options=dict(
        name=dict(type="str"),
        conf_dir=dict(type="path", default="/etc/nginx/conf.d"),
        sites=dict(type="list", elements="dict", default=[]),
    )),
    forwards=dict(type="dict", default={}, apply_defaults=True, options=dict(
        chain_prefix=dict(type="str"),
        backend=dict(type="str", choices=["auto", "nft", "legacy"], default="auto"),
        extra=dict(type="list", elements="dict", default=[]),
    )),
)
# Run in the proxy: its site files (as _nginx_target reads them), then what the TLS agent says of
# its certificates (when it is there). Names go as arguments, never into the script.
PROXY_READ = r'''if cd "$1" 2>/dev/null; then
  for f in *.conf; do
    [ -f "$f" ] && [ ! -L "$f" ] || continue
    printf '\001F %s\n' "$f"; cat -- "$f"; printf '\n'
  done
else
  printf '\001E %s\n' "conf_dir $1 does not exist"
fi
if [ -x "$2" ]; then printf '\001T \n'; "$2" status 2>/dev/null; fi
exit 0'''
PROXY_TIMEOUT = 60


def parse_proxy_output(text):
    """PROXY_READ's output -> ({file name: text}, {certificate name: its status}, error or None)."""
    files, certs, error = {}, {}, None
    for chunk in text.split("\001")[1:]:
        kind, _sep, rest = chunk.partition(" ")
        first, _sep, body = rest.partition("\n")
        if kind == "F":
            files[first] = body[:-1] if body.endswith("\n") else body
        elif kind == "E":
            error = first
        elif kind == "T":
            try:
                status = json.loads(body or "{}")
            except ValueError:
                status = {}
            certs = {c["name"]: c for c in status.get("certs") or () if isinstance(c, dict) and c.get("name")}
    return files, certs, error


class BoxInfo:
    """Reads the box (each read beside the others), then _box_info and _box_graph make sense of it."""

    def __init__(self, module):
        self.module = module
        params = module.params
        self.owner = _validate.instance_name(params["owner"], "owner")
        self.proxy = params["proxy"]["name"] or "%s-proxy" % self.owner
        _validate.instance_name(self.proxy, "proxy.name")
        if params["forwards"]["chain_prefix"]:
            _dnat.check_prefix(params["forwards"]["chain_prefix"], "forwards.chain_prefix")
        # The description, checked as a converge checks it (before anything is read).
        self.box = None
        if params["services"] is not None:
            options = dict(owner=self.owner, proxy_name=self.proxy, proxy_sites=bool(params["proxy"]["sites"]),
                           tls=params["tls"])
            self.box = parse_box(params["services"], options)

    def run(self):
        module, params = self.module, self.module.params
        lxd = module.lxd
        now = time.time()
        with ThreadPoolExecutor(max_workers=4) as pool:
            listing = pool.submit(lxd.instances, True)
            proxy = pool.submit(self.read_proxy)
            saved = pool.submit(self.read_rules)
            backups = pool.submit(self.read_backups)
            listing, (files, certs, proxy_note), saved, backups = (
                listing.result(), proxy.result(), saved.result(), backups.result())
        notes = [proxy_note] if proxy_note else []
        containers = _box_info.read_containers(listing, self.owner, now)
        prefixes = _box_info.owner_prefixes(saved, self.owner, params["forwards"]["chain_prefix"])
        forwards = _box_info.read_forwards(saved, prefixes)
        sites = _box_info.read_sites(files) if files is not None else None
        server = lxd.server.get("environment") or {}
        daemon = ("%s %s" % (lxd.daemon, server.get("server_version") or "")).strip()
        info = _box_info.describe(self.owner, containers, sites, forwards, certs=certs, backups=backups, now=now,
                                  proxy=self.proxy, box=self.box, extra_sites=params["proxy"]["sites"],
                                  extra_forwards=params["forwards"]["extra"], daemon=daemon, notes=notes)
        picture = _box_graph.graph(info)
        title = "box %s, %s" % (self.owner, info["read_at"])
        return dict(info, changed=False, table=_box_info.table(info), graph=picture, dot=_box_graph.dot(picture, title))

    def read_proxy(self):
        """The proxy's site files and certificates, in one command in it: (files or None, certs, note)."""
        lxd = self.module.lxd
        try:
            found = lxd.exec(self.proxy, ["sh", "-c", PROXY_READ, "sh", self.module.params["proxy"]["conf_dir"],
                                          AGENT_PATH], timeout=PROXY_TIMEOUT)
        except LxdNotFound:
            return None, {}, None  # no proxy: a box without domains
        except OneboxError as exc:
            # A stopped proxy cannot run anything: say so, show the rest.
            return None, {}, "the proxy %s could not be read (its sites and certificates are not shown): %s" % (
                self.proxy, exc.msg)
        files, certs, error = parse_proxy_output(found.stdout)
        return (None if error else files), certs, ("the proxy's sites could not be read: %s" % error if error else None)

    def read_rules(self):
        """The host's iptables-save, with the tools of the backend the host uses (as dnat finds them)."""
        params = dict(owner=self.owner, state="present", forwards=[], isolate=[], ip_forward=False,
                      backend=self.module.params["forwards"]["backend"], chain_prefix=None,
                      save_path="", restore_script="", sysctl_file="")
        host = DnatManager(self.module, params=params)
        tools = host.find_tools()
        return host.command([tools[2]], "read the rules")

    def read_backups(self):
        """The backups' record of the box on this host (the agent's last.json, and which services its
        configuration includes), or None when the box has neither."""
        config = self._json("%s/config.json" % (_backup_agent.CONFIG_DIR % self.owner))
        state_dir = (config or {}).get("state_dir") or _backup_agent.STATE_DIR % self.owner
        state = self._json("%s/last.json" % state_dir)
        if config is None and state is None:
            return None
        included = {s["name"]: bool(s.get("include", True)) for s in (config or {}).get("services") or ()
                    if isinstance(s, dict) and s.get("name")}
        return {"state": state or {}, "included": included, "configured": config is not None}

    @staticmethod
    def _json(path):
        try:
            with open(path, encoding="utf-8") as handle:
                value = json.load(handle)
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None


def main():
    module = OneboxModule(ARGUMENT_SPEC, lxd=True, supports_check_mode=True, run_lock=False,
                          secrets=lambda params: list(secret_values(params["services"])) + tls_secrets(params["tls"]))
    module.run(BoxInfo)


if __name__ == "__main__":
    main()
