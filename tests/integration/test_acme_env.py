"""The ACME test environment of tests/acme.py against the real parts: pebble and pebble-challtestsrv in
a network namespace, asked from inside the namespace (curl, DNS), from the host (a small ACME client
that gets a certificate over DNS-01) and from an LXD container of its own (as certbot in the proxy
container will). A missing part (pebble, openssl, curl, the image) fails, never skips.

Test traffic goes only to the namespaces made here and to the container made here.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

# acme_env and pebble are fixtures: imported, pytest finds them here.
from acme import Pebble, acme_env, forwarding_facts, pebble  # pylint: disable=unused-import
from netns import Netns
from nginx_env import launch


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class AcmeClient:
    """Just enough RFC 8555 to get a certificate for one name over DNS-01 (ES256 account key):
    exercises pebble's orders, its DNS lookups through challtestsrv and its issuance."""

    def __init__(self, server):
        self.server = server
        self.context = ssl.create_default_context(cadata=server.ca_pem)
        self.directory = json.loads(self._request(server.directory_url)[1])
        self.key = ec.generate_private_key(ec.SECP256R1())
        numbers = self.key.public_key().public_numbers()
        # members in lexicographic order, no spaces: the JWK thumbprint's form (RFC 7638)
        self.jwk = {"crv": "P-256", "kty": "EC", "x": b64(numbers.x.to_bytes(32, "big")),
                    "y": b64(numbers.y.to_bytes(32, "big"))}
        self.thumbprint = b64(hashlib.sha256(json.dumps(self.jwk, separators=(",", ":")).encode()).digest())
        self.kid = None
        self.nonce = None

    def _request(self, url, data=None, method=None):
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": "application/jose+json"} if data else {})
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=10) as response:
                return response.headers, response.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError("%s %s: %s %s" % (method or "GET", url, exc.code, exc.read().decode()))

    def post(self, url, payload):
        """A signed POST (``payload`` None: POST-as-GET); (headers, parsed or raw body)."""
        if self.nonce is None:
            self.nonce = self._request(self.directory["newNonce"], method="HEAD")[0]["Replay-Nonce"]
        protected = dict({"alg": "ES256", "nonce": self.nonce, "url": url},
                         **({"kid": self.kid} if self.kid else {"jwk": self.jwk}))
        body = {"protected": b64(json.dumps(protected).encode()),
                "payload": "" if payload is None else b64(json.dumps(payload).encode())}
        r, s = decode_dss_signature(self.key.sign(("%s.%s" % (body["protected"], body["payload"])).encode(),
                                                  ec.ECDSA(hashes.SHA256())))
        body["signature"] = b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
        headers, data = self._request(url, json.dumps(body).encode(), "POST")
        self.nonce = headers["Replay-Nonce"]
        return headers, (json.loads(data) if headers.get_content_type() == "application/json" else data)

    def poll(self, url, want, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            current = self.post(url, None)[1]
            if current["status"] == want:
                return current
            assert current["status"] not in ("invalid", "deactivated", "revoked", "expired"), current
            assert time.monotonic() < deadline, "still %s after %ss: %r" % (current["status"], timeout, current)
            time.sleep(0.2)

    def issue_dns01(self, name):
        """The PEM chain pebble issues for ``name`` (and the key's PEM): account, order, the TXT
        record set in challtestsrv, validation, finalization."""
        headers, _account = self.post(self.directory["newAccount"], {"termsOfServiceAgreed": True})
        self.kid = headers["Location"]
        headers, order = self.post(self.directory["newOrder"], {"identifiers": [{"type": "dns", "value": name}]})
        order_url = headers["Location"]
        authz_url = order["authorizations"][0]
        challenge = next(c for c in self.post(authz_url, None)[1]["challenges"] if c["type"] == "dns-01")
        key_authorization = "%s.%s" % (challenge["token"], self.thumbprint)
        self.server.set_txt("_acme-challenge.%s" % name, b64(hashlib.sha256(key_authorization.encode()).digest()))
        self.post(challenge["url"], {})
        self.poll(authz_url, "valid")
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
               .sign(key, hashes.SHA256()))
        self.post(order["finalize"], {"csr": b64(csr.public_bytes(serialization.Encoding.DER))})
        order = self.poll(order_url, "valid")
        return self.post(order["certificate"], None)[1].decode()


