"""HTTPS of a box against the real thing: certbot in the proxy container gets its certificates from
Debian's pebble (an ACME server in a client namespace, tests/acme.py) over real HTTP-01 (through the
host's DNAT of port 80) and DNS-01 (a hook in the proxy that sets TXT records at pebble's DNS); the
client in that namespace checks every answer as a browser would, against pebble's root.

The box has its own owner, proxy, chains and files; it forwards 80 and 443, so no other box may
(the example box is torn down before the suite, as Molecule leaves it)."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import time

import pytest

from acme import acme_env  # noqa: F401  pylint: disable=unused-import
from conftest import RUN_PREFIX, run_module

OWNER = "%s-tls" % RUN_PREFIX
PROXY = "%s-tl-proxy" % RUN_PREFIX
SITE = "%s-tl-site" % RUN_PREFIX
WILD = "%s-tl-wild" % RUN_PREFIX
OWN = "%s-tl-own" % RUN_PREFIX
SELF = "%s-tl-self" % RUN_PREFIX
PREFIX = "OBT%s" % RUN_PREFIX[1:].upper()
DOMAINS = ["site.tls.test", "www.tls.test"]
AGENT = "/usr/local/sbin/onebox-tls"

HOOK = """#!/usr/bin/python3
# DNS-01 at pebble's mock DNS: certbot gives the name and the value in the environment.
import json, os, urllib.request
body = {"host": "_acme-challenge.%%s." %% os.environ["CERTBOT_DOMAIN"]}
if "%(verb)s" == "set-txt":
    body["value"] = os.environ["CERTBOT_VALIDATION"]
request = urllib.request.Request("%(url)s/%(verb)s", data=json.dumps(body).encode(), method="POST")
urllib.request.urlopen(request, timeout=10).read()
"""

# One TLS request from the namespace: connect to the host, SNI NAME, verified against CAFILE
# ("-": not verified); prints JSON: the certificate (DER, hex), the ALPN chosen, the status line,
# or the error.
PROBE = r"""
import json, socket, ssl, sys
host, name, cafile = sys.argv[1], sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=cafile) if cafile != "-" else ssl._create_unverified_context()
ctx.set_alpn_protocols(["h2", "http/1.1"])
try:
    with socket.create_connection((host, 443), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname=name) as tls:
        der = tls.getpeercert(binary_form=True)
        out = {"der": der.hex() if der else None, "alpn": tls.selected_alpn_protocol()}
    print(json.dumps(out))
except Exception as exc:
    print(json.dumps({"error": "%s: %s" % (type(exc).__name__, exc)}))
"""

# Requests over new connections for SECONDS: how many failed, and the serials seen, in order.
LOOP = r"""
import json, socket, ssl, sys, time
host, name, cafile, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
ctx = ssl.create_default_context(cafile=cafile)
ok, failed, serials, errors = 0, 0, [], []
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        with socket.create_connection((host, 443), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname=name) as tls:
            tls.sendall(("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % name).encode())
            status = tls.recv(64).split(b"\r\n")[0]
            serial = ssl.DER_cert_to_PEM_cert(tls.getpeercert(True))
        if not status.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(status)
        ok += 1
        if not serials or serials[-1] != serial:
            serials.append(serial)
    except Exception as exc:
        failed += 1
        errors.append(str(exc))
print(json.dumps({"ok": ok, "failed": failed, "certs": serials, "errors": errors[:5]}))
"""


def openssl(*args, data=None):
    return subprocess.run(["openssl"] + list(args), input=data, capture_output=True, timeout=30, check=True).stdout


def cert_facts(der_hex):
    """serial and names of a DER certificate given in hex."""
    text = openssl("x509", "-inform", "DER", "-noout", "-serial", "-ext", "subjectAltName",
                   data=bytes.fromhex(der_hex)).decode()
    serial = text.split("serial=", 1)[1].split()[0]
    names = sorted(part.strip()[4:] for part in text.split("Alternative Name:", 1)[1].split(",") if "DNS:" in part)
    return serial, names


def provided_pair(tmp):
    """A certificate for own.tls.test from a CA of the test's own: (ca, chain, key) PEM texts."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
            "-subj", "/CN=onebox test provided CA", "-keyout", str(tmp / "ca.key"), "-out", str(tmp / "ca.pem"))
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=own.tls.test",
            "-keyout", str(tmp / "own.key"), "-out", str(tmp / "own.csr"))
    (tmp / "ext").write_text("subjectAltName=DNS:own.tls.test\n")
    openssl("x509", "-req", "-in", str(tmp / "own.csr"), "-CA", str(tmp / "ca.pem"), "-CAkey", str(tmp / "ca.key"),
            "-CAcreateserial", "-days", "2", "-extfile", str(tmp / "ext"), "-out", str(tmp / "own.pem"))
    return (tmp / "ca.pem").read_text(), (tmp / "own.pem").read_text(), (tmp / "own.key").read_text()


