# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""HTTPS of the box as described: the box's ``tls`` options and a service's ``tls``, checked, and
what they make of the proxy (pure logic).

parse_tls_options() checks the box-level options (``onebox_tls``); parse_service_tls() a
service's ``tls`` key. ``BoxTls`` derives, from the parsed services, each TLS site's nginx ``tls``
spec, the certificates the agent in the proxy keeps (one per site, named as the site: a domain
added later gets its own certificate and re-issues none of the others), the agent's
configuration file and the proxy's files and packages.

Where things live in the proxy: the agent (_tls_agent.py) at AGENT_PATH reads CONFIG_PATH;
certbot's /etc/letsencrypt is a storage volume (VOLUME_PATH) that outlives the container; nginx
names each site's certificate by a link under LINK_DIR that the agent points at the placeholder,
the ACME lineage, the self-signed or the provided pair.
"""
from __future__ import annotations

import json
import re

from ansible_collections.homelab.onebox.plugins.module_utils import _tls_agent as agent
from ansible_collections.homelab.onebox.plugins.module_utils import _validate as v
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._nginx_site import POLICY_KEYS, TLS_DEFAULTS, parse_https_policy
from ansible_collections.homelab.onebox.plugins.module_utils._nginx_values import site_name_for

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETS_ENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
MODES = ("acme", "provided", "self_signed", "off")
DEFAULT_MODES = ("acme", "self_signed", "off")  # what the box's `default` may be (provided needs a pair)
CHALLENGES = ("http", "dns")
KEY_TYPES = ("ecdsa", "rsa")
HTTPS_PORT = 443

# The paths the agent reads are the agent's own (one place).
AGENT_PATH = agent.PROGRAM
CONFIG_PATH = agent.CONFIG
CONF_DIR = CONFIG_PATH.rsplit("/", 1)[0]
CA_BUNDLE_PATH = CONF_DIR + "/acme-ca.pem"
DNS_AUTH_PATH = CONF_DIR + "/dns-auth-hook"
DNS_CLEANUP_PATH = CONF_DIR + "/dns-cleanup-hook"
DNS_CREDENTIALS_PATH = CONF_DIR + "/dns-credentials.ini"
PROVIDED_DIR = agent.PROVIDED
LINK_DIR = agent.SERVING
WEBROOT = "/var/www/onebox-acme"
RENEW_UNITS = tuple("%s/%s" % (agent.UNIT_DIR, unit) for unit in (agent.SERVICE, agent.TIMER, "timers.target.wants/" + agent.TIMER))
VOLUME_PATH = agent.LETSENCRYPT
VOLUME_DEVICE = "onebox-tls"
# openssl makes placeholders and self-signed pairs and reads served certificates' names.
PACKAGES = ["openssl"]
ACME_PACKAGES = ["certbot"]

# The box's options, each with its default (redirect and HSTS as nginx_site's); `staging` only picks the directory.
OPTION_DEFAULTS = dict({key: TLS_DEFAULTS[key] for key in POLICY_KEYS}, email=None, directory=LETS_ENCRYPT, ca_bundle=None,
                       key_type="ecdsa", default="acme", dns=None, renew_calendar="*-*-* 00,12:00:00")
OPTION_KEYS = tuple(OPTION_DEFAULTS) + ("staging",)
# The box module's `tls` option (its documentation lists the same keys).
ARGUMENT_SPEC = dict(
    email=dict(type="str"),
    directory=dict(type="str"),
    staging=dict(type="bool"),
    ca_bundle=dict(type="str"),
    key_type=dict(type="str", choices=list(KEY_TYPES)),
    default=dict(type="str", choices=list(DEFAULT_MODES)),
    redirect=dict(type="bool"),
    hsts=dict(type="bool"),
    hsts_max_age=dict(type="int"),
    hsts_include_subdomains=dict(type="bool"),
    hsts_preload=dict(type="bool"),
    dns=dict(type="dict"),
    renew_calendar=dict(type="str"),
)
SERVICE_KEYS = ("mode", "certificate", "key", "challenge")
DNS_HOOK_KEYS = ("auth_hook", "cleanup_hook")
DNS_PLUGIN_KEYS = ("plugin", "credentials", "propagation_seconds")
_EMAIL = re.compile(r"^[^@\s;{}'\"`\\$]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
_URL = re.compile(r"^https://[A-Za-z0-9.-]+(:\d{1,5})?(/[A-Za-z0-9._~%/-]*)?$")
_PLUGIN = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")
_CALENDAR = re.compile(r"^[A-Za-z0-9*,:./~ -]{1,100}$")
_PEM = "-----BEGIN "


def _pem(value, field, what):
    """PEM text (a certificate chain, a private key): kept out of errors (a key is a secret)."""
    if not isinstance(value, str) or _PEM not in value or "-----END " not in value:
        raise ValidationError(field, v.MASK if isinstance(value, str) else value, "must be the PEM text of %s" % what)
    return value if value.endswith("\n") else value + "\n"


def _script(value, field):
    if not isinstance(value, str) or not value.startswith("#!"):
        raise ValidationError(field, value, "must be the text of an executable script (starting with #!)")
    return value if value.endswith("\n") else value + "\n"


def _dns(value, field):
    if value is None:
        return None
    if not isinstance(value, dict) or not (set(value) & set(DNS_HOOK_KEYS + DNS_PLUGIN_KEYS)):
        raise ValidationError(field, value, "takes auth_hook and cleanup_hook (scripts run by certbot's manual "
                                            "plugin), or plugin and credentials (a certbot DNS plugin)")
    if "plugin" in value:
        v.mapping(value, field, DNS_PLUGIN_KEYS)
        plugin = v.text(value["plugin"], field + ".plugin")
        if not _PLUGIN.match(plugin):
            raise ValidationError(field + ".plugin", plugin, "a certbot DNS plugin name, such as rfc2136 or cloudflare")
        credentials = v.text(value.get("credentials"), field + ".credentials") if value.get("credentials") is not None else None
        if credentials is None:
            raise ValidationError(field + ".credentials", None, "the plugin's credentials file (its text)")
        seconds = value.get("propagation_seconds")
        return {"plugin": plugin, "credentials": credentials,
                "propagation_seconds": None if seconds is None else v.integer(seconds, field + ".propagation_seconds", 0, 3600)}
    v.mapping(value, field, DNS_HOOK_KEYS)
    return {key: _script(value.get(key), "%s.%s" % (field, key)) for key in DNS_HOOK_KEYS}


def tls_secrets(raw):
    """The box's TLS secrets (a DNS plugin's credentials), from options not yet validated."""
    dns = raw.get("dns") if isinstance(raw, dict) else None
    credentials = dns.get("credentials") if isinstance(dns, dict) else None
    return [credentials] if isinstance(credentials, str) and credentials else []


def parse_tls_options(raw, field="tls"):
    """The box's TLS options -> a dict with every default, or None when TLS is not configured."""
    if raw is None:
        return None
    raw = v.mapping(raw, field, OPTION_KEYS)
    out = dict(OPTION_DEFAULTS)
    if raw.get("email") is not None:
        out["email"] = v.text(raw["email"], field + ".email")
        if not _EMAIL.match(out["email"]):
            raise ValidationError(field + ".email", out["email"], "an e-mail address (the ACME account's contact)")
    staging = v.boolean(raw.get("staging") or False, field + ".staging")
    if raw.get("directory") is not None:
        if staging:
            raise ValidationError(field + ".staging", True, "give either staging or directory, not both")
        out["directory"] = v.text(raw["directory"], field + ".directory")
        if not _URL.match(out["directory"]):
            raise ValidationError(field + ".directory", out["directory"], "the https:// URL of an ACME directory")
    elif staging:
        out["directory"] = LETS_ENCRYPT_STAGING
    if raw.get("ca_bundle") is not None:
        out["ca_bundle"] = _pem(raw["ca_bundle"], field + ".ca_bundle", "the CA certificate(s) of the ACME server")
    out["key_type"] = v.one_of(raw.get("key_type") or out["key_type"], KEY_TYPES, field + ".key_type")
    out["default"] = v.one_of(raw.get("default") or out["default"], DEFAULT_MODES, field + ".default")
    out.update(parse_https_policy(raw, field))
    out["dns"] = _dns(raw.get("dns"), field + ".dns")
    if raw.get("renew_calendar") is not None:
        out["renew_calendar"] = v.text(raw["renew_calendar"], field + ".renew_calendar")
        if not _CALENDAR.match(out["renew_calendar"]):
            raise ValidationError(field + ".renew_calendar", out["renew_calendar"],
                                  "a systemd OnCalendar expression, such as '*-*-* 00,12:00:00' or daily")
    return out


