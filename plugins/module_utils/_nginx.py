# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""nginx sites: spec -> validated, defaulted site -> nginx text; and the transaction that makes a
set of site files live without ever leaving nginx broken.

Pure logic first (normalise_site, render_site, plan), then the transaction (apply) over a small
"target" (a directory plus a way to run nginx) with two implementations: HostTarget (files on the
machine running the module) and LxdTarget (files and commands inside an LXD instance, through
_lxd.py; nothing but sh, mv, ln, rm and nginx is needed in the container).

The transaction, for all changed files at once:
  1. stage: write each new text to ``.onebox-NAME.conf.new`` beside the live file (a dot-file
     that neither ``*.conf`` nor ``*`` include globs match);
  2. swap: hard-link the live file to ``.onebox-NAME.conf.old``, then rename the staged file over
     the live one (rename is atomic: the live path always holds a whole file);
  3. test the whole configuration (``nginx -T``: ``-t`` plus the dump, used to check every
     written file is really included);
  4. on failure rename every ``.old`` back (removing files that were new) and raise with nginx's
     own words: nginx was never reloaded, so it keeps serving the previous configuration;
  5. on success remove the ``.old`` files and reload nginx once.
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
import re

from ansible_collections.homelab.onebox.plugins.module_utils import _validate as v
from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError, ValidationError

MARKER = "# Managed by homelab.onebox.nginx_site"
SUFFIX = ".conf"
STAGE_PREFIX = ".onebox-"

METHODS = ("round_robin", "least_conn", "ip_hash")
TLS_PROTOCOLS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
# Mozilla "intermediate" (TLS 1.2 + 1.3, forward secrecy, AEAD only).
MODERN_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                  "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                  "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
                  "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305")

# Every default lives here, once; the module documents the same values.
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
    "http2": True,
    "protocols": ["TLSv1.2", "TLSv1.3"],
    "ciphers": MODERN_CIPHERS,
    "reject_handshake": False,
}
SERVER_DEFAULTS = {"weight": 1, "max_fails": 1, "fail_timeout": "10s", "backup": False, "down": False}
UPSTREAM_DEFAULTS = {"method": "round_robin", "keepalive": 0}

# A site name is its file's name: a leading '_' is allowed (the names site_name_for makes for
# wildcards), a leading '.' (hidden, and the staging prefix) or '-' (an option to sh) is not.
_SITE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
SITE_NAME_MAX = 100
WILDCARD_PREFIX = "_wildcard."
_UPSTREAM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
_HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
_TIME = re.compile(r"\d{1,9}(ms|s|m|h|d)?")
_SIZE = re.compile(r"\d{1,12}[kKmMgG]?")
_BUFFERS = re.compile(r"\d{1,6} \d{1,9}[kKmM]?")
_URL = re.compile(r"(?P<scheme>https?)://(?P<host>\[[^\]/]*\]|[^/:\[\]]*)(?::(?P<port>[^/]*))?(?P<path>/.*)?",
                  re.DOTALL)
# What must never reach an nginx file outside a validated token: directive and block delimiters,
# quotes, escapes, whitespace, control characters.
_NEVER = set(";{}'\"`\\") | {chr(c) for c in range(33)} | {chr(127)}


class NginxError(OneboxError):
    """nginx refused a configuration, or a target operation failed."""


# ---- validation helpers -----------------------------------------------------------------------
def _j(field, key):
    """The name of a nested field as the user wrote it: ``sites[2].locations[0].path``, or
    ``locations[0].path`` for the module's top-level site."""
    if not field:
        return key
    return "%s%s%s" % (field, "" if key.startswith("[") else ".", key)


def _token(value, field):
    """Last line of defence for anything rendered unquoted."""
    text = str(value)
    bad = sorted(set(text) & _NEVER)
    if not text or bad:
        raise ValidationError(field, value, "must not be empty or contain %s"
                              % " ".join(repr(c) for c in bad) if bad else "must not be empty")
    return text


def _bool(value, field):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.lower() in ("true", "yes", "on", "1")
    raise ValidationError(field, value, "must be a boolean")


def _int(value, field, low, high):
    if isinstance(value, bool):
        raise ValidationError(field, value, "must be an integer %d-%d" % (low, high))
    try:
        number = int(str(value).strip())
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        raise ValidationError(field, value, "must be an integer %d-%d" % (low, high))
    return number


def _regex(value, pattern, field, what):
    if not isinstance(value, (str, int)) or isinstance(value, bool) or not pattern.fullmatch(str(value)):
        raise ValidationError(field, value, "must be %s" % what)
    return str(value)


def _list(value, field):
    if value is None:
        return []
    if isinstance(value, (str, int)):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise ValidationError(field, value, "must be a list")
    return list(value)


def _dict(value, field, known):
    if value is None:
        return {}
    field = field or "site"
    if not isinstance(value, dict):
        raise ValidationError(field, value, "must be a dict")
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ValidationError(field, value, "unknown key(s) %s; known: %s"
                              % (", ".join(map(str, unknown)), ", ".join(sorted(known))))
    return value


