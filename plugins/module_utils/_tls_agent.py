# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The TLS agent inside the proxy container (/usr/local/sbin/onebox-tls): what certificate each TLS site serves, and its obtaining and renewal.

The box module ships this file's source into the proxy container (a ``#!/usr/bin/python3`` line
prepended), writes /etc/onebox-tls/config.json and runs one of:
  prepare [--check]                      units, serving links, cleanup; registers the ACME account when a
                                         certificate is pending and there is none, else never contacts the CA
  obtain [--check] [--reload] [NAME...]  certbot certonly for pending ACME certificates (or NAMEs), at once
  renew [--force]                        what the timer runs: certbot renew per lineage (at once), self-signed
                                         pairs, obtain; one reload
  reload                                 nginx -t, then systemctl reload nginx
  status                                 what each declared certificate serves
Each prints one JSON object on stdout (exit 0; 1 when something failed; 2 for a broken config or
usage) and logs ``onebox-tls: ...`` lines on stderr and in /var/log/onebox-tls.log.

nginx names /etc/nginx/onebox-tls/NAME/{fullchain,privkey}.pem: symlinks, switched atomically, to
the certbot lineage, a placeholder, a self-signed pair (both kept on the /etc/letsencrypt volume,
so a re-created container is re-linked without the CA) or the provided pair. state.json beside them
says which, so a converge that changes nothing reads a few files and runs no openssl.

Layout of the /etc/letsencrypt volume: the ACME account, registered once, in certbot's own place
(accounts/HOST[:PORT]/PATH/ID/, which names no certificate); each lineage in a certbot config dir
of its own, onebox/lineages/NAME/ (accounts/ a copy of that account, live/NAME, archive/NAME,
renewal/NAME.conf), with its work and logs dirs in the container (/var/lib/onebox-tls/work/NAME,
/var/log/onebox-tls/certbot/NAME). certbot locks its config, work and logs dirs for a whole run, so
one config dir per lineage is what lets the orders (about 2 s each, nearly all certbot's polling
sleeps) and the renewals run at once: one certbot process per lineage, at most PARALLEL at a time.
Placeholders and self-signed pairs are in onebox/placeholder/NAME and onebox/self-signed/NAME.
Every path is under a root (ONEBOX_TLS_ROOT, for tests); commands are found on PATH. The
environment's ONEBOX_TLS_CONFIG, when set, is the configuration's text instead of the file's.
Stdlib only: this runs on the container's python3.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse

PROGRAM = "/usr/local/sbin/onebox-tls"  # where the box module puts this file
CONFIG = "/etc/onebox-tls/config.json"
PROVIDED = "/etc/onebox-tls/provided"
LETSENCRYPT = "/etc/letsencrypt"  # the volume; certbot's config dir of the ACME account
LINEAGES = "/etc/letsencrypt/onebox/lineages"  # NAME/: the certbot config dir of lineage NAME
WORK = "/var/lib/onebox-tls/work"  # NAME/: its certbot work dir
CERTBOT_LOGS = "/var/log/onebox-tls/certbot"  # NAME/: its certbot logs dir
REGISTER_DIRS = ("/var/lib/onebox-tls/register", "/var/log/onebox-tls/register")  # work and logs dirs of the registration
ACCOUNT_FILES = ("meta.json", "private_key.json", "regr.json")
PARALLEL = 8  # certbot processes at once
# kind -> (directory on the volume, days valid, regenerated when fewer days are left)
GENERATED = {"placeholder": ("/etc/letsencrypt/onebox/placeholder", 30, 1),
             "self_signed": ("/etc/letsencrypt/onebox/self-signed", 365, 30)}