def verify(chain_pem, roots_pem, directory):
    """openssl verify of the chain's first certificate against ``roots_pem`` (the rest as
    intermediates): (exit code, output)."""
    certs = x509.load_pem_x509_certificates(chain_pem.encode())
    paths = {}
    for name, text in (("roots.pem", roots_pem),
                       ("leaf.pem", certs[0].public_bytes(serialization.Encoding.PEM).decode()),
                       ("chain.pem", "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs[1:]))):
        paths[name] = os.path.join(directory, name)
        with open(paths[name], "w") as handle:
            handle.write(text)
    proc = subprocess.run(["openssl", "verify", "-CAfile", paths["roots.pem"], "-untrusted", paths["chain.pem"],
                           paths["leaf.pem"]], capture_output=True, text=True, timeout=30, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def test_directory_answers_over_https_verified_in_the_namespace(acme_env):
    ns, server = acme_env
    proc = ns.run(["curl", "-sS", "--fail", "--cacert", server.ca_file, server.directory_url], timeout=15)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["newOrder"].startswith("https://%s:14000/" % ns.address)
    with open(server.ca_file) as handle:
        assert handle.read() == server.ca_pem
    # Verification is real: without the test CA curl refuses the certificate (60: peer certificate
    # cannot be authenticated), and the certificate names the address, not a host name.
    proc = ns.run(["curl", "-sS", server.directory_url], timeout=15)
    assert proc.returncode == 60, (proc.returncode, proc.stderr)
    proc = ns.run(["curl", "-sS", "--cacert", server.ca_file, "--resolve", "acme.test:14000:%s" % ns.address,
                   "https://acme.test:14000/dir"], timeout=15)
    assert proc.returncode == 60, (proc.returncode, proc.stderr)


def test_every_name_resolves_to_the_host_end_of_the_veth(acme_env):
    ns, server = acme_env
    for name in ("example.test", "www.example.test", "a.b.c.example.org"):
        assert server.resolve(name) == [ns.host_address]
    assert server.resolve("example.test", "AAAA") == []  # -defaultIPv6 "": pebble tries IPv4 only
    server.set_default_ipv4("198.18.0.1")
    try:
        assert server.resolve("example.test") == ["198.18.0.1"]
    finally:
        server.set_default_ipv4(ns.host_address)
    assert server.resolve("example.test") == [ns.host_address]


def test_txt_records_come_and_go(acme_env):
    _ns, server = acme_env
    server.set_txt("_acme-challenge.txt.example.test", "first")
    server.set_txt("_acme-challenge.txt.example.test.", "second")  # the trailing dot is optional
    assert sorted(server.resolve("_acme-challenge.txt.example.test", "TXT")) == ["first", "second"]
    server.clear_txt("_acme-challenge.txt.example.test")
    assert server.resolve("_acme-challenge.txt.example.test", "TXT") == []


# Run by the image's python3 in the container: what certbot (pebble's directory, verified against
# the CA bundle it is given) and the DNS-01 hook (a POST to challtestsrv) do there.
CONTAINER_CLIENT = r'''
import json, ssl, sys, urllib.error, urllib.request
directory_url, challtestsrv_url, cafile, host, value = sys.argv[1:6]
with urllib.request.urlopen(directory_url, context=ssl.create_default_context(cafile=cafile), timeout=10) as resp:
    directory = json.load(resp)
try:
    urllib.request.urlopen(directory_url, context=ssl.create_default_context(), timeout=10)
    refused = None
except urllib.error.URLError as exc:
    refused = exc.reason.verify_message  # (an SSLCertVerificationError, or this line fails)
request = urllib.request.Request(challtestsrv_url + "/set-txt", method="POST",
                                 data=json.dumps({"host": host, "value": value}).encode())
with urllib.request.urlopen(request, timeout=10) as resp:
    status = resp.status
print(json.dumps({"newOrder": directory["newOrder"], "refused_without_ca": refused, "set_txt": status}))
'''


def test_a_container_reaches_pebble_and_challtestsrv(acme_env, lxd, instance_names):
    ns, server = acme_env
    name = instance_names("acme")
    launch(lxd, name)
    lxd.push_file(name, "/root/acme-ca.pem", server.ca_pem)
    result = lxd.exec(name, ["python3", "-c", CONTAINER_CLIENT, server.directory_url, server.challtestsrv_url,
                             "/root/acme-ca.pem", "_acme-challenge.from-container.example.test.", "hook-value"],
                      timeout=60)
    assert result.rc == 0 and result.stdout.strip(), (
        "the container did not reach %s (rc %s): %s\nforwarding: %s"
        % (ns.address, result.rc, result.stderr[-2000:], json.dumps(forwarding_facts(ns), indent=1)))
    answer = json.loads(result.stdout)
    assert answer["newOrder"] == "https://%s:14000/order-plz" % ns.address
    assert answer["refused_without_ca"], answer  # the container's own trust store does not know the test CA
    assert answer["set_txt"] == 200
    assert server.resolve("_acme-challenge.from-container.example.test", "TXT") == ["hook-value"]


def test_dns01_issuance_counted_and_chained_to_this_runs_root(pebble, tmp_path):
    assert pebble.orders() == [] and pebble.issued_serials() == []
    chain = AcmeClient(pebble).issue_dns01("dns01.example.test")
    leaf = x509.load_pem_x509_certificates(chain.encode())[0]
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["dns01.example.test"]
    assert len(pebble.orders()) == 1
    assert [int(serial, 16) for serial in pebble.issued_serials()] == [leaf.serial_number]
    roots = pebble.issuer_roots_pem()
    assert verify(chain, roots, str(tmp_path)) == (0, "%s: OK\n" % (tmp_path / "leaf.pem"))
    # ...and not against the test CA of pebble's own HTTPS certificate
    assert verify(chain, pebble.ca_pem, str(tmp_path))[0] != 0


def test_stop_takes_the_acme_server_down_and_start_brings_a_new_ca(pebble, tmp_path):
    chain = AcmeClient(pebble).issue_dns01("before.example.test")
    old_roots = pebble.issuer_roots_pem()
    pid = pebble.pid
    challtestsrv_pid = pebble.challtestsrv_pid
    pebble.stop()
    assert not pebble.running and not os.path.exists("/proc/%d" % pid)
    proc = pebble.ns.run(["curl", "-sS", "--cacert", pebble.ca_file, pebble.directory_url], timeout=15)
    assert proc.returncode == 7, (proc.returncode, proc.stderr)  # 7: connection refused
    assert pebble.resolve("example.test") == [pebble.ns.host_address]  # challtestsrv stays up
    pebble.start()
    assert pebble.running and pebble.challtestsrv_pid == challtestsrv_pid
    new_roots = pebble.issuer_roots_pem()
    assert new_roots != old_roots
    assert verify(chain, new_roots, str(tmp_path))[0] != 0  # issued under the old root
    AcmeClient(pebble).issue_dns01("after.example.test")
    assert len(pebble.orders()) == 2 and len(pebble.issued_serials()) == 2  # the log spans both runs


def test_close_ends_both_processes_and_removes_its_files():
    with Netns("acme") as ns:
        with Pebble(ns) as server:
            pids, directory = (server.pid, server.challtestsrv_pid), server.dir
            for pid, program in zip(pids, ("pebble", "pebble-challtestsrv")):
                with open("/proc/%d/comm" % pid) as handle:
                    assert handle.read().strip() == program[:15]
        for pid in pids:
            assert not os.path.exists("/proc/%d" % pid)
        assert not os.path.exists(directory)