def abs_path(value, field):
    """An absolute file path that goes into a directive unquoted."""
    v.safe_token(value, field)
    _token(value, field)
    if not value.startswith("/"):
        raise ValidationError(field, value, "must be an absolute path")
    return value


def site_name(value, field="name"):
    v.file_name(value, field)
    if not _SITE_NAME.fullmatch(value):
        raise ValidationError(field, value, "must be 1-100 letters, digits, '.', '_' or '-', "
                                            "starting with a letter, digit or '_'")
    return value


def site_name_for(domain):
    """The site (and so file) name for a domain of a box description (validated by
    _validate.domain): the domain itself, with a leading ``*.`` written ``_wildcard.``
    (``*.example.org`` -> ``_wildcard.example.org``). No domain holds a ``_``, so a wildcard's
    name never equals an exact name's. A name over 100 characters keeps its first 87 and ends in
    ``_`` and 12 hex digits of its SHA-1: still unique, still a plain file name, and short enough
    for the staging names and log files made from it."""
    name = WILDCARD_PREFIX + domain[2:] if domain.startswith("*.") else domain
    if len(name) > SITE_NAME_MAX:
        name = "%s_%s" % (name[:SITE_NAME_MAX - 13], hashlib.sha1(domain.encode("utf-8")).hexdigest()[:12])
    return name


def server_name(value, field):
    """A name nginx's server_name takes, without regexes: ``_``, ``host.example.org``,
    ``*.example.org``, ``.example.org`` or ``www.example.*``."""
    if value == "_":
        return value
    v.safe_token(value, field)
    try:
        if value.startswith("."):
            return "." + v.domain(value[1:], field, wildcard=False)
        if value.endswith(".*"):
            return v.domain(value[:-2], field, wildcard=False) + ".*"
    except ValidationError as err:
        raise ValidationError(field, value, err.reason)  # the name as written, not the part checked
    return _token(v.domain(value, field, wildcard=True), field)


def _port_in(text, field, whole):
    """The port part of ``whole``; an error names the whole value as the user wrote it."""
    try:
        return v.port(text, field)
    except ValidationError:
        raise ValidationError(field, whole, "port must be a number 1-65535")


def _host(value, field):
    if value.startswith("["):
        try:
            return "[%s]" % ipaddress.IPv6Address(value[1:-1])
        except ValueError:
            raise ValidationError(field, value, "must be an IPv6 address in brackets")
    return _token(v.domain(value, field, wildcard=False), field)


def listen(value, field):
    """``80``, ``127.0.0.1:8080`` or ``[::]:80`` -> the listen address nginx takes."""
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    if text is not None and text.isdigit():
        return str(v.port(text, field))
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[0-9.]+|\*):(\d+)", text or "")
    if not match:
        raise ValidationError(field, value, "must be a port, or ADDRESS:PORT with an IPv4 address or "
                                            "a bracketed IPv6 address")
    address = match.group(1)
    if address.startswith("["):
        address = _host(address, field)
    elif address != "*":
        address = v.ipv4_address(address, field)
    return "%s:%d" % (address, _port_in(match.group(2), field, value))


def upstream_server(value, field):
    """``host``, ``host:port``, ``[v6]:port`` or ``unix:/path``."""
    if not isinstance(value, str):
        raise ValidationError(field, value, "must be a string such as app1:8000")
    if value.startswith("unix:"):
        abs_path(value[5:], field)
        return value
    match = re.fullmatch(r"(\[[^\]]*\]|[^:\[\]]+)(?::(\d+))?", value)
    if not match:
        raise ValidationError(field, value, "must be HOST, HOST:PORT, [IPV6]:PORT or unix:/path")
    host = _host(match.group(1), field)
    return host if match.group(2) is None else "%s:%d" % (host, _port_in(match.group(2), field, value))


def backend_url(value, field, upstream_names=()):
    """``http(s)://host[:port][/path]`` -> dict(scheme, host, port, path)."""
    if not isinstance(value, str):
        raise ValidationError(field, value, "must be a URL such as http://app:8000")
    match = _URL.fullmatch(value)
    if not match:
        raise ValidationError(field, value, "must be a URL http://HOST[:PORT][/PATH] or https://...")
    port = match.group("port")
    return {
        "scheme": match.group("scheme"),
        "host": (match.group("host") if match.group("host") in upstream_names
                 else _host(match.group("host"), field)),
        "port": None if port is None else _port_in(port, field, value),
        "path": None if match.group("path") is None else v.url_path(match.group("path"), field),
    }


def header_value(value, field):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValidationError(field, value, "must be a string (or null to drop the header)")
    text = str(value)
    bad = sorted(c for c in set(text) if c in "\"'`\\" or ord(c) < 32 or ord(c) == 127)
    if bad:
        raise ValidationError(field, value, "must not contain %s" % " ".join(repr(c) for c in bad))
    return text


# ---- normalisation: user spec -> complete, validated site ------------------------------------
SITE_KEYS = ("name", "state", "server_names", "listen", "default_server", "locations", "upstreams",
             "proxy", "tls", "access_log", "error_log")
