# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parsing nginx sites: a site as the user gives it -> a checked site with every default filled.

parse_site / parse_sites are the entry points; parse_proxy, parse_upstream, parse_location and
parse_tls take the site's parts. Every default lives here, once (the module documents the same
values). Errors name the field as the user wrote it (``sites[2].locations[0].path``).
"""
from __future__ import annotations

from ansible_collections.homelab.onebox.plugins.module_utils import _nginx_values as nv
from ansible_collections.homelab.onebox.plugins.module_utils import _validate as v
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._nginx_values import field_of as _j

METHODS = ("round_robin", "least_conn", "ip_hash")
TLS_PROTOCOLS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
# Mozilla "intermediate" (TLS 1.2 + 1.3, forward secrecy, AEAD only).
MODERN_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                  "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                  "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
                  "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305")

DEFAULT_HEADERS = {
    "Host": "$host",
    "X-Real-IP": "$remote_addr",
    "X-Forwarded-For": "$proxy_add_x_forwarded_for",
    "X-Forwarded-Proto": "$scheme",
    "X-Forwarded-Host": "$host",
}
PROXY_DEFAULTS = {
    "headers": {},
    "websocket": True,
    "client_max_body_size": "10m",
    "connect_timeout": "5s",
    "send_timeout": "60s",
    "read_timeout": "60s",
    "buffering": True,
    "buffer_size": None,
    "buffers": None,
}
TLS_DEFAULTS = {
    "certificate": None,
    "key": None,
    "listen": ["443"],
    "redirect": True,
    "hsts": True,
    "hsts_max_age": 63072000,
    "hsts_include_subdomains": False,
    "hsts_preload": False,
    "http2": True,
    "protocols": ["TLSv1.2", "TLSv1.3"],
    "ciphers": MODERN_CIPHERS,
    "reject_handshake": False,
    "acme_webroot": None,
}
SERVER_DEFAULTS = {"weight": 1, "max_fails": 1, "fail_timeout": "10s", "backup": False, "down": False}
UPSTREAM_DEFAULTS = {"method": "round_robin", "keepalive": 0}

SITE_KEYS = ("name", "state", "server_names", "listen", "default_server", "locations", "upstreams",
             "proxy", "tls", "access_log", "error_log")
LOCATION_KEYS = ("path", "exact", "backend", "root", "status", "strip_prefix", "proxy")
UPSTREAM_KEYS = ("name", "method", "keepalive", "servers")
SERVER_KEYS = ("address", "weight", "max_fails", "fail_timeout", "backup", "down")


def _each(value, field, parse):
    """``parse(item, field[i])`` for each item of a list field (one item stands for a list of it)."""
    return [parse(item, _j(field, "[%d]" % i)) for i, item in enumerate(v.items(value, field, scalar=True))]


def parse_proxy(spec, field, base=None):
    """Proxy settings; ``base`` (already parsed) supplies what ``spec`` leaves unset."""
    spec = v.mapping(spec, field, PROXY_DEFAULTS)
    out = dict(base or PROXY_DEFAULTS)
    headers = dict(out["headers"])
    given = spec.get("headers")
    if given is not None and not isinstance(given, dict):
        raise ValidationError(_j(field, "headers"), given, "must be a dict")
    for name, value in sorted((given or {}).items()):
        nv.matching(name, nv.HEADER_NAME, _j(field, "headers"), "a header name (letters, digits, '-', '_')")
        # Header names are case-insensitive: an override replaces the default whatever its case.
        for existing in [k for k in list(headers) + list(DEFAULT_HEADERS) if k.lower() == name.lower()]:
            headers.pop(existing, None)
            if existing in DEFAULT_HEADERS and existing != name:
                headers[existing] = None
        headers[name] = nv.header_value(value, _j(field, "headers.%s" % name))
    out["headers"] = headers
    for key in ("websocket", "buffering"):
        if spec.get(key) is not None:
            out[key] = v.boolean(spec[key], _j(field, key))
    for key in ("connect_timeout", "send_timeout", "read_timeout"):
        if spec.get(key) is not None:
            out[key] = nv.matching(spec[key], nv.TIME, _j(field, key), "a time such as 5s, 500ms or 2m")
    for key in ("client_max_body_size", "buffer_size"):
        if spec.get(key) is not None:
            out[key] = nv.matching(spec[key], nv.SIZE, _j(field, key), "a size such as 512k, 10m or 1g")
    if spec.get("buffers") is not None:
        out["buffers"] = nv.matching(spec["buffers"], nv.BUFFERS, _j(field, "buffers"), "NUMBER SIZE such as '8 16k'")
    return out


def _parse_server(server, field, method):
    """One member of an upstream: ``HOST:PORT`` or a dict with its address and options."""
    if isinstance(server, str):
        server = {"address": server}
    server = v.mapping(server, field, SERVER_KEYS)
    out = dict(SERVER_DEFAULTS)
    out["address"] = nv.upstream_server(server.get("address"), _j(field, "address"))
    if server.get("weight") is not None:
        out["weight"] = v.integer(server["weight"], _j(field, "weight"), 1, 1000)
    if server.get("max_fails") is not None:
        out["max_fails"] = v.integer(server["max_fails"], _j(field, "max_fails"), 0, 1000)
    if server.get("fail_timeout") is not None:
        out["fail_timeout"] = nv.matching(server["fail_timeout"], nv.TIME, _j(field, "fail_timeout"),
                                          "a time such as 10s")
    for key in ("backup", "down"):
        if server.get(key) is not None:
            out[key] = v.boolean(server[key], _j(field, key))
    if out["backup"] and method == "ip_hash":
        raise ValidationError(_j(field, "backup"), True, "nginx does not allow backup servers with ip_hash")
    return out


def parse_upstream(spec, field):
    spec = v.mapping(spec, field, UPSTREAM_KEYS)
    name = nv.matching(spec.get("name"), nv.UPSTREAM_NAME, _j(field, "name"),
                       "an upstream name (letters, digits, '_', '.', '-')")
    method = spec.get("method") or UPSTREAM_DEFAULTS["method"]
    v.one_of(method, METHODS, _j(field, "method"))
    keepalive = spec.get("keepalive")
    keepalive = (UPSTREAM_DEFAULTS["keepalive"] if keepalive is None
                 else v.integer(keepalive, _j(field, "keepalive"), 0, 10000))
    servers = _each(spec.get("servers"), _j(field, "servers"),
                    lambda server, sfield: _parse_server(server, sfield, method))
    if not servers:
        raise ValidationError(_j(field, "servers"), spec.get("servers"), "an upstream needs at least one server")
    if all(s["backup"] or s["down"] for s in servers):
        raise ValidationError(_j(field, "servers"), spec.get("servers"),
                              "needs at least one server that is neither backup nor down")
    return {"name": name, "method": method, "keepalive": keepalive, "servers": servers}


def parse_location(spec, field, site_proxy, upstream_names):
    spec = v.mapping(spec, field, LOCATION_KEYS)
    path = v.no_control(v.url_path(spec.get("path"), _j(field, "path")), _j(field, "path"))
    out = {"path": path, "exact": v.boolean(spec.get("exact") or False, _j(field, "exact")),
           "strip_prefix": v.boolean(spec.get("strip_prefix") or False, _j(field, "strip_prefix")),
           "backend": None, "root": None, "status": None, "proxy": None}
    given = [key for key in ("backend", "root", "status") if spec.get(key) is not None]
    if len(given) != 1:
        raise ValidationError(field, spec, "a location needs exactly one of backend (a URL), root (a "
                                           "directory served by nginx) or status (an HTTP code to return); "
                                           "got %s" % (", ".join(given) or "none"))
    if out["strip_prefix"]:
        if out["exact"]:
            raise ValidationError(_j(field, "strip_prefix"), True, "cannot be used with exact")
        if not path.endswith("/"):
            raise ValidationError(_j(field, "path"), path, "must end with '/' when strip_prefix is set")
    if spec.get("backend") is not None:
        url = nv.backend_url(spec["backend"], _j(field, "backend"), upstream_names)
        if url["host"] in upstream_names and url["port"] is not None:
            raise ValidationError(_j(field, "backend"), spec["backend"],
                                  "%s is an upstream of this site: give no port" % url["host"])
        if out["strip_prefix"] and url["path"] is not None:
            raise ValidationError(_j(field, "strip_prefix"), True,
                                  "give either a path in backend (it replaces the location's path) or "
                                  "strip_prefix, not both")
        out["backend"] = url
        out["proxy"] = parse_proxy(spec.get("proxy"), _j(field, "proxy"), site_proxy)
    elif spec.get("proxy") is not None:
        raise ValidationError(_j(field, "proxy"), spec["proxy"], "only a location with a backend proxies")
    if spec.get("root") is not None:
        out["root"] = nv.abs_path(spec["root"], _j(field, "root")).rstrip("/") or "/"
    if spec.get("status") is not None:
        out["status"] = v.integer(spec["status"], _j(field, "status"), 200, 599)
    return out


POLICY_KEYS = ("redirect", "hsts", "hsts_max_age", "hsts_include_subdomains", "hsts_preload")


def parse_https_policy(spec, field):
    """What an HTTPS site says to clients: redirect and HSTS (``POLICY_KEYS`` of ``spec``, checked,
    over TLS_DEFAULTS). The box's TLS options take the same keys with the same checks."""
    out = {key: TLS_DEFAULTS[key] for key in POLICY_KEYS}
    for key in ("redirect", "hsts", "hsts_include_subdomains", "hsts_preload"):
        if spec.get(key) is not None:
            out[key] = v.boolean(spec[key], _j(field, key))
    if out["hsts_preload"] and not out["hsts_include_subdomains"]:
        # Browsers' preload lists take only a header with includeSubDomains.
        raise ValidationError(_j(field, "hsts_preload"), True, "needs hsts_include_subdomains (the preload list requires it)")
    if spec.get("hsts_max_age") is not None:
        out["hsts_max_age"] = v.integer(spec["hsts_max_age"], _j(field, "hsts_max_age"), 0, 10 ** 9)
    return out


