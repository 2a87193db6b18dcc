"""The lxd connection (plugins/connection/lxd.py) through real ansible-playbook against the real daemon:
files both ways byte-identical, modules with pipelining on and off, exact bytes of a command's output,
the exec timeout killing the command inside the container, a stopped or missing container unreachable,
1,000 raw commands from 20 forks with no output lost or swapped, become (su) and a non-root remote_user,
the broker and its agent gone once idle, and commands without python3 in the container (no agent)."""
import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import ROOT, RUN_PREFIX, ansible_env, delete_instance_quietly
from test_https import remote  # noqa: F401  # pylint: disable=unused-import  # the daemon over HTTPS, set back after

from ansible_collections.homelab.onebox.plugins.plugin_utils import _lxd_broker as broker

IMAGE = "onebox-debian12"
PERSIST = 3  # the tests' brokers exit 3 s after their last request (checked at the end)
DAEMON_OPTIONS = {"url": None, "client_cert": None, "client_key": None, "verify": None, "project": None}
USER = "onebox-t17"


def launch(lxd, name, start=True):
    lxd.create_instance({"name": name, "type": "container", "source": {"type": "image", "alias": IMAGE}})
    if start:
        lxd.change_state(name, "start")
        deadline = time.monotonic() + 60
        while lxd.exec(name, ["true"], timeout=30).rc != 0:  # the first exec can race the start
            assert time.monotonic() < deadline
            time.sleep(0.2)


@pytest.fixture(scope="module")
def container(lxd):
    """One running container for the module's tests (instance_names is per test; this one is
    named and deleted the same way), with a user of its own."""
    name = "%s-conn-%s" % (RUN_PREFIX, os.urandom(2).hex())
    try:
        launch(lxd, name)
        lxd.run(name, ["useradd", "--create-home", "--shell", "/bin/sh", USER])
        yield name
    finally:
        delete_instance_quietly(lxd, name)
        lxd.close()


def inventory(tmp_path, hosts, **group_vars):
    """An inventory file whose hosts use the connection; ``hosts``: {alias: host vars}."""
    data = {"all": {"vars": dict({"ansible_connection": "homelab.onebox.lxd",
                                  "ansible_python_interpreter": "/usr/bin/python3",
                                  "onebox_lxd_persist": PERSIST}, **group_vars),
                    "hosts": hosts}}
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(data))
    return str(path)


def play(tmp_path, inventory_path, tasks, extra=(), json_output=True, timeout=600, **play_keys):
    """ansible-playbook with one play of ``tasks`` on all hosts: (rc, the JSON callback's document
    or the text output)."""
    book = tmp_path / ("play-%s.json" % os.urandom(3).hex())
    book.write_text(json.dumps([dict({"hosts": "all", "gather_facts": False, "tasks": tasks}, **play_keys)]))
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", inventory_path, str(book)] + list(extra)
    env = ansible_env() if json_output else ansible_env(ANSIBLE_STDOUT_CALLBACK="default")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if not json_output:
        return proc.returncode, proc.stdout + proc.stderr
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError:
        raise AssertionError("no JSON (rc %s)\n%s\n%s" % (proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:]))


def results(document, task=0):
    return document["plays"][0]["tasks"][task]["hosts"]


