# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one checker: every type and value check of the collection (names, domains, ports, paths,
sizes, limits, and the plain types of free-form input), used by every module.

Each function takes the value and the field name (as the user wrote it, e.g. ``services[2].name``)
and returns the normalised value or raises ValidationError naming both. One rule, one message.
"""
from __future__ import annotations

import ipaddress
import re

from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError

# LXD: letters, digits and hyphens, 1-63 characters, not starting with a digit or a hyphen,
# not ending with a hyphen (it becomes a host name on the bridge's DNS).
_INSTANCE_NAME = re.compile(r"^[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
# Characters that would let a value escape an nginx directive, a shell word or an iptables comment.
_UNSAFE = set(";{}'\"`\\$ \t\r\n")
_SIZE = re.compile(r"^(\d+)\s*(B|kB|MB|GB|TB|PB|EB|KiB|MiB|GiB|TiB|PiB|EiB)?$")
_SIZE_FACTORS = {
    None: 1, "B": 1,
    "kB": 1000, "MB": 1000 ** 2, "GB": 1000 ** 3, "TB": 1000 ** 4, "PB": 1000 ** 5, "EB": 1000 ** 6,
    "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3, "TiB": 1024 ** 4, "PiB": 1024 ** 5, "EiB": 1024 ** 6,
}


def text(value, field):
    """A string, as given."""
    if not isinstance(value, str):
        raise ValidationError(field, value, "must be a string")
    return value


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
# What a secret is shown as in an error (environment values).
MASK = "********"


def boolean(value, field):
    """A boolean, or its YAML/Ansible spellings as text (``yes``, ``off``, ``1``...)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    raise ValidationError(field, value, "must be a boolean")


def integer(value, field, low, high):
    """A whole number from ``low`` to ``high`` (text of one too), as int."""
    if not isinstance(value, bool) and isinstance(value, (int, str)):
        try:
            number = int(str(value).strip())
        except ValueError:
            number = None
        if number is not None and low <= number <= high:
            return number
    raise ValidationError(field, value, "must be an integer %d-%d" % (low, high))


def items(value, field, scalar=False):
    """A list (None is an empty one) -> a new list; with ``scalar``, one string or number stands
    for a list of itself."""
    if value is None:
        return []
    if scalar and isinstance(value, (str, int)) and not isinstance(value, bool):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise ValidationError(field, value, "must be a list")
    return list(value)


