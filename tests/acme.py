"""A real ACME server "on the internet" for HTTPS tests: Debian's pebble and pebble-challtestsrv run
inside a client network namespace (tests/netns.py), as Let's Encrypt sits outside the host.

    with Netns("acme") as ns, Pebble(ns) as acme:     # or the ``pebble`` / ``acme_env`` fixtures
        acme.directory_url          # https://NSADDR:14000/dir, what the box's config names
        acme.ca_pem                 # the CA of pebble's own HTTPS certificate (the box's "CA bundle")
        acme.issuer_roots_pem()     # the root(s) that pebble's issued certificates chain to
        acme.issued_serials()       # certificates issued so far (from pebble's log)

What runs where:
  pebble            ns.address:14000 (ACME) and :15000 (management), over HTTPS with a certificate
                    for IP ns.address signed by a CA made here with openssl (``ca_pem``). It
                    validates HTTP-01 on port 80 and TLS-ALPN-01 on 443 of the address every name
                    resolves to.
  challtestsrv      mock DNS on :8053 of the namespace (pebble's only resolver), answering every A
                    query with ``ns.host_address`` - the host's end of the veth, where the host's
                    DNAT sends 80/443 on to the proxy container - and no AAAA. Its management API on
                    :8055 of the namespace (http://NSADDR:8055/) takes ``set-txt``/``clear-txt`` from
                    the DNS-01 hook in the proxy container. Its own challenge listeners are off.

Pebble keeps nothing between runs: every start makes a new root CA (and intermediate), forgets
every account, order and authorization. A test that stops and starts it (``stop()``/``start()``,
the ACME server "down" and back) must fetch ``issuer_roots_pem()`` again afterwards; certificates
issued before the restart chain to the old root. The log (``orders()``, ``issued_serials()``) is
kept across restarts, so counts cover the object's whole life.

Containers reach the namespace with nothing arranged here (found on this machine: Debian 12,
LXD 5.0.2, a box converged beside): a container's packet to NSADDR comes in on lxdbr0, the host
routes it out of the veth (it owns the /30), and LXD's own nftables rule
(``ip saddr <bridge subnet> ip daddr != <bridge subnet> masquerade``) rewrites its source to
``ns.host_address`` - pebble sees the host's end of the veth as the peer - and the answer comes back
over the veth (the namespace's default route is the host, so it would even without the masquerade).
What that takes is already there: IPv4 forwarding on lxdbr0 and on the veth (LXD turns
``ip_forward`` on for a NAT bridge, and a new veth inherits it), FORWARD chains that accept (the
policy is ACCEPT, LXD's ``fwd.<bridge>`` accepts in and out of its bridge, and a box's isolation rule
drops only *new* connections into the bridge, which the answers are not). So the fixtures change no
host-wide setting; ``forwarding_facts()`` reads these conditions for a failing test's message.

Every process is started here and stopped by its PID; test traffic goes only to the namespace.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

from netns import Netns

ACME_PORT = 14000
MANAGEMENT_PORT = 15000
DNS_PORT = 8053
CHALLTESTSRV_PORT = 8055

# Extensions of pebble's HTTPS certificate. With the CA's (basic constraints and key usage, both
# critical) and key identifiers on both, a strict verifier (Python 3.13's VERIFY_X509_STRICT) takes
# the chain too, not only the python3 and certbot of Debian 12.
SERVER_EXTENSIONS = """basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = IP:%s
"""

# A DNS client of a few lines, run inside the namespace: one UDP query, the answers' data as a JSON
# list (A, AAAA: addresses; TXT: the record's strings joined), as pebble's resolver would see them.
DNS_QUERY = r"""
import json, random, socket, struct, sys
server, port, name, qtype = sys.argv[1], int(sys.argv[2]), sys.argv[3], {"A": 1, "AAAA": 28, "TXT": 16}[sys.argv[4]]
ident = random.getrandbits(16)
question = b"".join(bytes([len(label)]) + label.encode() for label in name.rstrip(".").split(".")) + b"\0"
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(3)
sock.sendto(struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question + struct.pack("!HH", qtype, 1), (server, port))
data = sock.recv(4096)
if struct.unpack("!H", data[:2])[0] != ident:
    raise SystemExit("answer to another query")
count, at, out = struct.unpack("!H", data[6:8])[0], 12 + len(question) + 4, []

def skip_name(at):
    while data[at] and data[at] < 0xC0:
        at += 1 + data[at]
    return at + (2 if data[at] >= 0xC0 else 1)

for _ in range(count):
    at = skip_name(at)
    rtype, _class, _ttl, length = struct.unpack("!HHIH", data[at:at + 10])
    rdata, at = data[at + 10:at + 10 + length], at + 10 + length
    if rtype in (1, 28):
        out.append(socket.inet_ntop(socket.AF_INET if rtype == 1 else socket.AF_INET6, rdata))
    elif rtype == 16:
        parts, i = [], 0
        while i < len(rdata):
            parts.append(rdata[i + 1:i + 1 + rdata[i]].decode())
            i += 1 + rdata[i]
        out.append("".join(parts))