def parse_tls(spec, field):
    if spec is None:
        return None
    spec = v.mapping(spec, field, TLS_DEFAULTS)
    out = dict(TLS_DEFAULTS)
    if spec.get("reject_handshake") is not None:
        out["reject_handshake"] = v.boolean(spec["reject_handshake"], _j(field, "reject_handshake"))
    for key in ("certificate", "key"):
        if spec.get(key) is None and out["reject_handshake"]:
            continue
        if spec.get(key) is None:
            raise ValidationError(_j(field, key), None, "TLS needs a certificate and a key path")
        out[key] = nv.abs_path(spec[key], _j(field, key))
    if spec.get("listen") is not None:
        out["listen"] = _each(spec["listen"], _j(field, "listen"), nv.listen)
        if not out["listen"]:
            raise ValidationError(_j(field, "listen"), spec["listen"], "must name at least one port")
    out.update(parse_https_policy(spec, field))
    if spec.get("http2") is not None:
        out["http2"] = v.boolean(spec["http2"], _j(field, "http2"))
    if spec.get("acme_webroot") is not None:
        out["acme_webroot"] = nv.abs_path(spec["acme_webroot"], _j(field, "acme_webroot"))
    if out["reject_handshake"]:
        # A catch-all for names no site has a certificate for: refuse the TLS handshake rather
        # than answer with another site's certificate and content.
        out.update(redirect=False, hsts=False, http2=False)
    if spec.get("protocols") is not None:
        out["protocols"] = _each(spec["protocols"], _j(field, "protocols"),
                                 lambda protocol, pfield: v.one_of(protocol, TLS_PROTOCOLS, pfield))
        if not out["protocols"]:
            raise ValidationError(_j(field, "protocols"), spec["protocols"], "must name at least one protocol")
    if spec.get("ciphers") is not None:
        out["ciphers"] = nv.matching(spec["ciphers"], nv.CIPHERS, _j(field, "ciphers"), "an OpenSSL cipher list")
    return out