def mapping(value, field, known=None):
    """A dict (None is an empty one); with ``known``, a key outside it is refused by name."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError(field, value, "must be a dict")
    unknown = sorted(set(value) - set(known)) if known is not None else []
    if unknown:
        raise ValidationError(field, value, "unknown key(s) %s; known: %s"
                              % (", ".join(map(str, unknown)), ", ".join(sorted(known))))
    return value


def _control_characters(value):
    return sorted(c for c in set(value) if ord(c) < 32 or ord(c) == 127)


def no_control(value, field, secret=False):
    """One line of text: a string without control characters (a newline among them). A
    ``secret`` value is masked in the error."""
    shown = MASK if secret else value
    if not isinstance(value, str):
        raise ValidationError(field, shown, "must be a string")
    bad = _control_characters(value)
    if bad:
        raise ValidationError(field, shown, "must not contain %s" % " ".join(repr(c) for c in bad))
    return value


def _matching(value, field, pattern, reason):
    """The value when the whole of it matches ``pattern`` (never just a prefix, never with a
    trailing newline), else a ValidationError giving ``reason``."""
    text(value, field)
    if not pattern.fullmatch(value):
        raise ValidationError(field, value, reason)
    return value


def instance_name(value, field="name"):
    """An LXD instance (or image alias, profile, pool) name."""
    return _matching(value, field, _INSTANCE_NAME,
                     "must be 1-63 letters, digits or hyphens, start with a letter and not end with a hyphen")


def lower_name(value, field="name"):
    """A name the collection builds others from (a volume's, in ``OWNER-SERVICE-NAME``): an
    instance name in lower case, so two spellings never name one thing."""
    instance_name(value, field)
    if value != value.lower():
        raise ValidationError(field, value, "must be lower-case letters, digits or hyphens")
    return value


def domain(value, field="domain", wildcard=True):
    """A DNS name, lower-cased, without a trailing dot; ``*.example.org`` when ``wildcard`` is
    allowed.

    The one wildcard taken is nginx's leading wildcard: ``*`` as the whole first label, then a
    domain (https://nginx.org/en/docs/http/server_names.html). It matches every name ending in
    ``.example.org``, at any depth, and never ``example.org`` itself. Every other use of ``*``
    (``www.*.org``, ``*foo.org``, ``**.org``, ``*`` alone) is refused: nginx rejects those or reads
    them otherwise; so is a leading dot (``.example.org``, nginx's shorthand for two names)."""
    text(value, field)
    name = value[:-1] if value.endswith(".") else value
    if not name or len(name) > 253:
        raise ValidationError(field, value, "must be a DNS name of 1-253 characters")
    if "*" in name:
        _wildcard_form(value, field, name, wildcard)
    if name.startswith("."):
        raise ValidationError(field, value, "starts with a dot: nginx reads .example.org as both example.org and "
                                            "*.example.org; write the names meant (example.org, *.example.org)")
    labels = name.split(".")
    if labels[0] == "*":
        labels = labels[1:]
    for label in labels:
        if not _DNS_LABEL.fullmatch(label):
            raise ValidationError(
                field, value,
                "each dot-separated label must be 1-63 letters, digits or hyphens, "
                "not starting or ending with a hyphen")
    return name.lower()


def _wildcard_form(value, field, name, wildcard):
    """Refuse every ``*`` but a leading ``*.`` before a domain, saying why."""
    if not wildcard:
        raise ValidationError(field, value, "must be a host name, not a wildcard")
    if name == "*":
        raise ValidationError(field, value, "'*' alone is no name nginx matches; a wildcard is '*.' before a "
                                            "domain (*.example.org)")
    if name.startswith("*.") and "*" not in name[2:]:
        return
    if name.endswith(".*") and "*" not in name[:-2]:
        raise ValidationError(field, value, "a trailing wildcard matches every top-level domain; only a leading "
                                            "wildcard is taken (*.example.org)")
    raise ValidationError(field, value, "nginx takes '*' only as the whole first label before a domain "
                                        "(*.example.org), not inside or beside a label")


def port(value, field="port"):
    """A TCP/UDP port number, 1-65535, as int."""
    if isinstance(value, bool):
        raise ValidationError(field, value, "must be a port number 1-65535")
    try:
        number = int(str(value).strip()) if isinstance(value, (int, str)) else None
    except ValueError:
        number = None
    if number is None or not 1 <= number <= 65535:
        raise ValidationError(field, value, "must be a port number 1-65535")
    return number


def port_range(value, field="port"):
    """A port or an inclusive range (``8000``, ``"8000-8010"``, ``"8000:8010"``) as (low, high)."""
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*[-:]\s*\d+\s*", value):
        low, high = (port(part, field) for part in re.split(r"[-:]", value))
        if low > high:
            raise ValidationError(field, value, "range runs backwards (low port after high port)")
        return low, high
    number = port(value, field)
    return number, number


def safe_token(value, field):
    """A word that goes into a generated config file: no quotes, braces, semicolons or spaces."""
    text(value, field)
    if not value:
        raise ValidationError(field, value, "must not be empty")
    bad = sorted(set(value) & _UNSAFE)
    if bad:
        raise ValidationError(field, value, "must not contain %s" % " ".join(repr(c) for c in bad))
    return value


def comment(value, field="comment", max_length=255):
    """One line of free text for a generated file (spaces allowed): no quotes, backslashes or
    control characters, at most ``max_length`` characters."""
    text(value, field)
    if not value or len(value) > max_length:
        raise ValidationError(field, value, "must be 1-%d characters" % max_length)
    bad = sorted(set(c for c in value if c in "\"'`\\") | set(_control_characters(value)))
    if bad:
        raise ValidationError(field, value, "must not contain %s" % " ".join(repr(c) for c in bad))
    return value


def url_path(value, field="path"):
    """A URL path prefix such as ``/jenkins/``: starts with ``/``, no unsafe characters."""
    safe_token(value, field)
    if not value.startswith("/"):
        raise ValidationError(field, value, "must start with '/'")
    return value


def file_name(value, field="name"):
    """A name that becomes one file name: no ``/``, no ``..``, no unsafe characters."""
    safe_token(value, field)
    if "/" in value or value in (".", "..") or ".." in value:
        raise ValidationError(field, value, "must be a plain file name (no '/' or '..')")
    return value


def one_of(value, choices, field):
    if value not in choices:
        raise ValidationError(field, value, "must be one of %s" % ", ".join(map(str, choices)))
    return value


def size_bytes(value, field):
    """A size as LXD writes it, with its unit (``512MiB``, ``1GB``) -> bytes.

    A bare number is refused: LXD reads ``256`` as 256 bytes, never what was meant."""
    if isinstance(value, bool):
        raise ValidationError(field, value, "must be a size such as 512MiB or 1GB")
    match = _SIZE.fullmatch(str(value).strip())
    if not match:
        raise ValidationError(field, value, "must be a size such as 512MiB or 1GB")
    if match.group(2) is None:
        raise ValidationError(field, value, "give a unit: %sMiB (a bare number is bytes to LXD)" % match.group(1))
    return int(match.group(1)) * _SIZE_FACTORS[match.group(2)]


# The least limits.memory a container of the collection gets. Measured on 2026-12-02 (LXD 5.0.2,
# cgroup v1, the onebox-debian12 minbase image, one throw-away container per size):
#   booting to systemd "running" and nginx answering 200 inside: 16MiB: the OOM killer takes
#   journald, then systemd (PID 1), and the container stops (2 of 2); 20MiB: "degraded"
#   (systemd-journal-flush failed) after 127 s; 24MiB: running in 3-11 s; 28-64MiB: running in
#   2.3-2.6 s. Anonymous memory after boot: 6MiB; the rest of the limit fills with page cache.
#   apt-get install of one package against bookworm's full main list (what lxd_provision runs
#   for `packages`, and for the proxy's nginx-light): killed (exit 137) at 32-88MiB (2 of 2 at
#   72, 80, 88), done at 96MiB (3 of 3), 112MiB, 128MiB.
# So 128MiB: what apt needs (96MiB) plus a third; a box whose containers cannot install their
# packages is as broken as one that does not boot. A percentage of the host is not checked
# (the host's RAM is not known here).
MIN_MEMORY = 128 * 1024 ** 2


def memory(value, field="memory"):
    """An LXD ``limits.memory`` value: a size with a unit, at least MIN_MEMORY, or a percentage
    of the host (``50%``)."""
    text = str(value).strip()
    if text.endswith("%") and not isinstance(value, bool):
        number = text[:-1]
        if not number.isdigit() or not 0 < int(number) <= 100:
            raise ValidationError(field, value, "percentage must be 1%-100%")
        return text
    if size_bytes(value, field) < MIN_MEMORY:
        raise ValidationError(field, value, "below %s, the least a container needs to boot and install "
                                            "packages" % _mib(MIN_MEMORY))
    return text.replace(" ", "")


def memory_swap(value, field, ram, ram_field):
    """RAM+swap (``memory_swap``) beside ``ram`` (the memory limit, already checked): a size with
    a unit, at least the RAM. -> normalised text."""
    if str(ram).strip().endswith("%"):
        raise ValidationError(ram_field, ram, "must be a size (not a percentage) with memory_swap")
    total = size_bytes(value, field)
    if total < size_bytes(ram, ram_field):
        raise ValidationError(field, value, "RAM+swap must be at least memory (%s)" % ram)
    return str(value).strip().replace(" ", "")


def limits(memory_value, memory_swap_value, cpus_value, field=lambda key: key, host_cpus=None):
    """The one check of a container's limits: ``memory`` (MIN_MEMORY or more, or a percentage),
    ``memory_swap`` (RAM+swap: needs memory as a size, and at least it), ``cpus`` (a count or a
    set, within the host's when ``host_cpus`` is known). ``field(key)`` names a key as the user
    wrote it. -> {key: normalised text} of the limits given."""
    checked = {}
    if memory_value is not None:
        checked["memory"] = memory(memory_value, field("memory"))
    if memory_swap_value is not None:
        if memory_value is None:
            raise ValidationError(field("memory_swap"), memory_swap_value, "needs memory too")
        checked["memory_swap"] = memory_swap(memory_swap_value, field("memory_swap"), memory_value, field("memory"))
    if cpus_value is not None:
        checked["cpus"] = cpus(cpus_value, field("cpus"), host_cpus=host_cpus)
    return checked


def _mib(size):
    return "%dMiB" % (size // 1024 ** 2)


def _cpu_set(text):
    """``0-1,3`` -> the CPU indexes it names, or None when it is not a set LXD takes."""
    indexes = set()
    for item in text.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not match:
            return None
        low = int(match.group(1))
        high = low if match.group(2) is None else int(match.group(2))
        if low > high:
            return None
        indexes.update(range(low, high + 1))
    return indexes


def cpus(value, field="cpus", host_cpus=None):
    """``limits.cpu``: a count (``2``) or a pinning set of CPU indexes (``0-1``, ``0,2``,
    ``0-1,3``; LXD reads a lone number as a count, so CPU 0 alone is ``0-0``).

    With ``host_cpus`` (the host's CPU count), a count above it or a set naming an index it does
    not have is refused: LXD would take it and the limit would never be what was written."""
    text = str(value).strip()
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not text:
        raise ValidationError(field, value, "must be a CPU count such as 2 or a set such as 0-1, 0,2 or 0-1,3")
    if text.isdigit():
        if int(text) == 0:
            raise ValidationError(field, value, "CPU count must be at least 1")
        if host_cpus is not None and int(text) > host_cpus:
            raise ValidationError(field, value, "asks for %d CPUs; the host has %s" % (int(text), _cpu_count(host_cpus)))
        return str(int(text))
    indexes = _cpu_set(text)
    if indexes is None:
        raise ValidationError(field, value, "must be a CPU count such as 2 or a set such as 0-1, 0,2 or 0-1,3 "
                                            "(ranges low-high, separated by commas, no spaces)")
    if host_cpus is not None and max(indexes) >= host_cpus:
        raise ValidationError(field, value, "names CPU %d; the host has %s (%s)"
                              % (max(indexes), _cpu_count(host_cpus), "0" if host_cpus == 1 else "0-%d" % (host_cpus - 1)))
    return text


def _cpu_count(count):
    return "%d CPU%s" % (count, "" if count == 1 else "s")


def ipv4_address(value, field="address"):
    text(value, field)
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValidationError(field, value, "must be an IPv4 address")


def ipv4_network(value, field="network"):
    text(value, field)
    try:
        return str(ipaddress.IPv4Network(value, strict=False))
    except ValueError:
        raise ValidationError(field, value, "must be an IPv4 address or network (a.b.c.d/len)")


_POSIX_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODE = re.compile(r"^(?:0o?)?([0-7]{3,4})$")


def absolute_path(value, field="path"):
    """An absolute path without ``.``/``..`` components or control characters, normalised
    (repeated and trailing ``/`` dropped)."""
    text(value, field)
    if not value.startswith("/"):
        raise ValidationError(field, value, "must be an absolute path (start with '/')")
    no_control(value, field)
    parts = [part for part in value.split("/") if part]
    if any(part in (".", "..") for part in parts):
        raise ValidationError(field, value, "must not contain '.' or '..' components")
    return "/" + "/".join(parts)


def file_mode(value, field="mode"):
    """A permission mode: octal text (``"0644"``, ``"644"``, ``"0o4755"``) or an int (as YAML reads
    an unquoted ``0644``) -> int."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= 0o7777:
            return value
    elif isinstance(value, str):
        match = _MODE.fullmatch(value.strip())
        if match:
            return int(match.group(1), 8)
    raise ValidationError(field, value, "must be an octal mode such as '0644' (quote it)")


def posix_name(value, field="name"):
    """A user or group name as useradd/groupadd accept it: lower-case letters, digits, ``_`` and
    ``-``, not starting with a digit or ``-``, at most 32 characters."""
    return _matching(value, field, _POSIX_NAME,
                     "must be 1-32 lower-case letters, digits, '_' or '-', starting with a letter or '_'")


def env_name(value, field="environment"):
    """An environment variable name that is a valid shell identifier."""
    return _matching(value, field, _ENV_NAME, "must be a shell identifier (letters, digits, '_', not starting with a digit)")


def whole(value, field, least=0):
    """A whole number (an int, not a bool, not text), ``least`` or more: counts, priorities,
    delays, timeouts."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValidationError(field, value, "must be a whole number, %d or more" % least)
    return value


def at_least_one(params, names):
    """Each of the integer options ``names`` of ``params`` is 1 or more (counts, timeouts)."""
    for name in names:
        whole(params[name], name, 1)


def flag(value, field):
    """A switch written as YAML's true or false (a bool), not as text: ``"yes"`` in a list of
    forwards or a service is refused, where boolean() would read it."""
    if not isinstance(value, bool):
        raise ValidationError(field, value, "must be true or false")
    return value
