"""The rows of LXD and Incus side by side (box_bench.py --only-daemons): the reference box's cold
converge, no-change re-run, one change and teardown on each daemon of this host, one after the
other in the same run; exec round trip through _lxd.py over each daemon's socket and over HTTPS
(the daemon listening on loopback for the time of the figure, a client certificate made here
trusted, its own certificate pinned). Both daemons must be set up (playbooks/host.yml, then again
with -e onebox_lxd_host_daemon=incus); a missing one stops the bench, saying so.

The reference box's teardown between runs keeps its volumes, as on LXD; the bench purges the
Incus side's at the end (the LXD side's are the example box's, left as box_bench leaves them)."""
from __future__ import annotations

import os
import random
import subprocess
import tempfile
import time
import uuid

from conftest import DAEMONS, TRUST_ADD, ansible_env, client_certificate, delete_instance_quietly
from ansible_collections.homelab.onebox.plugins.module_utils._lxd import LxdClient

IMAGE = "onebox-debian12"
EXECS = 200


def environment(daemon):
    """What the modules of an ansible-playbook run find their daemon by: INCUS_DIR for Incus (the
    box role follows lxd_host's choice too; teardown has no lxd_host and reads this), neither for LXD."""
    env = ansible_env()
    env.pop("INCUS_DIR", None)
    env.pop("LXD_DIR", None)
    if daemon == "incus":
        env["INCUS_DIR"] = DAEMONS["incus"][0]
    return env


def cli(daemon, *argv, check=True):
    directory, command = DAEMONS[daemon]
    env = dict(os.environ, **({"INCUS_DIR": directory} if daemon == "incus" else {}))
    return subprocess.run([command] + list(argv), capture_output=True, text=True, timeout=120,
                          check=check, env=env)


def client(daemon):
    socket = os.path.join(DAEMONS[daemon][0], "unix.socket")
    if not os.path.exists(socket):
        raise SystemExit("--only-daemons: %s's socket %s is missing: set it up with playbooks/host.yml%s"
                         % (daemon, socket, " -e onebox_lxd_host_daemon=incus" if daemon == "incus" else ""))
    return LxdClient(url="unix:" + socket, timeout=120)


def exec_round_trips(lxd, name):
    """Seconds of EXECS sequential `echo` round trips into one container, each output checked."""
    samples = []
    for index in range(EXECS):
        started = time.monotonic()
        assert lxd.exec(name, ["echo", str(index)], timeout=10).stdout == "%d\n" % index
        samples.append(time.monotonic() - started)
    return samples


def over_https(daemon, name, tmp):
    """The exec round trips over HTTPS: the daemon listens on a loopback port for the time of the
    figure, the client certificate trusted; both set back after."""
    cert, key, fingerprint = client_certificate(tmp, "onebox-bench")
    before = cli(daemon, "config", "get", "core.https_address").stdout.strip()
    port = random.randrange(28000, 29000)
    cli(daemon, "config", "set", "core.https_address", "127.0.0.1:%d" % port)
    try:
        cli(daemon, *TRUST_ADD[daemon], cert)
        try:
            lxd = LxdClient(url="https://127.0.0.1:%d" % port, client_cert=cert, client_key=key,
                            verify=os.path.join(DAEMONS[daemon][0], "server.crt"), timeout=60)
            try:
                return exec_round_trips(lxd, name)
            finally:
                lxd.close()
        finally:
            cli(daemon, "config", "trust", "remove", fingerprint, check=False)
    finally:
        if before:
            cli(daemon, "config", "set", "core.https_address", before)
        else:
            cli(daemon, "config", "unset", "core.https_address")


def exec_figures(daemon, row):
    """Exec round trip over the daemon's socket and over HTTPS, into one container of its own."""
    lxd = client(daemon)
    name = "bench-exec-%s" % uuid.uuid4().hex[:4]
    try:
        lxd.create_instance({"name": name, "type": "container", "source": {"type": "image", "alias": IMAGE}})
        lxd.change_state(name, "start")
        lxd.wait_ipv4(name, timeout=60)
        row("%s: exec round trip through _lxd.py, socket (%d)" % (lxd.daemon, EXECS), exec_round_trips(lxd, name),
            unit="ms")
        with tempfile.TemporaryDirectory() as tmp:
            row("%s: exec round trip through _lxd.py, HTTPS on loopback (%d)" % (lxd.daemon, EXECS),
                over_https(daemon, name, tmp), unit="ms")
    finally:
        delete_instance_quietly(lxd, name)
        lxd.close()


def daemon_figures(runs, box_figures, playbook, row):
    """Both daemons' rows, LXD first: box_figures / playbook / row are box_bench's."""
    versions = {}
    for daemon in ("lxd", "incus"):
        lxd = client(daemon)
        versions[daemon] = "%s %s" % (lxd.daemon, lxd.server["environment"]["server_version"])
        lxd.close()
    print("daemons: %s" % ", ".join(versions.values()), flush=True)
    for daemon in ("lxd", "incus"):
        env, extra = environment(daemon), {"onebox_lxd_host_daemon": daemon}
        box_figures("reference box on %s" % versions[daemon], "inventory.example", runs,
                    lambda run: {"onebox_example_greeting": "bench %d %s" % (run, uuid.uuid4().hex[:6])},
                    {}, extra=extra, env=env)
        exec_figures(daemon, row)
    # The Incus side's volumes (db's, shop's) were made by this bench: purged. LXD's are the
    # example box's own, kept as a teardown keeps them.
    playbook("inventory.example", "playbooks/teardown.yml", {"onebox_purge": True}, env=environment("incus"))