def alive(pid):
    """Whether the process runs (a zombie left to a PID 1 that does not reap has exited)."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.parametrize("pipelining", [True, False])
def test_files_both_ways_byte_identical_and_modules_with_and_without_pipelining(lxd, container, tmp_path, pipelining):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(20 * 1024 * 1024))
    known = tmp_path / "known.bin"
    known.write_bytes(bytes(range(256)) * 4 + b"\xff\xfe\x80 not utf-8 \xc3\x28")
    back = tmp_path / "back"
    back.mkdir()
    tasks = [
        {"copy": {"src": str(big), "dest": "/root/big.bin", "mode": "0600"}},
        {"copy": {"src": str(known), "dest": "/root/known.bin"}},
        {"command": "sha256sum /root/big.bin", "register": "sum"},
        {"fetch": {"src": "/root/big.bin", "dest": str(back) + "/", "flat": True}},
        {"raw": "base64 -w0 /root/known.bin", "register": "encoded"},
        {"copy": {"content": "{{ encoded.stdout }}", "dest": str(tmp_path / "encoded.txt")}, "delegate_to": "localhost",
         "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}},
    ]
    rc, out = play(tmp_path, inventory(tmp_path, {container: {}}, onebox_lxd_pipelining=pipelining), tasks,
                   extra=["-vvv"], json_output=False)
    assert rc == 0, out[-4000:]
    assert sha256(back / "big.bin") == sha256(big)
    assert lxd.run(container, ["sha256sum", "/root/big.bin"]).split()[0] == sha256(big)
    assert lxd.pull_file(container, "/root/known.bin") == known.read_bytes()
    assert base64.b64decode((tmp_path / "encoded.txt").read_text()) == known.read_bytes()
    # Pipelined: modules go as the command's input; not: Ansible copies AnsiballZ files in first.
    copied = re.search(r"PUT \S+ TO \S+/AnsiballZ_command\.py$", out, re.M)
    if pipelining:
        assert "bytes of input)" in out and not copied, out[-3000:]
    else:
        assert copied and "bytes of input)" not in out, out[-3000:]


# The plugin loaded as ansible loads it, in a Python of its own (pytest's has imported the collection
# without ansible's loader): each command's (rc, stdout, stderr) with the bytes as base64.
THROUGH_THE_PLUGIN = r"""
import base64, json, sys
from ansible.plugins.loader import connection_loader, init_plugin_loader
init_plugin_loader([sys.argv[1]])
from ansible.playbook.play_context import PlayContext
conn = connection_loader.get("homelab.onebox.lxd", PlayContext(), None)
conn.set_options(var_options={"inventory_hostname": sys.argv[2], "onebox_lxd_persist": float(sys.argv[3])})
answers = []
for command, data in json.loads(sys.stdin.read()):
    rc, out, err = conn.exec_command(command, in_data=None if data is None else base64.b64decode(data))
    answers.append([rc, base64.b64encode(out).decode(), base64.b64encode(err).decode()])
