# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The box description as a whole -> its parts: containers, insides, sites, forwards (pure logic).

``parse_box`` takes the list of services (each parsed by _box_service.py) and checks what needs
the whole description: container names, domains, host ports and storage volume names claimed
twice. The BoxParts it returns derives the items of each part: the containers (lxd_instances
items, with their volumes' disk devices), the storage volumes, what goes inside them
(lxd_provision items), the proxy's sites (nginx_site specs) and the host's forwards (dnat
forwards); each container records what it is as an inventory host (``hosts``, _box_hosts: its
marks go into its config). An error names the service and the field.
"""
from __future__ import annotations

from ansible_collections.homelab.onebox.plugins.module_utils import _box_hosts
from ansible_collections.homelab.onebox.plugins.module_utils import _box_tls
from ansible_collections.homelab.onebox.plugins.module_utils import _validate as v
from ansible_collections.homelab.onebox.plugins.module_utils._box_service import HTTP_PORT, parse_service
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._instance import IMAGE_KEY
from ansible_collections.homelab.onebox.plugins.module_utils._nginx_values import site_name_for

# A stopped pool member is found out by the connect timing out (its address stops answering
# ARP): on the bridge a connect takes well under a millisecond, so 1 s bounds what that first
# failed try costs the client before nginx moves on to the next member.
POOL_PROXY = {"connect_timeout": "1s"}
# Written into a pool member's file content, replaced by the member's name ("web-2").
INSTANCE_PLACEHOLDER = "@INSTANCE@"
# Debian's nginx keeps server_names_hash_bucket_size at the cache line (64): measured here, two
# exact names of 48 characters or more (a wildcard of about 64) fail `nginx -t` ("could not build
# server_names_hash"), so a valid description would fail at the proxy. A bucket of 512 holds a
# name of the 253 characters DNS allows.
PROXY_HTTP_FILE = "/etc/nginx/conf.d/00-onebox-http.conf"
PROXY_HTTP_SETTINGS = ("# homelab.onebox: room for the longest host names (253 characters) in server_name.\n"
                       "server_names_hash_bucket_size 512;\n")

DEFAULTS = {
    "owner": "onebox",
    "image": "onebox-debian12",
    "proxy_name": None,  # OWNER-proxy: boxes of two owners never share (or take) one proxy
    "proxy_memory": None,
    "proxy_cpus": None,
    "proxy_priority": 90,
    "proxy_sites": False,  # sites beyond the description's are given: the proxy is made for them too
    "tls": None,           # the box's TLS options (onebox_tls), as given; None: no TLS unless a service asks
    "volume_pool": "default",  # the storage pool of the box's volumes (the services' and the proxy's TLS one)
    "tls_agent": "",       # the agent's source, pushed into the proxy (_tls_agent.py)
}


def _covering_wildcard(name, claimed):
    """The longest claimed wildcard that covers ``name`` (exact or itself a wildcard) and is not
    ``name``: the one nginx would answer ``name``'s requests with. None when none does."""
    base = name[2:] if name.startswith("*.") else name
    labels = base.split(".")
    for start in range(1, len(labels)):
        wildcard = "*." + ".".join(labels[start:])
        if wildcard in claimed and wildcard != name:
            return wildcard
    return None


def _port_site_name(service):
    """The proxy's site for a service's host_port (``web-port8000``)."""
    return "%s-port%d" % (service.name, service.host_port)


def _size(size):
    """A volume's size in bytes (None: not given), so 1GiB and 1024MiB are one size."""
    return None if size is None else v.size_bytes(size, "size")


def parse_box(services, options=None, addresses=None):
    """The description (a list of services) and the box's options -> BoxParts."""
    return BoxParts(services, options, addresses)


class BoxParts:
    """The parsed description and the parts it derives. ``addresses``: name -> [IPv4] once known."""

    def __init__(self, services, options=None, addresses=None):
        self.options = dict(DEFAULTS, **{k: val for k, val in (options or {}).items() if val is not None})
        v.instance_name(self.options["owner"], "owner")
        if self.options["proxy_name"] is None:
            self.options["proxy_name"] = "%s-proxy" % self.options["owner"]
        v.instance_name(self.options["proxy_name"], "proxy_name")
        if not isinstance(services, list):
            raise ValidationError("services", services, "must be a list of services")
        tls_options = _box_tls.parse_tls_options(self.options["tls"])
        parsed = [parse_service(i, raw, dict(self.options, tls=tls_options)) for i, raw in enumerate(services)]
        self.services = [service for service in parsed if service.state == "present"]
        # Services written {name, state: absent}: nothing is built for them (with purge, their
        # volumes are deleted once their containers are gone).
        self.removed = [service for service in parsed if service.state == "absent"]
        self.addresses = addresses or {}
        wanted = self.options["proxy_sites"] or any(s.http for s in self.services)
        self.proxy = self.options["proxy_name"] if wanted else None
        self._check_names()
        # Each container as an inventory host (its groups checked), recorded on it (instances()).
        self.hosts = _box_hosts.box_hosts(self)
        self._check_domains()
        self.tls = _box_tls.BoxTls(tls_options, self.services)
        self._check_host_ports()
        self._check_volumes()
        self._order_boot()

    # ---- whole-description checks -------------------------------------------------------
    def _check_names(self):
        owners = {}  # container name -> (index of the service, or -1 for the proxy; label)
        if self.proxy:
            owners[self.proxy] = (-1, "proxy_name")
        for service in self.services:
            for name in [service.name] + service.members:
                if name in owners and owners[name][0] != service.index:
                    raise ValidationError(service.where("name"), service.name, "container name %s is also used by %s"
                                          % (name, owners[name][1] if owners[name][0] < 0 else "services[%d]" % owners[name][0]))
                owners[name] = (service.index, service.where("name"))
        removed = {}
        for service in self.removed:
            if service.name in owners or service.name in removed:
                other = removed.get(service.name) or owners[service.name][1]
                raise ValidationError(service.where("name"), service.name, "is removed (state: absent) and also %s"
                                      % other)
            removed[service.name] = service.where("name")

    def _check_domains(self):
        """Every name is served by one service, as nginx will pick it.

        A domain is an exact name or a leading wildcard ``*.example.org`` (_validate.domain). For a
        request nginx takes the server whose name is exact, else the one with the longest leading
        wildcard that matches (https://nginx.org/en/docs/http/server_names.html): so only the
        same name twice is a conflict (nginx would warn and ignore the second). ``*.example.org``
        on one service and ``www.example.org`` (or ``*.www.example.org``) on another is meant and
        fine, the more exact one wins; ``*.example.org`` never covers ``example.org`` itself.

        A route adds a path to the site of its domain, written exactly as a domain is (a wildcard
        too). A route under a name no service claims but another service's wildcard covers is
        refused: it would make a site of its own for that name, which nginx then prefers for
        every path, taking the name away from the wildcard's service."""
        roots, paths = {}, {}
        # The proxy's site of each host_port (web-port8000) -> the field that makes it.
        port_sites = {_port_site_name(s): s.where("host_port") for s in self.services if s.host_port}
        for service in self.services:
            for index, domain in enumerate(service.domains):
                where = "%s[%d]" % (service.where("domains"), index)
                if domain in roots:
                    raise ValidationError(where, domain, "already claimed by %s" % roots[domain])
                if domain in port_sites:
                    raise ValidationError(where, domain, "is the name of the proxy's site for %s; name the domain "
                                                         "otherwise" % port_sites[domain])
                roots[domain] = where
        for service in self.services:
            for index, route in enumerate(service.routes):
                where = "%s[%d]" % (service.where("routes"), index)
                key = (route["domain"], route["path"])
                if route["path"] == "/" and route["domain"] in roots:
                    raise ValidationError(where + ".path", "/", "%s already serves / of %s" % (roots[route["domain"]], route["domain"]))
                if key in paths:
                    raise ValidationError(where + ".path", route["path"], "already routed by %s" % paths[key])
                wildcard = None if route["domain"] in roots else _covering_wildcard(route["domain"], roots)
                if wildcard:
                    raise ValidationError(
                        where + ".domain", route["domain"],
                        "%s serves it through %s; a route under %s alone would take every path of it away from "
                        "that service: add %s to that service's domains first, or route under %s"
                        % (roots[wildcard], wildcard, route["domain"], route["domain"], wildcard))
                paths[key] = where

    def host_ports(self):
        """(proto, low, high, what, field) for every host port the box takes."""
        taken = []
        if self.proxy and any(s.domains or s.routes for s in self.services):
            taken.append(("tcp", HTTP_PORT, HTTP_PORT, "the proxy (HTTP)", "proxy"))
        if self.proxy and self.tls.enabled:
            taken.append(("tcp", _box_tls.HTTPS_PORT, _box_tls.HTTPS_PORT, "the proxy (HTTPS)", "proxy"))
        for service in self.services:
            if service.host_port:
                taken.append(("tcp", service.host_port, service.host_port, service.name, service.where("host_port")))
            for index, forward in enumerate(service.forwards):
                low, high = forward["_range"]
                taken.append((forward["proto"], low, high, service.name, "%s[%d].port" % (service.where("forwards"), index)))
        return taken

    def _check_host_ports(self):
        taken = self.host_ports()
        for i, (proto, low, high, what, field) in enumerate(taken):
            for other in taken[:i]:
                if other[0] == proto and low <= other[2] and other[1] <= high:
                    value = "%d" % low if low == high else "%d-%d" % (low, high)
                    raise ValidationError(field, value, "%s port already forwarded to %s (%s)" % (proto, other[3], other[4]))

    def _check_volumes(self):
        """One storage volume name, one volume: a service's volume named like another's
        (service ``a`` volume ``b-c`` and service ``a-b`` volume ``c``) or like the proxy's
        certificates is refused; one shared volume is declared alike (its size) everywhere."""
        claimed = {self.tls_volume: (("tls",), "the proxy's certificate volume (proxy_name)", None)}
        for service in self.services:
            for index, volume in enumerate(service.volumes):
                where = "%s[%d]" % (service.where("volumes"), index)
                what = ("shared", volume["name"]) if volume["shared"] else ("service", service.name, volume["name"])
                other = claimed.get(volume["volume"])
                if other is None:
                    claimed[volume["volume"]] = (what, where, volume["size"])
                elif other[0] != what:
                    raise ValidationError(where + ".name", volume["name"], "its storage volume %s is also %s's; name one "
                                          "of them otherwise" % (volume["volume"], other[1]))
                elif _size(other[2]) != _size(volume["size"]):
                    raise ValidationError(where + ".size", volume["size"], "the shared volume %s is declared with size "
                                          "%s by %s: declare it alike everywhere" % (volume["name"], other[2], other[1]))

    def _order_boot(self):
        """``after`` -> boot priorities. At boot LXD starts the containers with boot.autostart by
        descending boot.autostart.priority (0 when unset), waiting a container's boot.autostart.delay
        after it: so a service starts after the ones it names when its priority is lower than
        theirs. A service named by others and without an explicit ``boot.priority`` gets the lowest
        that is above every one naming it (0 for one that names others and is named by none): the
        order asked for and nothing more, services outside any ``after`` left as they are. A name
        that is not a service of the box, a cycle, and an explicit ``boot.priority`` that
        contradicts the order are refused, naming the ``after`` entry."""
        by_name = {service.name: service for service in self.services}
        for service in self.services:
            for index, name in enumerate(service.after):
                if name not in by_name:
                    raise ValidationError("%s[%d]" % (service.where("after"), index), name,
                                          "no service of that name in the description")
        state = {}   # name -> "visiting" or "done" (a depth-first walk along after)

        def walk(service, path):
            state[service.name] = "visiting"
            for index, name in enumerate(service.after):
                if state.get(name) == "visiting":
                    cycle = path[path.index(name):] + [service.name, name]
                    raise ValidationError("%s[%d]" % (service.where("after"), index), name,
                                          "a cycle: %s" % " after ".join(cycle))
                if state.get(name) is None:
                    walk(by_name[name], path + [service.name])
            state[service.name] = "done"
        for service in self.services:
            if state.get(service.name) is None:
                walk(service, [])
        named_by = {}
        for service in self.services:
            for index, name in enumerate(service.after):
                named_by.setdefault(name, []).append(service)
        priority = {}

        def priority_of(service):
            if service.name not in priority:
                explicit = service.boot.get("autostart_priority")
                priority[service.name] = explicit if explicit is not None else max(
                    [priority_of(other) + 1 for other in named_by.get(service.name, ())] + [0])
            return priority[service.name]
        for service in self.services:
            for index, name in enumerate(service.after):
                first, mine = priority_of(by_name[name]), priority_of(service)
                if mine >= first:
                    raise ValidationError(
                        "%s[%d]" % (service.where("after"), index), name,
                        "contradicts the boot priorities: %s starts at priority %d (its boot.priority) and this service "
                        "at %d (%s); LXD starts a higher priority first, so this one needs a boot.priority below %d, "
                        "or none" % (by_name[name].where(), first, mine, "its boot.priority"
                                     if service.boot.get("autostart_priority") is not None else "above the services "
                                     "that start after it", first))
        for name, value in priority.items():
            by_name[name].boot["autostart_priority"] = value

    def volumes(self):
        """The services' storage volumes, each once (a shared one as first declared): name (in
        LXD), size, service (None when shared), shared; field, value and size_field (how an error
        names it, as the user wrote it); description (what `lxc storage volume list` shows)."""
        out, seen = [], set()
        for service in self.services:
            for index, volume in enumerate(service.volumes):
                if volume["volume"] not in seen:
                    seen.add(volume["volume"])
                    where = "%s[%d]" % (service.where("volumes"), index)
                    out.append({"name": volume["volume"], "size": volume["size"], "shared": volume["shared"],
                                "service": None if volume["shared"] else service.name,
                                "field": where + ".name", "value": volume["name"], "size_field": where + ".size",
                                "description": "homelab.onebox: %s volume %s of owner %s" % (
                                    "the shared" if volume["shared"] else "service %s's" % service.name,
                                    volume["name"], self.options["owner"])})
        return out

    # ---- derived ------------------------------------------------------------------------
    def instances(self):
        """Items for homelab.onebox.lxd_instances."""
        items = []
        for service in self.services:
            common = dict(service.limits, **service.boot)
            # A pool's members come from the service's image like any container, all at once: a
            # stopped base container copied N times would only add a copy (slower than a new
            # container from the image) behind a wait for the base.
            if service.adopt:
                common["adopt"] = True
            devices = self._volume_devices(service)
            if devices:
                common["devices"] = devices
            items.extend(dict(common, name=m, image=service.image, ipv4_address="auto", config=self._marks(m, service.image))
                         for m in service.members)
        if self.proxy:
            proxy = {"name": self.proxy, "image": self.options["image"], "ipv4_address": "auto", "autostart": True,
                     "autostart_priority": self.options["proxy_priority"], "config": self._marks(self.proxy, self.options["image"])}
            for key in ("memory", "cpus"):
                if self.options["proxy_" + key] is not None:
                    proxy[key] = self.options["proxy_" + key]
            if self.tls_active:
                # certbot's account and certificates outlive the container (a re-created proxy
                # serves the same certificates and orders none).
                proxy["devices"] = {_box_tls.VOLUME_DEVICE: {"type": "disk", "pool": self.options["volume_pool"],
                                                             "source": self.tls_volume, "path": _box_tls.VOLUME_PATH}}
            items.append(proxy)
        return items

    def _marks(self, name, image):
        """A container's config: the image as described (a container made from another is
        re-created) and what it is as an inventory host (_box_hosts.marks), read back without the
        description by the inventory plugin."""
        config = {IMAGE_KEY: image}
        config.update(_box_hosts.marks(next(host for host in self.hosts if host["name"] == name)))
        return config

    def _volume_devices(self, service):
        """A disk device per volume of the service (LXD keeps device values as text)."""
        devices = {}
        for volume in service.volumes:
            device = {"type": "disk", "pool": self.options["volume_pool"], "source": volume["volume"],
                      "path": volume["path"]}
            if volume["readonly"]:
                device["readonly"] = "true"
            devices[volume["device"]] = device
        return devices

    def field_of(self, container):
        """How an error about a container names it: its service (services[web]), or proxy_name."""
        for service in self.services:
            if container in service.members:
                return service.where()
        return "proxy_name" if container == self.proxy else container

    def provision(self):
        """Items for homelab.onebox.lxd_provision: what goes inside each container."""
        items = []
        for service in self.services:
            for member in service.members:
                item = {"name": member}
                # The placeholder is a content's; a src's bytes go as they are.
                files = [dict(f, content=f["content"].replace(INSTANCE_PLACEHOLDER, member))
                         if isinstance(f.get("content"), str) else dict(f)
                         for f in service.files]
                if files:
                    item["files"] = files
                if service.packages:
                    item["packages"] = list(service.packages)
                if service.command:
                    item["users"] = [{"name": service.user, "home": service.working_directory}]
                    item["services"] = [{"name": service.name, "command": list(service.command), "user": service.user,
                                         "working_directory": service.working_directory,
                                         "environment": dict(service.environment), "restart": service.restart}]
                    if service.open_files:
                        item["services"][0]["open_files"] = service.open_files
                elif service.kind in ("static", "pool"):
                    item["services"] = [{"name": "nginx"}]  # the image's nginx serves /var/www/html on 80
                if service.setup:
                    # A step of a service with a command runs as it does (its directory, environment).
                    named = {"service": service.name} if service.command else {}
                    item["setup"] = [dict(step, **named) for step in service.setup]
                if len(item) > 1:
                    items.append(item)
        if self.proxy:
            # nginx serving, without Debian's packaged site (it claims default_server on :80), with
            # room for every name the description accepts (PROXY_HTTP_SETTINGS).
            item = {"name": self.proxy, "packages": ["nginx-light"],
                    "files": [{"path": "/etc/nginx/sites-enabled/default", "state": "absent"},
                              {"path": PROXY_HTTP_FILE, "content": PROXY_HTTP_SETTINGS}],
                    "services": [{"name": "nginx"}]}
            if self.tls_active:
                item["packages"] += self.tls.packages()
                item["files"] += self.tls.files(self.options["owner"], self.options["tls_agent"])
            else:
                item["files"] += _box_tls.gone_files()
            items.append(item)
        return items

    @property
    def tls_active(self):
        """Whether the proxy keeps certificates: a site is HTTPS, or the box has TLS options (its
        agent then drops what a removed site had)."""
        return bool(self.proxy) and (self.tls.enabled or self.options["tls"] is not None)

    @property
    def tls_volume(self):
        """The storage volume of the proxy's certificates (certbot's /etc/letsencrypt)."""
        return "%s-tls" % self.options["proxy_name"]

    def _server(self, member, port, down):
        """One member of a pool's upstream: ``HOST:PORT``, or marked down."""
        address = "%s:%d" % (self._backend_host(member), port)
        return {"address": address, "down": True} if down else address

    def _backend_host(self, name):
        found = self.addresses.get(name) or []
        return found[0] if found else name

    def sites(self, down=()):
        """Site specs for homelab.onebox.nginx_site in the proxy (the default server is the role's).
        ``down``: pool members left in their upstream marked ``down`` (a rolling change drains
        the member it is changing: nginx sends it no request until the sites are applied again)."""
        by_domain, order, upstreams_done = {}, [], set()

        def site(domain):
            if domain not in by_domain:
                by_domain[domain] = {"name": site_name_for(domain), "server_names": [domain],
                                     "listen": [str(HTTP_PORT)], "locations": [], "upstreams": []}
                order.append(domain)
            return by_domain[domain]

        def backend(service, target_site):
            if service.kind == "pool":
                if service.name not in upstreams_done:
                    upstreams_done.add(service.name)
                    target_site["upstreams"].append({
                        "name": service.name, "method": service.method,
                        "servers": [self._server(m, service.port, m in down) for m in service.members]})
                return "http://%s" % service.name
            return "http://%s:%d" % (self._backend_host(service.name), service.port)

        def location(path, service, target_site, strip=False):
            loc = {"path": path, "backend": backend(service, target_site)}
            if strip:
                loc["strip_prefix"] = True
            proxy = dict(POOL_PROXY) if service.kind == "pool" else {}
            proxy.update(service.proxy)
            if proxy:
                loc["proxy"] = proxy
            return loc

        for service in self.services:
            for domain in service.domains:
                target = site(domain)
                target["locations"].append(location("/", service, target))
        for service in self.services:
            for route in service.routes:
                target = site(route["domain"])
                target["locations"].append(location(route["path"], service, target, route["strip_prefix"]))
        for service in self.services:
            if service.host_port:
                name = _port_site_name(service)
                by_domain[name] = {"name": name, "server_names": ["_"], "listen": [str(service.host_port)],
                                   "locations": [], "upstreams": []}
                order.append(name)
                by_domain[name]["locations"].append(location("/", service, by_domain[name]))
        sites = []
        for key in order:
            spec = by_domain[key]
            tls = self.tls.site_tls(spec["name"])
            if tls:
                spec["tls"] = tls
            spec["locations"].sort(key=lambda loc: loc["path"])
            if not spec["upstreams"]:
                del spec["upstreams"]
            sites.append(spec)
        return sites

    def forwards(self):
        """Forwards for homelab.onebox.dnat: the proxy's ports, then each service's own."""
        return [item for item, _field in self._forwards()]

    def forward_fields(self):
        """Where each of forwards() comes from in the description, as errors name it."""
        return [field for _item, field in self._forwards()]

    def _forwards(self):
        out = []
        proxied = [s for s in self.services if s.domains or s.routes]
        if self.proxy and proxied:
            field = proxied[0].where("domains" if proxied[0].domains else "routes")
            out.append(({"proto": "tcp", "port": HTTP_PORT, "target": self.proxy, "comment": "onebox proxy http"}, field))
            if self.tls.enabled:
                https = next(s for s in proxied if s.tls["mode"] != "off")
                out.append(({"proto": "tcp", "port": _box_tls.HTTPS_PORT, "target": self.proxy,
                             "comment": "onebox proxy https"}, https.where("tls")))
        for service in self.services:
            said = {"allow_host_listener": True} if service.allow_host_listener else {}
            if service.host_port:
                out.append((dict(said, proto="tcp", port=service.host_port, target=self.proxy,
                                 comment="onebox %s" % service.name), service.where("host_port")))
            for index, forward in enumerate(service.forwards):
                item = dict({"comment": "onebox %s" % service.name}, **said)
                item.update((k, val) for k, val in forward.items() if not k.startswith("_"))
                item["target"] = service.name
                out.append((item, "%s[%d]" % (service.where("forwards"), index)))
        return out

    def as_dict(self):
        return {
            "owner": self.options["owner"],
            "proxy": self.proxy,
            "containers": [m for s in self.services for m in s.members]
            + ([self.proxy] if self.proxy else []),
            "instances": self.instances(),
            "provision": self.provision(),
            "sites": self.sites(),
            "forwards": self.forwards(),
            "certificates": self.tls.certificates() if self.proxy else [],
            "volumes": self.volumes(),
        }