class Env:
    """The namespace, pebble, the files the client trusts, the module's arguments."""

    def __init__(self, ns, acme, tmp):
        self.ns, self.acme, self.tmp = ns, acme, tmp
        self.roots = tmp / "roots.pem"
        self.trust_roots()
        self.provided_ca, chain, key = provided_pair(tmp)
        (tmp / "provided-ca.pem").write_text(self.provided_ca)
        static = {"kind": "static", "files": [{"path": "/var/www/html/index.html", "content": "tls page\n"}]}
        hooks = {"auth_hook": HOOK % {"verb": "set-txt", "url": acme.challtestsrv_url},
                 "cleanup_hook": HOOK % {"verb": "clear-txt", "url": acme.challtestsrv_url}}
        self.args = {
            "owner": OWNER, "proxy": {"name": PROXY},
            "services": [dict(static, name=SITE, domains=DOMAINS),
                         dict(static, name=WILD, domains=["*.wild.tls.test"]),
                         dict(static, name=OWN, domains=["own.tls.test"],
                              tls={"mode": "provided", "certificate": chain, "key": key}),
                         dict(static, name=SELF, domains=["self.tls.test"], tls="self_signed")],
            "tls": {"email": "admin@tls.test", "directory": acme.directory_url, "ca_bundle": acme.ca_pem,
                    "hsts_max_age": 600, "dns": hooks},
            "forwards": {"chain_prefix": PREFIX, "save_path": str(tmp / "dnat.rules"),
                         "restore_script": str(tmp / "restore"), "sysctl_file": str(tmp / "ip_forward.conf")}}

    def trust_roots(self):
        """Pebble's current root(s) added to what the client trusts (a restart makes a new one;
        what was issued before chains to the old)."""
        known = self.roots.read_text() if self.roots.exists() else ""
        fresh = self.acme.issuer_roots_pem()
        if fresh not in known:
            self.roots.write_text(known + fresh)

    def probe(self, name, cafile=None):
        out = self.ns.run([sys.executable, "-c", PROBE, self.ns.host_address, name,
                           str(cafile or self.roots)], timeout=20).stdout
        return json.loads(out)

    def curl(self, *args, port=443, name=DOMAINS[0]):
        scheme = "https" if port == 443 else "http"
        argv = ["curl", "-sS", "--max-time", "10", "--resolve", "%s:%d:%s" % (name, port, self.ns.host_address),
                "--cacert", str(self.roots)] + list(args) + ["%s://%s/" % (scheme, name)]
        return self.ns.run(argv, timeout=20)

    def agent(self, *args, timeout=300):
        return subprocess.run(["lxc", "exec", PROXY, "--", AGENT] + list(args), capture_output=True, text=True,
                              timeout=timeout, check=False)

    def serving_serial(self, name=DOMAINS[0]):
        return cert_facts(self.probe(name)["der"])[0]


