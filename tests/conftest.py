"""Shared test fixtures: the collection on sys.path, a runner for the collection's modules through
real ansible, a client of the daemon, and names that are cleaned up even when a test fails.

The daemon the integration tests run against: LXD by default, Incus with ONEBOX_TEST_DAEMON=incus.
The switch is the environment the modules find their socket by (_lxd.find_socket): INCUS_DIR for
Incus (LXD_DIR dropped), neither for LXD; tests that run the daemon's command line take ``CLI``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def collections_root(root):
    """The directory Ansible loads homelab.onebox from: scripts/venv's links (.collections), or,
    without them, the tree above this checkout when it sits at ansible_collections/homelab/onebox
    (how ansible-test and a collection developer's clone run it)."""
    linked = os.path.join(root, ".collections")
    if os.path.isdir(os.path.join(linked, "ansible_collections", "homelab", "onebox")):
        return linked
    parts = os.path.normpath(root).split(os.sep)
    if parts[-3:] == ["ansible_collections", "homelab", "onebox"]:
        return os.sep.join(parts[:-3]) or os.sep
    raise RuntimeError("run scripts/venv first (%s is missing), or run from a checkout at "
                       "ansible_collections/homelab/onebox" % linked)


COLLECTIONS = collections_root(ROOT)
if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)

# name -> (its directory, its command line)
DAEMONS = {"lxd": ("/var/lib/lxd", "lxc"), "incus": ("/var/lib/incus", "incus")}
DAEMON = os.environ.get("ONEBOX_TEST_DAEMON", "lxd").strip().lower() or "lxd"
if DAEMON not in DAEMONS:
    raise RuntimeError("ONEBOX_TEST_DAEMON=%s: give lxd or incus" % DAEMON)
DAEMON_DIR, CLI = DAEMONS[DAEMON]
# Trusting a client certificate file: LXD 5.0's `config trust add` takes one; Incus 6's makes a
# token from a name, and add-certificate takes the file.
TRUST_ADD = {"lxd": ["config", "trust", "add"], "incus": ["config", "trust", "add-certificate"]}
if DAEMON == "incus":  # named to the modules (and to its CLI); LXD's socket would come first otherwise
    os.environ.pop("LXD_DIR", None)
    os.environ.setdefault("INCUS_DIR", DAEMON_DIR)
else:  # LXD is what the modules find first ($LXD_DIR's, when set, as before)
    os.environ.pop("INCUS_DIR", None)

# A run of the suite has one prefix, so a leftover from a crashed run is easy to spot and remove.
RUN_PREFIX = "t%s" % uuid.uuid4().hex[:6]


def client_certificate(directory, name):
    """A client certificate and key made in ``directory`` (for a daemon over HTTPS to trust):
    (cert path, key path, its SHA-256 fingerprint as the daemon's trust list names it)."""
    key, cert = os.path.join(str(directory), "%s.key" % name), os.path.join(str(directory), "%s.crt" % name)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp384r1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=%s" % name],
                   capture_output=True, timeout=60, check=True)
    fingerprint = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-fingerprint", "-sha256"],
                                 capture_output=True, text=True, timeout=30, check=True).stdout
    return cert, key, fingerprint.split("=", 1)[1].strip().replace(":", "").lower()


def ansible_env(**extra):
    env = dict(os.environ)
    env.update({
        "ANSIBLE_CONFIG": os.path.join(ROOT, "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": COLLECTIONS,
        "ANSIBLE_STDOUT_CALLBACK": "onebox_json",
        "ANSIBLE_CALLBACK_PLUGINS": os.path.join(ROOT, "tests", "plugins", "callback"),
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        "ANSIBLE_NOCOLOR": "1",
        "PATH": os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
    })
    env.update(extra)
    return env


def _ansible(program, args, check, diff, timeout):
    """Run an ansible program on localhost with the JSON callback; (returncode, parsed output)."""
    cmd = [os.path.join(os.path.dirname(sys.executable), program), "-c", "local",
           "-e", "ansible_python_interpreter=%s" % sys.executable] + list(args)
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    proc = subprocess.run(cmd, cwd=ROOT, env=ansible_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError:
        raise AssertionError("%s gave no JSON (rc %s)\nstdout:\n%s\nstderr:\n%s"
                             % (program, proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:]))


def run_module(module, args, check=False, diff=False, timeout=300):
    """Run homelab.onebox.<module> on localhost through ansible; return the task result dict."""
    name = module if "." in module else "homelab.onebox.%s" % module
    returncode, out = _ansible("ansible", ["localhost", "-i", "localhost,", "-m", name, "-a", json.dumps(args)],
                               check, diff, timeout)
    try:
        return out["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (KeyError, IndexError):
        raise AssertionError("ansible gave no task result (rc %s): %s" % (returncode, json.dumps(out)[-4000:]))


def run_playbook(playbook, extra_vars=None, check=False, diff=False, timeout=900, inventory="localhost,"):
    """Run a playbook on localhost; return (rc, parsed json callback output)."""
    args = ["-i", inventory, playbook] + (["-e", json.dumps(extra_vars)] if extra_vars else [])
    return _ansible("ansible-playbook", args, check, diff, timeout)


def ok(result, changed=True):
    """A module's result that did not fail and changed (or not) as said; the result."""
    assert not result.get("failed"), result.get("msg", result)
    assert result["changed"] is changed, result
    return result


@pytest.fixture
def onebox_module():
    return run_module


def pytest_report_header():
    return "daemon: %s (ONEBOX_TEST_DAEMON), its CLI %s" % (DAEMON, CLI)


@pytest.fixture(scope="session")
def lxd():
    """A client of the daemon the run targets (the one the modules find too)."""
    from ansible_collections.homelab.onebox.plugins.module_utils._lxd import LxdClient
    client = LxdClient(timeout=60)
    if client.daemon.lower() != DAEMON:
        raise RuntimeError("ONEBOX_TEST_DAEMON=%s, but %s answered" % (DAEMON, client.daemon))
    return client


@pytest.fixture
def instance_names(lxd):
    """Call it for a fresh instance name; every name handed out is deleted at teardown."""
    handed = []

    def make(label="c"):
        name = "%s-%s-%s" % (RUN_PREFIX, label, uuid.uuid4().hex[:4])
        handed.append(name)
        return name

    yield make
    for name in handed:
        delete_instance_quietly(lxd, name)


def delete_instance_quietly(lxd, name):
    current = lxd.instance(name)
    if current is None:
        return
    if current.get("status") == "Running":
        lxd.change_state(name, "stop", force=True, timeout=30)
    lxd.delete_instance(name)