def parse_service_tls(raw, field, options):
    """A service's ``tls`` (a mode, or a dict with mode and its keys) -> dict(mode, challenge,
    certificate, key). Without it, the box's default (``off`` when the box configures no TLS)."""
    if raw is None:
        return {"mode": options["default"] if options else "off", "challenge": "http"}
    if isinstance(raw, str):
        raw = {"mode": raw}
    raw = v.mapping(raw, field, SERVICE_KEYS)
    mode = v.one_of(raw.get("mode", "acme"), MODES, field + ".mode")
    out = {"mode": mode, "challenge": v.one_of(raw.get("challenge", "http"), CHALLENGES, field + ".challenge")}
    if mode == "acme" and options is None:
        raise ValidationError(field + ".mode", mode, "ACME needs the box's tls options (onebox_tls: the account "
                                                     "e-mail, the directory)")
    if mode == "provided":
        out["certificate"] = _pem(raw.get("certificate"), field + ".certificate", "the certificate chain")
        out["key"] = _pem(raw.get("key"), field + ".key", "the private key")
    elif "certificate" in raw or "key" in raw:
        raise ValidationError(field + (".certificate" if "certificate" in raw else ".key"), v.MASK,
                              "only tls mode provided takes a certificate and a key")
    if out["challenge"] == "dns" and mode == "acme" and not (options or {}).get("dns"):
        raise ValidationError(field + ".challenge", "dns", "DNS-01 needs the box's tls.dns (a hook or a certbot plugin)")
    return out