SERVING = "/etc/nginx/onebox-tls"
LOG = "/var/log/onebox-tls.log"
LOCK = "/run/onebox-tls/lock"
RENEWED = "/run/onebox-tls/renewed"  # certbot renew's deploy hook appends each renewed lineage's name
UNIT_DIR = "/etc/systemd/system"
SERVICE = "onebox-tls-renew.service"
TIMER = "onebox-tls-renew.timer"
PAIR = ("fullchain.pem", "privkey.pem")
MODES = ("acme", "self_signed", "provided")
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
DOMAIN = re.compile(r"(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
PLUGIN = re.compile(r"[a-z0-9][a-z0-9-]*")
# certonly: one order, DNS propagation included; renew: one lineage, inside the unit's TimeoutStartSec;
# register: a few requests, inside the module's timeout for prepare.
CERTBOT_TIMEOUT, RENEW_TIMEOUT, REGISTER_TIMEOUT, TOOL_TIMEOUT = 600, 1800, 60, 120
SERVICE_TEXT = """# Managed by homelab.onebox (onebox-tls of box {owner}). Do not edit: changes are overwritten.
[Unit]
Description=Renew the TLS certificates of the onebox proxy
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
ExecStart={program} renew
TimeoutStartSec=1h
"""
TIMER_TEXT = """# Managed by homelab.onebox (onebox-tls of box {owner}). Do not edit: changes are overwritten.
[Unit]
Description=Renew the TLS certificates of the onebox proxy

[Timer]
OnCalendar={calendar}
RandomizedDelaySec=1h
Persistent=true

[Install]
WantedBy=timers.target
"""
# certbot 2.1's words (renewal.handle_renewal_request, auth_handler, log.exit_with_advice).
FAILED_RENEWAL = re.compile(r"Failed to renew certificate (\S+) with error: (.*)")
BAD_RENEWAL_CONF = re.compile(r"Renewal configuration file \S+ \(cert: (\S+)\) produced an unexpected error: (.*)\. Skipping\.")
FAILURE_REPORT = re.compile(r"/live/([^/\s]+)/fullchain\.pem \(failure\)")
NOISE = ("Saving debug log", "Ask for help", "Hint:", "- - -", "An unexpected error occurred")


class Failure(Exception):
    """Something the agent had to do failed (exit 1); the message is the reason."""


class ConfigError(Exception):
    """A broken config.json or command line (exit 2)."""


def read_text(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def write_text(path, text):
    """Through a temp file and os.replace: a reader sees the old text or the new one, never half."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".new", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".new", path)


def iso(epoch):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def same_names(a, b):
    return sorted({n.lower() for n in a}) == sorted({n.lower() for n in b})


def problem_details(output):
    """The CA's problem details of a failed challenge ("Domain: D" then "Detail: ..."), joined."""
    details, domain = [], None
    for line in (x.strip() for x in output.splitlines()):
        if line.startswith("Domain:"):
            domain = line[len("Domain:"):].strip()
        elif line.startswith("Detail:"):
            details.append("%s: %s" % (domain, line[len("Detail:"):].strip()) if domain else line[len("Detail:"):].strip())
    return "; ".join(dict.fromkeys(details))


def certbot_reason(output, status):
    """Why certbot failed, in one line: the CA's problem detail, else its last line that is not advice."""
    lines = [x.strip() for x in output.splitlines() if x.strip() and not x.strip().startswith(NOISE)]
    return problem_details(output) or (lines[-1] if lines else "certbot exited with status %s" % status)


def renew_failures(output):
    """{lineage: reason} from certbot renew's output. Each lineage's part starts "Processing
    .../renewal/NAME.conf" and a failed one ends "Failed to renew certificate NAME with error: E",
    after the CA's problem details when there were any; the closing report lists the failed
    lineages' ".../live/NAME/fullchain.pem (failure)"."""
    failures, part = {}, []
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("Processing "):
            part = []
        found = FAILED_RENEWAL.match(line) or BAD_RENEWAL_CONF.match(line)
        if found:
            failures[found.group(1)] = problem_details("\n".join(part)) or found.group(2)
        part.append(line)
    for name in FAILURE_REPORT.findall(output):
        failures.setdefault(name, "certbot reports the renewal failed")
    return failures


def config_problems(config):
    """What is wrong with config.json. The module checks the user's input; this guards the paths
    and arguments built from it (a name must not lead out of its directory)."""
    if not isinstance(config, dict) or not isinstance(config.get("certs"), list) or not all(isinstance(c, dict) for c in config["certs"]):
        return ["must be an object with a list of certs"]
    dns = config.get("dns") if isinstance(config.get("dns"), dict) else {}
    dns_ok = all(isinstance(dns.get(k), str) for k in ("auth_hook", "cleanup_hook")) or (
        isinstance(dns.get("plugin"), str) and PLUGIN.fullmatch(dns["plugin"]) and isinstance(dns.get("credentials"), str)
        and isinstance(dns.get("propagation_seconds") or 0, int))
    problems = [] if config.get("key_type") in ("ecdsa", "rsa") else ["key_type must be ecdsa or rsa"]
    if not re.fullmatch(r"[^\n]+", str(config.get("renew_calendar") or "")):
        problems.append("renew_calendar must be one line")
    names = [c.get("name") for c in config["certs"]]
    for cert in config["certs"]:
        name, mode, challenge, domains = cert.get("name"), cert.get("mode"), cert.get("challenge"), cert.get("domains")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            problems.append("certificate name %r must be letters, digits, '_', '.' or '-', not starting with '.' or '-'" % (name,))
            continue
        if names.count(name) > 1:
            problems.append("certificate %s is declared twice" % name)
        if not isinstance(domains, list) or not domains or not all(isinstance(d, str) and DOMAIN.fullmatch(d) for d in domains):
            problems.append("certificate %s: domains must be a non-empty list of DNS names" % name)
        if mode not in MODES:
            problems.append("certificate %s: mode must be one of %s" % (name, ", ".join(MODES)))
        elif mode == "acme" and not (isinstance(config.get("directory"), str) and isinstance(config.get("email"), (str, type(None)))):
            problems.append("certificate %s: acme needs a directory (and an email or null)" % name)
        elif mode == "acme" and not (challenge == "http" and isinstance(config.get("webroot"), str) or challenge == "dns" and dns_ok):
            problems.append("certificate %s: acme needs challenge http (and a webroot) or dns (and dns hooks or a plugin)" % name)
    return problems


def contact_args(config):
    return ["--email", config["email"]] if config.get("email") else ["--register-unsafely-without-email"]


def certonly_args(config, cert, dirs):
    """certbot certonly for one certificate, in its lineage's dirs (dirs_args). A lineage of that name
    with other names is replaced: certbot 2.1 asks "Update certificate" (default yes under
    --non-interactive); --renew-with-new-domains says yes without relying on that default."""
    args = ["certbot", "certonly", "--non-interactive", "--agree-tos"] + contact_args(config)
    args += ["--server", config["directory"], "--cert-name", cert["name"], "--key-type", config["key_type"], "--renew-with-new-domains"]
    for domain in cert["domains"]:
        args += ["-d", domain]
    dns = config.get("dns") or {}
    if cert["challenge"] == "http":
        args += ["--webroot", "-w", config["webroot"]]
    elif dns.get("plugin"):
        flag = "--dns-" + dns["plugin"]
        args += [flag, flag + "-credentials", dns["credentials"]]
        args += [flag + "-propagation-seconds", str(dns["propagation_seconds"])] if dns.get("propagation_seconds") is not None else []
    else:
        args += ["--manual", "--preferred-challenges", "dns", "--manual-auth-hook", dns["auth_hook"], "--manual-cleanup-hook", dns["cleanup_hook"]]
    return args + dirs


def dirs_args(config_dir, work_dir, logs_dir):
    return ["--config-dir", config_dir, "--work-dir", work_dir, "--logs-dir", logs_dir]


def accounts_dir(config_dir, directory):
    """Where certbot 2.1 keeps the accounts of ACME server directory in config_dir: accounts/ then the
    URL's host[:port] and path (NamespaceConfig.accounts_dir_for_server_path), one ID/ dir per account."""
    url = urllib.parse.urlparse(directory)
    return os.path.join(config_dir, "accounts", *[p for p in (url.netloc + url.path).split("/") if p])


def find_account(config_dir, directory):
    """The ID of an account for directory in config_dir (its three files there), else None."""
    where = accounts_dir(config_dir, directory)
    found = sorted(a for a in os.listdir(where) if all(os.path.isfile(os.path.join(where, a, f)) for f in ACCOUNT_FILES)) \
        if os.path.isdir(where) else []
    return found[0] if found else None


def batches(certs):
    """The names of certs in lists that may run at once, each list's names one after the other.
    DNS-01 certificates that validate a same name (example.org and *.example.org: both
    _acme-challenge.example.org) share a list: a hook may clear every value of a TXT name (pebble's
    clear-txt does), which would fail the other's validation. HTTP-01 tokens are files of their own."""
    groups = []  # [validated names, certificate names]
    for cert in certs:
        keys = {d.lower()[2:] if d.startswith("*.") else d.lower() for d in cert["domains"]} if cert.get("challenge") == "dns" else set()
        joined = [g for g in groups if g[0] & keys]
        group = [keys.union(*[g[0] for g in joined]), [n for g in joined for n in g[1]] + [cert["name"]]]
        groups = [g for g in groups if g not in joined] + [group]
    return [g[1] for g in groups]


class Agent:
    def __init__(self, root, check=False):
        self.root, self.check = root, check

    def path(self, *parts):
        return os.path.join(self.root, *(p.lstrip("/") for p in parts))

    def log(self, message):
        line = "onebox-tls: " + message
        sys.stderr.write(line + "\n")
        if not self.check:
            os.makedirs(os.path.dirname(self.path(LOG)), exist_ok=True)
            with open(self.path(LOG), "a", encoding="utf-8") as f:
                f.write("%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S%z"), line))

    def act(self, actions, action):
        actions.append(action)
        if not self.check:
            self.log(action)

    def run(self, args, timeout, env=None):
        """(status, stdout and stderr together) of a command on PATH; certbot spreads its report over both."""
        try:
            done = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  encoding="utf-8", errors="replace", timeout=timeout, env=env, check=False)
        except FileNotFoundError:
            return 127, "%s: not found on PATH" % args[0]
        except subprocess.TimeoutExpired:
            return 124, "%s timed out after %d seconds" % (" ".join(args[:2]), timeout)
        return done.returncode, done.stdout

    def must(self, args, timeout=TOOL_TIMEOUT, env=None):
        status, output = self.run(args, timeout, env)
        if status:
            lines = [x for x in output.splitlines() if x.strip()]
            raise Failure("%s failed: %s" % (" ".join(args[:2]), lines[-1].strip() if lines else "status %d" % status))

    @contextlib.contextmanager
    def lock(self):
        """One writing run at a time (the timer's renew and a converge would meet in certbot's own lock
        and in the links); the wait is bounded by the holder's command timeouts and the unit's."""
        os.makedirs(os.path.dirname(self.path(LOCK)), exist_ok=True)
        with open(self.path(LOCK), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def certbot_env(self, config):
        return dict(os.environ, REQUESTS_CA_BUNDLE=config["ca_bundle"]) if config.get("ca_bundle") else None

    def cert_info(self, path):
        """{names, serial, not_after (epoch)} of a PEM certificate, None when it is missing or unreadable."""
        if not os.path.isfile(path):
            return None
        status, out = self.run(["openssl", "x509", "-noout", "-serial", "-enddate", "-ext", "subjectAltName", "-in", path], TOOL_TIMEOUT)
        serial, end = re.search(r"^serial=(\w+)", out, re.M), re.search(r"^notAfter=(.+)$", out, re.M)
        if status or not serial or not end:
            return None
        return dict(names=re.findall(r"DNS:([^,\s]+)", out), serial=serial.group(1), not_after=int(ssl.cert_time_to_seconds(end.group(1).strip())))

    def read_state(self, name):
        try:
            state = json.loads(read_text(self.path(SERVING, name, "state.json")) or "{}")
        except ValueError:
            return {}
        return state if isinstance(state, dict) else {}

    def linked(self, name, target):
        try:
            return all(os.readlink(self.path(SERVING, name, f)) == os.path.join(target, f) for f in PAIR)
        except OSError:
            return False

    def link(self, name, target, state):
        """Point the serving links at target's pair (each switched with os.replace), then record state."""
        where = self.path(SERVING, name)
        os.makedirs(where, exist_ok=True)
        for f in PAIR:
            temp = os.path.join(where, ".%s.new" % f)
            if os.path.lexists(temp):
                os.remove(temp)
            os.symlink(os.path.join(target, f), temp)
            os.replace(temp, os.path.join(where, f))
        write_text(os.path.join(where, "state.json"), json.dumps(state, sort_keys=True))

    def generate(self, target, domains, days, key_type):
        """A self-signed pair for domains into target, written beside it and moved in (key 0600)."""
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        temp = tempfile.mkdtemp(dir=os.path.dirname(target), prefix=".new-")
        try:
            key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if key_type == "ecdsa" else ["-newkey", "rsa:2048"]
            self.must(["openssl", "req", "-x509"] + key + [
                "-nodes", "-days", str(days), "-keyout", os.path.join(temp, "privkey.pem"), "-out", os.path.join(temp, "fullchain.pem"),
                "-subj", "/CN=" + (domains[0] if len(domains[0]) <= 64 else "onebox-tls"),
                "-addext", "subjectAltName=" + ",".join("DNS:" + d for d in domains)])
            os.chmod(os.path.join(temp, "privkey.pem"), 0o600)
            os.chmod(os.path.join(temp, "fullchain.pem"), 0o644)
            os.makedirs(target, exist_ok=True)
            for f in ("privkey.pem", "fullchain.pem"):
                os.replace(os.path.join(temp, f), os.path.join(target, f))
        finally:
            shutil.rmtree(temp, ignore_errors=True)

    def generated(self, config, cert, kind, known, actions):
        """The dir of cert's placeholder or self-signed pair, (re)generated when missing, for other
        names or near its end; -> (dir, its not_after). known: state.json when it already says so."""
        base, days, margin = GENERATED[kind]
        target, fresh_after = self.path(base, cert["name"]), time.time() + margin * 86400
        present = all(os.path.isfile(os.path.join(target, f)) for f in PAIR)
        if present and known.get("not_after", 0) > fresh_after:
            return target, known["not_after"]
        info = self.cert_info(os.path.join(target, "fullchain.pem")) if present else None
        if info and same_names(info["names"], cert["domains"]) and info["not_after"] > fresh_after:
            return target, info["not_after"]
        self.act(actions, "generate %s %s" % (kind, cert["name"]))
        if not self.check:
            self.generate(target, cert["domains"], days, config["key_type"])
        return target, int(time.time()) + days * 86400

    def settle(self, config, cert, actions):
        """Make cert's serving links point where they should; -> its summary. The no-change path reads
        state.json, two links and a stat or two."""
        name, domains, mode = cert["name"], cert["domains"], cert["mode"]
        state = self.read_state(name)
        known = state if state.get("names") == domains and state.get("mode") == mode else {}
        live, not_after = self.live(name), None
        if mode == "provided":
            serving, target = "provided", self.path(PROVIDED, name)
            if not all(os.path.isfile(os.path.join(target, f)) for f in PAIR):
                raise Failure("certificate %s: the provided pair %s/%s is missing" % (name, PROVIDED, name))
        elif mode == "acme" and os.path.exists(os.path.join(live, "fullchain.pem")) and (
                known.get("serving") == "acme" or same_names((self.cert_info(os.path.join(live, "fullchain.pem")) or {}).get("names", []), domains)):
            serving, target = "acme", live
        else:
            serving = "self_signed" if mode == "self_signed" else "placeholder"
            target, not_after = self.generated(config, cert, serving, known if known.get("serving") == serving else {}, actions)
        new_state = dict(names=domains, mode=mode, serving=serving, **({"not_after": not_after} if not_after else {}))
        linked = self.linked(name, target)
        if not linked or state.get("serving") != serving:
            self.act(actions, "link %s -> %s" % (name, serving))
        if (not linked or state != new_state) and not self.check:
            self.link(name, target, new_state)
        return dict(name=name, mode=mode, serving=serving, pending=mode == "acme" and serving != "acme")

    def units(self, config, actions):
        """The renewal service and timer, enabled; Debian's certbot.timer (which would renew without
        our CA bundle and reload nginx per lineage) disabled and masked."""
        texts = {SERVICE: SERVICE_TEXT, TIMER: TIMER_TEXT}
        changed = False
        for unit, text in texts.items():
            text = text.format(owner=config.get("owner"), calendar=config["renew_calendar"], program=PROGRAM)
            path = self.path(UNIT_DIR, unit)
            if read_text(path) != text:
                changed = True
                self.act(actions, "unit " + unit)
                if not self.check:
                    write_text(path, text)
        enabled = os.path.lexists(self.path(UNIT_DIR, "timers.target.wants", TIMER))
        if not enabled:
            self.act(actions, "enable " + TIMER)
        if (changed or not enabled) and not self.check:
            for args in (["daemon-reload"], ["enable", TIMER], ["restart", TIMER]):
                self.must(["systemctl"] + args)
        shipped = any(os.path.exists(self.path(d, "certbot.timer")) for d in ("/lib/systemd/system", "/usr/lib/systemd/system"))
        if shipped and not (os.path.islink(self.path(UNIT_DIR, "certbot.timer")) and os.readlink(self.path(UNIT_DIR, "certbot.timer")) == "/dev/null"):
            self.act(actions, "mask certbot.timer")
            if not self.check:
                self.must(["systemctl", "disable", "--now", "certbot.timer"])
                self.must(["systemctl", "mask", "certbot.timer"])

    def webroot(self, config, actions):
        """The directory certbot writes HTTP-01 tokens to and nginx serves them from, with its
        .well-known/acme-challenge: certbot removes the ones it made when it ends, which under a
        certbot running at once (another lineage) would pull the directory from beneath its token."""
        if any(c["mode"] == "acme" and c.get("challenge", "http") == "http" for c in config["certs"]) \
                and not os.path.isdir(self.path(config["webroot"], ".well-known", "acme-challenge")):
            self.act(actions, "webroot " + config["webroot"])
            if not self.check:
                for parts in ((), (".well-known",), (".well-known", "acme-challenge")):
                    os.makedirs(self.path(config["webroot"], *parts), mode=0o755, exist_ok=True)

    def prune(self, config, actions):
        """Remove what no declared certificate uses: serving dirs, placeholders, self-signed and provided
        pairs and certbot lineages (so the timer renews nothing that no site serves); -> the undeclared names."""
        modes = {c["name"]: c["mode"] for c in config["certs"]}
        removed = set()
        # A provided pair the description no longer gives (the module stops declaring its files) goes too.
        for base, mode in ((SERVING, None), (GENERATED["placeholder"][0], "acme"), (GENERATED["self_signed"][0], "self_signed"),
                           (PROVIDED, "provided")):
            for name in sorted(os.listdir(self.path(base))) if os.path.isdir(self.path(base)) else []:
                if name in modes and mode in (None, modes[name]):
                    continue
                removed.update({name} - set(modes))
                self.act(actions, "remove %s/%s" % (base, name))
                if not self.check and os.path.isdir(self.path(base, name)):
                    shutil.rmtree(self.path(base, name))
                elif not self.check:
                    os.remove(self.path(base, name))
        # A lineage's config dir is removed whole, not through certbot delete: that would take certbot's
        # start-up (~0.5 s) to remove live/, archive/ and renewal/ (it contacts no CA: it revokes nothing)
        # and leave the dir, the account's copy, keys/ and csr/ behind. Its work and logs dirs go with it.
        for name in sorted(set(self.listdir(LINEAGES)) | set(self.listdir(WORK)) | set(self.listdir(CERTBOT_LOGS))):
            if modes.get(name) == "acme" or not NAME.fullmatch(name):
                continue
            if os.path.isdir(self.path(LINEAGES, name)):
                removed.update({name} - set(modes))
                self.act(actions, "delete lineage " + name)
            for base in (LINEAGES, WORK, CERTBOT_LOGS):
                if not self.check and os.path.isdir(self.path(base, name)):
                    shutil.rmtree(self.path(base, name))
        return sorted(removed)

    def listdir(self, base):
        return sorted(os.listdir(self.path(base))) if os.path.isdir(self.path(base)) else []

    def live(self, name):
        return self.path(LINEAGES, name, "live", name)

    def lineages(self):
        """The names of the lineages certbot has made (their renewal/NAME.conf)."""
        return [n for n in self.listdir(LINEAGES) if NAME.fullmatch(n) and os.path.isfile(self.path(LINEAGES, n, "renewal", n + ".conf"))]

    def dirs(self, name):
        """certbot's --config-dir, --work-dir and --logs-dir for lineage name."""
        return dirs_args(self.path(LINEAGES, name), self.path(WORK, name), self.path(CERTBOT_LOGS, name))

    def register(self, config):
        """The ACME account for the configured directory in /etc/letsencrypt, registered when there is
        none; -> (its ID or None, "present"|"registered"|"failed: REASON")."""
        found = find_account(self.path(LETSENCRYPT), config["directory"])
        if found:
            return found, "present"
        args = ["certbot", "register", "--non-interactive", "--agree-tos"] + contact_args(config) + ["--server", config["directory"]]
        status, out = self.run(args + dirs_args(self.path(LETSENCRYPT), *(self.path(d) for d in REGISTER_DIRS)), REGISTER_TIMEOUT,
                               self.certbot_env(config))
        found = find_account(self.path(LETSENCRYPT), config["directory"])
        if found:
            self.log("registered an ACME account at %s" % config["directory"])
            return found, "registered"
        reason = certbot_reason(out, status) if status else "certbot register made no account under %s" % accounts_dir(LETSENCRYPT, config["directory"])
        self.log("the ACME account could not be registered at %s: %s; obtain tries again" % (config["directory"], reason))
        return None, "failed: " + reason

    def account(self, config, certs):
        """prepare's part: the account registered when a certificate is pending and there is none, so that
        obtain (which waits for the sites and forwards) only orders; -> what the JSON says of it."""
        if not any(c["mode"] == "acme" for c in config["certs"]):
            return "none"
        if find_account(self.path(LETSENCRYPT), config["directory"]):
            return "present"
        if not any(c["pending"] for c in certs):
            return "none"
        return "would register" if self.check else self.register(config)[1]

    def give_account(self, directory, account, name):
        """A copy of the account (modes kept: the key is 0400) into lineage name's config dir, unless it
        has one for directory: certbot would register an account of its own there."""
        config_dir = self.path(LINEAGES, name)
        if find_account(config_dir, directory):
            return
        target = os.path.join(accounts_dir(config_dir, directory), account)
        os.makedirs(config_dir, exist_ok=True)
        parts = os.path.relpath(os.path.dirname(target), config_dir).split(os.sep)  # accounts, HOST[:PORT], PATH...
        for i in range(1, len(parts) + 1):
            with contextlib.suppress(FileExistsError):
                os.mkdir(os.path.join(config_dir, *parts[:i]), 0o700)  # as certbot makes them
        temp = os.path.join(config_dir, ".account.new")
        shutil.rmtree(temp, ignore_errors=True)
        shutil.copytree(os.path.join(accounts_dir(self.path(LETSENCRYPT), directory), account), temp)
        if os.path.lexists(target):  # an incomplete one
            shutil.rmtree(target)
        os.rename(temp, target)

    def reload_nginx(self):
        status, out = self.run(["nginx", "-t"], TOOL_TIMEOUT)
        if status:
            lines = [x.strip() for x in out.splitlines() if x.strip()] or ["status %d" % status]
            self.log("nginx -t failed: %s; nginx keeps serving its current configuration" % next((x for x in lines if "[emerg]" in x), lines[-1]))
            return False
        status, out = self.run(["systemctl", "reload", "nginx"], TOOL_TIMEOUT)
        if status:
            self.log("systemctl reload nginx failed: %s" % (out.strip().splitlines() or ["status %d" % status])[-1])
            return False
        self.log("reloaded nginx")
        return True

    def at_once(self, groups, args_of, timeout, env):
        """One certbot process per name (args_of(name)), the groups (lists of names, batches()) at once,
        at most PARALLEL, each group's names one after the other; -> {name: (status, output)}. The
        threads only run processes: what is logged and linked is done by the caller, in this thread."""
        def run_group(group):
            return {name: self.run(args_of(name), timeout, env) for name in group}
        results = {}
        if groups:
            with concurrent.futures.ThreadPoolExecutor(max_workers=min(PARALLEL, len(groups))) as pool:
                for done in pool.map(run_group, groups):
                    results.update(done)
        return results

    def obtain(self, config, names):
        """certbot certonly for the named acme certificates, else the pending ones, all at once (a certbot
        process each, in the lineage's own dirs, with a copy of the account); -> (obtained, failed)."""
        acme = {c["name"]: c for c in config["certs"] if c["mode"] == "acme"}
        if set(names) - set(acme):
            raise ConfigError("not a declared acme certificate: %s" % ", ".join(sorted(set(names) - set(acme))))
        todo = names or [n for n in acme if self.read_state(n).get("serving") != "acme"]
        if self.check or not todo:
            return list(todo), []
        self.webroot(config, [])
        was_acme = {name: self.read_state(name).get("serving") == "acme" for name in todo}
        account, said = self.register(config)
        results = {}
        for name in todo:
            try:
                if account:
                    self.give_account(config["directory"], account, name)
                else:
                    results[name] = (1, "no ACME account: " + said[len("failed: "):])
            except OSError as e:
                results[name] = (1, "copying the ACME account into %s failed: %s" % (self.path(LINEAGES, name), e))
        results.update(self.at_once(batches([acme[n] for n in todo if n not in results]),
                                    lambda n: certonly_args(config, acme[n], self.dirs(n)), CERTBOT_TIMEOUT, self.certbot_env(config)))
        obtained, failed = [], []
        for name in todo:
            status, out = results[name]
            if status == 0 and self.settle(config, acme[name], [])["serving"] == "acme":
                self.log("obtained the certificate %s" % name)
                obtained.append(name)
                continue
            reason = certbot_reason(out, status) if status else "certbot succeeded but %s/%s/live/%s does not name %s" % (
                LINEAGES, name, name, " ".join(acme[name]["domains"]))
            keeps = "the current certificate" if was_acme[name] else "the placeholder"
            self.log("certificate %s could not be obtained: %s; %s keeps serving" % (name, reason, keeps))
            failed.append(dict(name=name, reason=reason))
        return obtained, failed

    def renew(self, config, force):
        """certbot renew of every lineage, a process each in the lineage's dirs, at once (nginx reloaded
        once at the end, not per lineage by a hook); -> (renewed, failed)."""
        lineages = self.lineages()
        if not lineages:
            return [], []
        self.webroot(config, [])
        flag = self.path(RENEWED)
        os.makedirs(os.path.dirname(flag), exist_ok=True)
        if os.path.exists(flag):
            os.remove(flag)
        args = ["certbot", "renew", "--non-interactive", "--no-random-sleep-on-renew",
                "--deploy-hook", 'basename "$RENEWED_LINEAGE" >> %s' % shlex.quote(flag)] + (["--force-renewal"] if force else [])
        declared = {c["name"]: c for c in config["certs"]}
        results = self.at_once(batches([declared.get(n) or dict(name=n, domains=[]) for n in lineages]),
                               lambda n: args + self.dirs(n), RENEW_TIMEOUT, self.certbot_env(config))
        renewed = []
        with contextlib.suppress(OSError), open(flag, encoding="utf-8") as f:
            renewed = sorted(set(f.read().split()) & set(lineages))
        failed = []
        for name in lineages:
            # Each process speaks for its one lineage: its failure is a nonzero exit (or its words).
            status, out = results[name]
            failures = renew_failures(out)
            if not status and not failures:
                continue
            reason = failures.get(name) or next(iter(failures.values()), None) or certbot_reason(out, status)
            info = self.cert_info(os.path.join(self.live(name), "fullchain.pem"))
            current = "(serial %s, expires %s)" % (info["serial"], iso(info["not_after"])) if info else "(unreadable)"
            self.log("renewal of %s failed: %s; the current certificate %s keeps serving" % (name, reason, current))
            failed.append(dict(name=name, reason=reason))
        for name in renewed:
            self.log("renewed the certificate %s" % name)
        return renewed, failed


def cmd_prepare(agent, config, flags, names):
    actions = []
    agent.units(config, actions)
    agent.webroot(config, actions)
    certs = [agent.settle(config, cert, actions) for cert in config["certs"]]
    removed = agent.prune(config, actions)
    # The account is no change to what serves: not an action (the module reloads nginx when prepare changed).
    account = agent.account(config, certs)
    return 0, dict(changed=bool(actions), actions=actions, certs=certs, removed=removed, account=account)


def cmd_obtain(agent, config, flags, names):
    obtained, failed = agent.obtain(config, names)
    reloaded = agent.reload_nginx() if (obtained or "--reload" in flags) and not agent.check else False
    return 0, dict(changed=bool(obtained), obtained=obtained, failed=failed, reloaded=reloaded)


def cmd_renew(agent, config, flags, names):
    renewed, failed = agent.renew(config, "--force" in flags)
    actions = []
    for cert in config["certs"]:
        agent.settle(config, cert, actions)
    obtained, not_obtained = agent.obtain(config, [])
    changed = renewed or obtained or actions
    reloaded = agent.reload_nginx() if changed else False
    failed += not_obtained
    return int(bool(failed or changed and not reloaded)), dict(renewed=renewed, failed=failed, obtained=obtained, reloaded=reloaded)


def cmd_reload(agent, config, flags, names):
    reloaded = agent.reload_nginx()
    return int(not reloaded), dict(reloaded=reloaded)


def cmd_status(agent, config, flags, names):
    certs = []
    for cert in config["certs"]:
        info = agent.cert_info(agent.path(SERVING, cert["name"], "fullchain.pem")) or {}
        certs.append(dict(name=cert["name"], mode=cert["mode"], serving=agent.read_state(cert["name"]).get("serving"), serial=info.get("serial"),
                          not_after=iso(info["not_after"]) if info else None, names=info.get("names")))
    return 0, dict(certs=certs)


# command -> (function, its flags, whether it takes certificate names, whether it writes)
COMMANDS = {"prepare": (cmd_prepare, {"--check"}, False, True), "obtain": (cmd_obtain, {"--check", "--reload"}, True, True),
            "renew": (cmd_renew, {"--force"}, False, True), "reload": (cmd_reload, set(), False, True), "status": (cmd_status, set(), False, False)}


def main(argv=None, root=None):
    argv = sys.argv[1:] if argv is None else argv
    agent = Agent(root or os.environ.get("ONEBOX_TLS_ROOT") or "/", check="--check" in argv)
    try:
        if not argv or argv[0] not in COMMANDS:
            raise ConfigError("usage: onebox-tls prepare|obtain|renew|reload|status [flags] (got %s)" % " ".join(argv))
        function, allowed, takes_names, writes = COMMANDS[argv[0]]
        flags, names = [a for a in argv[1:] if a.startswith("-")], [a for a in argv[1:] if not a.startswith("-")]
        if set(flags) - allowed or (names and not takes_names):
            takes = " ".join(sorted(allowed) + (["NAME..."] if takes_names else [])) or "no arguments"
            raise ConfigError("%s takes %s (got %s)" % (argv[0], takes, " ".join(argv[1:])))
        # A check-mode converge gives the configuration it would write: the file is still the old one.
        text = os.environ.get("ONEBOX_TLS_CONFIG") or read_text(agent.path(CONFIG))
        try:
            config = json.loads(text) if text is not None else None
        except ValueError as e:
            raise ConfigError("%s is not JSON: %s" % (CONFIG, e))
        problems = ["cannot be read"] if config is None else config_problems(config)
        if problems:
            raise ConfigError("%s: %s" % (CONFIG, "; ".join(problems)))
        with agent.lock() if writes and not agent.check else contextlib.nullcontext():
            status, result = function(agent, config, flags, names)
    except ConfigError as e:
        status, result = 2, dict(error=str(e))
        agent.log(str(e))
    except (Failure, OSError) as e:
        status, result = 1, dict(error=str(e))
        agent.log(str(e))
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())  # pylint: disable=ansible-bad-function
