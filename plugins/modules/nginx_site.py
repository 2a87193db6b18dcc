#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: nginx_site
short_description: Manage nginx virtual hosts (server blocks and their upstreams) transactionally
version_added: 0.1.0
description:
  - Renders one nginx site (its C(server) blocks, upstream pools and the WebSocket C(map)) per file
    C(NAME.conf) in O(conf_dir), from data. No template, no raw directives.
  - Works on nginx on the host running the module, or on nginx inside an LXD instance (O(instance));
    files are then written and commands run through the LXD API; the container needs only C(sh)
    and nginx, no Python.
  - B(Transactional.) Every changed file is staged beside the live one, swapped in by rename, and
    the whole configuration is tested with C(nginx -T). If the test fails, the previous files are
    renamed back and the module fails with nginx's own error text; nginx was not reloaded, so it
    keeps serving the previous configuration. Otherwise nginx is reloaded, once. Nothing changed,
    no test, no reload.
  - B(Owns what it writes.) Each file it writes starts with a marker comment. It never overwrites,
    removes or prunes a file without that marker.
  - One site per task (O(name) and the site options), or a whole set of sites in one task
    (O(sites), with O(prune) to remove managed sites no longer declared), with one C(nginx -t) and at
    most one reload for the whole set.
  - Bad input fails before any change, naming the field and the value (server names and paths
    that could inject directives, site names with C(/) or C(..), ports out of range, a location
    with neither backend nor root, unknown balancing methods).
  - B(Quiet.) Every server block it renders (the default server too) carries C(server_tokens off),
    so no response header or error page names the nginx version.
extends_documentation_fragment:
  - homelab.onebox.lxd
  - homelab.onebox.module
  - ansible.builtin.action_common_attributes
attributes:
  diff_mode:
    details: The rendered text of every changed file, before and after.