def _logs(spec, field, name, log_dir):
    """access_log and error_log: given, ``off`` (access_log), LOG_DIR/NAME.KIND.log or None."""
    logs = {}
    for key in ("access_log", "error_log"):
        value = spec.get(key)
        if value is None and log_dir:
            value = "%s/%s.%s.log" % (log_dir.rstrip("/"), name, key.split("_", maxsplit=1)[0])
        if value is None or (key == "access_log" and value == "off"):
            logs[key] = value
        else:
            logs[key] = nv.abs_path(value, _j(field, key))
    return logs


def parse_site(spec, field="", log_dir=None):
    """Check a site and fill every default. Raises ValidationError naming field and value.

    With ``log_dir``, a site without its own access_log/error_log logs to
    ``LOG_DIR/NAME.access.log`` and ``LOG_DIR/NAME.error.log``."""
    spec = v.mapping(spec, field or "site", SITE_KEYS)
    name = nv.site_name(spec.get("name"), _j(field, "name"))
    state = spec.get("state") or "present"
    v.one_of(state, ("present", "absent"), _j(field, "state"))
    if state == "absent":
        return {"name": name, "state": "absent"}
    names = _each(spec.get("server_names"), _j(field, "server_names"), nv.server_name)
    if not names:
        raise ValidationError(_j(field, "server_names"), spec.get("server_names"),
                              "a site needs at least one server name (use _ for a catch-all)")
    raw_listen = spec.get("listen")
    listens = _each(raw_listen if raw_listen is not None else [80], _j(field, "listen"), nv.listen)
    tls = parse_tls(spec.get("tls"), _j(field, "tls"))
    if not listens and not tls:
        raise ValidationError(_j(field, "listen"), raw_listen, "a site without tls needs at least one port")
    upstreams = _each(spec.get("upstreams"), _j(field, "upstreams"), parse_upstream)
    upstream_names = [u["name"] for u in upstreams]
    if len(set(upstream_names)) != len(upstream_names):
        raise ValidationError(_j(field, "upstreams"), upstream_names, "upstream names must be unique")
    proxy = parse_proxy(spec.get("proxy"), _j(field, "proxy"))
    locations = _each(spec.get("locations"), _j(field, "locations"),
                      lambda loc, lfield: parse_location(loc, lfield, proxy, upstream_names))
    if not locations:
        raise ValidationError(_j(field, "locations"), spec.get("locations"), "a site needs at least one location")
    seen = set()
    for i, loc in enumerate(locations):
        key = (loc["exact"], loc["path"])
        if key in seen:
            raise ValidationError(_j(field, "locations[%d].path" % i), loc["path"], "location path given twice")
        seen.add(key)
    logs = _logs(spec, field, name, log_dir)
    return {
        "name": name, "state": "present", "server_names": names, "listen": listens,
        "default_server": v.boolean(spec.get("default_server") or False, _j(field, "default_server")),
        "locations": locations, "upstreams": upstreams, "proxy": proxy, "tls": tls,
        "access_log": logs["access_log"], "error_log": logs["error_log"],
    }


def parse_sites(specs, field="sites", log_dir=None):
    """A set of sites: each parsed, names unique, upstream names unique across them (nginx's
    upstream names are global)."""
    sites = [parse_site(spec, "%s[%d]" % (field, i), log_dir) for i, spec in enumerate(v.items(specs, field, scalar=True))]
    seen = {}
    for i, site in enumerate(sites):
        if site["name"] in seen:
            raise ValidationError("%s[%d].name" % (field, i), site["name"], "site name given twice")
        seen[site["name"]] = i
    upstreams = {}
    for i, site in enumerate(sites):
        for upstream in site.get("upstreams") or ():
            if upstream["name"] in upstreams:
                raise ValidationError("%s[%d].upstreams" % (field, i), upstream["name"],
                                      "upstream name also used by site %s (nginx upstream names are global)"
                                      % upstreams[upstream["name"]])
            upstreams[upstream["name"]] = site["name"]
    return sites