@pytest.fixture(scope="module")
def env(acme_env, tmp_path_factory):  # noqa: F811  pylint: disable=redefined-outer-name
    ns, acme = acme_env
    return Env(ns, acme, tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def built(env, lxd):
    """Check mode on nothing, then the box for real; at the end torn down with its volume purged."""
    predicted = run_module("box", env.args, check=True, diff=True)
    volume_after_check = lxd.volume("default", PROXY + "-tls")
    started = time.monotonic()
    result = run_module("box", env.args, timeout=900)
    seconds = time.monotonic() - started
    try:
        yield {"predicted": predicted, "volume_after_check": volume_after_check, "result": result, "seconds": seconds,
               "orders": len(env.acme.orders())}
    finally:
        kept = run_module("box", dict(env.args, state="absent", services=None, tls=None))
        assert not kept.get("failed"), kept
        assert lxd.volume("default", PROXY + "-tls") is not None   # a teardown keeps the certificates
        purged = run_module("box", dict(env.args, state="absent", services=None, tls=None, purge=True))
        assert [(v["name"], v["action"]) for v in purged["volumes"]] == [(PROXY + "-tls", "delete")]
        assert lxd.volume("default", PROXY + "-tls") is None


def test_check_mode_names_the_certificates_it_would_request_and_changes_nothing(built):
    predicted = built["predicted"]
    assert predicted["changed"] and not predicted.get("failed"), predicted
    actions = {c["name"]: (c["mode"], c["action"]) for c in predicted["certificates"]}
    assert actions == {"site.tls.test": ("acme", "requested"), "www.tls.test": ("acme", "requested"),
                       "_wildcard.wild.tls.test": ("acme", "requested"), "own.tls.test": ("provided", "none"),
                       "self.tls.test": ("self_signed", "none")}
    assert predicted["volumes"] == [{"name": PROXY + "-tls", "pool": "default", "service": None, "action": "create"}]
    assert built["volume_after_check"] is None


def test_converges_with_a_certificate_for_every_acme_domain(built):
    result = built["result"]
    assert result["changed"] and not result.get("failed"), result
    assert not [w for w in result.get("warnings", []) if "not obtained" in w], result["warnings"]
    served = {c["name"]: (c["serving"], c["action"]) for c in result["certificates"]}
    assert served["site.tls.test"] == served["www.tls.test"] == served["_wildcard.wild.tls.test"] == ("acme", "obtained")
    assert built["orders"] == 3


@pytest.mark.parametrize("name, names", [("site.tls.test", ["site.tls.test"]), ("www.tls.test", ["www.tls.test"]),
                                         ("a.wild.tls.test", ["*.wild.tls.test"])])
def test_https_answers_with_a_certificate_of_its_names_chained_to_pebbles_root(built, env, name, names):
    answer = env.probe(name)
    assert "error" not in answer, answer          # verified against pebble's root, for this name
    assert cert_facts(answer["der"])[1] == names
    assert answer["alpn"] == "h2"


def test_provided_and_self_signed_certificates_are_served(built, env):
    own = env.probe("own.tls.test", cafile=env.tmp / "provided-ca.pem")
    assert "error" not in own, own
    assert cert_facts(own["der"])[1] == ["own.tls.test"]
    assert "CERTIFICATE_VERIFY_FAILED" in env.probe("self.tls.test")["error"]   # nobody's CA signed it
    mine = env.probe("self.tls.test", cafile="-")
    assert cert_facts(mine["der"])[1] == ["self.tls.test"]


def test_http_redirects_to_https_except_the_challenge_and_https_sends_hsts_over_h2(built, env):
    plain = env.curl("-D", "-", "-o", "/dev/null", port=80)
    assert plain.stdout.startswith("HTTP/1.1 301") and "Location: https://site.tls.test/" in plain.stdout, plain
    challenge = env.ns.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--resolve",
                            "site.tls.test:80:%s" % env.ns.host_address,
                            "http://site.tls.test/.well-known/acme-challenge/nothing-here"], timeout=20)
    assert challenge.stdout == "404"  # answered from the webroot, not redirected
    secure = env.curl("--http2", "-D", "-", "-w", "\n%{http_version}")
    assert secure.returncode == 0, secure.stderr
    assert secure.stdout.startswith("HTTP/2 200") and secure.stdout.rstrip().endswith("\n2")
    assert "strict-transport-security: max-age=600\n" in secure.stdout.lower()  # exactly: no includeSubDomains
    assert "tls page" in secure.stdout


def test_an_unknown_name_gets_no_certificate(built, env):
    answer = env.probe("unknown.tls.test", cafile="-")
    assert "error" in answer and "der" not in answer, answer


def test_a_second_converge_changes_nothing_and_orders_nothing(built, env):
    again = run_module("box", env.args, timeout=600)
    assert not again["changed"] and not again.get("failed"), again
    assert all(c["action"] == "none" for c in again["certificates"])
    assert len(env.acme.orders()) == built["orders"]


