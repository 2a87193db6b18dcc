#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: box
short_description: The whole box from its description, in one call
version_added: 0.1.0
description:
  - Brings the box described by O(services) to what it declares, in one module run - the
    containers (as M(homelab.onebox.lxd_instances) with O(owner) and pruning), what runs inside
    them (as M(homelab.onebox.lxd_provision)), the proxy's sites (as M(homelab.onebox.nginx_site)
    in the proxy container, with a catch-all default server) and the host's forwards (as
    M(homelab.onebox.dnat)).
  - The description is the one of the P(homelab.onebox.box_parts#filter) filter; see its
    documentation and C(docs/description.md) for every key.
  - Everything is validated first (the description, every derived container, file, site and
    forward), and the daemon (LXD or Incus) is read once, before anything changes. Containers get static addresses
    before they exist, so the sites and forwards are known up front.
  - The inside of a container is set up as soon as that container runs (while it is still getting
    its address, unless packages must be installed first), while others
    are still being created. Sites are applied (one C(nginx -t), at most one reload) once every
    container is done, then the forwards (one C(iptables-restore)).
  - If a container fails, the others still finish, and neither sites nor forwards are changed;
    the error names every failed container. A re-run continues from there.
  - O(parts) chooses which parts of the box this run applies; the
    P(homelab.onebox.service#role), P(homelab.onebox.reverse_proxy#role) and
    P(homelab.onebox.port_forward#role) roles call this module with theirs, so a box converged
    part by part goes through the same code as a box converged whole.
  - With O(state=absent), the parts given go (every container of O(owner), the proxy's with
    them, and the forwards); nothing else is touched. The box's storage volumes stay unless
    O(purge).
  - A service's C(volumes) are custom storage volumes (C(OWNER-SERVICE-NAME), or
    C(OWNER-shared-NAME) when C(shared)) in the pool of the default profile's root disk, marked with
    the owner and the service, made (or grown) before the containers that mount them and never
    deleted with them; only a purge deletes them - a removed service written with C(state=absent)
    and C(purge=true), or O(purge) on a teardown. A described volume that exists
    without the owner's mark is refused before any change.
  - Each container records what it is as an inventory host - its service (C(user.onebox.service)) and
    its kind, domains, routes, ports and forwards as JSON (C(user.onebox.host)) - read back by the
    P(homelab.onebox.box#inventory) inventory plugin; RV(hosts) gives the same.
  - A container records the image it was made from (C(user.onebox.image)); a service whose image
    changes gets its containers deleted and made again from the new one, their volumes attached
    again.
  - A container this run makes or changes whose service has a C(health) check (C(http) with a path or
    C(tcp) with a port, and C(expect), C(timeout)) is probed from the host at its address until it answers; one that
    does not fails the run naming its service, with the last lines of its journal. The sites are
    applied after every container is done, so the proxy routes to a new pool member only once it
    answers.
  - A change to a running pool (its files, packages, environment, setup steps, or its image) rolls
    - one member at a time is marked down in the pool's upstream (one C(nginx -t) and reload),
    changed, waited for (its C(health), else a connect to its port) and put back; a member that
    fails ends the roll, the others keep serving the previous version.
  - One module task for the whole box, because each Ansible task costs a module start; a box of many
    services costs the same few tasks as a box of one.
extends_documentation_fragment:
  - homelab.onebox.lxd
  - homelab.onebox.module
  - homelab.onebox.src
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    details:
      - A container that would be created is reported, but nothing inside it is compared; when the
        proxy container would be created, the sites are not compared either.
  diff_mode:
    details:
      - The containers' settings, the files inside containers (secrets masked), each site file and
        the forwarding rules, before and after.
options:
  parts:
    description:
      - The parts of the box this run applies. Every part is read and checked, before any change,
        whatever is chosen; the containers of the parts not chosen are only read (their addresses
        point sites and forwards at them).
      - V(containers) - the services' containers; the containers of O(owner) that are no longer
        described are deleted (within O(prune_max)).
      - V(insides) - what runs inside the services' containers (users, packages, files, services).
        Without V(containers), a container that does not exist fails the run (in check mode, it
        is skipped).
      - V(sites) - the proxy - its container, nginx inside it, and its sites (the description's
        and O(proxy.sites)).
      - V(forwards) - the host's forwards (the description's and O(forwards.extra)).
    type: list
    elements: str
    choices: [containers, insides, sites, forwards]
    default: [containers, insides, sites, forwards]
  services:
    description:
      - The box description, a list of services (name, kind, domains, routes, port, host_port,
        forwards, count, method, memory, memory_swap, cpus, boot, files, packages, user, command,
        environment, working_directory, restart, open_files, setup, after, health, proxy, image, adopt,
        allow_host_listener, tls, volumes, backup, backup_command, state, purge). See the
        P(homelab.onebox.box_parts#filter) filter and C(docs/description.md).
      - A service's C(volumes) - C({name, path, size, readonly, shared}) - are mounted into each of
        its containers. A service with C(state=absent) (and only C(name) besides, and C(purge)) builds
        nothing; with C(purge=true) its volumes are deleted once its containers are gone.
      - Values of each service's C(environment) are secrets; they are kept out of the output.
      - A C(files) item gives C(content), or C(src) - a file or a directory tree on the controller (a
        relative one looked for as M(ansible.builtin.copy) does), pushed by SHA-256 so only changed
        files move, with C(mode), C(owner), C(group), and for a directory C(sync=true) removing what
        the source no longer has under C(path). See M(homelab.onebox.lxd_provision) for the details.
      - A service's C(setup) - C({command, when_changed, creates, user, timeout}) steps - runs in each
        of its containers after its files and packages and before it is (re)started, as its user in
        its directory with its environment, when a declared file, package or environment key named in
        C(when_changed) changed (once without it), or C(creates) is missing; a failing step fails the
        run with the end of its output and the service is not restarted. C(restart) (systemd's
        C(Restart=), default C(always)) and C(open_files) (C(LimitNOFILE=)) go into its unit; C(after)
        lists services whose containers start before its own at boot (derived boot priorities).
      - A (re)started service must be running one second later, or the run fails naming it with the
        end of its journal; its logs are C(lxc exec CONTAINER -- journalctl -u onebox-NAME -f).
      - Required with O(state=present). An empty list would delete every container of O(owner), so
        it is refused (when O(parts) has V(containers)) unless O(allow_empty=true). A box is removed with O(state=absent) (the
        C(playbooks/teardown.yml) playbook).
    type: list
    elements: dict
  allow_empty:
    description:
      - Converge an empty O(services) (every container of O(owner) goes, within O(prune_max)).
    type: bool
    default: false
  prune_max:
    description:
      - How many of the owner's containers one run may delete (those no longer described) without
        O(prune_confirm). When omitted, more than one container and more than half of the owner's
        containers at once need O(prune_confirm). Those it deletes are named in a warning, in check mode too.
    type: int
  prune_confirm:
    description: Delete however many of the owner's containers are no longer described.
    type: bool
    default: false
  state:
    description:
      - V(present) builds the box; V(absent) removes the containers of O(owner) and the forwards.
    type: str
    choices: [present, absent]
    default: present
  owner:
    description:
      - Marks the box's containers (C(user.onebox.owner)). Containers of this owner that are not in
        the description are deleted; containers of other owners or of none are never touched.
      - A described container that exists without this mark (made by hand, or another owner's) fails
        the run before anything changes, unless its service says C(adopt=true).
      - Names the box's forwards too (their chains, saved rules, restore script), so boxes of
        different owners live side by side on one host.
    type: str
    default: onebox
  image:
    description: Image alias (or fingerprint) of the containers that name none, and of the proxy.
    type: str
    default: onebox-debian12
  parallel:
    description:
      - How many containers are worked on at once (created, started, set up inside).
      - A container waiting for a free worker starts late and is then the last to finish; LXD itself
        takes every container of a box at once, so the default covers a box of up to 16.
    type: int
    default: 16
  timeout:
    description: Seconds each command inside a container may take (package installs excepted).
    type: int
    default: 120
  package_timeout:
    description: Seconds a package install inside a container may take.
    type: int
    default: 600
  tls:
    description:
      - HTTPS for the box's domains. Given, every domain and route of a service is served over HTTPS
        with a certificate of its own (one per domain, named as its site), unless the service says
        otherwise (its C(tls) key - V(acme), V(provided) with C(certificate) and C(key), V(self_signed)
        or V(off)). Port 443 is forwarded to the proxy; plain HTTP answers 301 to HTTPS except
        C(/.well-known/acme-challenge/); HSTS and HTTP/2 are on; the default server refuses the TLS
        handshake of a name no site has.
      - ACME certificates are obtained by certbot inside the proxy over HTTP-01 (DNS-01 through
        O(tls.dns), required for a wildcard domain) and renewed there by a systemd timer
        (C(onebox-tls-renew.timer)) with nobody running Ansible; nginx is reloaded only after a
        renewal and a passing C(nginx -t). Until a certificate is issued its site serves a
        self-signed placeholder. The ACME account and the certificates live on a storage volume
        (C(PROXY-tls)) that outlives the proxy container; only O(purge) deletes it.
      - A certificate that cannot be obtained (DNS not pointing at the box yet, the CA down) is a
        warning, not a failure - its placeholder serves and the timer tries again.
    type: dict
    suboptions:
      email:
        description: The ACME account's contact e-mail (none when omitted).
        type: str
      directory:
        description: The ACME directory URL. Default Let's Encrypt's production directory.
        type: str
      staging:
        description: Let's Encrypt's staging directory instead of production (untrusted certificates, high rate limits).
        type: bool
      ca_bundle:
        description: PEM text of the CA that signs the ACME server's own HTTPS certificate, for a private ACME server.
        type: str
      key_type:
        description: The certificates' key type. Default V(ecdsa).
        type: str
        choices: [ecdsa, rsa]
      default:
        description: The C(tls) of a service that names none. Default V(acme).
        type: str
        choices: [acme, self_signed, "off"]
      redirect:
        description: Plain HTTP answers 301 to HTTPS (except the ACME challenge path). Default true.
        type: bool
      hsts:
        description: Send C(Strict-Transport-Security) on HTTPS answers. Default true.
        type: bool
      hsts_max_age:
        description: Its C(max-age) in seconds. Default 63072000 (two years).
        type: int
      hsts_include_subdomains:
        description: Add C(includeSubDomains). Default false.
        type: bool
      hsts_preload:
        description: Add C(preload) (needs O(tls.hsts_include_subdomains)). Default false.
        type: bool
      dns:
        description:
          - DNS-01, for wildcard domains and services whose C(tls.challenge) is V(dns). Either
            C(auth_hook) and C(cleanup_hook), the text of scripts certbot's manual plugin runs in the
            proxy (C(CERTBOT_DOMAIN) and C(CERTBOT_VALIDATION) in their environment), or C(plugin),
            a certbot DNS plugin of Debian (C(python3-certbot-dns-PLUGIN) is installed) with
            C(credentials), the text of its credentials file (a secret), and
            C(propagation_seconds).
        type: dict
      renew_calendar:
        description: When the renewal timer runs (systemd C(OnCalendar)). Default twice a day, with up to an hour of random delay.
        type: str
  purge:
    description:
      - With O(state=absent), also delete the box's storage volumes - every custom volume of the pool
        marked with O(owner), the services' and the proxy's certificates and ACME account alike - once
        the containers are gone. Without it a teardown keeps them, and a box converged again finds
        its data and serves the same certificates, ordering none. Needs V(containers) in O(parts).
    type: bool
    default: false
  upgrade:
    description:
      - Debian's updates inside every container this run keeps (C(playbooks/upgrade.yml)) - the
        package lists refreshed, the pending upgrades installed keeping the configuration files
        the box wrote, the container's services restarted and, when its service has a C(health),
        waited for. A container with nothing pending is not touched.
      - A pool's members are upgraded one at a time - drained from the proxy, upgraded, healthy,
        put back - as for any rolling change; the other containers one at a time too. A container
        just made is as new as its image and is left alone.
      - In check mode the package lists the containers have are read as they are (refreshing them
        would change the container), so the upgrades reported may be fewer than a real run finds.
    type: bool
    default: false
  follow_images:
    description:
      - A container made from another image than the one its image alias names now (LXD records it
        as C(volatile.base_image)) is re-created from the alias's image, as for a service whose
        C(image) changed - its volumes attached again, a pool one member at a time. This is how a
        box moves onto a base image rebuilt under the same alias (C(playbooks/upgrade.yml) with
        C(rebuild=true)).
    type: bool
    default: false
  proxy:
    description: The proxy container, made when a service is served over HTTP or O(proxy.sites) is given.
    type: dict
    default: {}
    suboptions:
      name:
        description: Its container name. Default C(OWNER-proxy) (C(onebox-proxy) for the default owner).
        type: str
      memory:
        description: Its memory limit (as C(memory) of M(homelab.onebox.lxd_instance)).
        type: str
      cpus:
        description: Its CPU limit (as C(cpus) of M(homelab.onebox.lxd_instance)).
        type: str
      autostart_priority:
        description:
          - Its boot priority. Higher starts earlier, so by default the proxy starts before the
            services (nginx reaches them by address at each request).
        type: int
        default: 90
      conf_dir:
        description: The directory of the site files inside it.
        type: path
        default: /etc/nginx/conf.d
      log_dir:
        description: The directory of each site's access and error logs inside it.
        type: path
        default: /var/log/nginx
      catch_all:
        description: Whether a default server answers 404 to names no service claims.
        type: bool
        default: true
      sites:
        description:
          - Sites beyond the description's, each a site of O(homelab.onebox.nginx_site#module:sites)
            (a backend named by host name is resolved by nginx when it loads).
        type: list
        elements: dict
        default: []
  forwards:
    description: How the host's forwards are kept (the forwards themselves come from O(services)).
    type: dict
    default: {}
    suboptions:
      extra:
        description: More forwards, as O(homelab.onebox.dnat#module:forwards) items.
        type: list
        elements: dict
        default: []
      isolate:
        description: As O(homelab.onebox.dnat#module:isolate), for example the box's bridge.
        type: list
        elements: str
        default: []
      chain_prefix:
        description: As O(homelab.onebox.dnat#module:chain_prefix); derived from O(owner) when omitted.
        type: str
      backend:
        description: As O(homelab.onebox.dnat#module:backend).
        type: str
        choices: [auto, nft, legacy]
        default: auto
      ip_forward:
        description: As O(homelab.onebox.dnat#module:ip_forward).
        type: bool
        default: true
      sysctl_file:
        description: As O(homelab.onebox.dnat#module:sysctl_file); derived from O(owner) when omitted.
        type: path
      save_path:
        description: As O(homelab.onebox.dnat#module:save_path); derived from O(owner) when omitted.
        type: path
      restore_script:
        description: As O(homelab.onebox.dnat#module:restore_script); derived from O(owner) when omitted.
        type: path
notes:
  - Runs on the LXD host (it manages the host's iptables). Needs pylxd there.
  - The boot-time unit that restores the forwards is the P(homelab.onebox.box#role) role's (it
    needs systemd).
  - "A run longer than 5 seconds says how many containers are done while it goes, on stderr: a
    line C([HOST] box: 4 of 11 containers done) with the seconds so far, each time the count
    changes, and C(11 of 11) when the run ends well. The module writes the count in the task's
    temporary directory; its action plugin reads it through the task's connection once a second.
    The controller's environment variable C(ONEBOX_PROGRESS_AFTER) sets the seconds (V(0): from
    the start; a negative value: never; anything but a number fails the task before the module runs)."
seealso:
  - module: homelab.onebox.lxd_instances
  - module: homelab.onebox.lxd_provision
  - module: homelab.onebox.nginx_site
  - module: homelab.onebox.dnat
"""

EXAMPLES = r"""
- name: A static site, an app behind the proxy, and a UDP service
  homelab.onebox.box:
    owner: mybox
    services:
      - name: www
        domains: [www.example.org]
        files:
          - {path: /var/www/html/index.html, content: "<h1>hello</h1>\n"}
      - name: api
        domains: [api.example.org]
        port: 8000
        command: [/usr/bin/python3, -m, http.server, "8000"]
        environment: {API_TOKEN: "{{ vault_api_token }}"}
      - name: vpn
        kind: plain
        command: [/usr/local/bin/vpn-server]
        forwards: [{proto: udp, port: 51820}]
    forwards:
      isolate: [lxdbr0]

- name: The whole box gone
  homelab.onebox.box:
    owner: mybox
    state: absent
"""

RETURN = r"""
instances:
  description:
    - One result per container of the parts applied, as M(homelab.onebox.lxd_instances) returns them.
    - A container re-created from a new image has the actions C(delete), C(create), C(start) and
      C(recreated), why (C(image OLD -> NEW)).
  returned: always
  type: list
  elements: dict
addresses:
  description: IPv4 addresses by container name.
  returned: always
  type: dict
  sample: {www: [10.87.0.10], onebox-proxy: [10.87.0.13]}
pruned:
  description: Containers of O(owner) deleted because they are no longer described.
  returned: always
  type: list
  elements: str
provision:
  description: Per container, what was changed inside it (C(name), C(changed), C(actions)), as M(homelab.onebox.lxd_provision) returns it.
  returned: always
  type: list
  elements: dict
sites:
  description: Each site file of the proxy and what happened to it (C(name), C(file), C(action)).
  returned: when O(parts) has V(sites), the box has a proxy and it could be compared
  type: list
  elements: dict
reloaded:
  description: Whether nginx in the proxy was reloaded.
  returned: when O(parts) has V(sites)
  type: bool
forwards:
  description: The forwards in place, as M(homelab.onebox.dnat) returns them.
  returned: when O(parts) has V(forwards)
  type: list
  elements: dict
rules:
  description: The collection's iptables rules, as M(homelab.onebox.dnat) returns them.
  returned: when O(parts) has V(forwards)
  type: str
certificates:
  description:
    - Each HTTPS site's certificate - C(name), C(mode), C(serving) (V(acme), V(placeholder),
      V(self_signed), V(provided)), C(pending) and C(action) (V(obtained), V(failed),
      V(requested) in check mode, V(none)).
  returned: when O(parts) has V(sites) and the box has HTTPS sites
  type: list
  elements: dict
volumes:
  description:
    - The box's storage volumes this run keeps or deletes - the services' (with the V(containers)
      part), the proxy's certificates (with the V(sites) part) - and what happened to each.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The volume's name in LXD (C(OWNER-SERVICE-NAME), C(OWNER-shared-NAME), C(PROXY-tls)).
      type: str
    pool:
      description: Its storage pool.
      type: str
    service:
      description: The service it belongs to (null for a shared volume and the proxy's).
      type: str
    action:
      description: V(create), V(resize), V(delete) (a purge) or V(none).
      type: str
  sample: [{name: mybox-db-data, pool: default, service: db, action: create}]
upgraded:
  description:
    - With O(upgrade), per container the packages its upgrade changed (would change, in check
      mode) - C(NAME FROM -> TO).
  returned: always
  type: dict
  sample: {web-1: ["libssl3 3.0.15-1~deb12u1 -> 3.0.17-1~deb12u2"]}
healthy:
  description:
    - The containers this run made or changed whose service has a C(health) check (and the pool
      members it made or changed, checked at least on their port), with the seconds it took them
      to pass it.
  returned: always
  type: dict
  sample: {shop: 1.4, web-1: 0.2}
volumes_kept:
  description:
    - Volumes of O(owner) no longer described that this run unmounted (their service or its
      container went) and kept; a purge deletes them.
  returned: always
  type: list
  elements: str
hosts:
  description:
    - Each container of the description as an inventory host, for M(ansible.builtin.add_host) (the
      P(homelab.onebox.box#role) role adds them) - C(name) (the container's), C(groups) (C(onebox),
      C(onebox_SERVICE), C(onebox_kind_KIND), C(onebox_owner_OWNER); other characters than letters,
      digits and C(_) made C(_)) and C(vars) (C(onebox_owner), C(onebox_service) - null for the proxy,
      C(onebox_kind), C(onebox_domains), C(onebox_routes), C(onebox_port), C(onebox_host_port),
      C(onebox_forwards) as described, C(onebox_address) - its IPv4 address, null when none).
    - The same as the P(homelab.onebox.box#inventory) inventory plugin gives, which reads them back from
      the containers' marks (C(user.onebox.service), C(user.onebox.host)). See C(docs/inventory.md).
    - Empty with O(state=absent).
  returned: always
  type: list
  elements: dict
  sample:
    - name: web-1
      groups: [onebox, onebox_owner_mybox, onebox_kind_pool, onebox_web]
      vars: {onebox_owner: mybox, onebox_service: web, onebox_kind: pool, onebox_domains: [www.example.org],
             onebox_routes: [], onebox_port: 80, onebox_host_port: null, onebox_forwards: [],
             onebox_address: 10.87.0.10}
lxd_url:
  description:
    - The daemon this run talked to, as O(lxd_url) takes it - C(unix:) and the socket found (or given),
      or the C(https://) URL given.
  returned: always
  type: str
  sample: unix:/var/lib/lxd/unix.socket
forwards_kept:
  description:
    - Where the box's forwards are kept, as M(homelab.onebox.dnat) returns them (C(owner),
      C(chain_prefix), C(save_path), C(restore_script), C(sysctl_file), C(unit_name)); the boot unit
      of the P(homelab.onebox.box#role) role is made from these.
  returned: when O(parts) has V(forwards)
  type: dict
  sample: {owner: mybox, chain_prefix: MYBOX, save_path: /etc/onebox/dnat-mybox.rules,
           restore_script: /usr/local/sbin/onebox-dnat-restore-mybox,
           sysctl_file: /etc/sysctl.d/60-onebox-ip-forward-mybox.conf, unit_name: onebox-dnat-mybox.service}
"""

import inspect
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.homelab.onebox.plugins.module_utils import _nginx_target as nginx_target
from ansible_collections.homelab.onebox.plugins.module_utils import _tls_agent
from ansible_collections.homelab.onebox.plugins.module_utils import _validate
from ansible_collections.homelab.onebox.plugins.module_utils._box import parse_box
from ansible_collections.homelab.onebox.plugins.module_utils._box_hosts import inventory_host
from ansible_collections.homelab.onebox.plugins.module_utils._box_rollout import Rollout
from ansible_collections.homelab.onebox.plugins.module_utils._box_service import VOLUME_DEVICE_PREFIX, file_fields, secret_values
from ansible_collections.homelab.onebox.plugins.module_utils._box_tls import ARGUMENT_SPEC as TLS_SPEC, AGENT_PATH, CONF_DIR as TLS_CONF_DIR, tls_secrets
from ansible_collections.homelab.onebox.plugins.module_utils._dnat_host import ARGUMENT_SPEC as DNAT_SPEC, DnatManager
from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError, ValidationError, named_failure
from ansible_collections.homelab.onebox.plugins.module_utils._health import HealthError, describe as describe_check, wait_healthy
from ansible_collections.homelab.onebox.plugins.module_utils._instance_set import InstanceSet, parse_instances, warn_pruned
from ansible_collections.homelab.onebox.plugins.module_utils._lxd import find_socket
from ansible_collections.homelab.onebox.plugins.module_utils._module import OneboxModule
from ansible_collections.homelab.onebox.plugins.module_utils._nginx import SiteSet
from ansible_collections.homelab.onebox.plugins.module_utils._nginx_render import catch_all_site
from ansible_collections.homelab.onebox.plugins.module_utils._nginx_site import parse_sites
from ansible_collections.homelab.onebox.plugins.module_utils._progress import Progress, progress_path
from ansible_collections.homelab.onebox.plugins.module_utils._provision import TAIL_LINES, Provisioner, take_diff
from ansible_collections.homelab.onebox.plugins.module_utils._provision_spec import parse_inside, unit_name
from ansible_collections.homelab.onebox.plugins.module_utils._tls import ProxyCertificates
from ansible_collections.homelab.onebox.plugins.module_utils._upgrade import Upgrade
from ansible_collections.homelab.onebox.plugins.module_utils._volume import VolumeSet

PARTS = ("containers", "insides", "sites", "forwards")
# How long a changed pool member without a ``health`` may take to accept connections.
POOL_HEALTH_SECONDS = 60
# The dnat options a box passes through (its forwards come from the description).
_DNAT_OPTIONS = ("isolate", "chain_prefix", "backend", "ip_forward", "sysctl_file", "save_path", "restore_script")

ARGUMENT_SPEC = dict(
    parts=dict(type="list", elements="str", choices=list(PARTS), default=list(PARTS)),
    services=dict(type="list", elements="dict"),
    allow_empty=dict(type="bool", default=False),
    prune_max=dict(type="int"),
    prune_confirm=dict(type="bool", default=False),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    owner=dict(type="str", default="onebox"),
    image=dict(type="str", default="onebox-debian12"),
    parallel=dict(type="int", default=16),
    timeout=dict(type="int", default=120),
    package_timeout=dict(type="int", default=600),
    tls=dict(type="dict", options=TLS_SPEC),
    purge=dict(type="bool", default=False),
    upgrade=dict(type="bool", default=False),
    follow_images=dict(type="bool", default=False),
    proxy=dict(type="dict", default={}, apply_defaults=True, options=dict(
        name=dict(type="str"),
        memory=dict(type="str"),
        cpus=dict(type="str"),
        autostart_priority=dict(type="int", default=90),
        conf_dir=dict(type="path", default="/etc/nginx/conf.d"),
        log_dir=dict(type="path", default="/var/log/nginx"),
        catch_all=dict(type="bool", default=True),
        sites=dict(type="list", elements="dict", default=[]),
    )),
    forwards=dict(type="dict", default={}, apply_defaults=True, options=dict(
        {key: DNAT_SPEC[key] for key in _DNAT_OPTIONS},
        extra=dict(type="list", elements="dict", default=[]),
    )),
)


class Insides:
    """What runs inside the containers: one Provisioner per container, read, planned and applied
    as soon as that container runs (``then`` is InstanceSet.apply's callback). A pool member
    about to change first takes its pool's turn (``rollout``, a Rollout); ``finish(name, changed,
    settle)`` is what follows a container's inside (its upgrade, the wait for its health)."""

    def __init__(self, lxd, specs, check_mode, diff, timeout, package_timeout, rollout=None, finish=None):
        self.lxd, self.specs, self.check_mode, self.diff = lxd, specs, check_mode, diff
        self.timeout, self.package_timeout = timeout, package_timeout
        self.rollout, self.finish = rollout, finish
        self.workers = {}

    def changed(self, name):
        """Whether this run changes (changed, in check mode) the container's inside."""
        worker = self.workers.get(name)
        return worker is not None and worker.planned is not None and worker.planned.changed

    def then(self, spec, result, settle):
        if spec.name in self.specs:
            self.converge(spec.name, "create" in result["actions"], settle)

    def converge(self, name, new, settle):
        if self.check_mode and new:
            return  # a container that would be created has nothing inside to compare yet
        worker = self.workers[name] = Provisioner(self.lxd, self.specs[name], self.timeout, self.package_timeout,
                                                  self.diff)
        worker.read()
        if worker.plan().packages:
            settle()  # packages come through the network: the container needs its address first
        if worker.planned.changed and not self.check_mode:
            if self.rollout is not None:
                self.rollout.take(name)
            worker.apply()

    def alone(self, names, current, parallel, done=None):
        """The insides of ``names``, containers this run does not make: each must be there (in
        check mode one that is not is skipped, as one that would be made). ``done()`` as each
        container's work ends."""
        missing = sorted(name for name in names if name not in current)
        if missing and not self.check_mode:
            raise OneboxError("%s: no such container; the containers part (parts: [containers]) makes it"
                              % ", ".join(missing), failed_instances=missing)
        errors = []

        def one(name):
            ok = False
            try:
                self.converge(name, False, lambda: None)
                if self.finish is not None:
                    self.finish(name, self.changed(name), lambda: None)
                ok = True
            except OneboxError as exc:
                errors.append((name, exc))
            finally:
                if self.rollout is not None:
                    self.rollout.release(name, ok)
                if done is not None:
                    done()
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            list(pool.map(one, [name for name in names if name in current]))
        if errors:
            raise named_failure(sorted(errors, key=lambda item: item[0]))

    def result(self, order):
        """``changed``, ``provision`` (the Provisioners' results in ``order``) and, in diff mode,
        ``diff``: one entry of every changed container's files."""
        results = [self.workers[name].result() for name in order if name in self.workers]
        diff = take_diff(results)
        result = dict(changed=any(w.planned.changed for w in self.workers.values()), provision=results)
        if self.diff:
            result["diff"] = [diff]
        return result


class BoxManager:
    """One description, the parts of the box it asks for: everything read and checked first, then
    the containers (each one's inside as soon as it runs), the proxy's sites, the forwards."""

    def __init__(self, module):
        self.module = module
        params = module.params
        _validate.at_least_one(params, ("parallel", "timeout", "package_timeout"))
        self.parts = set(params["parts"])
        self.present = params["state"] == "present"
        if self.present and "containers" in self.parts and not params["services"] and not params["allow_empty"]:
            raise ValidationError("services", params["services"],
                                  "an empty description would delete every container of owner %s; a box is removed "
                                  "with state: absent (playbooks/teardown.yml), and an empty one is converged only "
                                  "with allow_empty: true (onebox_allow_empty)" % params["owner"])
        proxy = params["proxy"]
        extra_sites = proxy["sites"] if self.present else []
        # Checked as the user wrote them (proxy.sites[0]...) whatever the parts; checked again in
        # _sites() with the description's, for names used twice. Given, they make the proxy part of
        # the box in every run: a run of other parts must not prune it.
        parse_sites(extra_sites, "proxy.sites")
        self.box = parse_box(params["services"] or [] if self.present else [], dict(
            owner=params["owner"], image=params["image"], proxy_name=proxy["name"], proxy_memory=proxy["memory"],
            proxy_cpus=proxy["cpus"], proxy_priority=proxy["autostart_priority"], proxy_sites=bool(extra_sites),
            tls=params["tls"] if self.present else None))
        if not self.present and params["purge"] and "containers" not in self.parts:
            raise ValidationError("purge", True, "a purge deletes the box's volumes once its containers are gone: "
                                                 "it needs the containers part")
        # The box's volumes (the services' and the proxy's certificates) live in the pool of the
        # default profile's root disk; the containers part keeps the services' (and purges), the
        # sites part the proxy's.
        self.wanted_volumes = []
        if "containers" in self.parts:
            self.wanted_volumes += self.box.volumes()
        if "sites" in self.parts and self.box.tls_active:
            self.wanted_volumes.append({
                "name": self.box.tls_volume, "size": None, "service": None, "shared": False, "field": "tls",
                "description": "homelab.onebox: the certificates and ACME account of %s" % self.box.tls_volume})
        self.purged_services = {service.name: service.where("purge") for service in self.box.removed if service.purge}
        pool = root_pool(module.lxd, required=bool(self.wanted_volumes or self.box.volumes() or self.purged_services
                                                   or (not self.present and params["purge"])))
        self.volume_set_wanted = pool is not None and ("containers" in self.parts or bool(self.wanted_volumes))
        if pool is not None:
            self.box.options["volume_pool"] = pool
        if self.box.tls_active:
            self.box.options["tls_agent"] = agent_source()  # read only for a box that ships it
        self.instance_specs = parse_instances(self.box.instances(), params["owner"])
        for spec in self.instance_specs:
            spec.field = self.box.field_of(spec.name)
            spec.owned_devices = VOLUME_DEVICE_PREFIX  # a volume no longer described leaves its containers
        # Named after the service they come from (services[web].files[0].mode), as the user wrote it.
        self.inside_specs = {item["name"]: parse_inside(item, self.box.field_of(item["name"]))
                             for item in self.box.provision() if self._wants_inside(item["name"])}
        self.dnat_params = self._dnat_params() if "forwards" in self.parts else None
        self.service_of = {member: service for service in self.box.services for member in service.members}
        self.healthy = {}   # container -> seconds its health check took this run
        self.upgraded = {}  # container -> the packages its upgrade changed (would change, in check mode)
        # The containers of no pool are upgraded one at a time (a pool's members take their turns).
        self.upgrade_turn = threading.Lock()
        self.rollout = None

    def _wants_inside(self, name):
        """The proxy's inside is the sites part's; the services' the insides part's."""
        return ("sites" if name == self.box.proxy else "insides") in self.parts

    def _applied(self):
        """The containers this run makes and changes: the services' with the containers part,
        the proxy with the sites part."""
        return {spec.name for spec in self.instance_specs
                if ("sites" if spec.name == self.box.proxy else "containers") in self.parts}

    def _dnat_params(self):
        given = self.module.params["forwards"]
        params = {key: given[key] for key in _DNAT_OPTIONS}
        # The box's owner names its forwards (chains, saved rules, restore script, boot unit).
        params.update(owner=self.module.params["owner"], state="present" if self.present else "absent",
                      forwards=self.box.forwards() + list(given["extra"]) if self.present else [])
        checked = ArgumentSpecValidator(DNAT_SPEC).validate(params)
        if checked.error_messages:
            raise ValidationError("forwards", params["forwards"], "; ".join(checked.error_messages))
        return checked.validated_parameters

    @staticmethod
    def forward_field(field, fields):
        """dnat names a forward forwards[i] (the i-th of the box's, then the extra ones): the
        description's name for it instead (``fields``: the box's forward_fields(), so
        services[vpn].forwards[0], services[web].host_port)."""
        index = int(field[len("forwards["):].split("]")[0]) if field.startswith("forwards[") else -1
        if 0 <= index < len(fields):
            return fields[index]
        return "forwards.extra[%d]" % (index - len(fields)) if index >= 0 else field

    def run(self):
        # How many containers are done, for the action plugin to show while the run is long
        # (in the task's temporary directory, which the controller made and reads).
        self.progress = Progress(progress_path(getattr(self.module, "_tmpdir", None)))
        try:
            return self._run()
        finally:
            self.progress.close()

    def _run(self):
        module, params = self.module, self.module.params
        lxd, check, diff = module.lxd, module.check_mode, module._diff
        # 1. Read and plan every part: each refusal comes before any change.
        volumes = self._volume_set()
        applied = self._applied()
        containers = InstanceSet(lxd, self.instance_specs, owner=params["owner"], prune="containers" in self.parts,
                                 check_mode=check, diff=diff, prune_max=params["prune_max"],
                                 # A teardown deletes the whole box: that is what it is for.
                                 prune_confirm=params["prune_confirm"] or not self.present, only=applied)
        with ThreadPoolExecutor(max_workers=1) as side:
            volume_read = side.submit(volumes.read) if volumes is not None else None
            containers.read()  # the listing of every instance: the volumes' one request beside it
        if params["follow_images"]:
            self._follow_images()
        if volume_read is not None:
            volume_read.result()
        # The volumes a purge deletes are named with the containers a prune deletes (its guard
        # too); one of them still mounted by a container this run keeps is refused.
        containers.plan(volumes=volumes.doomed() if volumes is not None else ())
        if volumes is not None:
            volumes.plan(leaving={spec.name for spec in containers.doomed})
        warn_pruned(module, containers)
        if volumes is not None and volumes.kept:
            module.warn("%s the storage volumes of owner %s that are no longer described: %s (a service written "
                        "{name: SERVICE, state: absent, purge: true}, or a teardown with purge, deletes them)"
                        % ("would keep" if check else "keeping", params["owner"], ", ".join(volumes.kept)))
        # Static addresses are fixed now, so sites and forwards are known (and checked) up front.
        self.box.addresses = addresses = containers.static_addresses()
        sites = self._sites() if "sites" in self.parts else None
        forwards = None
        if "forwards" in self.parts:
            fields = self.box.forward_fields()
            forwards = DnatManager(module, self.dnat_params, addresses={name: ips[0] for name, ips in addresses.items()},
                                   field_of=lambda field: self.forward_field(field, fields))
            forwards.read()
            forwards.plan()
        # 2. The containers, each one's inside as soon as it runs; then the sites, then the forwards.
        if volumes is not None:
            volumes.apply()  # made and grown before the containers that mount them are made or changed
        running = [name for name, inst in containers.current.items() if inst.get("status") == "Running"]
        recreated = {name for name, _why in containers.recreated}
        self.rollout = rollout = Rollout(self.box.services, running, check_mode=check, warn=module.warn,
                                         drain=self._drain if self._can_drain(containers.current, recreated) else None)
        insides = Insides(lxd, self.inside_specs, check, diff, params["timeout"], params["package_timeout"],
                          rollout=rollout, finish=self._finish)
        site_set, site_read, placings = self._site_set(sites), [], []
        certs = self._certificates(site_set)

        def then(spec, result, settle):
            proxy_now = site_set is not None and spec.name == self.box.proxy
            new = "create" in result["actions"]
            if proxy_now and not (check and new):
                # The proxy's site files, read beside its inside and the other containers.
                site_read.append(reading.submit(site_set.read))
            early = proxy_now and certs is not None and not check and not new
            if early:
                # Its certificates placed (links nginx -t will want) beside its inside too: on a
                # box that changes nothing that is the answer; placed again below if the agent's
                # files change.
                placings.append(reading.submit(certs.place))
            insides.then(spec, result, settle)
            self._finish(spec.name, bool(result["actions"]) or insides.changed(spec.name), settle,
                         new="create" in result["actions"])
            if proxy_now and certs is not None:
                changed = self._agent_files_changed(insides)
                if not early or changed is None or changed:
                    missing = changed is None or changed.get(AGENT_PATH) == "none"
                    placings.append(reading.submit(certs.place, check and (new or missing)))

        @contextmanager
        def around(spec):
            """A container's whole work: a pool member re-created from a new image takes its
            pool's turn first (its re-creation is its change); its turn ends with its work."""
            if spec.name in recreated:
                rollout.take(spec.name)
            ok = False
            try:
                yield
                ok = True
            finally:
                rollout.release(spec.name, ok)

        # Counted done: each container made, changed or deleted (with its inside), then each one
        # whose inside only this run converges.
        elsewhere = [name for name in self.inside_specs if name not in applied]
        self.progress.start((len(containers.applied) + len(containers.doomed) if applied or containers.doomed else 0)
                            + sum(1 for name in elsewhere if name in containers.current))
        if applied or containers.doomed:
            with ThreadPoolExecutor(max_workers=2) as reading:
                containers.apply(params["parallel"], then=then, around=around, done=self.progress.done)
            result = containers.result()
        else:
            result = dict(changed=False, instances=[], addresses={}, pruned=[])
        result["addresses"] = dict(addresses, **result["addresses"])
        result["healthy"] = self.healthy
        result["upgraded"] = self.upgraded
        result["changed"] = result["changed"] or bool(self.upgraded)
        if elsewhere:
            insides.alone(elsewhere, containers.current, params["parallel"], done=self.progress.done)
        diffs = result.pop("diff", [])
        inside_result = insides.result([spec.name for spec in self.instance_specs])
        result["provision"] = inside_result["provision"]
        result["changed"] = result["changed"] or inside_result["changed"]
        diffs.extend(inside_result.get("diff", []))
        if sites is not None:
            diffs.extend(self._converge_sites(site_set, site_read, placings, result, certs))
        if forwards is not None:
            forwards.apply()
            forward_result = forwards.result()
            result.update(forwards=forward_result["forwards"], rules=forward_result["rules"],
                          forwards_kept=forwards.names())
            result["changed"] = result["changed"] or forward_result["changed"]
            diffs.extend(forward_result.get("diff", []))
        if certs is not None and certs.placed is not None:
            # The CA reaches the challenge through the sites and the forwards, both in place now.
            certs.obtain(reload=bool(certs.placed["changed"]) and not result.get("reloaded"))
            cert_result = certs.result()
            result["certificates"] = cert_result["certificates"]
            result["changed"] = result["changed"] or cert_result["changed"]
            diffs.extend([cert_result["diff"]] if diff else [])
        result["volumes"], result["volumes_kept"] = [], []
        if volumes is not None:
            volumes.apply_deletions()  # purged once the containers that mounted them are gone
            volume_result = volumes.result()
            if diff and volume_result["changed"]:
                diffs.append(volume_result["diff"])
            result.update(volumes=volume_result["volumes"], volumes_kept=volume_result["kept"])
            result["changed"] = result["changed"] or volume_result["changed"]
        result.update(self._hosts(result["addresses"]))
        if diff:
            result["diff"] = diffs
        return result

    def _hosts(self, addresses):
        """``hosts``: each container of the description as an inventory host (_box_hosts), at its
        address; ``lxd_url``: the daemon as this run reached it (the role points the hosts'
        connection at it)."""
        return {"hosts": [inventory_host(host, (addresses.get(host["name"]) or [None])[0]) for host in self.box.hosts],
                "lxd_url": daemon_url(self.module.params.get("lxd_url"))}

    def _volume_set(self):
        """The box's VolumeSet (None when this run keeps no volume): the services' with the
        containers part (and a removed service's purge), the proxy's with the sites part, every
        volume of the owner on a teardown's purge."""
        if not self.volume_set_wanted:
            return None
        params = self.module.params
        containers = "containers" in self.parts
        return VolumeSet(self.module.lxd, self.box.options["volume_pool"], params["owner"], self.wanted_volumes,
                         purge_services=self.purged_services if containers else None,
                         purge_all=not self.present and params["purge"], complete=containers,
                         check_mode=self.module.check_mode, diff=self.module._diff)

    def _site_set(self, sites):
        """The proxy's SiteSet (None without the sites part or a proxy)."""
        if sites is None or not self.box.proxy:
            return None
        module = self.module
        return SiteSet(self._nginx(), sites, prune=True, check_mode=module.check_mode, diff=module._diff,
                       warn=module.warn)

    def _nginx(self):
        """nginx in the proxy container, as SiteSet works on it."""
        params = self.module.params
        return nginx_target.LxdTarget(self.module.lxd, self.box.proxy, params["proxy"]["conf_dir"],
                                      nginx_target.test_and_dump_command("nginx"), nginx_target.reload_command("nginx"),
                                      timeout=max(params["lxd_timeout"] or 30, 30))

    def _can_drain(self, current, recreated):
        """Whether a rolling change can drain pool members: this run applies the sites, and the
        proxy runs before it and is not re-created by it."""
        proxy = self.box.proxy
        return ("sites" in self.parts and bool(proxy) and proxy not in recreated
                and (current.get(proxy) or {}).get("status") == "Running")

    def _drain(self, service, member):
        """The sites holding ``service``'s upstream applied with ``member`` down (one nginx -t and
        reload); the other sites are left as they are until the box's sites are applied."""
        sites = [site for site in self._sites(down=(member,))
                 if any(upstream["name"] == service.name for upstream in site.get("upstreams") or ())]
        drained = SiteSet(self._nginx(), sites, prune=False, warn=self.module.warn)
        drained.read()
        drained.plan()
        drained.apply()

    def _follow_images(self):
        """Each container follows the image its alias names now: one made from another (a base
        image rebuilt under the same alias) is re-created from it, as for a new image."""
        fingerprints = {}
        for spec in self.instance_specs:
            if spec.state == "absent" or not spec.image:
                continue
            if spec.image not in fingerprints:
                alias = self.module.lxd.image_alias(spec.image)
                fingerprints[spec.image] = alias["target"] if alias else None  # a fingerprint follows nothing
            spec.image_fingerprint = fingerprints[spec.image]

    def _finish(self, name, changed, settle, new=False):
        """What follows a container's inside: Debian's updates, when this run upgrades (not in a
        container just made: it is as new as its image), then the wait for its health."""
        if self.module.params["upgrade"] and not new:
            settle()  # apt needs the network
            changed = self._upgrade(name) or changed
        self._await_health(name, changed, settle)

    def _upgrade(self, name):
        """The container's pending upgrades installed (a pool member in its pool's turn, drained;
        any other container one at a time) and its services restarted. Whether it changed."""
        upgrade = Upgrade(self.module.lxd, name, timeout=self.module.params["package_timeout"],
                          check_mode=self.module.check_mode)
        if not upgrade.pending():
            return False
        self.upgraded[name] = ["%s %s -> %s" % (p["name"], p["from"], p["to"]) for p in upgrade.packages]
        if self.module.check_mode:
            return True
        spec = self.inside_specs.get(name)
        units = [svc.unit for svc in spec.services if svc.state == "started"] if spec is not None else []
        if self.rollout.rolls(name):
            self.rollout.take(name)  # its turn lasts until it is healthy
            upgrade.apply(units)
        else:
            with self.upgrade_turn:
                upgrade.apply(units)
        return True

    def _await_health(self, name, changed, settle):
        """A container this run changed (made, re-created, or changed inside): once its service
        answers its health check - a pool member answers at least on its port, before its turn
        goes to the next member or the sites take it in. Recorded in ``healthy`` (seconds waited)."""
        service = self.service_of.get(name)
        if service is None or not changed or self.module.check_mode:
            return
        check = health_check(service)
        if check is None:
            return
        settle()  # its address, before anything can reach it
        address = (self.box.addresses.get(name) or [name])[0]
        try:
            self.healthy[name] = round(wait_healthy(address, check), 2)
        except HealthError as exc:
            raise OneboxError("%s is %s; %s" % (service.where(), exc.msg, journal_tail(self.module.lxd, name, service)),
                              service=service.name, health=describe_check(address, check))

    def _certificates(self, site_set):
        """The proxy's ProxyCertificates (None without the sites part or a proxy keeping any)."""
        if site_set is None or not self.box.tls_active:
            return None
        return ProxyCertificates(self.module.lxd, self.box.proxy, self.box.tls.certificates(),
                                 self.box.tls.config(self.module.params["owner"]), check_mode=self.module.check_mode,
                                 diff=self.module._diff, warn=self.module.warn)

    def _agent_files_changed(self, insides):
        """The TLS agent's files this run changes in the proxy, path -> what is there now (``none``:
        missing), or None when the proxy's inside was not planned. Any change makes a placing done
        before it stale; a missing agent (check mode) cannot be asked anything."""
        worker = insides.workers.get(self.box.proxy)
        if worker is None:
            return None
        return {fspec.path: current.kind for fspec, current in worker.planned.changed_files
                if fspec.path.startswith((AGENT_PATH, TLS_CONF_DIR))}

    def _converge_sites(self, site_set, site_read, placings, result, certs):
        """The proxy's sites, once every container is done (nginx started if the proxy was
        restarted; its files read and its certificates placed already when ``site_read`` holds
        those steps); its diff entries."""
        module, lxd, params, proxy = self.module, self.module.lxd, self.module.params, self.box.proxy
        result["reloaded"] = False
        if site_set is None:
            return []
        actions = next((r["actions"] for r in result["instances"] if r["name"] == proxy), [])
        if module.check_mode and "create" in actions:
            return []  # no proxy yet: nothing to compare the sites with
        if not module.check_mode and "restart" in actions:
            # Restarted after its set-up (it did not hold its static address): nginx starts only
            # once the network is up, and a reload before that finds no nginx. `systemctl start`
            # waits for the start job already queued.
            lxd.run(proxy, ["systemctl", "start", "nginx.service"], timeout=params["timeout"])
        if site_read or placings:
            for step in site_read:
                step.result()
            if placings:
                # A placing made stale by this run's new agent files may have failed (the agent
                # replaced under it); the one after them counts.
                certs.placed = placings[-1].result()
            if self.rollout.drained:
                site_set.read()  # read beside the containers, before or amid the drains: read what they left
        else:
            site_set.read()  # the proxy was not made or changed by this run (it is only read)
            if certs is not None:
                certs.place()
        site_set.plan()
        site_set.apply()  # in check mode it changes nothing, as every part's apply()
        site_result = site_set.result()
        result.update(sites=site_result["sites"], reloaded=site_result["reloaded"])
        result["changed"] = result["changed"] or site_result["changed"]
        return site_result.get("diff", [])

    def _sites(self, down=()):
        """The proxy's sites, parsed (checked) now, pointing at the containers' static addresses
        (``down``: pool members marked down, see BoxParts.sites)."""
        if not self.box.proxy:
            return []
        sites = self.box.sites(down=down) + list(self.module.params["proxy"]["sites"])
        if self.module.params["proxy"]["catch_all"]:
            sites.insert(0, catch_all_site(sites=sites))
        return parse_sites(sites, log_dir=self.module.params["proxy"]["log_dir"])


def health_check(service):
    """The check a changed container of ``service`` must pass (see _health): its ``health``, or,
    for a pool's member, a connect to its port (the proxy takes a new member in, and a rolling
    change gives the next member its turn, only once it answers); None: nothing to wait for."""
    if service.health:
        check = dict(service.health)
        if check.get("http"):
            # The Host header the proxy passes on: the service's first name.
            names = service.domains + [route["domain"] for route in service.routes]
            check.update(port=service.port, host=names[0].replace("*", "www", 1) if names else None)
        return check
    if service.kind == "pool" and service.port:
        return {"tcp": service.port, "timeout": POOL_HEALTH_SECONDS}
    return None


def journal_tail(lxd, name, service):
    """The last lines of the service's journal in its container, for a failure's message (as many
    as the provisioner's own failures show)."""
    unit = unit_name(service.name, service.where("name"), own=True) if service.command else "nginx.service"
    try:
        found = lxd.exec(name, ["journalctl", "--no-pager", "-o", "short-iso", "-n", str(TAIL_LINES), "-u", unit],
                         timeout=30)
    except OneboxError as exc:
        return "its journal could not be read: %s" % exc.msg
    text = (found.stdout or found.stderr).strip()
    return "the last lines of its journal (journalctl -u %s):\n%s" % (unit, text or "(empty)")


def agent_source():
    """The TLS agent's program as the proxy runs it (/usr/local/sbin/onebox-tls)."""
    return "#!/usr/bin/python3\n" + inspect.getsource(_tls_agent)


def daemon_url(given):
    """The daemon as lxd_url names it: the URL given (a bare socket path as ``unix:PATH``), else
    ``unix:`` and the socket the client found (_lxd.find_socket, as LxdClient looked it up)."""
    if given:
        return "unix:" + given if given.startswith("/") else given
    found = find_socket()
    return "unix:" + found if found else None


def root_pool(lxd, required=True):
    """The storage pool of the default profile's root disk: where the box's volumes go. None when
    there is none and none is ``required``."""
    root = ((lxd.profile("default") or {}).get("devices") or {}).get("root") or {}
    if not root.get("pool") and required:
        raise OneboxError("the default profile has no root disk with a pool: the box's volumes need one")
    return root.get("pool")


def main():
    # Environment values are secrets: out of the log and the result wherever they occur.
    module = OneboxModule(ARGUMENT_SPEC, lxd=True, supports_check_mode=True,
                          required_if=[("state", "present", ["services"])],
                          secrets=lambda params: list(secret_values(params["services"])) + tls_secrets(params["tls"]),
                          sources=lambda params: [item for _field, item in file_fields(params["services"])])
    module.run(BoxManager)


if __name__ == "__main__":
    main()
