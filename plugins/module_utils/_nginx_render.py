# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rendering nginx sites: a parsed site -> the text of its file; the files' names and marker; the
catch-all default server.

The text is deterministic (the same site always gives the same bytes, so an unchanged site is no
change) and starts with the marker line that says the file is ours.
"""
from __future__ import annotations

import hashlib

from ansible_collections.homelab.onebox.plugins.module_utils._nginx_site import DEFAULT_HEADERS

MARKER = "# Managed by homelab.onebox.nginx_site"
SUFFIX = ".conf"


def file_name(name):
    """The file of site ``name`` in the site directory."""
    return name + SUFFIX


def site_of(fname):
    """The site name of a site file's name."""
    return fname[:-len(SUFFIX)]


def marker_line(name):
    return "%s (site %s). Do not edit: changes are overwritten.\n" % (MARKER, name)


def is_managed(text):
    """Whether a file's text was written by this collection (its first line is the marker)."""
    return text is not None and text.startswith(MARKER)


def _effective_headers(proxy):
    headers = dict(DEFAULT_HEADERS)
    headers.update(proxy["headers"])
    return {k: val for k, val in headers.items() if val is not None}


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
    """A parsed site -> the text of its file (deterministic; first line is the marker)."""
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
    challenge = _challenge_block(tls) if tls and tls["acme_webroot"] else []
    redirecting = bool(tls and tls["redirect"] and site["listen"])
    if redirecting:
        port = tls["listen"][0].rsplit(":", 1)[-1]
        target = "https://$host%s$request_uri" % ("" if port == "443" else ":" + port)
        out += ["", "server {"]
        out += ["    " + _listen_line(a, site) for a in site["listen"]]
        out += ["    " + line for line in _server_common(site)]
        if challenge:
            # The challenge answers over HTTP (the CA asks there first): everything else moves to HTTPS.
            redirect = ["", "location / {", "    return 301 %s;" % target, "}"]
            out += [("    " + line) if line else "" for line in challenge + redirect]
        else:
            out += ["    return 301 %s;" % target]
        out += ["}"]
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
            body.append('add_header Strict-Transport-Security "%s" always;' % _hsts_value(tls))
    body.append("client_max_body_size %s;" % site["proxy"]["client_max_body_size"])
    out += ["    " + line for line in body]
    # The challenge lives where plain HTTP is answered: the redirecting server above, else this one.
    out += [("    " + line) if line else "" for line in ([] if redirecting else challenge) + locations]
    out.append("}")
    return "\n".join(out) + "\n"


def _hsts_value(tls):
    value = "max-age=%d" % tls["hsts_max_age"]
    if tls["hsts_include_subdomains"]:
        value += "; includeSubDomains"
    if tls["hsts_preload"]:
        value += "; preload"
    return value


def _challenge_block(tls):
    """ACME HTTP-01: /.well-known/acme-challenge/ served from the webroot the ACME client writes
    its tokens to (``^~``: no regex location of the site takes it)."""
    return ["", "location ^~ /.well-known/acme-challenge/ {", "    root %s;" % tls["acme_webroot"],
            "    default_type text/plain;", "}"]


def catch_all_site(name="000-default", listen=("80",), https_listen=("443",), sites=()):
    """The default server: 404 for every name no site claims; when any of ``sites`` has TLS, it
    also refuses TLS handshakes for unknown names (no certificate needed)."""
    site = {"name": name, "server_names": ["_"], "default_server": True, "listen": list(listen),
            "locations": [{"path": "/", "status": 404}]}
    if any(s.get("tls") and s.get("state", "present") == "present" for s in sites):
        site["tls"] = {"reject_handshake": True, "listen": list(https_listen)}
    return site