class BoxTls:
    """The TLS of a parsed box: which sites are HTTPS, with which certificate; the proxy's part."""

    def __init__(self, options, services):
        # Without the box's options (a service may still ask for self_signed or provided), their defaults.
        self.settings = options or dict(OPTION_DEFAULTS)
        self.by_site = {}  # site name -> {"name", "domains", "mode", "challenge", "pair"(provided)}
        routed = {}  # a domain only routes live under -> (its tls mode, who set it)
        claimed = {domain for service in services for domain in service.domains}
        for service in services:
            for index, domain in enumerate(service.domains):
                self._claim(domain, service, "%s[%d]" % (service.where("domains"), index))
        # A route under a claimed domain is served with that domain's certificate; under a domain
        # only routes live under, the first route's service decides, and the others must agree.
        for service in services:
            for index, route in enumerate(service.routes):
                domain = route["domain"]
                if domain in claimed:
                    continue
                if domain in routed and routed[domain][0] != service.tls["mode"]:
                    raise ValidationError(service.where("tls"), service.tls["mode"],
                                          "%s also routes under %s with tls %s: one site, one certificate mode"
                                          % (routed[domain][1], domain, routed[domain][0]))
                if domain not in routed:
                    routed[domain] = (service.tls["mode"], service.where("tls"))
                    self._claim(domain, service, "%s[%d].domain" % (service.where("routes"), index))

    def _claim(self, domain, service, where):
        tls = service.tls
        if tls["mode"] == "off":
            return
        challenge = tls["challenge"]
        if domain.startswith("*."):
            if tls["mode"] == "acme" and not self.settings["dns"]:
                raise ValidationError(where, domain, "a wildcard certificate is issued only through DNS-01: give the "
                                                     "box's tls.dns (a hook or a certbot plugin), or tls: self_signed")
            challenge = "dns"
        name = site_name_for(domain)
        self.by_site[name] = {"name": name, "domains": [domain], "mode": tls["mode"], "challenge": challenge,
                              "pair": (tls["certificate"], tls["key"]) if tls["mode"] == "provided" else None}

    @property
    def enabled(self):
        return bool(self.by_site)

    @property
    def acme(self):
        return any(c["mode"] == "acme" for c in self.by_site.values())

    def site_tls(self, name):
        """nginx_site's ``tls`` for site ``name``, or None when it is plain HTTP."""
        cert = self.by_site.get(name)
        if cert is None:
            return None
        tls = dict({key: self.settings[key] for key in POLICY_KEYS}, listen=[str(HTTPS_PORT)],
                   certificate="%s/%s/fullchain.pem" % (LINK_DIR, name), key="%s/%s/privkey.pem" % (LINK_DIR, name))
        if cert["mode"] == "acme" and cert["challenge"] == "http":
            tls["acme_webroot"] = WEBROOT
        return tls

    def certificates(self):
        """The agent's certificates, in site order."""
        return [{key: cert[key] for key in ("name", "domains", "mode", "challenge")}
                for _name, cert in sorted(self.by_site.items())]

    def config(self, owner):
        """The agent's configuration file (CONFIG_PATH), deterministic."""
        options = self.settings
        dns = options["dns"]
        if dns and "plugin" in dns:
            dns = {"plugin": dns["plugin"], "credentials": DNS_CREDENTIALS_PATH,
                   "propagation_seconds": dns["propagation_seconds"]}
        elif dns:
            dns = {"auth_hook": DNS_AUTH_PATH, "cleanup_hook": DNS_CLEANUP_PATH}
        config = {"owner": owner, "email": options["email"], "directory": options["directory"],
                  "ca_bundle": CA_BUNDLE_PATH if options["ca_bundle"] else None, "key_type": options["key_type"],
                  "webroot": WEBROOT, "dns": dns, "renew_calendar": options["renew_calendar"], "certs": self.certificates()}
        return json.dumps(config, indent=1, sort_keys=True) + "\n"

    def packages(self):
        packages = list(PACKAGES)
        if self.acme:
            packages += ACME_PACKAGES
            dns = self.settings["dns"]
            if dns and "plugin" in dns:
                packages.append("python3-certbot-dns-%s" % dns["plugin"])
        return packages

    def files(self, owner, agent_source):
        """The proxy's TLS files (lxd_provision items). None of them restarts nginx: the agent
        reloads it once the links are right."""
        options = self.settings
        quiet = {"restart": False}
        files = [dict(quiet, path=AGENT_PATH, content=agent_source, mode="0755"),
                 dict(quiet, path=CONFIG_PATH, content=self.config(owner))]
        ca_bundle, dns = options["ca_bundle"], options["dns"] if self.acme else None
        files.append(dict(quiet, path=CA_BUNDLE_PATH, content=ca_bundle) if ca_bundle and self.acme
                     else dict(quiet, path=CA_BUNDLE_PATH, state="absent"))
        hooks = dns if dns and "plugin" not in dns else {}
        for path, key in ((DNS_AUTH_PATH, "auth_hook"), (DNS_CLEANUP_PATH, "cleanup_hook")):
            files.append(dict(quiet, path=path, content=hooks[key], mode="0700") if hooks
                         else dict(quiet, path=path, state="absent"))
        files.append(dict(quiet, path=DNS_CREDENTIALS_PATH, content=dns["credentials"], mode="0600")
                     if dns and "plugin" in dns else dict(quiet, path=DNS_CREDENTIALS_PATH, state="absent"))
        for name, cert in sorted(self.by_site.items()):
            if cert["pair"]:
                files.append(dict(quiet, path="%s/%s/fullchain.pem" % (PROVIDED_DIR, name), content=cert["pair"][0]))
                files.append(dict(quiet, path="%s/%s/privkey.pem" % (PROVIDED_DIR, name), content=cert["pair"][1],
                                  mode="0600"))
        return files


def gone_files():
    """A proxy of a box that no longer has TLS options or HTTPS sites: the agent, its
    configuration and its renewal timer (the agent's own units) go; the certificates stay on the
    volume until a purge."""
    paths = (AGENT_PATH, CONFIG_PATH, CA_BUNDLE_PATH, DNS_AUTH_PATH, DNS_CLEANUP_PATH, DNS_CREDENTIALS_PATH) + RENEW_UNITS
    return [{"path": path, "state": "absent", "restart": False} for path in paths]