conn.close()
print(json.dumps(answers))
"""


def test_output_bytes_exact_through_the_plugin(lxd, container):
    from conftest import COLLECTIONS
    every = bytes(range(256)) + b"\x00\xff\xfe\x80\xc3\x28"
    lxd.push_file(container, "/root/every.bin", every)
    commands = [["cat /root/every.bin; cat /root/every.bin >&2; exit 3", None],
                ["cat", base64.b64encode(every).decode()],
                ["head -c 300 /dev/zero | tr '\\0' '\\377'", None]]
    proc = subprocess.run([sys.executable, "-c", THROUGH_THE_PLUGIN, COLLECTIONS, container, str(PERSIST)],
                          input=json.dumps(commands), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = [(rc, base64.b64decode(out), base64.b64decode(err)) for rc, out, err in json.loads(proc.stdout)]
    assert answers == [(3, every, every), (0, every, b""), (0, b"\xff" * 300, b"")]


def test_a_command_past_the_exec_timeout_is_killed_in_the_container_and_fails_naming_it(lxd, container, tmp_path):
    started = time.monotonic()
    rc, out = play(tmp_path, inventory(tmp_path, {container: {}}, onebox_lxd_exec_timeout=2),
                   [{"command": "sleep 47"}])
    took = time.monotonic() - started
    result = results(out)[container]
    assert rc != 0 and result.get("failed"), result
    assert result["msg"].startswith("Task failed: container %s: the command ran longer than onebox_lxd_exec_timeout (2 s) "
                                    "and was killed inside the container" % container), result["msg"]
    assert took < 40, took
    processes = lxd.exec(container, ["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"], timeout=30).stdout
    assert "sleep 47" not in processes, processes


def test_a_stopped_or_missing_container_or_an_ssh_url_is_unreachable_saying_why(lxd, instance_names, tmp_path):
    stopped, missing = instance_names("stop"), instance_names("gone")
    launch(lxd, stopped, start=False)
    hosts = {stopped: {}, missing: {}, "via-ssh": {"ansible_host": stopped, "onebox_lxd_url": "ssh://box.example"},
             "via-ftp": {"ansible_host": stopped, "onebox_lxd_url": "ftp://box.example"}}
    rc, out = play(tmp_path, inventory(tmp_path, hosts), [{"raw": "true"}])
    found = results(out)
    assert rc != 0
    assert all(found[host].get("unreachable") for host in hosts), found
    daemon = "the %s daemon at %s" % (lxd.daemon, lxd.endpoint)  # LXD's or Incus' socket (ONEBOX_TEST_DAEMON)
    assert found[stopped]["msg"] == ("Task failed: container %s is Stopped on %s: start it "
                                     "(converging the box starts its containers)" % (stopped, daemon))
    assert found[missing]["msg"].startswith("Task failed: no container %s on %s" % (missing, daemon))
    assert "onebox_lxd_url is ssh://box.example" in found["via-ssh"]["msg"]
    assert "needs the daemon's https:// address in onebox_lxd_url" in found["via-ssh"]["msg"]
    assert "onebox_lxd_url 'ftp://box.example' cannot be reached" in found["via-ftp"]["msg"]


def test_a_thousand_raw_commands_from_twenty_forks_lose_no_output(container, tmp_path):
    aliases = {"alias%02d" % index: {"ansible_host": container} for index in range(20)}
    task = {"raw": 'echo "out {{ inventory_hostname }} {{ item }} marker"; echo "err {{ inventory_hostname }} {{ item }}" >&2; '
                   'exit $(( {{ item }} % 5 ))',
            "loop": "{{ range(50) | list }}", "ignore_errors": True}
    started = time.monotonic()
    rc, out = play(tmp_path, inventory(tmp_path, aliases), [task], extra=["--forks", "20"], timeout=900)
    took = time.monotonic() - started
    found = results(out)
    bad = []
    for alias in aliases:
        items = found[alias]["results"]
        assert len(items) == 50, found[alias]
        for index, item in enumerate(items):
            if (item.get("rc"), item.get("stdout"), item.get("stderr")) != (
                    index % 5, "out %s %d marker\n" % (alias, index), "err %s %d\n" % (alias, index)):
                bad.append((alias, index, item.get("rc"), item.get("stdout"), item.get("stderr"), item.get("msg")))
    assert not bad, "%d of 1000 came back wrong, e.g. %r" % (len(bad), bad[:3])
    print("1000 raw commands from 20 forks in %.1f s" % took)


def test_become_su_and_a_non_root_remote_user(lxd, container, tmp_path):
    tasks = [{"command": "id -un", "register": "as_root"},
             {"command": "id -un", "become": True, "become_user": USER, "become_method": "su", "register": "became"},
             {"copy": {"content": "mine\n", "dest": "/home/%s/become.txt" % USER}, "become": True,
              "become_user": USER, "become_method": "su"}]
    rc, out = play(tmp_path, inventory(tmp_path, {container: {}}), tasks)
    assert rc == 0, json.dumps(out)[-3000:]
    assert results(out, 0)[container]["stdout"] == "root"
    assert results(out, 1)[container]["stdout"] == USER
    tasks = [{"raw": 'id -un; echo "$HOME $USER $LOGNAME"; pwd', "register": "who"},
             {"copy": {"content": "theirs\n", "dest": "/home/%s/put.txt" % USER}},
             {"command": "stat -c %U /home/{user}/put.txt /home/{user}/become.txt".format(user=USER), "register": "owners"}]
    rc, out = play(tmp_path, inventory(tmp_path, {container: {"ansible_user": USER}}), tasks)
    assert rc == 0, json.dumps(out)[-3000:]
    home = "/home/%s" % USER
    assert results(out, 0)[container]["stdout_lines"] == [USER, "%s %s %s" % (home, USER, USER), home]
    assert results(out, 2)[container]["stdout_lines"] == [USER, USER]
    rc, out = play(tmp_path, inventory(tmp_path, {container: {"ansible_user": "nobody-t17"}}), [{"raw": "true"}])
    assert rc != 0
    assert "no user nobody-t17 in container %s" % container in results(out)[container]["msg"]


def agents_in(lxd, container):
    """The connection's agents running in the container (their pids)."""
    found = lxd.exec(container, ["sh", "-c", "for f in /proc/[0-9]*/cmdline; do tr '\\0' '\\n' <$f | tail -n 1 | "
                                 "grep -qx onebox-lxd-agent && echo ${f%/cmdline}; done"], timeout=30).stdout
    return found.split()