def test_a_new_domain_gets_its_own_certificate_and_a_removed_one_leaves(built, env):
    serial, orders = env.serving_serial(), len(env.acme.orders())
    services = copy.deepcopy(env.args["services"])
    services[0]["domains"] = DOMAINS + ["new.tls.test"]
    predicted = run_module("box", dict(env.args, services=services), check=True, diff=True, timeout=600)
    assert not predicted.get("failed"), predicted
    assert {c["name"]: c["action"] for c in predicted["certificates"] if c["action"] != "none"} == {"new.tls.test": "requested"}
    assert any(d["after_header"].startswith("certificates in") and "new.tls.test: acme (requested)" in d["after"]
               for d in predicted["diff"])
    assert len(env.acme.orders()) == orders and "error" in env.probe("new.tls.test", cafile="-")   # nothing changed
    added = run_module("box", dict(env.args, services=services), timeout=600)
    assert not added.get("failed"), added
    assert len(env.acme.orders()) == orders + 1              # the new name's, and no other
    assert env.serving_serial() == serial
    assert cert_facts(env.probe("new.tls.test")["der"])[1] == ["new.tls.test"]
    removed = run_module("box", env.args, timeout=600)
    assert removed["changed"] and not removed.get("failed"), removed
    assert "new.tls.test" not in [c["name"] for c in removed["certificates"]]
    assert "error" in env.probe("new.tls.test", cafile="-")  # its site and certificate are gone: no handshake
    left = subprocess.run(["lxc", "exec", PROXY, "--", "sh", "-c", "ls /etc/nginx/onebox-tls; ls -R /etc/letsencrypt"],
                          capture_output=True, text=True, timeout=30, check=True).stdout
    assert "new.tls.test" not in left


def test_a_recreated_proxy_serves_the_same_certificates_without_a_new_order(built, env):
    serial, orders = env.serving_serial(), len(env.acme.orders())
    subprocess.run(["lxc", "delete", "--force", PROXY], check=True, timeout=120, capture_output=True)
    result = run_module("box", env.args, timeout=900)
    assert result["changed"] and not result.get("failed"), result
    assert env.serving_serial() == serial
    assert len(env.acme.orders()) == orders


def test_a_forced_renewal_serves_a_new_certificate_with_no_failed_request(built, env):
    before = env.serving_serial()
    loop = subprocess.Popen(["ip", "netns", "exec", env.ns.name, sys.executable, "-c", LOOP, env.ns.host_address,
                             DOMAINS[0], str(env.roots), "12"], stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    started = time.monotonic()
    renew = env.agent("renew", "--force")
    renewed = time.monotonic() - started
    out = loop.communicate(timeout=60)[0]
    counts = json.loads(out)
    assert renew.returncode == 0, renew.stderr
    assert counts["failed"] == 0 and counts["ok"] > 10, counts
    assert len(counts["certs"]) == 2, counts          # the old certificate, then the new one
    assert env.serving_serial() != before
    print("renewal of 3 certificates, start to served: %.1f s" % renewed)


def test_a_domain_whose_dns_is_not_ready_answers_with_a_placeholder_until_the_timer_gets_it(built, env):
    services = copy.deepcopy(env.args["services"])
    services[0]["domains"] = DOMAINS + ["late.tls.test"]
    # The name does not point at the box yet: the CA's HTTP-01 request goes where nothing answers.
    env.acme.set_default_ipv4(env.ns.address)
    try:
        converged = run_module("box", dict(env.args, services=services), timeout=600)
    finally:
        env.acme.set_default_ipv4(env.ns.host_address)
    assert not converged.get("failed"), converged          # a warning, not a failed converge
    assert any("late.tls.test not obtained" in w for w in converged.get("warnings", [])), converged.get("warnings")
    late = {c["name"]: c for c in converged["certificates"]}["late.tls.test"]
    assert (late["serving"], late["action"]) == ("placeholder", "failed")
    placeholder = env.probe("late.tls.test", cafile="-")    # HTTPS answers already, with the placeholder
    assert cert_facts(placeholder["der"])[1] == ["late.tls.test"]
    assert "CERTIFICATE_VERIFY_FAILED" in env.probe("late.tls.test")["error"]
    renew = env.agent("renew")                              # what the timer runs, nobody running Ansible
    assert renew.returncode == 0, renew.stderr
    # nginx's reload is a signal: its new workers take over within moments of the agent's return.
    deadline = time.monotonic() + 5
    while "error" in env.probe("late.tls.test") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "error" not in env.probe("late.tls.test"), renew.stdout + renew.stderr
    again = run_module("box", dict(env.args, services=services), timeout=600)
    assert not again["changed"], again


def test_with_the_acme_server_down_a_renewal_keeps_the_old_certificate_and_says_why(built, env):
    before = env.serving_serial()
    env.acme.stop()
    try:
        renew = env.agent("renew", "--force")
        log = subprocess.run(["lxc", "exec", PROXY, "--", "tail", "-n", "20", "/var/log/onebox-tls.log"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    finally:
        env.acme.start()
        env.trust_roots()
    assert renew.returncode == 1
    failed = [line for line in log.splitlines() if "renewal of site.tls.test failed" in line]
    assert len(failed) == 1 and "keeps serving" in failed[0], log
    assert env.serving_serial() == before
