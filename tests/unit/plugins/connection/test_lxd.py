"""The lxd connection plugin over a fake broker channel: its documented options (each with its
variables), the URL refusals (ssh://, other schemes), a stopped or missing container unreachable,
a non-root user looked up once and sent with each exec, become with a password refused, the
pipelined input sent with the exec, a timed-out command failing naming the option, files, errors."""
import os
from types import SimpleNamespace

import pytest
import yaml
from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.playbook.play_context import PlayContext

from ansible_collections.homelab.onebox.plugins.connection import lxd
from ansible_collections.homelab.onebox.plugins.plugin_utils import _lxd_broker as broker

DEFAULTS = {"remote_addr": "web", "remote_user": "root", "url": None, "client_cert": None, "client_key": None,
            "verify": None, "project": None, "exec_timeout": 3600, "persist": 60, "pipelining": True}


def test_the_options_are_documented_each_with_its_variables():
    doc = yaml.safe_load(lxd.DOCUMENTATION)
    assert doc["short_description"] == "Run tasks in a container of the box over the LXD or Incus API"
    options = doc["options"]
    assert set(options) == set(DEFAULTS)
    assert all(option.get("vars") for option in options.values())
    variables = {name: [v["name"] for v in option["vars"]] for name, option in options.items()}
    assert variables["remote_addr"] == ["inventory_hostname", "onebox_lxd_instance", "ansible_host"]  # the last wins
    assert variables["url"] == ["onebox_lxd_url"] and variables["verify"] == ["onebox_lxd_verify"]
    assert variables["exec_timeout"] == ["onebox_lxd_exec_timeout"] and variables["persist"] == ["onebox_lxd_persist"]
    assert variables["pipelining"] == ["ansible_pipelining", "onebox_lxd_pipelining"]
    assert (options["exec_timeout"]["default"], options["persist"]["default"], options["pipelining"]["default"],
            options["remote_user"]["default"]) == (3600, 60, True, "root")


class FakeChannel:
    def __init__(self, answers):
        self.answers, self.sent, self.closed = answers, [], False

    def request(self, op, wait, **fields):
        self.sent.append((op, wait, fields))
        answer = self.answers[op]
        if isinstance(answer, Exception):
            raise answer
        return answer(fields) if callable(answer) else dict(answer)

    def close(self):
        self.closed = True


def connection(answers=None, **options):
    values = dict(DEFAULTS, **options)
    conn = lxd.Connection(PlayContext(), None)
    conn.get_option = values.__getitem__
    channel = FakeChannel(dict({"state": {"status": "Running"}}, **(answers or {})))
    opened = []

    def open_broker(daemon_options, persist):
        opened.append((daemon_options, persist))
        return channel, {"pid": 9, "daemon": "LXD", "endpoint": "/var/lib/lxd/unix.socket"}
    conn._open = open_broker
    return conn, channel, opened


def test_the_broker_is_opened_with_the_daemon_options_and_the_idle_time():
    conn, channel, opened = connection(url="unix:/var/lib/incus/unix.socket", project="p1", persist=5)
    conn._connect()
    assert opened == [({"url": "unix:/var/lib/incus/unix.socket", "client_cert": None, "client_key": None, "verify": None,
                        "project": "p1"}, 5.0)]
    assert channel.sent == [("state", lxd.REQUEST_TIMEOUT, {"name": "web"})] and conn._connected


def test_an_ssh_url_is_refused_asking_for_the_https_address():
    conn, opened = connection(url="ssh://box.example")[::2]
    with pytest.raises(AnsibleConnectionFailure) as caught:
        conn._connect()
    said = str(caught.value)
    assert "onebox_lxd_url is ssh://box.example" in said and "needs the daemon's https:// address in onebox_lxd_url" in said
    assert "docs/daemons.md" in said and opened == []


@pytest.mark.parametrize("url", ["ftp://box", "http://box:8443", "box:8443"])
def test_other_schemes_are_unreachable_naming_the_value(url):
    conn = connection(url=url)[0]
    with pytest.raises(AnsibleConnectionFailure, match="onebox_lxd_url %r cannot be reached" % url):
        conn._connect()


@pytest.mark.parametrize("status, said", [
    ("Stopped", "container web is Stopped on the LXD daemon at /var/lib/lxd/unix.socket: start it "
                "(converging the box starts its containers)"),
    (None, "no container web on the LXD daemon at /var/lib/lxd/unix.socket")])
def test_a_container_not_running_is_unreachable_saying_so(status, said):
    conn, channel = connection({"state": {"status": status}})[:2]
    with pytest.raises(AnsibleConnectionFailure) as caught:
        conn._connect()
    assert str(caught.value).startswith(said) and channel.closed and not conn._connected


def test_a_broker_that_cannot_start_is_unreachable_naming_the_container():
    conn = connection()[0]

    def fail(options, persist):
        raise broker.BrokerError("the lxd connection's broker exited (1) at its start; its log x says: boom", "unreachable")
    conn._open = fail
    with pytest.raises(AnsibleConnectionFailure, match="container web: the lxd connection's broker exited"):
        conn._connect()


