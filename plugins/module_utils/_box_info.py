# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The box as it is, from what box_info read (pure logic): its services, a table, what differs from the description.

read_containers(listing, owner, now)   the daemon's listing (recursion=2) -> the owner's containers
read_sites(files)                      the proxy's site files -> what each site routes where
read_forwards(iptables-save, owner)    the owner's DNAT rules -> its forwards
describe(...)                          all of it (and the parsed description, when given) -> the
                                       services, each with its containers and what reaches them
table(info)                            the services as text lines, one row per container

Nothing here talks to anything: box_info (the module) reads, this makes sense of what it read, so
every rule is unit-tested on fake data. The site files are the ones _nginx_render writes (a user's
own proxy sites are rendered by it too); the rules the ones _dnat_rules writes.
"""
from __future__ import annotations

import datetime
import re

from ansible_collections.homelab.onebox.plugins.module_utils import _dnat
from ansible_collections.homelab.onebox.plugins.module_utils import _dnat_claims
from ansible_collections.homelab.onebox.plugins.module_utils import _dnat_rules
from ansible_collections.homelab.onebox.plugins.module_utils._instance_set import OWNER_KEY
from ansible_collections.homelab.onebox.plugins.module_utils._instance import IMAGE_KEY

PROXY = "proxy"  # the proxy's row in the table and its service name in the result
_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$")
# nginx's words: a quoted string, a block's brace, a statement's end, a plain word; comments go.
_TOKEN = re.compile(r'''\s+|#[^\n]*|"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|([{};])|([^\s{};"'#][^\s{};]*)''')
_POOL_MEMBER = re.compile(r"^(.+)-(\d+)$")
_BACKEND = re.compile(r"^(https?)://([^/:]+)(?::(\d+))?(/.*)?$")


# ---- times --------------------------------------------------------------------------------------
def parse_time(text):
    """An API time (``2026-12-03T05:20:24.217142817Z``: nanoseconds, as LXD writes them) -> epoch
    seconds, or None for no time (LXD's and Incus's "never": year 1)."""
    found = _TIME.match(text or "")
    if not found or found.group(1).startswith("0001-"):
        return None
    stamp = found.group(1) + "." + (found.group(2) or "0")[:6].ljust(6, "0") + {None: "+00:00", "Z": "+00:00"}.get(
        found.group(3), found.group(3))
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def iso(epoch):
    """Epoch seconds -> ``2026-12-03T05:20:24Z``."""
    return datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration(seconds):
    """``3d 4h``, ``2h 5m``, ``4m 10s``, ``45s``: the two largest units, enough to read an uptime."""
    seconds = max(0, int(seconds))
    parts = [(seconds // 86400, "d"), (seconds // 3600 % 24, "h"), (seconds // 60 % 60, "m"), (seconds % 60, "s")]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    return " ".join("%d%s" % part for part in parts[:2])


# ---- containers ---------------------------------------------------------------------------------
def read_containers(listing, owner, now):
    """The containers carrying ``owner``'s mark, by name, from the daemon's listing with their
    state (LxdClient.instances(state=True)): status, IPv4 addresses (eth0's first), the static
    address its NIC holds, limits, uptime (since LXD's last start, ``last_used_at``), volumes (disk
    devices of a pool's custom volume) and the image it was made from as described."""
    out = {}
    for instance in listing:
        config = instance.get("config") or {}
        if config.get(OWNER_KEY) != owner:
            continue
        expanded = instance.get("expanded_config") or config
        devices = instance.get("expanded_devices") or instance.get("devices") or {}
        state = instance.get("state") or {}
        status = state.get("status") or instance.get("status") or "Unknown"
        started = parse_time(instance.get("last_used_at")) if status == "Running" else None
        nics = sorted((state.get("network") or {}).items(), key=lambda item: (item[0] != "eth0", item[0]))
        addresses = [a["address"] for name, net in nics if name != "lo" for a in net.get("addresses") or []
                     if a.get("family") == "inet" and a.get("scope") == "global"]
        static = [d.get("ipv4.address") for _n, d in sorted(devices.items())
                  if d.get("type") == "nic" and d.get("ipv4.address")]
        volumes = [{"name": d["source"], "path": d.get("path"), "readonly": str(d.get("readonly")).lower() == "true"}
                   for _n, d in sorted(devices.items())
                   if d.get("type") == "disk" and d.get("pool") and d.get("source") and d.get("path") != "/"]
        out[instance["name"]] = {
            "name": instance["name"], "status": status, "addresses": addresses, "static_address": static[0] if static else None,
            "cpus": expanded.get("limits.cpu") or None, "memory": expanded.get("limits.memory") or None,
            "memory_usage": (state.get("memory") or {}).get("usage") if status == "Running" else None,
            "autostart": str(expanded.get("boot.autostart", "")).lower() == "true",
            "autostart_priority": int(expanded["boot.autostart.priority"]) if str(
                expanded.get("boot.autostart.priority", "")).isdigit() else None,
            "started": iso(started) if started else None,
            "uptime_seconds": int(now - started) if started else None,
            "image": config.get(IMAGE_KEY), "volumes": volumes}
    return out


def address_of(container):
    """The address a container is reached at: its live one, else the static one its NIC holds."""
    return (container["addresses"] or [container["static_address"]])[0]


# ---- the proxy's sites --------------------------------------------------------------------------
def parse_nginx(text):
    """nginx configuration text -> [(directive, [args], children or None)]: the shape, not the
    meaning; enough for the files _nginx_render writes."""
    stack, current, words = [], [], []
    for found in _TOKEN.finditer(text):
        quoted, single, punct, word = found.groups()
        if punct == ";":
            if words:
                current.append((words[0], words[1:], None))
            words = []
        elif punct == "{":
            block = (words[0] if words else "", words[1:], [])
            current.append(block)
            stack.append(current)
            current, words = block[2], []
        elif punct == "}":
            words = []
            if stack:
                current = stack.pop()
        elif word is not None or quoted is not None or single is not None:
            words.append(next(part for part in (word, quoted, single) if part is not None))
    return current


def _children(node, name):
    return [child for child in node[2] or () if child[0] == name]


def _port(listen):
    return int(listen.rsplit(":", 1)[-1]) if listen.rsplit(":", 1)[-1].isdigit() else None


def read_sites(files):
    """The proxy's site files ({file name: text}) -> one site per file that has a server: name,
    server_names, http_ports, https_ports, default (the catch-all), redirect (plain HTTP answers
    301), locations ({path, exact, backend, root, status}) and upstreams ({name: [{address,
    down, backup}]})."""
    sites = []
    for fname in sorted(files):
        tree = parse_nginx(files[fname])
        servers = [node for node in tree if node[0] == "server" and node[2] is not None]
        if not servers:
            continue
        site = {"name": fname[:-5] if fname.endswith(".conf") else fname, "file": fname, "server_names": [],
                "http_ports": [], "https_ports": [], "default": False, "redirect": False, "locations": [],
                "upstreams": {}}
        for node in tree:
            if node[0] == "upstream" and node[1] and node[2] is not None:
                site["upstreams"][node[1][0]] = [{"address": server[1][0], "down": "down" in server[1],
                                                  "backup": "backup" in server[1]}
                                                 for server in _children(node, "server") if server[1]]
        for server in servers:
            for name in _children(server, "server_name"):
                site["server_names"] += [n for n in name[1] if n not in site["server_names"]]
            redirects = any(ret[1][:1] == ["301"] for ret in _children(server, "return"))
            for listen in _children(server, "listen"):
                port = _port(listen[1][0]) if listen[1] else None
                which = "https_ports" if "ssl" in listen[1] else "http_ports"
                if port is not None and port not in site[which]:
                    site[which].append(port)
                site["default"] = site["default"] or "default_server" in listen[1]
            for location in _children(server, "location"):
                exact = location[1][:1] == ["="]
                path = location[1][-1] if location[1] else "/"
                returns = _children(location, "return")
                if location[1][:1] == ["^~"] and path.startswith("/.well-known/acme-challenge"):
                    continue  # the ACME challenge: the proxy's own, not a route
                if returns and returns[0][1][:1] == ["301"]:
                    redirects = True
                    continue
                passes, roots = _children(location, "proxy_pass"), _children(location, "root") + _children(location, "alias")
                site["locations"].append({
                    "path": path, "exact": exact,
                    "backend": passes[0][1][0] if passes and passes[0][1] else None,
                    "root": roots[0][1][0] if roots and roots[0][1] else None,
                    "status": int(returns[0][1][0]) if returns and returns[0][1] and returns[0][1][0].isdigit() else None})
            site["redirect"] = site["redirect"] or redirects
        site["locations"].sort(key=lambda loc: loc["path"])
        sites.append(site)
    return sites


def backend_targets(backend, upstreams, by_address):
    """Where a location's ``proxy_pass`` sends requests: [{container, address, port, down}] (the
    upstream's servers for a pool; container None for an address no container of the box holds)."""
    found = _BACKEND.match(backend or "")
    if not found:
        return []
    scheme, host, port = found.group(1), found.group(2), found.group(3)
    if host in upstreams and port is None:
        servers = [(s["address"], s["down"]) for s in upstreams[host] if not s["backup"]]
    else:
        servers = [("%s:%s" % (host, port or (443 if scheme == "https" else 80)), False)]
    out = []
    for address, down in servers:
        addr, _sep, number = address.rpartition(":")
        addr = addr or number
        container = by_address.get(addr)
        out.append({"container": container, "address": addr, "port": int(number) if number.isdigit() else None,
                    "down": down})
    return out


# ---- the forwards -------------------------------------------------------------------------------
def owner_prefixes(save_text, owner, given=None):
    """The chain prefixes of ``owner``'s forwards: ``given``, else those whose jumps name it, else
    the one the owner's name gives (its chains may not exist)."""
    if given:
        return [given]
    found = sorted(prefix for prefix, whose in _dnat_claims.collection_owners(save_text).items() if whose == owner)
    return found or [_dnat.owner_defaults(owner)["chain_prefix"]]


def read_forwards(save_text, prefixes):
    """The DNAT rules of the ``<PREFIX>_PREROUTING`` chains -> forwards: proto, port (``80``,
    ``7000-7010``), address, target_port, host_address, sources, comment; one per forward (a forward
    limited to several sources has one rule each)."""
    chains = {"%s_PREROUTING" % prefix for prefix in prefixes}
    out, seen = [], {}
    for _chain, _body, words in _dnat_rules.dnat_rules(save_text, chains):
        if words is None:
            continue
        proto = _dnat_rules.option(words, "-p", "--protocol")[0] or "all"
        dport = (_dnat_rules.option(words, "--dport", "--destination-port")[0] or "").replace(":", "-")
        destination = _dnat_rules.option(words, "--to-destination")[0] or ""
        host = _dnat_rules.option(words, "-d", "--destination")[0]
        source = _host(_dnat_rules.option(words, "-s", "--source")[0])
        address, _sep, tport = destination.partition(":")
        tport = tport.split("/")[0] or dport  # a shifted range's "/FIRST" names the host's first port
        key = (proto, dport, host, destination)
        if key in seen:
            if source:
                seen[key]["sources"].append(source)
            continue
        forward = {"proto": proto, "port": dport, "address": address, "target_port": tport,
                   "host_address": _host(host),
                   "sources": [source] if source else [], "comment": _dnat_rules.option(words, "--comment")[0]}
        seen[key] = forward
        out.append(forward)
    return sorted(out, key=lambda f: (_forward_order("%s/%s" % (f["proto"], f["port"])), f["host_address"] or ""))


def _host(address):
    """An address as the user wrote it: iptables-save adds ``/32`` to one host."""
    return address[:-3] if address and address.endswith("/32") else address


# ---- the services -------------------------------------------------------------------------------
def group_containers(names, proxy):
    """Without a description: service -> its containers, a pool's members (``web-1``, ``web-2``:
    several names ``NAME-N``) under NAME, any other container its own service."""
    bases = {}
    for name in names:
        found = _POOL_MEMBER.match(name)
        if found and name != proxy:
            bases.setdefault(found.group(1), []).append(name)
    out = {}
    for name in names:
        if name == proxy:
            continue
        found = _POOL_MEMBER.match(name)
        if found and len(bases[found.group(1)]) > 1 and found.group(1) not in names:
            out.setdefault(found.group(1), []).append(name)
        else:
            out.setdefault(name, []).append(name)
    return {service: sorted(members, key=_member_order) for service, members in out.items()}


def _member_order(name):
    found = _POOL_MEMBER.match(name)
    return (found.group(1), int(found.group(2))) if found else (name, 0)


def _entries(sites, by_address, certs, now):
    """What reaches the containers through the proxy: one entry per domain and path (a host port's
    site: per port), with its targets and its certificate."""
    out = []
    # nginx's upstreams are global: a pool's is written in the first site that routes to it.
    upstreams = {name: servers for site in sites for name, servers in site["upstreams"].items()}
    for site in sites:
        if site["default"] and site["server_names"] in ([], ["_"]):
            continue  # the catch-all: it routes nowhere
        cert = certificate(certs.get(site["name"]), now) if site["https_ports"] else None
        for location in site["locations"]:
            targets = backend_targets(location["backend"], upstreams, by_address)
            if not targets:
                continue
            common = {"site": site["name"], "path": location["path"], "targets": targets, "certificate": cert}
            if site["server_names"] in ([], ["_"]):
                for port in site["http_ports"] + site["https_ports"]:
                    out.append(dict(common, kind="host_port", port=port, https=port in site["https_ports"]))
                continue
            for domain in site["server_names"]:
                https = bool(site["https_ports"])
                out.append(dict(common, kind="domain", domain=domain, https=https,
                                port=(site["https_ports"] if https else site["http_ports"] or [80])[0],
                                url="%s://%s%s%s" % ("https" if https else "http", domain,
                                                     _port_suffix(https, site), location["path"])))
    return out


def _port_suffix(https, site):
    port = (site["https_ports"] if https else site["http_ports"] or [80])[0]
    return "" if port == (443 if https else 80) else ":%d" % port


def certificate(cert, now):
    """The onebox-tls agent's status of one certificate -> mode, serving, not_after, days_left."""
    if not cert:
        return None
    end = parse_time(cert.get("not_after"))
    return {"name": cert.get("name"), "mode": cert.get("mode"), "serving": cert.get("serving"),
            "not_after": cert.get("not_after"), "names": cert.get("names"),
            "days_left": int((end - now) // 86400) if end is not None else None}


def backup_of(name, backups, now):
    """The backup agent's record of a service (its last.json entry) -> last_time, ok, error,
    last_good_time, age_seconds (of the last good one); None when it has no record."""
    if backups is None:
        return None
    entry = (backups.get("state") or {}).get(name)
    included = backups.get("included", {}).get(name)
    if entry is None:
        return {"included": included, "last_time": None, "ok": None, "error": None, "last_good_time": None,
                "age_seconds": None}
    good = parse_time(entry.get("last_good_time"))
    return {"included": included, "last_time": entry.get("last_time"), "ok": entry.get("ok"),
            "error": entry.get("error"), "last_good_time": entry.get("last_good_time"),
            "age_seconds": int(now - good) if good is not None else None}


def describe(owner, containers, sites, forwards, certs=None, backups=None, now=0.0, proxy=None, box=None,
             extra_sites=(), extra_forwards=(), daemon=None, notes=()):
    """Everything read -> the box's status (the module's result but the table and the picture).

    ``containers``: read_containers(); ``sites``: read_sites() of the proxy (None: not read);
    ``forwards``: read_forwards(); ``certs``: {name: the agent's status of it}; ``backups``:
    {"state": last.json, "included": {service: bool}} or None (no backups set up); ``proxy``: its
    container's name; ``box``: the parsed description (BoxParts) or None; ``extra_sites`` and
    ``extra_forwards``: the proxy sites and forwards beyond the description, as given to box."""
    proxy = (box.proxy or proxy) if box is not None else proxy
    by_address = {}  # an address (or a name: a user's site may name its backend) -> its container
    for container in containers.values():
        for address in container["addresses"] + [container["static_address"], container["name"]]:
            if address:
                by_address.setdefault(address, container["name"])
    if box is not None:
        members = {service.name: list(service.members) for service in box.services}
        kinds = {service.name: service.kind for service in box.services}
        described = {m for names in members.values() for m in names}
        for name in sorted(containers):
            if name not in described and name != proxy:
                members[name] = [name]
    else:
        members, kinds = group_containers(sorted(containers), proxy), {}
    entries = _entries(sites or [], by_address, certs or {}, now)
    drained = {t["container"] for e in entries for t in e["targets"] if t["down"] and t["container"]}
    forwards = [dict(forward, container=by_address.get(forward["address"])) for forward in forwards]

    def container_view(name):
        if name not in containers:
            return {"name": name, "status": "Missing", "addresses": [], "static_address": None, "cpus": None,
                    "memory": None, "memory_usage": None, "autostart": None, "autostart_priority": None,
                    "started": None, "uptime_seconds": None, "image": None, "volumes": [], "drained": False}
        return dict(containers[name], drained=name in drained)

    services = []
    for name, names in members.items():
        mine = set(names)
        reached = [e for e in entries if any(t["container"] in mine for t in e["targets"])]
        services.append({
            "name": name, "kind": kinds.get(name), "described": box is None or name in kinds,
            "containers": [container_view(n) for n in names],
            "domains": [_entry_view(e) for e in reached if e["kind"] == "domain"],
            "host_ports": [_entry_view(e) for e in reached if e["kind"] == "host_port"],
            "forwards": [dict(f) for f in forwards if f["container"] in mine],
            "backup": backup_of(name, backups, now)})
    proxy_view = None
    if proxy and (proxy in containers or (box is not None and box.proxy)):
        proxy_view = {"name": proxy, "container": container_view(proxy), "sites_read": sites is not None,
                      "sites": [s["name"] for s in sites or () if not s["default"]],
                      "forwards": [dict(f) for f in forwards if f["container"] == proxy],
                      "backup": backup_of(proxy, backups, now)}
    info = {"owner": owner, "daemon": daemon, "read_at": iso(now), "proxy": proxy_view, "services": services,
            "forwards": forwards,
            "certificates": sorted((certificate(c, now) for c in (certs or {}).values()), key=lambda c: c["name"] or ""),
            "backups": backups is not None, "notes": list(notes)}
    info["unreached_forwards"] = [dict(f) for f in forwards if f["container"] is None]
    info["unreached_routes"] = [_entry_view(e) for e in entries if any(t["container"] is None for t in e["targets"])]
    info["differences"] = differences(info, entries, containers, box, proxy, extra_sites, extra_forwards) if box is not None else None
    return info


def _entry_view(entry):
    view = {k: val for k, val in entry.items() if k not in ("targets",)}
    view["containers"] = [t["container"] or t["address"] for t in entry["targets"]]
    view["target_port"] = entry["targets"][0]["port"] if entry["targets"] else None
    view["down"] = [t["container"] or t["address"] for t in entry["targets"] if t["down"]]
    view["unreached"] = ["%s:%s" % (t["address"], t["port"]) for t in entry["targets"] if t["container"] is None]
    return view


def differences(info, entries, containers, box, proxy, extra_sites=(), extra_forwards=()):
    """The description against the box: containers, domains (with their paths) and forwards
    described but missing, present but not described; containers not running."""
    wanted_containers = [item["name"] for item in box.instances()]
    wanted_routes = set()
    for site in list(box.sites()) + list(extra_sites or ()):
        names = [n for n in site.get("server_names") or () if n != "_"]
        for location in site.get("locations") or ():
            if names:
                wanted_routes.update("%s%s" % (name, location.get("path", "/")) for name in names)
    have_routes = {"%s%s" % (e["domain"], e["path"]) for e in entries if e["kind"] == "domain"}
    wanted_forwards = {"%s/%s" % (f.get("proto", "tcp"), str(f["port"]).replace(":", "-"))
                       for f in list(box.forwards()) + list(extra_forwards or ())}
    have_forwards = {"%s/%s" % (f["proto"], f["port"]) for f in info["forwards"]}
    owned = set(containers)
    return {
        "missing_containers": [n for n in wanted_containers if n not in owned],
        "undescribed_containers": sorted(owned - set(wanted_containers)),
        "stopped_containers": [n for n in wanted_containers if n in owned and containers[n]["status"] != "Running"],
        "missing_domains": sorted(wanted_routes - have_routes) if info["proxy"] and info["proxy"]["sites_read"] else [],
        "undescribed_domains": sorted(have_routes - wanted_routes),
        "missing_forwards": sorted(wanted_forwards - have_forwards, key=_forward_order),
        "undescribed_forwards": sorted(have_forwards - wanted_forwards, key=_forward_order),
    }


def _forward_order(text):
    proto, _sep, port = text.partition("/")
    return (int(port.split("-")[0]) if port.split("-")[0].isdigit() else 0, proto)


# ---- the table ----------------------------------------------------------------------------------
HEADERS = ("SERVICE", "CONTAINER", "STATE", "ADDRESS", "LIMITS", "UPTIME", "REACHED AT")


def _reached(service):
    """The REACHED AT lines of a service and, beside each, its certificate."""
    lines = []
    for entry in service["domains"]:
        lines.append((entry["url"] + _down_note(entry), _cert_text(entry["certificate"])))
    for entry in service["host_ports"]:
        path = "" if entry["path"] == "/" else " " + entry["path"]
        lines.append(("host tcp/%d -> proxy -> :%s%s%s" % (entry["port"], entry["target_port"], path, _down_note(entry)), ""))
    for forward in service["forwards"]:
        lines.append((_forward_text(forward), ""))
    return lines


def _down_note(entry):
    return " (down in the proxy: %s)" % ", ".join(entry["down"]) if entry["down"] else ""


def _forward_text(forward):
    text = "host %s/%s" % (forward["proto"], forward["port"])
    if forward["host_address"]:
        text = "host %s %s/%s" % (forward["host_address"], forward["proto"], forward["port"])
    if forward["target_port"] != forward["port"]:
        text += " -> :%s" % forward["target_port"]
    if forward["sources"]:
        text += " from %s" % ", ".join(forward["sources"])
    return text


def _cert_text(cert):
    if cert is None:
        return ""
    if cert["not_after"] is None:
        return "%s (none)" % (cert["serving"] or cert["mode"])
    return "%s %s (%s d)" % (cert["serving"] or cert["mode"], cert["not_after"][:10], cert["days_left"])


def _backup_text(backup):
    if backup is None:
        return ""
    if backup["included"] is False:
        return "not backed up"
    if not backup["last_time"]:
        return "never"
    text = "%s %s" % (backup["last_time"][:16].replace("T", " "), "ok" if backup["ok"] else "FAILED")
    if not backup["ok"] and backup["last_good_time"]:
        text += ", last good %s" % backup["last_good_time"][:16].replace("T", " ")
    return text


def _limits(container):
    parts = []
    if container["cpus"]:
        parts.append("cpu %s" % container["cpus"])
    if container["memory"]:
        parts.append("mem %s" % container["memory"])
    return ", ".join(parts) or "-"


def _state(container):
    state = container["status"]
    if container["drained"]:
        state += " (drained)"
    return state


def table(info):
    """The status as text lines: a heading, one row per container (a service's domains, host ports
    and forwards beside its first container, a certificate beside its domain), then what differs
    from the description and anything that could not be read."""
    certs = any(e["certificate"] for s in info["services"] for e in s["domains"])
    backups = info["backups"]
    headers = list(HEADERS) + (["CERTIFICATE"] if certs else []) + (["LAST BACKUP"] if backups else [])
    rows = []

    def add(service_name, containers, reached, backup):
        first = True
        for container in containers or [None]:
            cells = [service_name if first else "", container["name"] if container else "-"]
            if container:
                address = address_of(container) or "-"
                cells += [_state(container), address, _limits(container),
                          duration(container["uptime_seconds"]) if container["uptime_seconds"] is not None else "-"]
            else:
                cells += ["-", "-", "-", "-"]
            lines = reached if first else []
            cells.append([line for line, _cert in lines] or [""] if first else "")
            if certs:
                cells.append([cert for _line, cert in lines] or [""] if first else "")
            if backups:
                cells.append(_backup_text(backup) if first else "")
            rows.append(cells)
            first = False

    for service in info["services"]:
        label = service["name"] + ("" if service["described"] else " (not described)")
        add(label, service["containers"], _reached(service), service["backup"])
    if info["proxy"]:
        proxy = info["proxy"]
        add(PROXY, [proxy["container"]], [(_forward_text(f), "") for f in proxy["forwards"]], proxy["backup"])
    counts = _counts(info)
    lines = ["box %s%s: %s; read %s" % (info["owner"], " (%s)" % info["daemon"] if info["daemon"] else "",
                                        counts, info["read_at"])]
    lines += render_columns(headers, rows)
    lines += _footer(info)
    return lines


def _counts(info):
    containers = [c for s in info["services"] for c in s["containers"] if c["status"] != "Missing"]
    if info["proxy"] and info["proxy"]["container"]["status"] != "Missing":
        containers.append(info["proxy"]["container"])
    running = sum(1 for c in containers if c["status"] == "Running")
    domains = {e["domain"] for s in info["services"] for e in s["domains"]}
    return "%d service%s, %d container%s (%d running), %d domain%s, %d forward%s" % (
        len(info["services"]), "" if len(info["services"]) == 1 else "s", len(containers),
        "" if len(containers) == 1 else "s", running, len(domains), "" if len(domains) == 1 else "s",
        len(info["forwards"]), "" if len(info["forwards"]) == 1 else "s")


def _footer(info):
    out = []
    diff = info["differences"]
    if diff:
        said = (("missing_containers", "described but missing containers"),
                ("stopped_containers", "described but not running"),
                ("undescribed_containers", "containers of the owner not described"),
                ("missing_domains", "described but not routed by the proxy"),
                ("undescribed_domains", "routed by the proxy but not described"),
                ("missing_forwards", "described but not forwarded"),
                ("undescribed_forwards", "forwarded but not described"))
        found = [(words, diff[key]) for key, words in said if diff[key]]
        out += ["%s: %s" % (words, ", ".join(names)) for words, names in found]
        if not found:
            out.append("as described: every container, domain and forward of the description is there, and nothing else")
    if info["unreached_routes"]:
        out.append("routed by the proxy to no container of the box: %s" % ", ".join(
            "%s -> %s" % (e.get("url") or "host tcp/%d" % e["port"], ", ".join(e["unreached"]))
            for e in info["unreached_routes"]))
    if info["unreached_forwards"]:
        out.append("forwarded to no container of the box: %s" % ", ".join(
            "%s -> %s" % (_forward_text(f), f["address"]) for f in info["unreached_forwards"]))
    out += list(info["notes"])
    return out


def render_columns(headers, rows):
    """Rows of cells (a cell may be a list of lines: the row is as tall as its tallest) -> lines of
    columns as wide as their widest line, two spaces apart, with a rule under the headers."""
    cells = [[[h] for h in headers]] + [[c if isinstance(c, list) else [c] for c in row] for row in rows]
    widths = [max(len(line) for row in cells for line in row[i]) for i in range(len(headers))]
    out = []
    for number, row in enumerate(cells):
        height = max(len(cell) for cell in row)
        for index in range(height):
            parts = [(cell[index] if index < len(cell) else "").ljust(widths[col]) for col, cell in enumerate(row)]
            out.append("  ".join(parts).rstrip())
        if number == 0:
            out.append("  ".join("-" * w for w in widths))
    return out
