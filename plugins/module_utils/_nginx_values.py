# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The single values of an nginx site, as nginx's grammar takes them: site and server names,
listen addresses, upstream servers, backend URLs, header values, paths, times and sizes.

Each function takes the value and the field name as the user wrote it and returns the value as it
goes into a file, or raises ValidationError naming both (the generic checks are _validate's).
Nothing here is rendered unquoted without passing one of these.
"""
from __future__ import annotations

import hashlib
import ipaddress
import re

from ansible_collections.homelab.onebox.plugins.module_utils import _validate as v
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError

# A site name is its file's name: a leading '_' is allowed (the names site_name_for makes for
# wildcards), a leading '.' (hidden, and the staging prefix) or '-' (an option to sh) is not.
_SITE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
SITE_NAME_MAX = 100
WILDCARD_PREFIX = "_wildcard."
UPSTREAM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
TIME = re.compile(r"\d{1,9}(ms|s|m|h|d)?")
SIZE = re.compile(r"\d{1,12}[kKmMgG]?")
BUFFERS = re.compile(r"\d{1,6} \d{1,9}[kKmM]?")
CIPHERS = re.compile(r"[A-Za-z0-9:+!@._-]{1,2000}")
_URL = re.compile(r"(?P<scheme>https?)://(?P<host>\[[^\]/]*\]|[^/:\[\]]*)(?::(?P<port>[^/]*))?(?P<path>/.*)?",
                  re.DOTALL)


def field_of(field, key):
    """The name of a nested field as the user wrote it: ``sites[2].locations[0].path``, or
    ``locations[0].path`` for the module's top-level site."""
    if not field:
        return key
    return "%s%s%s" % (field, "" if key.startswith("[") else ".", key)


def matching(value, pattern, field, what):
    """A string or number whose text matches the whole of ``pattern`` (an nginx time, size,
    upstream or header name, cipher list) -> its text."""
    if not isinstance(value, (str, int)) or isinstance(value, bool) or not pattern.fullmatch(str(value)):
        raise ValidationError(field, value, "must be %s" % what)
    return str(value)


def abs_path(value, field):
    """An absolute file path that goes into a directive unquoted (normalised as
    _validate.absolute_path does)."""
    v.safe_token(value, field)
    return v.absolute_path(value, field)


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
    return v.domain(value, field, wildcard=True)


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
    return v.domain(value, field, wildcard=False)


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
    """A header value, rendered double-quoted: no control characters, quotes or backslashes
    (None drops the header)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValidationError(field, value, "must be a string (or null to drop the header)")
    text = v.no_control(str(value), field)
    bad = sorted(set(text) & set("\"'`\\"))
    if bad:
        raise ValidationError(field, value, "must not contain %s" % " ".join(repr(c) for c in bad))
    return text
