# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The box inventory plugin: the containers of the boxes on a daemon as inventory hosts, read back
from their marks (their groups and variables are module_utils._box_hosts', as the box role's)."""
from __future__ import annotations

DOCUMENTATION = r"""
name: box
short_description: The box's containers as inventory hosts, read from the daemon
version_added: 0.3.0
author:
  - homelab.onebox developers (@homelab)
description:
  - Lists the containers a box converged (those carrying an owner's mark, C(user.onebox.owner)) on
    one daemon, LXD or Incus, in one request, as inventory hosts - the same hosts, groups and variables
    the P(homelab.onebox.box#role) role adds in the run that converges the box, for runs that do not
    converge it (C(ansible-playbook -i box.onebox.yml your-play.yml)).
  - Containers without an owner's mark (made by hand or by another tool) are never listed.
  - "Groups - C(onebox) (every container), C(onebox_SERVICE), C(onebox_kind_KIND) (V(static), V(app),
    V(pool), V(plain), V(internal), V(proxy)) and C(onebox_owner_OWNER); other characters than
    letters, digits and C(_) are made C(_)."
  - "Variables - C(onebox_owner), C(onebox_service) (null for the proxy), C(onebox_kind),
    C(onebox_domains), C(onebox_routes), C(onebox_port), C(onebox_host_port), C(onebox_forwards) (as
    the description says them, recorded on the container as C(user.onebox.service) and
    C(user.onebox.host)), C(onebox_address) (its IPv4 address, eth0's first, else its static one;
    null when none), and the connection -
    C(ansible_connection=homelab.onebox.lxd) with the daemon's C(onebox_lxd_url),
    C(onebox_lxd_client_cert), C(onebox_lxd_client_key), C(onebox_lxd_verify) and
    C(onebox_lxd_project) as configured here (each only when set)."
  - A container made before the box recorded these marks has only C(onebox), its owner's group and
    C(onebox_owner) until the box is converged again.
  - Two names making one group (a service C(kind-app) and the kind C(app), or a service
    C(owner-NAME) of one box and the owner C(NAME) of another) fail the inventory, naming both; the
    O(owners) filter leaves one box out.
  - See C(docs/inventory.md).
extends_documentation_fragment:
  - constructed
requirements:
  - pylxd >= 2.3.2 (in the Python that runs Ansible on the controller)
options:
  plugin:
    description: The plugin's name - this file is this plugin's.
    type: str
    required: true
    choices: [homelab.onebox.box]
  url:
    description:
      - Where the daemon's API is, as the modules' C(lxd_url) and the box role's C(onebox_lxd_url)
        take it - a socket path or C(unix:/path), or C(https://host:8443) with O(client_cert),
        O(client_key) and O(verify).
      - Unset - this machine's own daemon, found by its socket as the modules find it.
    type: str
    env:
      - name: ONEBOX_LXD_URL
  client_cert:
    description: Client certificate (PEM file) for an C(https://) O(url), trusted by the daemon.
    type: path
    env:
      - name: ONEBOX_LXD_CLIENT_CERT
  client_key:
    description: Key of O(client_cert).
    type: path
    env:
      - name: ONEBOX_LXD_CLIENT_KEY
  verify:
    description:
      - For an C(https://) O(url), whether to verify the daemon's certificate (V(true)/V(false)),
        or the path of a CA bundle or of the daemon's own certificate (its C(server.crt)) to verify
        it against. Unset - verified against the system's CAs.
    type: raw
    env:
      - name: ONEBOX_LXD_VERIFY
  project:
    description: The daemon's project to read (unset - its default project).
    type: str
    env:
      - name: ONEBOX_LXD_PROJECT
  owners:
    description: The boxes to list, by their owners (C(onebox_owner)). Empty - every owner found.
    type: list
    elements: str
    default: []
  services:
    description:
      - Only the containers of these services (by name, as described). Empty - every container,
        the proxies too (a proxy belongs to no service, so a list here leaves it out).
    type: list
    elements: str
    default: []
  states:
    description:
      - Only the containers in one of these states, as the daemon says them (V(Running),
        V(Stopped), V(Frozen), V(Error), V(Starting), V(Stopping), V(Freezing); any case; another
        fails the inventory, naming it). Empty - every state.
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
# box.onebox.yml (the file's name must end in .onebox.yml or .onebox.yaml)
plugin: homelab.onebox.box

# ansible-inventory -i box.onebox.yml --graph
# ansible-playbook -i box.onebox.yml -i inventory/ my-roles.yml    (hosts: onebox_app)

---
# Only one box's running containers, on a daemon reached over HTTPS, with a group per image kind
# and a variable of its own.
plugin: homelab.onebox.box
url: https://box.example.org:8443
client_cert: ~/.config/onebox/client.crt
client_key: ~/.config/onebox/client.key
verify: files/box-server.crt
owners: [mybox]
states: [Running]
compose:
  web_url: "'http://' ~ onebox_domains[0] if onebox_domains else none"
keyed_groups:
  - key: onebox_port
    prefix: port
groups:
  public: onebox_domains | length > 0 or onebox_forwards | length > 0
"""

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable

from ansible_collections.homelab.onebox.plugins.module_utils import _box_hosts
from ansible_collections.homelab.onebox.plugins.module_utils._box_info import address_of, read_containers
from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError, ValidationError

CONNECTION = "homelab.onebox.lxd"
# This plugin's daemon options -> the variables the connection reads them from.
DAEMON_VARIABLES = {"url": "onebox_lxd_url", "client_cert": "onebox_lxd_client_cert",
                    "client_key": "onebox_lxd_client_key", "verify": "onebox_lxd_verify",
                    "project": "onebox_lxd_project"}
# The states the daemons give an instance: a filter naming another (a typo) would list nothing, silently.
STATES = ("Running", "Stopped", "Frozen", "Error", "Starting", "Stopping", "Freezing")
KNOWN_STATES = frozenset(state.lower() for state in STATES)


def check_states(states):
    """Each of ``states`` one of STATES (any case), before the daemon is asked anything."""
    for index, state in enumerate(states or ()):
        if str(state).lower() not in KNOWN_STATES:
            raise ValidationError("states[%d]" % index, state, "unknown state (known: %s)" % ", ".join(STATES))


def box_hosts(listing, owners=(), services=(), states=()):
    """The daemon's listing (LxdClient.instances(state=True)) -> [(host, address, status)] of the
    containers carrying an owner's mark, filtered (an empty filter keeps all), by owner then name;
    their groups checked together (_box_hosts.check_groups)."""
    found = []
    for owner in sorted({(i.get("config") or {}).get(_box_hosts.OWNER_KEY) for i in listing} - {None, ""}):
        if owners and owner not in owners:
            continue
        read = read_containers(listing, owner, 0)   # status and addresses, as box_info reads them
        for instance in sorted(listing, key=lambda i: i["name"]):
            if instance["name"] not in read or instance.get("type", "container") != "container":
                continue
            host = _box_hosts.from_marks(instance["name"], instance.get("config"))
            status = read[instance["name"]]["status"]
            if services and host["service"] not in services:
                continue
            if states and status.lower() not in {state.lower() for state in states}:
                continue
            found.append((host, address_of(read[instance["name"]]), status))
    _box_hosts.check_groups([host for host, _address, _status in found])
    return found


class InventoryModule(BaseInventoryPlugin, Constructable):

    NAME = "homelab.onebox.box"

    def verify_file(self, path):
        """A file of this plugin's is named *.onebox.yml or *.onebox.yaml."""
        return super().verify_file(path) and path.endswith((".onebox.yml", ".onebox.yaml"))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        try:
            check_states(self.get_option("states"))
            found = box_hosts(self._client().instances(state=True), self.get_option("owners"),
                              self.get_option("services"), self.get_option("states"))
        except OneboxError as exc:
            raise AnsibleParserError("homelab.onebox.box (%s): %s" % (path, exc.msg))
        daemon = {variable: self.get_option(option) for option, variable in DAEMON_VARIABLES.items()
                  if self.get_option(option) is not None}
        strict = self.get_option("strict")
        for host, address, _status in found:
            entry = _box_hosts.inventory_host(host, address)
            name = self.inventory.add_host(entry["name"])
            for group in entry["groups"]:
                self.inventory.add_group(group)
                self.inventory.add_host(name, group=group)
            variables = dict(entry["vars"], ansible_connection=CONNECTION, **daemon)
            for key, value in variables.items():
                self.inventory.set_variable(name, key, value)
            hostvars = self.inventory.get_host(name).get_vars()
            self._set_composite_vars(self.get_option("compose"), hostvars, name, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), hostvars, name, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), hostvars, name, strict=strict)

    def _client(self):
        """The collection's one client of the daemon (imported here: pylxd only when it is read)."""
        from ansible_collections.homelab.onebox.plugins.module_utils._lxd import LxdClient
        verify = self.get_option("verify")
        return LxdClient(url=self.get_option("url"), client_cert=self.get_option("client_cert"),
                         client_key=self.get_option("client_key"), verify=True if verify is None else verify,
                         project=self.get_option("project"))