def test_a_non_root_user_is_looked_up_and_sent_with_each_exec():
    answers = {"user": {"uid": 1001, "gid": 1002, "home": "/home/deploy"},
               "exec": {"rc": 0, "stdout": broker.to_b64(b"\xff"), "stderr": broker.to_b64(b""), "timed_out": False}}
    conn, channel = connection(answers, remote_user="deploy")[:2]
    assert conn.exec_command("id -un") == (0, b"\xff", b"")
    ops = [(sent[0], sent[2]) for sent in channel.sent]
    assert ops[1] == ("user", {"name": "web", "user": "deploy"})
    assert ops[2][0] == "exec" and ops[2][1]["user"] == {"name": "deploy", "uid": 1001, "gid": 1002, "home": "/home/deploy"}


def test_an_unknown_user_fails_naming_it():
    conn = connection({"user": broker.BrokerError("no user ghost in container web (getent passwd ghost found none)")},
                      remote_user="ghost")[0]
    with pytest.raises(AnsibleError, match="no user ghost in container web"):
        conn._connect()


def test_pipelined_input_goes_with_the_exec_and_the_wait_outlasts_the_timeout():
    exec_answer = {"rc": 3, "stdout": broker.to_b64(b"out"), "stderr": broker.to_b64(b"err"), "timed_out": False}
    conn, channel = connection({"exec": exec_answer}, exec_timeout=50)[:2]
    assert conn.exec_command("/usr/bin/python3", in_data=b"\x00code") == (3, b"out", b"err")
    op, wait, fields = channel.sent[-1]
    assert op == "exec" and broker.from_b64(fields["stdin"]) == b"\x00code" and fields["timeout"] == 50
    assert fields["command"] == "/usr/bin/python3" and fields["user"] is None and wait > 50
    conn.exec_command("true")
    assert channel.sent[-1][2]["stdin"] is None


def test_a_command_past_the_timeout_fails_naming_the_container_and_the_option():
    conn = connection({"exec": {"rc": 124, "stdout": "", "stderr": "", "timed_out": True}}, exec_timeout=2)[0]
    with pytest.raises(AnsibleError) as caught:
        conn.exec_command("sleep 100")
    assert str(caught.value).startswith("container web: the command ran longer than onebox_lxd_exec_timeout (2 s) "
                                        "and was killed inside the container")


@pytest.mark.parametrize("value", [0, -1, "soon", None])
def test_a_timeout_that_is_not_positive_seconds_is_refused(value):
    conn = connection(exec_timeout=value)[0]
    with pytest.raises(AnsibleError, match="onebox_lxd_exec_timeout: %r is not a number of seconds above 0" % (value,)):
        conn.exec_command("true")


def test_become_with_a_password_prompt_is_refused():
    conn, channel = connection({"exec": {"rc": 0, "stdout": "", "stderr": "", "timed_out": False}})[:2]
    conn.become = SimpleNamespace(expect_prompt=lambda: True, name="sudo")
    with pytest.raises(AnsibleError) as caught:
        conn.exec_command("sudo -S -p x true")
    assert "become_method sudo with a password cannot answer its prompt" in str(caught.value)
    assert "su is in every Debian container" in str(caught.value)
    assert not [sent for sent in channel.sent if sent[0] == "exec"]
    conn.become = SimpleNamespace(expect_prompt=lambda: False, name="su")  # su as root: no prompt
    assert conn.exec_command("su deploy -c true")[0] == 0


def test_files_go_through_the_broker_owned_by_the_user(tmp_path):
    local = tmp_path / "f"
    local.write_bytes(b"x")
    conn, channel = connection({"user": {"uid": 7, "gid": 8, "home": "/h"}, "put": {}, "fetch": {"size": 1}},
                               remote_user="deploy")[:2]
    conn.put_file(str(local), "/h/f")
    assert channel.sent[-1][0] == "put" and channel.sent[-1][2] == {
        "name": "web", "local": str(local), "remote": "/h/f", "uid": 7, "gid": 8, "mode": 0o600}
    conn.fetch_file("/h/f", "relative-dest")
    assert channel.sent[-1][2] == {"name": "web", "remote": "/h/f", "local": os.path.abspath("relative-dest")}
    with pytest.raises(AnsibleFileNotFound, match="file to copy into container web not found: %s" % (tmp_path / "nope")):
        conn.put_file(str(tmp_path / "nope"), "/h/x")


def test_broker_errors_become_ansibles():
    conn = connection({"fetch": broker.BrokerError("file to fetch from container web not found: /x", "notfound"),
                       "exec": broker.BrokerError("the broker closed its socket during exec", "gone")})[0]
    with pytest.raises(AnsibleFileNotFound, match="not found: /x"):
        conn.fetch_file("/x", "/tmp/y")
    with pytest.raises(AnsibleConnectionFailure, match="closed its socket"):
        conn.exec_command("true")
    assert not conn._connected


def test_close_and_reset():
    conn, channel, opened = connection()
    conn._connect()
    conn.close()
    assert channel.closed and not conn._connected
    conn.reset()
    assert conn._connected and len(opened) == 2