print(json.dumps(out))
"""

ADDED_ORDER = re.compile(r'Added order "([^"]+)" to the db')
ISSUED = re.compile(r"Issued certificate serial (\S+) for order (\S+)")


def _openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, capture_output=True, timeout=60)


def make_tls_files(directory, address):
    """A test CA and a certificate for IP ``address`` signed by it, in ``directory``:
    (ca.pem, server.pem, server.key) paths. EC keys: made in milliseconds."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "7",
             "-subj", "/CN=onebox test ACME server CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=directory)
    _openssl("req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=%s" % address,
             cwd=directory)
    with open(os.path.join(directory, "server.ext"), "w") as handle:
        handle.write(SERVER_EXTENSIONS % address)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "7", "-extfile", "server.ext", "-out", "server.pem", cwd=directory)
    return tuple(os.path.join(directory, name) for name in ("ca.pem", "server.pem", "server.key"))


def forwarding_facts(ns, bridge="lxdbr0"):
    """What a container's packets to the namespace depend on (the module docstring), read from the
    host, for a failing test's message: IPv4 forwarding on the two interfaces the packets come in
    on, the policy of iptables' FORWARD chain, and LXD's masquerade of the bridge's traffic."""
    def read(argv):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        return (proc.stdout or proc.stderr).strip()

    facts = {}
    for link in (bridge, ns.host_link):
        key = "net.ipv4.conf.%s.forwarding" % link
        facts[key] = read(["sysctl", "-n", key])
    facts["iptables FORWARD policy"] = read(["iptables", "-S", "FORWARD"]).splitlines()[0]
    facts["LXD's masquerade"] = read(["nft", "list", "chain", "inet", "lxd", "pstrt.%s" % bridge])
    return facts