LOCATION_KEYS = ("path", "exact", "backend", "root", "status", "strip_prefix", "proxy")
UPSTREAM_KEYS = ("name", "method", "keepalive", "servers")
SERVER_KEYS = ("address", "weight", "max_fails", "fail_timeout", "backup", "down")


def normalise_proxy(spec, field, base=None):
    """Proxy settings; ``base`` (already normalised) supplies what ``spec`` leaves unset."""
    spec = _dict(spec, field, PROXY_DEFAULTS)
    out = dict(base or PROXY_DEFAULTS)
    headers = dict(out["headers"])
    given = spec.get("headers")
    if given is not None and not isinstance(given, dict):
        raise ValidationError(_j(field, "headers"), given, "must be a dict")
    for name, value in sorted((given or {}).items()):
        _regex(name, _HEADER_NAME, _j(field, "headers"), "a header name (letters, digits, '-', '_')")
        # Header names are case-insensitive: an override replaces the default whatever its case.
        for existing in [k for k in list(headers) + list(DEFAULT_HEADERS) if k.lower() == name.lower()]:
            headers.pop(existing, None)
            if existing in DEFAULT_HEADERS and existing != name:
                headers[existing] = None
        headers[name] = header_value(value, _j(field, "headers.%s" % name))
    out["headers"] = headers
    for key in ("websocket", "buffering"):
        if spec.get(key) is not None:
            out[key] = _bool(spec[key], _j(field, key))
    for key in ("connect_timeout", "send_timeout", "read_timeout"):
        if spec.get(key) is not None:
            out[key] = _regex(spec[key], _TIME, _j(field, key), "a time such as 5s, 500ms or 2m")
    for key in ("client_max_body_size", "buffer_size"):
        if spec.get(key) is not None:
            out[key] = _regex(spec[key], _SIZE, _j(field, key), "a size such as 512k, 10m or 1g")
    if spec.get("buffers") is not None:
        out["buffers"] = _regex(spec["buffers"], _BUFFERS, _j(field, "buffers"), "NUMBER SIZE such as '8 16k'")
    return out


def _effective_headers(proxy):
    headers = dict(DEFAULT_HEADERS)
    headers.update(proxy["headers"])
    return {k: val for k, val in headers.items() if val is not None}


def normalise_upstream(spec, field):
    spec = _dict(spec, field, UPSTREAM_KEYS)
    name = _regex(spec.get("name"), _UPSTREAM_NAME, _j(field, "name"),
                  "an upstream name (letters, digits, '_', '.', '-')")
    method = spec.get("method") or UPSTREAM_DEFAULTS["method"]
    v.one_of(method, METHODS, _j(field, "method"))
    keepalive = spec.get("keepalive")
    keepalive = UPSTREAM_DEFAULTS["keepalive"] if keepalive is None else _int(keepalive, _j(field, "keepalive"), 0, 10000)
    servers = []
    raw_servers = _list(spec.get("servers"), _j(field, "servers"))
    if not raw_servers:
        raise ValidationError(_j(field, "servers"), spec.get("servers"), "an upstream needs at least one server")
    for index, server in enumerate(raw_servers):
        sfield = _j(field, "servers[%d]" % index)
        if isinstance(server, str):
            server = {"address": server}
        server = _dict(server, sfield, SERVER_KEYS)
        out = dict(SERVER_DEFAULTS)
        out["address"] = upstream_server(server.get("address"), _j(sfield, "address"))
        if server.get("weight") is not None:
            out["weight"] = _int(server["weight"], _j(sfield, "weight"), 1, 1000)
        if server.get("max_fails") is not None:
            out["max_fails"] = _int(server["max_fails"], _j(sfield, "max_fails"), 0, 1000)
        if server.get("fail_timeout") is not None:
            out["fail_timeout"] = _regex(server["fail_timeout"], _TIME, _j(sfield, "fail_timeout"),
                                         "a time such as 10s")
        for key in ("backup", "down"):
            if server.get(key) is not None:
                out[key] = _bool(server[key], _j(sfield, key))
        if out["backup"] and method == "ip_hash":
            raise ValidationError(_j(sfield, "backup"), True, "nginx does not allow backup servers with ip_hash")
        servers.append(out)
    if all(s["backup"] or s["down"] for s in servers):
        raise ValidationError(_j(field, "servers"), spec.get("servers"),
                              "needs at least one server that is neither backup nor down")
    return {"name": name, "method": method, "keepalive": keepalive, "servers": servers}


