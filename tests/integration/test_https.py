"""The modules against a daemon over HTTPS, end to end: the daemon (LXD, or Incus with
ONEBOX_TEST_DAEMON=incus) listens on the host's end of a test network namespace's veth (a /30 of
198.18.0.0/15 that nothing routes), a client certificate made here is trusted, and lxd_instance's
life cycle and a box's converge, no-change run and teardown go through ``https://`` with the
daemon's own certificate pinned; the box answers a client in the namespace. A wrong pinned certificate and an untrusted client fail with what to do.

The daemon's listener and the trust entry are removed at the end (the listener set back to what it
was), even when a test fails."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from conftest import (CLI, DAEMON, DAEMON_DIR, RUN_PREFIX, TRUST_ADD, client_certificate, delete_instance_quietly,
                      run_module, run_playbook)
from netns import Netns

NAME = "%s-https" % RUN_PREFIX
ROLE_BOX = "%s-hs-role" % RUN_PREFIX
OWNER = "%s-hs" % RUN_PREFIX
WEB = "%s-hs-web" % RUN_PREFIX
PROXY = "%s-hs-proxy" % RUN_PREFIX
PREFIX = "OBH%s" % RUN_PREFIX[1:].upper()
PORT = random.randrange(20000, 29000)
WEB_PORT = PORT + 1
SERVER_CERT = "%s/server.crt" % DAEMON_DIR


def lxc(*argv, check=True):
    """The daemon's own command line (lxc or incus, see conftest)."""
    return subprocess.run([CLI] + list(argv), capture_output=True, text=True, timeout=60, check=check)


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """The daemon listening on the namespace's host address, the client certificate trusted:
    the connection options of a module (lxd_url, lxd_client_cert, lxd_client_key, lxd_verify)."""
    tmp = tmp_path_factory.mktemp("https")
    cert, key, fingerprint = client_certificate(tmp, "%s-client" % RUN_PREFIX)
    before = lxc("config", "get", "core.https_address").stdout.strip()
    with Netns("https") as ns:
        lxc("config", "set", "core.https_address", "%s:%d" % (ns.host_address, PORT))
        try:
            lxc(*TRUST_ADD[DAEMON], cert)
            try:
                yield {"ns": ns, "tmp": tmp, "connection": {
                    "lxd_url": "https://%s:%d" % (ns.host_address, PORT), "lxd_client_cert": cert,
                    "lxd_client_key": key, "lxd_verify": SERVER_CERT}}
            finally:
                lxc("config", "trust", "remove", fingerprint, check=False)
        finally:
            if before:
                lxc("config", "set", "core.https_address", before)
            else:
                lxc("config", "unset", "core.https_address")


def test_an_instance_lives_and_goes_through_https(remote, lxd):
    connection = remote["connection"]
    try:
        made = run_module("lxd_instance", dict(connection, name=NAME, image="onebox-debian12", state="started"),
                          timeout=300)
        assert made["changed"] and not made.get("failed"), made
        assert lxd.instance(NAME, state=False)["status"] == "Running"  # seen over the socket too
        again = run_module("lxd_instance", dict(connection, name=NAME, image="onebox-debian12", state="started"))
        assert not again["changed"] and not again.get("failed"), again
        gone = run_module("lxd_instance", dict(connection, name=NAME, state="absent"))
        assert gone["changed"] and not gone.get("failed"), gone
        assert lxd.instance(NAME) is None
    finally:
        delete_instance_quietly(lxd, NAME)


def test_a_box_converges_answers_and_goes_through_https(remote, lxd):
    ns, tmp = remote["ns"], remote["tmp"]
    args = dict(remote["connection"], owner=OWNER, proxy={"name": PROXY},
                services=[{"name": WEB, "kind": "static", "host_port": WEB_PORT,
                           "files": [{"path": "/var/www/html/index.html", "content": "over https\n"}]}],
                forwards={"chain_prefix": PREFIX, "save_path": str(tmp / "dnat.rules"),
                          "restore_script": str(tmp / "restore"), "sysctl_file": str(tmp / "ip_forward.conf")})
    try:
        built = run_module("box", args, timeout=600)
        assert built["changed"] and not built.get("failed"), built
        again = run_module("box", args)
        assert not again["changed"] and not again.get("failed"), again
        asked = ns.run([sys.executable, "-c", "import urllib.request; print(urllib.request.urlopen("
                        "'http://%s:%d/', timeout=5).read().decode(), end='')" % (ns.host_address, WEB_PORT)], timeout=20)
        assert asked.stdout == "over https\n", asked
    finally:
        gone = run_module("box", dict(args, state="absent"))
        for name in (WEB, PROXY):
            delete_instance_quietly(lxd, name)
    assert not gone.get("failed"), gone
    assert lxd.instance(WEB) is None and lxd.instance(PROXY) is None


def test_a_wrong_server_certificate_fails_saying_which_was_expected(remote):
    connection = dict(remote["connection"], lxd_verify=remote["connection"]["lxd_client_cert"])
    result = run_module("lxd_instance", dict(connection, name=NAME, state="absent"))
    assert result.get("failed"), result
    assert "its certificate is not the one lxd_verify names (%s)" % connection["lxd_verify"] in result["msg"], result


def test_an_untrusted_client_fails_saying_how_to_trust_it(remote):
    cert, key, _fingerprint = client_certificate(remote["tmp"], "%s-stranger" % RUN_PREFIX)
    connection = dict(remote["connection"], lxd_client_cert=cert, lxd_client_key=key)
    result = run_module("lxd_instance", dict(connection, name=NAME, state="absent"))
    assert result.get("failed"), result
    assert "does not trust this client (lxd_client_cert %s)" % cert in result["msg"], result
    assert "lxc config trust add" in result["msg"], result


ROLE_PLAY = """
- hosts: all
  gather_facts: false
  roles:
    - role: homelab.onebox.box
      vars:
        onebox_box_parts: [containers, insides]
"""


def test_the_box_role_reaches_the_daemon_its_variables_name(remote, lxd):
    """onebox_lxd_url and the certificates: a box's containers converged through the role over HTTPS."""
    playbook = remote["tmp"] / "role.yml"
    playbook.write_text(ROLE_PLAY)
    connection = remote["connection"]
    extra = {"onebox_owner": OWNER + "r", "onebox_lxd_url": connection["lxd_url"],
             "onebox_lxd_client_cert": connection["lxd_client_cert"], "onebox_lxd_client_key": connection["lxd_client_key"],
             "onebox_lxd_verify": connection["lxd_verify"],
             "onebox_services": [{"name": ROLE_BOX, "kind": "internal"}]}
    try:
        rc, out = run_playbook(str(playbook), extra, timeout=600)
        assert rc == 0, out
        assert lxd.instance(ROLE_BOX, state=False)["config"]["user.onebox.owner"] == OWNER + "r"
        # The daemon saw the request come over HTTPS: the wrong pin proves the role passed the URL.
        rc, out = run_playbook(str(playbook), dict(extra, onebox_lxd_verify=connection["lxd_client_cert"]))
        assert rc != 0 and "its certificate is not the one lxd_verify names" in json.dumps(out), out
    finally:
        run_playbook(str(playbook), dict(extra, onebox_box_state="absent"))
        delete_instance_quietly(lxd, ROLE_BOX)
    assert lxd.instance(ROLE_BOX) is None