class Pebble:
    """pebble + pebble-challtestsrv in ``ns``. ``start()`` runs both (challtestsrv once), ``stop()``
    ends pebble only, ``close()`` ends both and removes the files. A context manager too.

    ``authz_reuse`` is pebble's PEBBLE_AUTHZREUSE, the percentage of new orders that reuse a valid
    authorization instead of validating again (pebble's default is 50): 0 makes every order
    validate, so a test that breaks the challenge answer sees the failure every time.
    ``alternate_roots`` is PEBBLE_ALTERNATE_ROOTS (extra root chains pebble offers)."""

    def __init__(self, ns, authz_reuse=0, alternate_roots=0):
        self.ns = ns
        self.authz_reuse = authz_reuse
        self.alternate_roots = alternate_roots
        self.dir = tempfile.mkdtemp(prefix="onebox-pebble-")
        self.ca_file, self.cert_file, self.key_file = make_tls_files(self.dir, ns.address)
        with open(self.ca_file) as handle:
            self.ca_pem = handle.read()
        self.config_file = os.path.join(self.dir, "pebble-config.json")
        with open(self.config_file, "w") as handle:
            json.dump({"pebble": {
                "listenAddress": "%s:%d" % (ns.address, ACME_PORT),
                "managementListenAddress": "%s:%d" % (ns.address, MANAGEMENT_PORT),
                "certificate": self.cert_file,
                "privateKey": self.key_file,
                "httpPort": 80,
                "tlsPort": 443,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }}, handle, indent=2)
        self.log_file = os.path.join(self.dir, "pebble.log")
        self.challtestsrv_log_file = os.path.join(self.dir, "challtestsrv.log")
        self.directory_url = "https://%s:%d/dir" % (ns.address, ACME_PORT)
        self.management_url = "https://%s:%d" % (ns.address, MANAGEMENT_PORT)
        self.challtestsrv_url = "http://%s:%d" % (ns.address, CHALLTESTSRV_PORT)
        self._context = ssl.create_default_context(cadata=self.ca_pem)
        self._pebble = None
        self._challtestsrv = None

    # ---- processes ------------------------------------------------------------------------------
    def _spawn(self, argv, log_file, env=None):
        # ``ip netns exec`` execs the program in place (no fork), so the PID is the server's own.
        with open(log_file, "a") as log:
            return subprocess.Popen(["ip", "netns", "exec", self.ns.name] + argv, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    @property
    def running(self):
        return self._pebble is not None and self._pebble.poll() is None

    @property
    def pid(self):
        """pebble's PID (None while stopped)."""
        return self._pebble.pid if self._pebble is not None else None

    @property
    def challtestsrv_pid(self):
        return self._challtestsrv.pid if self._challtestsrv is not None else None

    def start(self, timeout=30):
        """Start challtestsrv (unless it runs) and pebble (unless it runs); return when pebble's
        directory answers over verified HTTPS. Returns self."""
        if self._challtestsrv is None or self._challtestsrv.poll() is not None:
            self._challtestsrv = self._spawn([
                "pebble-challtestsrv", "-defaultIPv4", self.ns.host_address, "-defaultIPv6", "",
                "-dns01", ":%d" % DNS_PORT, "-management", ":%d" % CHALLTESTSRV_PORT,
                "-http01", "", "-https01", "", "-tlsalpn01", ""], self.challtestsrv_log_file)
        if not self.running:
            env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0",
                       PEBBLE_AUTHZREUSE=str(self.authz_reuse), PEBBLE_ALTERNATE_ROOTS=str(self.alternate_roots))
            # -strict=false said out loud: pebble's README warns that its default will change.
            self._pebble = self._spawn(["pebble", "-config", self.config_file, "-strict=false",
                                        "-dnsserver", "127.0.0.1:%d" % DNS_PORT], self.log_file, env)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            for name, proc in (("pebble", self._pebble), ("pebble-challtestsrv", self._challtestsrv)):
                if proc.poll() is not None:
                    raise AssertionError("%s exited %s:\n%s" % (name, proc.returncode, self.log_text()[-3000:]))
            try:
                json.loads(self._get(self.directory_url, timeout=2))
                socket.create_connection((self.ns.address, CHALLTESTSRV_PORT), timeout=2).close()
                return
            except OSError as exc:
                last = exc
                time.sleep(0.05)
        raise AssertionError("pebble did not answer in %ss (%r):\n%s" % (timeout, last, self.log_text()[-3000:]))

    @staticmethod
    def _end(proc, timeout=10):
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)

    def stop(self):
        """Stop pebble (the ACME server goes away; challtestsrv keeps running). Its state, root CA
        included, is gone: the next ``start()`` is a new CA."""
        self._end(self._pebble)
        self._pebble = None

    def close(self):
        self.stop()
        self._end(self._challtestsrv)
        self._challtestsrv = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc):
        self.close()

    # ---- pebble ---------------------------------------------------------------------------------
    def _get(self, url, timeout=10):
        with urllib.request.urlopen(url, timeout=timeout, context=self._context) as response:
            return response.read().decode()

    def issuer_roots_pem(self):
        """PEM of the root(s) pebble issues under now (``/roots/0``, then one per alternate root):
        a client trusting this text validates the certificates this run of pebble issued."""
        return "".join(self._get("%s/roots/%d" % (self.management_url, index))
                       for index in range(1 + self.alternate_roots))

    @staticmethod
    def _read(path):
        if not os.path.exists(path):
            return ""
        with open(path) as handle:
            return handle.read()

    def log_text(self):
        """pebble's output so far (every run of it), then challtestsrv's."""
        return "%s\n%s" % (self._read(self.log_file), self._read(self.challtestsrv_log_file))

    def orders(self):
        """IDs of the orders pebble has taken (its log, across restarts), oldest first."""
        return ADDED_ORDER.findall(self._read(self.log_file))

    def issued_serials(self):
        """Hex serials of the certificates pebble has issued (its log, across restarts), oldest first."""
        return [serial for serial, _order in ISSUED.findall(self._read(self.log_file))]

    # ---- challtestsrv ---------------------------------------------------------------------------
    def _post_challtestsrv(self, path, body, timeout=10):
        request = urllib.request.Request("%s/%s" % (self.challtestsrv_url, path), data=json.dumps(body).encode(),
                                         method="POST")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()

    @staticmethod
    def _fqdn(host):
        return host if host.endswith(".") else host + "."

    def set_txt(self, host, value):
        """TXT ``value`` for ``host`` (e.g. "_acme-challenge.example.test"), as a DNS-01 hook does."""
        self._post_challtestsrv("set-txt", {"host": self._fqdn(host), "value": value})

    def clear_txt(self, host):
        self._post_challtestsrv("clear-txt", {"host": self._fqdn(host)})

    def resolve(self, name, qtype="A"):
        """What challtestsrv answers inside the namespace for ``name``: a list of addresses ("A",
        "AAAA") or of TXT values ("TXT")."""
        proc = self.ns.run([sys.executable, "-c", DNS_QUERY, "127.0.0.1", str(DNS_PORT), name, qtype], timeout=15)
        if proc.returncode != 0:
            raise AssertionError("DNS query for %s %s in %s failed: %s" % (qtype, name, self.ns.name, proc.stderr))
        return json.loads(proc.stdout)

    def set_default_ipv4(self, address):
        """Every name now resolves to ``address`` (start() sets ``ns.host_address``)."""
        self._post_challtestsrv("set-default-ipv4", {"ip": address})


@pytest.fixture
def pebble():
    """A namespace of its own and pebble in it, for one test (``pebble.ns`` is the namespace)."""
    with Netns("acme") as ns, Pebble(ns) as server:
        yield server


@pytest.fixture(scope="module")
def acme_env():
    """(netns, pebble) shared by a module's tests: a whole box is slow to build, so the tests of
    one box share one ACME server. A test that stops pebble starts it again before it ends."""
    with Netns("acme") as ns, Pebble(ns) as server:
        yield ns, server