def no_broker():
    """Wait until the last test's broker (and its agents) is gone: each test here starts its own."""
    deadline = time.monotonic() + PERSIST + 15
    while os.path.exists(broker.socket_path(DAEMON_OPTIONS, PERSIST, broker.broker_dir())):
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_the_broker_exits_once_idle_and_its_agent_with_it(lxd, container, tmp_path):
    no_broker()
    rc, out = play(tmp_path, inventory(tmp_path, {container: {}}), [{"raw": "true"}])
    assert rc == 0
    path = broker.socket_path(DAEMON_OPTIONS, PERSIST, broker.broker_dir())
    channel, hello = broker._greet(path, 10)
    channel.close()
    assert len(agents_in(lxd, container)) == 1  # the commands went through one agent
    with open(path[:-len(".sock")] + ".log") as log:
        assert "agent pid" in log.read()
    deadline = time.monotonic() + PERSIST + 15
    while alive(hello["pid"]) or os.path.exists(path):
        assert time.monotonic() < deadline, "broker pid %s still there %s s after its last request" % (hello["pid"], PERSIST)
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    while agents_in(lxd, container):
        assert time.monotonic() < deadline, "the agent outlived its broker: %s" % agents_in(lxd, container)
        time.sleep(0.2)


def test_without_python3_raw_commands_still_run_each_as_an_exec(lxd, container, tmp_path):
    """Before a raw task installs Python, there is no agent: each command is an exec of its own."""
    no_broker()
    lxd.run(container, ["mv", "/usr/bin/python3", "/usr/bin/python3.t17"])
    try:
        rc, out = play(tmp_path, inventory(tmp_path, {container: {}}),
                       [{"raw": "echo out; echo err >&2; exit 3", "register": "r", "ignore_errors": True},
                        {"raw": "command -v python3 || echo none", "register": "which"}])
        assert rc == 0, json.dumps(out)[-3000:]
        first = results(out, 0)[container]
        assert (first["rc"], first["stdout"], first["stderr"]) == (3, "out\n", "err\n")
        assert results(out, 1)[container]["stdout"] == "none\n"
        assert not agents_in(lxd, container)
        with open(broker.socket_path(DAEMON_OPTIONS, PERSIST, broker.broker_dir())[:-len(".sock")] + ".log") as log:
            assert "no agent in %s for uid 0 (each command is an exec of its own)" % container in log.read()
    finally:
        lxd.run(container, ["mv", "/usr/bin/python3.t17", "/usr/bin/python3"])


def test_over_https_with_a_client_certificate_and_the_daemons_certificate_pinned(remote, container, tmp_path):
    """The daemon's https:// address (test_https's listener in a network namespace, a trusted client
    certificate), named by the box role's variables."""
    connection = remote["connection"]
    https = {"onebox_lxd_url": connection["lxd_url"], "onebox_lxd_client_cert": connection["lxd_client_cert"],
             "onebox_lxd_client_key": connection["lxd_client_key"], "onebox_lxd_verify": connection["lxd_verify"]}
    tasks = [{"raw": "cat /etc/hostname", "register": "name"},
             {"copy": {"content": "over https\n", "dest": "/root/https.txt"}},
             {"command": "cat /root/https.txt", "register": "back"}]
    rc, out = play(tmp_path, inventory(tmp_path, {container: {}}, **https), tasks)
    assert rc == 0, json.dumps(out)[-3000:]
    assert results(out, 0)[container]["stdout"].strip() == container
    assert results(out, 2)[container]["stdout"] == "over https"
    path = broker.socket_path(dict(DAEMON_OPTIONS, url=connection["lxd_url"], client_cert=connection["lxd_client_cert"],
                                   client_key=connection["lxd_client_key"], verify=connection["lxd_verify"]),
                              PERSIST, broker.broker_dir())
    channel, hello = broker._greet(path, 10)  # a broker of its own, for that daemon address
    channel.close()
    assert hello["endpoint"] == connection["lxd_url"]