options:
  name:
    description:
      - Site name; the file is O(conf_dir)/C(NAME.conf). 1-100 letters, digits, C(.), C(_), C(-),
        starting with a letter, digit or C(_); no C(/) or C(..).
      - The box names a wildcard domain's site C(_wildcard.DOMAIN) (C(*.example.org) in
        C(_wildcard.example.org.conf)); as no DNS name holds a C(_), it never shares a file with an
        exact name's site.
      - Required unless O(sites) is given.
    type: str
  state:
    description: V(absent) removes the site's file (only if this module wrote it).
    type: str
    choices: [present, absent]
    default: present
  server_names:
    description:
      - The host names the site answers, as nginx's C(server_name) takes them (no regular
        expressions) C(app.example.org), C(*.example.org), C(.example.org), C(www.example.*), or
        C(_) for a catch-all.
      - nginx picks, for a request, the exact name first, then the longest leading wildcard
        (C(*.example.org) matches C(a.example.org) and C(a.b.example.org), never C(example.org)),
        then the longest trailing one. C(*) is taken only as a whole label at either end
        (C(www.*.org), C(*foo.org), C(**.org) and C(*) alone are refused, saying why).
    type: list
    elements: str
  listen:
    description:
      - Plain-HTTP listen addresses, a port (C(80)) or C(ADDRESS:PORT) (C(127.0.0.1:8080),
        C([::]:80)). Default C([80]). With C(tls.redirect) these only redirect to HTTPS.
    type: list
    elements: str
  default_server:
    description: The site answers requests for host names no other site claims on its ports.
    type: bool
    default: false
  locations:
    description:
      - Path prefixes and what serves them; exactly one of O(locations[].backend),
        O(locations[].root) or O(locations[].status) each.
    type: list
    elements: dict
    suboptions:
      path:
        description: URL path prefix, starting with C(/), for example C(/) or C(/jenkins/).
        type: str
        required: true
      exact:
        description: Match the path exactly (C(location = /path)) instead of as a prefix.
        type: bool
        default: false
      backend:
        description:
          - URL to proxy to, C(http://HOST[:PORT][/PATH]) or C(https://...). HOST may be the name of
            one of the site's O(upstreams) (then without a port).
          - Without a PATH the request's path is passed unchanged (C(/jenkins/x) stays C(/jenkins/x)).
            With a PATH, nginx replaces the matched location path with it (C(/jenkins/) to
            C(http://jenkins:8080/jenkins/) keeps it; to C(http://app:8080/) strips it).
        type: str
      root:
        description: A directory on the proxy itself to serve files from (static site).
        type: path
      status:
        description: An HTTP status code to answer with (for example C(404) in a default server).
        type: int
      strip_prefix:
        description:
          - Remove the location's path before passing the request on (C(/api/x) reaches the
            backend as C(/x)); for a O(locations[].root), serve the directory at the path
            (C(alias)). The path must end with C(/); the backend must not have a path.
        type: bool
        default: false
      proxy:
        description: Proxy settings for this location, over the site's O(proxy) (same keys).
        type: dict
  upstreams:
    description:
      - Upstream pools. Names are global in nginx, so they must be unique across all sites.
      - A server that fails (connection refused, timeout) is taken out for C(fail_timeout) after
        C(max_fails) failures and the request is retried on the next server at once, so a stopped
        member costs at most that first failed try; after C(fail_timeout) nginx tries it again
        and it rejoins the pool when it answers.
    type: list
    elements: dict
    suboptions:
      name:
        description: Upstream name, used as the host of a location's O(locations[].backend).
        type: str
        required: true
      method:
        description: Balancing method.
        type: str
        choices: [round_robin, least_conn, ip_hash]
        default: round_robin
      keepalive:
        description: Idle keep-alive connections to the pool each worker keeps; C(0) for none.
        type: int
        default: 0
      servers:
        description:
          - Pool members, each C(HOST:PORT) or a dict with C(address) (C(HOST[:PORT]),
            C(unix:/path)), C(weight) (default 1), C(max_fails) (default 1), C(fail_timeout)
            (default C(10s)), C(backup) and C(down) (default false).
        type: list
        elements: raw
        required: true
  proxy:
    description:
      - How requests are proxied. Defaults, overridable key by key, also per location
      - C(headers) (dict) sent to the backend, merged over the defaults C(Host $host),
        C(X-Real-IP $remote_addr), C(X-Forwarded-For $proxy_add_x_forwarded_for),
        C(X-Forwarded-Proto $scheme), C(X-Forwarded-Host $host); a value of C(null) drops a
        header, nginx variables may be used.
      - C(websocket) (default true) passes C(Upgrade)/C(Connection) for WebSocket upgrades.
      - C(client_max_body_size) (default C(10m)), C(connect_timeout) (default C(5s)),
        C(send_timeout) and C(read_timeout) (default C(60s)), C(buffering) (default true),
        C(buffer_size) and C(buffers) (for example C(8 16k); nginx's defaults when unset).
    type: dict
  tls:
    description:
      - Serve the site over HTTPS. Keys C(certificate) and C(key) (paths on the nginx host,
        required), C(listen) (default C([443])), C(redirect) (default true, plain HTTP answers
        C(301) to HTTPS), C(hsts) (default true) with C(hsts_max_age) (default 63072000),
        C(hsts_include_subdomains) and C(hsts_preload) (default false; preload needs
        includeSubDomains), C(http2) (default true), C(protocols) (default C([TLSv1.2, TLSv1.3]))
        and C(ciphers) (default Mozilla's intermediate set).
      - C(acme_webroot) (a directory on the nginx host) serves C(/.well-known/acme-challenge/) from
        it over plain HTTP, the one path the redirect leaves, for an ACME client's HTTP-01 tokens.
      - C(reject_handshake) (default false) makes the site a TLS catch-all without a certificate
        (C(ssl_reject_handshake on)), for a default server that must not answer unknown names
        with another site's certificate.
    type: dict
  access_log:
    description: Access log path for the site, or C(off). nginx's http-level log when unset.
    type: str
  error_log:
    description: Error log path for the site. nginx's http-level log when unset.
    type: str
  log_dir:
    description:
      - When set, each site without its own O(access_log)/O(error_log) logs to
        C(LOG_DIR/NAME.access.log) and C(LOG_DIR/NAME.error.log).
    type: path
  sites:
    description:
      - Manage several sites in one transaction, each a dict with the site options above
        (O(name), O(state), O(server_names), O(listen), O(default_server), O(locations),
        O(upstreams), O(proxy), O(tls), O(access_log), O(error_log)).
      - Mutually exclusive with O(name) and the top-level site options.
    type: list
    elements: dict
  catch_all:
    description:
      - With O(sites), add a default server (file C(<name>.conf)) that answers 404 to every
        name no site claims; when any site has O(tls), it also refuses TLS handshakes for
        unknown names (C(ssl_reject_handshake), no certificate needed).
    type: dict
    suboptions:
      name:
        description: Its site name.
        type: str
        default: 000-default
      listen:
        description: Its HTTP listen addresses.
        type: list
        elements: str
        default: ["80"]
      https_listen:
        description: Its TLS listen addresses (used only when a site has TLS).
        type: list
        elements: str
        default: ["443"]
  prune:
    description:
      - With O(sites), remove every file in O(conf_dir) that this module wrote and that is not
        in O(sites). Files without the marker are never touched.
    type: bool
    default: false
  conf_dir:
    description:
      - Directory of the site files, included from the C(http) block of nginx's configuration
        (Debian includes C(/etc/nginx/conf.d/*.conf)). The module checks that what it wrote is
        really loaded and rolls back otherwise.
    type: path
    default: /etc/nginx/conf.d
  instance:
    description:
      - Manage nginx inside this LXD instance instead of on the host running the module.
    type: str
  nginx_binary:
    description: The nginx program, used for C(nginx -T) (test) and, by default, C(nginx -s reload).
    type: str
    default: nginx
  nginx_prefix:
    description: nginx's C(-p) prefix, for an nginx not installed at its compiled-in paths.
    type: path
  nginx_conf:
    description: nginx's main configuration file (C(-c)); the compiled-in one when unset.
    type: path
  reload_command:
    description:
      - Command (argv list) that reloads nginx. Default C(NGINX_BINARY [-p PREFIX] [-c CONF] -s reload).
        For example C([systemctl, reload-or-restart, nginx]) also starts a stopped nginx.
    type: list
    elements: str
notes:
  - Upstream host names are resolved when nginx loads the configuration; a name that does not
    resolve makes the test fail and the change is rolled back.
  - A C(listen) address already in use by another program is not caught by C(nginx -t); nginx
    then keeps its old sockets and logs the error.
  - C(listen ... ssl http2) is the syntax of nginx up to 1.25 (Debian 12 ships 1.22); newer nginx
    accepts it with a deprecation warning.
"""

EXAMPLES = r"""
- name: A site with path routing and a pool
  homelab.onebox.nginx_site:
    name: apps
    server_names: [apps.example.org]
    upstreams:
      - name: web_pool
        method: least_conn
        servers: [web1:80, web2:80, {address: "web3:80", backup: true}]
    locations:
      - path: /
        backend: http://web_pool
      - path: /jenkins/
        backend: http://jenkins:8080/jenkins/
        proxy:
          client_max_body_size: 100m
          read_timeout: 300s

- name: HTTPS with redirect, HSTS and HTTP/2 (the defaults once tls is given)
  homelab.onebox.nginx_site:
    name: wiki
    server_names: [wiki.example.org]
    locations: [{path: /, backend: "http://wiki:3000"}]
    tls:
      certificate: /etc/letsencrypt/live/example.org/fullchain.pem
      key: /etc/letsencrypt/live/example.org/privkey.pem

- name: All sites of the box in one transaction (one nginx -t, one reload), inside the proxy container
  homelab.onebox.nginx_site:
    instance: proxy
    reload_command: [systemctl, reload-or-restart, nginx]
    prune: true
    sites:
      - name: 000-default
        server_names: [_]
        default_server: true
        locations: [{path: /, status: 404}]
      - name: blog
        server_names: [blog.example.org]
        locations: [{path: /, root: /var/www/blog}]

- name: Remove one site
  homelab.onebox.nginx_site:
    name: wiki
    state: absent
"""

RETURN = r"""
sites:
  description: Every site the task declared or pruned, and what happened to its file.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Site name.
      type: str
    file:
      description: Path of the site's file.
      type: str
    action:
      description: C(created), C(updated), C(removed) or C(unchanged) (in check mode, what would happen).
      type: str
  sample: [{name: apps, file: /etc/nginx/conf.d/apps.conf, action: updated}]
reloaded:
  description: Whether nginx was reloaded.
  returned: always
  type: bool
nginx_output:
  description: What C(nginx -t) printed (warnings) or, on failure, its error text.
  returned: when nginx was tested
  type: str
"""

from ansible_collections.homelab.onebox.plugins.module_utils import _nginx_target as nginx_target
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._nginx import SiteSet
from ansible_collections.homelab.onebox.plugins.module_utils._nginx_render import catch_all_site
from ansible_collections.homelab.onebox.plugins.module_utils._nginx_site import METHODS, SITE_KEYS, parse_site, parse_sites
from ansible_collections.homelab.onebox.plugins.module_utils._nginx_values import abs_path
from ansible_collections.homelab.onebox.plugins.module_utils._module import OneboxModule

_SITE_OPTIONS = dict(
    name=dict(type="str"),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    server_names=dict(type="list", elements="str"),
    listen=dict(type="list", elements="str"),
    default_server=dict(type="bool", default=False),
    locations=dict(type="list", elements="dict", options=dict(
        path=dict(type="str", required=True),
        exact=dict(type="bool", default=False),
        backend=dict(type="str"),
        root=dict(type="path"),
        status=dict(type="int"),
        strip_prefix=dict(type="bool", default=False),
        proxy=dict(type="dict"),
    )),
    upstreams=dict(type="list", elements="dict", options=dict(
        name=dict(type="str", required=True),
        method=dict(type="str", choices=list(METHODS), default="round_robin"),
        keepalive=dict(type="int", default=0),
        servers=dict(type="list", elements="raw", required=True),
    )),
    proxy=dict(type="dict"),
    tls=dict(type="dict"),
    access_log=dict(type="str"),
    error_log=dict(type="str"),
)
_SITE_ONLY = [key for key in _SITE_OPTIONS if key not in ("state",)]

ARGUMENT_SPEC = dict(
    _SITE_OPTIONS,
    # Each site is checked by _nginx_site.parse_site (unknown keys, types, values), with error
    # messages naming sites[N].field; the documented top-level options describe its keys.
    sites=dict(type="list", elements="dict"),
    catch_all=dict(type="dict", options=dict(
        name=dict(type="str", default="000-default"),
        listen=dict(type="list", elements="str", default=["80"]),
        https_listen=dict(type="list", elements="str", default=["443"]),
    )),
    prune=dict(type="bool", default=False),
    log_dir=dict(type="path"),
    conf_dir=dict(type="path", default="/etc/nginx/conf.d"),
    instance=dict(type="str"),
    nginx_binary=dict(type="str", default="nginx"),
    nginx_prefix=dict(type="path"),
    nginx_conf=dict(type="path"),
    reload_command=dict(type="list", elements="str"),
)


class NginxSiteManager:
    """The sites of the task (checked), their target, and the one SiteSet over both."""

    def __init__(self, module):
        self.module = module
        self.params = module.params

    def desired(self):
        p = self.params
        if p["sites"] is not None:
            given = [key for key in _SITE_ONLY if p.get(key) not in (None, False, [])]
            if given:
                raise ValidationError(given[0], p[given[0]], "cannot be combined with sites (put it in a site)")
            sites = list(p["sites"])
            if p["catch_all"]:
                sites.insert(0, catch_all_site(sites=[s for s in sites if isinstance(s, dict)], **p["catch_all"]))
            return parse_sites(sites, log_dir=p["log_dir"])
        if p["catch_all"]:
            raise ValidationError("catch_all", p["catch_all"], "needs sites (it is added to the set)")
        if p["prune"]:
            raise ValidationError("prune", True, "needs sites (the whole set of sites to keep)")
        if not p["name"]:
            raise ValidationError("name", p["name"], "give name (one site) or sites (several)")
        return [parse_site(_spec(p), log_dir=p["log_dir"])]

    def target(self):
        p = self.params
        conf_dir = abs_path(p["conf_dir"], "conf_dir")
        test = nginx_target.test_and_dump_command(p["nginx_binary"], p["nginx_prefix"], p["nginx_conf"])
        reload_cmd = p["reload_command"] or nginx_target.reload_command(p["nginx_binary"], p["nginx_prefix"],
                                                                        p["nginx_conf"])
        if p["instance"]:
            return nginx_target.LxdTarget(self.module.lxd, p["instance"], conf_dir, test, reload_cmd,
                                          timeout=max(p["lxd_timeout"] or 30, 30))
        return nginx_target.HostTarget(self.module, conf_dir, test, reload_cmd)

    def run(self):
        sites = self.desired()          # all checks first: nothing is read or written on bad input
        site_set = SiteSet(self.target(), sites, prune=self.params["prune"], check_mode=self.module.check_mode,
                           diff=self.module._diff, warn=self.module.warn)
        site_set.read()
        site_set.plan()
        if not self.module.check_mode:
            site_set.apply()
        return site_set.result()


def _spec(params):
    """The site keys of a params dict, without the ones Ansible filled with None."""
    return {key: params[key] for key in SITE_KEYS if params.get(key) is not None}


def main():
    module = OneboxModule(ARGUMENT_SPEC, lxd=True, supports_check_mode=True,
                          mutually_exclusive=[("name", "sites")],
                          required_one_of=[("name", "sites")])
    module.run(NginxSiteManager)


if __name__ == "__main__":
    main()