def normalise_location(spec, field, site_proxy, upstream_names):
    spec = _dict(spec, field, LOCATION_KEYS)
    path = v.url_path(spec.get("path"), _j(field, "path"))
    _token(path, _j(field, "path"))
    out = {"path": path, "exact": _bool(spec.get("exact") or False, _j(field, "exact")),
           "strip_prefix": _bool(spec.get("strip_prefix") or False, _j(field, "strip_prefix")),
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
        url = backend_url(spec["backend"], _j(field, "backend"), upstream_names)
        if url["host"] in upstream_names and url["port"] is not None:
            raise ValidationError(_j(field, "backend"), spec["backend"],
                                  "%s is an upstream of this site: give no port" % url["host"])
        if out["strip_prefix"] and url["path"] is not None:
            raise ValidationError(_j(field, "strip_prefix"), True,
                                  "give either a path in backend (it replaces the location's path) or "
                                  "strip_prefix, not both")
        out["backend"] = url
        out["proxy"] = normalise_proxy(spec.get("proxy"), _j(field, "proxy"), site_proxy)
    elif spec.get("proxy") is not None:
        raise ValidationError(_j(field, "proxy"), spec["proxy"], "only a location with a backend proxies")
    if spec.get("root") is not None:
        out["root"] = abs_path(spec["root"], _j(field, "root")).rstrip("/") or "/"
    if spec.get("status") is not None:
        out["status"] = _int(spec["status"], _j(field, "status"), 200, 599)
    return out


def normalise_tls(spec, field):
    if spec is None:
        return None
    spec = _dict(spec, field, TLS_DEFAULTS)
    out = dict(TLS_DEFAULTS)
    if spec.get("reject_handshake") is not None:
        out["reject_handshake"] = _bool(spec["reject_handshake"], _j(field, "reject_handshake"))
    for key in ("certificate", "key"):
        if spec.get(key) is None and out["reject_handshake"]:
            continue
        if spec.get(key) is None:
            raise ValidationError(_j(field, key), None, "TLS needs a certificate and a key path")
        out[key] = abs_path(spec[key], _j(field, key))
    if spec.get("listen") is not None:
        out["listen"] = [listen(item, _j(field, "listen[%d]" % i))
                         for i, item in enumerate(_list(spec["listen"], _j(field, "listen")))]
        if not out["listen"]:
            raise ValidationError(_j(field, "listen"), spec["listen"], "must name at least one port")
    for key in ("redirect", "hsts", "http2"):
        if spec.get(key) is not None:
            out[key] = _bool(spec[key], _j(field, key))
    if out["reject_handshake"]:
        # A catch-all for names no site has a certificate for: refuse the TLS handshake rather
        # than answer with another site's certificate and content.
        out.update(redirect=False, hsts=False, http2=False)
    if spec.get("hsts_max_age") is not None:
        out["hsts_max_age"] = _int(spec["hsts_max_age"], _j(field, "hsts_max_age"), 0, 10 ** 9)
    if spec.get("protocols") is not None:
        out["protocols"] = [v.one_of(p, TLS_PROTOCOLS, _j(field, "protocols[%d]" % i))
                            for i, p in enumerate(_list(spec["protocols"], _j(field, "protocols")))]
        if not out["protocols"]:
            raise ValidationError(_j(field, "protocols"), spec["protocols"], "must name at least one protocol")
    if spec.get("ciphers") is not None:
        out["ciphers"] = _regex(spec["ciphers"], re.compile(r"[A-Za-z0-9:+!@._-]{1,2000}"),
                                _j(field, "ciphers"), "an OpenSSL cipher list")
    return out


def normalise_site(spec, field="", log_dir=None):
    """Validate a site spec and fill every default. Raises ValidationError naming field and value.

    With ``log_dir``, a site without its own access_log/error_log logs to
    ``LOG_DIR/NAME.access.log`` and ``LOG_DIR/NAME.error.log``."""
    spec = _dict(spec, field, SITE_KEYS)
    name = site_name(spec.get("name"), _j(field, "name"))
    state = spec.get("state") or "present"
    v.one_of(state, ("present", "absent"), _j(field, "state"))
    if state == "absent":
        return {"name": name, "state": "absent"}
    names = [server_name(item, _j(field, "server_names[%d]" % i))
             for i, item in enumerate(_list(spec.get("server_names"), _j(field, "server_names")))]
    if not names:
        raise ValidationError(_j(field, "server_names"), spec.get("server_names"),
                              "a site needs at least one server name (use _ for a catch-all)")
    raw_listen = spec.get("listen")
    listens = [listen(item, _j(field, "listen[%d]" % i))
               for i, item in enumerate(_list(raw_listen if raw_listen is not None else [80], _j(field, "listen")))]
    tls = normalise_tls(spec.get("tls"), _j(field, "tls"))
    if not listens and not tls:
        raise ValidationError(_j(field, "listen"), raw_listen, "a site without tls needs at least one port")
    upstreams = [normalise_upstream(item, _j(field, "upstreams[%d]" % i))
                 for i, item in enumerate(_list(spec.get("upstreams"), _j(field, "upstreams")))]
    upstream_names = [u["name"] for u in upstreams]
    if len(set(upstream_names)) != len(upstream_names):
        raise ValidationError(_j(field, "upstreams"), upstream_names, "upstream names must be unique")
    proxy = normalise_proxy(spec.get("proxy"), _j(field, "proxy"))
    locations = [normalise_location(item, _j(field, "locations[%d]" % i), proxy, upstream_names)
                 for i, item in enumerate(_list(spec.get("locations"), _j(field, "locations")))]
    if not locations:
        raise ValidationError(_j(field, "locations"), spec.get("locations"), "a site needs at least one location")
    seen = set()
    for i, loc in enumerate(locations):
        key = (loc["exact"], loc["path"])
        if key in seen:
            raise ValidationError(_j(field, "locations[%d].path" % i), loc["path"], "location path given twice")
        seen.add(key)
    logs = {}
    for key in ("access_log", "error_log"):
        value = spec.get(key)
        if value is None and log_dir:
            value = "%s/%s.%s.log" % (log_dir.rstrip("/"), name, key.split("_", maxsplit=1)[0])
        if value is None or (key == "access_log" and value == "off"):
            logs[key] = value
        else:
            logs[key] = abs_path(value, _j(field, key))
    return {
        "name": name, "state": "present", "server_names": names, "listen": listens,
        "default_server": _bool(spec.get("default_server") or False, _j(field, "default_server")),
        "locations": locations, "upstreams": upstreams, "proxy": proxy, "tls": tls,
        "access_log": logs["access_log"], "error_log": logs["error_log"],
    }


def normalise_sites(specs, field="sites", log_dir=None):
    sites = [normalise_site(spec, "%s[%d]" % (field, i), log_dir) for i, spec in enumerate(_list(specs, field))]
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


# ---- rendering -------------------------------------------------------------------------------
def file_name(name):
    return name + SUFFIX


def marker_line(name):
    return "%s (site %s). Do not edit: changes are overwritten.\n" % (MARKER, name)


def is_managed(text):
    return text is not None and text.startswith(MARKER)


def _connection_var(name):
    return "$onebox_connection_%s" % hashlib.sha1(name.encode("utf-8")).hexdigest()[:12]


def _q(value):
    """Double-quote a header value (validated: no quotes, backslashes or control characters)."""
    return '"%s"' % value


def _listen_line(address, site, tls=False):
    parts = [address]
    if tls:
        parts.append("ssl")
        if site["tls"]["http2"]:
            parts.append("http2")
    if site["default_server"]:
        parts.append("default_server")
    return "listen %s;" % " ".join(parts)


def _backend_text(loc):
    url = loc["backend"]
    text = "%s://%s" % (url["scheme"], url["host"])
    if url["port"] is not None:
        text += ":%d" % url["port"]
    if url["path"] is not None:
        text += url["path"]
    elif loc["strip_prefix"]:
        text += "/"
    return text


def _location_block(site, loc):
    lines = ["location %s%s {" % ("= " if loc["exact"] else "", loc["path"])]
    body = []
    if loc["backend"] is not None:
        proxy = loc["proxy"]
        body.append("proxy_pass %s;" % _backend_text(loc))
        body.append("proxy_http_version 1.1;")
        for header, value in sorted(_effective_headers(proxy).items(), key=lambda kv: kv[0].lower()):
            body.append("proxy_set_header %s %s;" % (header, _q(value)))
        if proxy["websocket"]:
            body.append("proxy_set_header Upgrade $http_upgrade;")
            body.append("proxy_set_header Connection %s;" % _connection_var(site["name"]))
        else:
            body.append('proxy_set_header Connection "";')
        body.append("client_max_body_size %s;" % proxy["client_max_body_size"])
        body.append("proxy_connect_timeout %s;" % proxy["connect_timeout"])
        body.append("proxy_send_timeout %s;" % proxy["send_timeout"])
        body.append("proxy_read_timeout %s;" % proxy["read_timeout"])
        body.append("proxy_buffering %s;" % ("on" if proxy["buffering"] else "off"))
        if proxy["buffer_size"]:
            body.append("proxy_buffer_size %s;" % proxy["buffer_size"])
        if proxy["buffers"]:
            body.append("proxy_buffers %s;" % proxy["buffers"])
    elif loc["root"] is not None:
        if loc["strip_prefix"]:
            body.append("alias %s/;" % loc["root"].rstrip("/"))
        else:
            body.append("root %s;" % loc["root"])
    else:
        body.append("return %d;" % loc["status"])
    lines.extend("    " + line for line in body)
    lines.append("}")
    return lines


def _upstream_block(upstream):
    lines = ["upstream %s {" % upstream["name"]]
    if upstream["method"] != "round_robin":
        lines.append("    %s;" % upstream["method"])
    for server in upstream["servers"]:
        parts = ["server", server["address"]]
        if server["weight"] != 1:
            parts.append("weight=%d" % server["weight"])
        parts.append("max_fails=%d" % server["max_fails"])
        parts.append("fail_timeout=%s" % server["fail_timeout"])
        if server["backup"]:
            parts.append("backup")
        if server["down"]:
            parts.append("down")
        lines.append("    %s;" % " ".join(parts))
    if upstream["keepalive"]:
        lines.append("    keepalive %d;" % upstream["keepalive"])
    lines.append("}")
    return lines


def _server_common(site):
    # server_tokens off: no response header or error page of the proxy names nginx's version.
    lines = ["server_name %s;" % " ".join(site["server_names"]), "server_tokens off;"]
    if site["access_log"]:
        lines.append("access_log %s;" % site["access_log"])
    if site["error_log"]:
        lines.append("error_log %s;" % site["error_log"])
    return lines


def render_site(site):
    """A normalised site -> the text of its file (deterministic; first line is the marker)."""
    out = [marker_line(site["name"]).rstrip("\n")]
    if any(loc["backend"] is not None and loc["proxy"]["websocket"] for loc in site["locations"]):
        out += ["", "# WebSocket: pass Upgrade through; no Connection header otherwise (upstream keepalive).",
                "map $http_upgrade %s {" % _connection_var(site["name"]),
                "    default upgrade;", "    '' '';", "}"]
    for upstream in site["upstreams"]:
        out.append("")
        out += _upstream_block(upstream)
    tls = site["tls"]
    locations = []
    for loc in site["locations"]:
        locations.append("")
        locations += _location_block(site, loc)
    if tls and tls["redirect"] and site["listen"]:
        port = tls["listen"][0].rsplit(":", 1)[-1]
        target = "https://$host%s$request_uri" % ("" if port == "443" else ":" + port)
        out += ["", "server {"]
        out += ["    " + _listen_line(a, site) for a in site["listen"]]
        out += ["    " + line for line in _server_common(site)]
        out += ["    return 301 %s;" % target, "}"]
    out += ["", "server {"]
    body = []
    if not (tls and tls["redirect"]):
        body += [_listen_line(a, site) for a in site["listen"]]
    if tls:
        body += [_listen_line(a, site, tls=True) for a in tls["listen"]]
    body += _server_common(site)
    if tls and tls["reject_handshake"]:
        body.append("ssl_reject_handshake on;")
    elif tls:
        body += ["ssl_certificate %s;" % tls["certificate"],
                 "ssl_certificate_key %s;" % tls["key"],
                 "ssl_protocols %s;" % " ".join(tls["protocols"]),
                 "ssl_ciphers %s;" % tls["ciphers"],
                 "ssl_prefer_server_ciphers off;",
                 "ssl_session_cache shared:onebox_tls:10m;",
                 "ssl_session_timeout 1d;",
                 "ssl_session_tickets off;"]
        if tls["hsts"]:
            body.append('add_header Strict-Transport-Security "max-age=%d" always;' % tls["hsts_max_age"])
    body.append("client_max_body_size %s;" % site["proxy"]["client_max_body_size"])
    out += ["    " + line for line in body]
    out += [("    " + line) if line else "" for line in locations]
    out.append("}")
    return "\n".join(out) + "\n"


# ---- planning --------------------------------------------------------------------------------
def plan(current, sites, prune=False):
    """What to change. ``current``: {file name: text} of the ``*.conf`` files in the directory;
    ``sites``: normalised sites (present or absent). Returns a list of changes, each a dict
    ``{name, file, before, after, action}`` (``after`` None = remove), sorted by file name.

    Raises NginxError when a declared site's file exists but was not written by this module."""
    changes = []
    declared = set()
    for site in sites:
        fname = file_name(site["name"])
        declared.add(fname)
        before = current.get(fname)
        if before is not None and not is_managed(before):
            raise NginxError("%s exists and was not written by homelab.onebox.nginx_site (no marker on its "
                             "first line): refusing to %s it" % (
                                 fname, "remove" if site["state"] == "absent" else "overwrite"), file=fname)
        if site["state"] == "absent":
            if before is not None:
                changes.append({"name": site["name"], "file": fname, "before": before, "after": None,
                                "action": "removed"})
            continue
        after = render_site(site)
        if after != before:
            changes.append({"name": site["name"], "file": fname, "before": before, "after": after,
                            "action": "created" if before is None else "updated"})
    if prune:
        for fname, text in current.items():
            if fname not in declared and is_managed(text):
                changes.append({"name": fname[:-len(SUFFIX)], "file": fname, "before": text, "after": None,
                                "action": "removed"})
    return sorted(changes, key=lambda c: c["file"])


def stage_name(fname):
    return "%s%s.new" % (STAGE_PREFIX, fname)


def backup_name(fname):
    return "%s%s.old" % (STAGE_PREFIX, fname)


def included_files(dump):
    """File paths an ``nginx -T`` dump shows as loaded."""
    return set(re.findall(r"^# configuration file (.+?):\s*$", dump, re.MULTILINE))


# ---- targets ---------------------------------------------------------------------------------
class Target:
    """Where the files live and nginx runs. Subclasses implement the primitives; paths are names
    inside ``conf_dir`` (validated plain file names)."""

    def __init__(self, conf_dir, test_command, reload_command):
        self.conf_dir = conf_dir.rstrip("/") or "/"
        self.test_command = list(test_command)
        self.reload_command = list(reload_command)

    def path(self, fname):
        return os.path.join(self.conf_dir, fname)

    # primitives
    def read(self):
        """{file name: text} of the regular ``*.conf`` files, plus the list of ``.onebox-*`` leftovers."""
        raise NotImplementedError

    def write(self, fname, text):
        raise NotImplementedError

    def swap(self, pairs):
        """For each (fname, has_before, has_after): link live -> .old, rename .new -> live (or remove)."""
        raise NotImplementedError

    def restore(self, pairs):
        raise NotImplementedError

    def remove(self, fnames):
        raise NotImplementedError

    def command(self, argv):
        """-> (rc, stdout, stderr)"""
        raise NotImplementedError


class HostTarget(Target):
    def __init__(self, module, conf_dir, test_command, reload_command):
        super().__init__(conf_dir, test_command, reload_command)
        self.module = module

    def read(self):
        if not os.path.isdir(self.conf_dir):
            raise NginxError("conf_dir %s does not exist (is nginx installed?)" % self.conf_dir)
        files, leftovers = {}, []
        for fname in sorted(os.listdir(self.conf_dir)):
            full = self.path(fname)
            if fname.startswith(STAGE_PREFIX):
                leftovers.append(fname)
            elif fname.endswith(SUFFIX) and os.path.isfile(full) and not os.path.islink(full):
                with open(full, "rb") as handle:
                    files[fname] = handle.read().decode("utf-8", "replace")
        return files, leftovers

    def write(self, fname, text):
        full = self.path(fname)
        with open(full, "wb") as handle:
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(full, 0o644)

    def swap(self, pairs):
        for fname, has_before, has_after in pairs:
            if has_before:
                os.link(self.path(fname), self.path(backup_name(fname)))
            if has_after:
                self.module.atomic_move(self.path(stage_name(fname)), self.path(fname))
            else:
                os.unlink(self.path(fname))

    def restore(self, pairs):
        for fname, has_before, _has_after in pairs:
            old = self.path(backup_name(fname))
            if has_before and os.path.exists(old):
                os.rename(old, self.path(fname))
            elif not has_before and os.path.exists(self.path(fname)):
                os.unlink(self.path(fname))

    def remove(self, fnames):
        for fname in fnames:
            try:
                os.unlink(self.path(fname))
            except FileNotFoundError:
                pass

    def command(self, argv):
        return self.module.run_command(argv)


# sh scripts for the LXD target: argv carries the (validated) names, never the script text.
_SH_READ = r'''cd "$1" || { echo "conf_dir $1 does not exist" >&2; exit 3; }
for f in .onebox-*; do [ -e "$f" ] && printf '\001L %s\n' "$f"; done
for f in *.conf; do
  [ -f "$f" ] && [ ! -L "$f" ] || continue
  printf '\001F %s\n' "$f"; cat -- "$f"; printf '\n'
done
exit 0'''
_SH_SWAP = r'''cd "$1" && shift || exit 3
while [ $# -gt 0 ]; do
  f=$1; before=$2; after=$3; shift 3
  if [ "$before" = 1 ]; then ln -f -- "$f" ".onebox-$f.old" || exit 1; fi
  if [ "$after" = 1 ]; then mv -f -- ".onebox-$f.new" "$f" || exit 1; else rm -f -- "$f" || exit 1; fi
done'''
_SH_RESTORE = r'''cd "$1" && shift || exit 3
rc=0
while [ $# -gt 0 ]; do
  f=$1; before=$2; shift 3
  if [ "$before" = 1 ]; then
    if [ -e ".onebox-$f.old" ]; then mv -f -- ".onebox-$f.old" "$f" || rc=1; fi
  else rm -f -- "$f" || rc=1; fi
done
exit $rc'''


class LxdTarget(Target):
    def __init__(self, lxd, instance, conf_dir, test_command, reload_command, timeout=60):
        super().__init__(conf_dir, test_command, reload_command)
        self.lxd = lxd
        self.instance = instance
        self.timeout = timeout

    def _sh(self, script, args):
        return self.lxd.exec(self.instance, ["sh", "-c", script, "sh"] + [str(a) for a in args],
                             timeout=self.timeout)

    def _must(self, what, script, args):
        result = self._sh(script, args)
        if result.rc != 0:
            raise NginxError("%s in %s failed (exit %d): %s"
                             % (what, self.instance, result.rc, (result.stderr or result.stdout).strip()))
        return result

    def read(self):
        if self.lxd.instance(self.instance) is None:
            raise NginxError("instance %s does not exist" % self.instance)
        out = self._must("reading %s" % self.conf_dir, _SH_READ, [self.conf_dir]).stdout
        files, leftovers, current = {}, [], None
        for chunk in out.split("\001")[1:]:
            kind, _sep, rest = chunk.partition(" ")
            fname, _sep, body = rest.partition("\n")
            if kind == "L":
                leftovers.append(fname)
            elif kind == "F":
                # cat output plus the separating newline we printed
                files[fname] = body[:-1] if body.endswith("\n") else body
            current = fname
        del current
        return files, leftovers

    def write(self, fname, text):
        self.lxd.push_file(self.instance, self.path(fname), text.encode("utf-8"), mode=0o644)

    def swap(self, pairs):
        self._must("swapping in the new files", _SH_SWAP, [self.conf_dir] + _flat(pairs))

    def restore(self, pairs):
        self._must("restoring the previous files", _SH_RESTORE, [self.conf_dir] + _flat(pairs))

    def remove(self, fnames):
        if fnames:
            self._must("removing", 'cd "$1" && shift && rm -f -- "$@"', [self.conf_dir] + list(fnames))

    def command(self, argv):
        result = self.lxd.exec(self.instance, argv, timeout=self.timeout)
        return result.rc, result.stdout, result.stderr


def _flat(pairs):
    args = []
    for fname, has_before, has_after in pairs:
        args += [fname, "1" if has_before else "0", "1" if has_after else "0"]
    return args


# ---- the transaction -------------------------------------------------------------------------
def apply(target, changes, leftovers=()):
    """Make ``changes`` (from plan()) live; see the module docstring. Returns (test_output, reloaded).

    On a failed test every file is back as it was and NginxError carries nginx's own text."""
    if leftovers:
        target.remove(leftovers)  # a crashed earlier run's staging files: ours by name, never live
    if not changes:
        return "", False
    pairs = [(c["file"], c["before"] is not None, c["after"] is not None) for c in changes]
    staged = []
    try:
        for change in changes:
            if change["after"] is not None:
                target.write(stage_name(change["file"]), change["after"])
                staged.append(stage_name(change["file"]))
    except Exception:
        target.remove(staged)
        raise
    try:
        target.swap(pairs)
    except Exception:
        target.restore(pairs)
        target.remove(staged)
        raise
    rc, stdout, stderr = target.command(target.test_command)
    test_output = (stderr or "").strip()
    missing = []
    if rc == 0:
        loaded = included_files(stdout)
        missing = [c["file"] for c in changes if c["after"] is not None and target.path(c["file"]) not in loaded]
    if rc != 0 or missing:
        target.restore(pairs)
        target.remove([backup_name(f) for f, _b, _a in pairs])
        if rc != 0:
            text = (stderr or stdout).strip()
            raise NginxError("nginx rejected the new configuration; the previous files are restored and "
                             "nginx keeps serving its current configuration. nginx -t said:\n%s" % text,
                             nginx_output=text, rc=rc)
        raise NginxError("%s is not included by nginx's configuration (nginx -T does not show %s): nothing "
                         "changed; include %s/*%s in the http block or set conf_dir"
                         % (target.conf_dir, ", ".join(missing), target.conf_dir, SUFFIX), files=missing)
    target.remove([backup_name(f) for f, b, _a in pairs if b])
    rc, stdout, stderr = target.command(target.reload_command)
    if rc != 0:
        raise NginxError("the new configuration passed nginx -t and is in place, but reloading nginx failed "
                         "(%s exited %d): %s" % (" ".join(target.reload_command), rc, (stderr or stdout).strip()),
                         rc=rc)
    return test_output, True


def test_and_dump_command(binary, prefix=None, conf=None):
    return _nginx_argv(binary, prefix, conf) + ["-T", "-q"]


def reload_command(binary, prefix=None, conf=None):
    return _nginx_argv(binary, prefix, conf) + ["-s", "reload"]


def _nginx_argv(binary, prefix, conf):
    argv = [binary]
    if prefix:
        argv += ["-p", prefix]
    if conf:
        argv += ["-c", conf]
    return argv


# ---- the whole run (nginx_site, box) -----------------------------------------------------------
def catch_all_site(name="000-default", listen=("80",), https_listen=("443",), sites=()):
    """The default server: 404 for every name no site claims; when any of ``sites`` has TLS, it
    also refuses TLS handshakes for unknown names (no certificate needed)."""
    site = {"name": name, "server_names": ["_"], "default_server": True, "listen": list(listen),
            "locations": [{"path": "/", "status": 404}]}
    if any(s.get("tls") and s.get("state", "present") == "present" for s in sites):
        site["tls"] = {"reject_handshake": True, "listen": list(https_listen)}
    return site


def converge(target, sites, prune=False, check_mode=False, diff=False, warn=None):
    """Read ``target`` once, plan ``sites`` (normalised), diff, and outside check mode apply them
    as one transaction. Returns the nginx_site result."""
    current, leftovers = target.read()
    changes = plan(current, sites, prune=prune)
    result = dict(changed=bool(changes), reloaded=False, sites=_report(target, sites, changes))
    if diff and changes:
        result["diff"] = [dict(before=c["before"] or "", after=c["after"] or "",
                               before_header=target.path(c["file"]) + ("" if c["before"] is not None else " (absent)"),
                               after_header=target.path(c["file"]) + ("" if c["after"] is not None else " (absent)"))
                          for c in changes]
    if check_mode:
        return result
    output, reloaded = apply(target, changes, leftovers)
    result["reloaded"] = reloaded
    if changes:
        result["nginx_output"] = output
    for line in output.splitlines():
        if "[warn]" in line and warn is not None:
            warn(line)
    return result


def _report(target, sites, changes):
    by_file = {c["file"]: c["action"] for c in changes}
    report = []
    for site in sites:
        fname = file_name(site["name"])
        report.append(dict(name=site["name"], file=target.path(fname), action=by_file.pop(fname, "unchanged")))
    for fname, action in sorted(by_file.items()):
        report.append(dict(name=fname[:-len(SUFFIX)], file=target.path(fname), action=action))
    return report
