"""_lxd: finding the daemon, its errors, reading addresses out of a state."""
import pytest

from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError, ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._lxd import (
    LxdClient, LxdError, daemon_dir, daemon_name, endpoint_from_url, find_socket)


def test_find_socket_order_prefers_lxd_dir_then_debian_snap_incus():
    present = {"/custom/unix.socket", "/var/snap/lxd/common/lxd/unix.socket", "/var/lib/incus/unix.socket"}
    assert find_socket({"LXD_DIR": "/custom"}, present.__contains__) == "/custom/unix.socket"
    assert find_socket({}, present.__contains__) == "/var/snap/lxd/common/lxd/unix.socket"
    assert find_socket({}, {"/var/lib/incus/unix.socket"}.__contains__) == "/var/lib/incus/unix.socket"
    assert find_socket({}, set().__contains__) is None


def test_endpoint_forms():
    exists = {"/var/lib/lxd/unix.socket"}.__contains__
    assert endpoint_from_url(None, {}, exists) == "/var/lib/lxd/unix.socket"
    assert endpoint_from_url("unix:/var/lib/lxd/unix.socket", {}, exists) == "/var/lib/lxd/unix.socket"
    assert endpoint_from_url("https://lxd.example:8443", {}, exists) == "https://lxd.example:8443"
    with pytest.raises(LxdError, match="no LXD or Incus socket found"):
        endpoint_from_url(None, {}, set().__contains__)
    with pytest.raises(LxdError, match="does not exist"):
        endpoint_from_url("/nope.sock", {}, exists)
    with pytest.raises(LxdError, match="lxd_url"):
        endpoint_from_url("ftp://x", {}, exists)


def test_lxd_error_is_the_collection_error():
    assert issubclass(LxdError, OneboxError) and issubclass(ValidationError, OneboxError)


def test_connect_failure_becomes_lxd_error(tmp_path):
    sock = tmp_path / "dead.socket"
    sock.write_text("")  # exists, but nothing listens
    with pytest.raises(LxdError, match="cannot connect to LXD"):
        LxdClient(url=str(sock), timeout=2)


def test_ipv4_addresses_skip_loopback_and_link_scope():
    state = {"network": {
        "lo": {"addresses": [{"family": "inet", "address": "127.0.0.1", "scope": "local"}]},
        "eth0": {"addresses": [{"family": "inet", "address": "10.87.0.5", "scope": "global"},
                               {"family": "inet6", "address": "fe80::1", "scope": "link"}]}}}
    assert LxdClient.ipv4_addresses(None, state) == ["10.87.0.5"]
    assert LxdClient.ipv4_addresses(None, state, nic="eth1") == []
    assert LxdClient.ipv4_addresses(None, None) == []


# ---- both daemons: socket discovery, which daemon answered, exec records at the paths given ----
def test_find_socket_dir_variables_before_the_known_paths_lxd_dir_first():
    everything = {"/l/unix.socket", "/i/unix.socket", "/var/lib/lxd/unix.socket", "/var/lib/incus/unix.socket"}
    both = {"LXD_DIR": "/l", "INCUS_DIR": "/i"}
    assert find_socket(both, everything.__contains__) == "/l/unix.socket"
    assert find_socket({"INCUS_DIR": "/i"}, everything.__contains__) == "/i/unix.socket"
    # a variable naming a directory without a socket falls through to the known paths, LXD's first
    assert find_socket({"INCUS_DIR": "/gone"}, everything.__contains__) == "/var/lib/lxd/unix.socket"
    assert find_socket({}, {"/var/lib/incus/unix.socket", "/run/incus/unix.socket"}.__contains__) == "/var/lib/incus/unix.socket"
    assert find_socket({}, {"/run/incus/unix.socket"}.__contains__) == "/run/incus/unix.socket"


def test_no_socket_names_both_daemons_and_every_place_looked_at():
    with pytest.raises(LxdError) as caught:
        endpoint_from_url(None, {}, set().__contains__)
    for text in ("LXD or Incus", "$LXD_DIR/unix.socket", "$INCUS_DIR/unix.socket", "/var/lib/incus/unix.socket",
                 "/run/incus/unix.socket", "/var/snap/lxd/common/lxd/unix.socket"):
        assert text in str(caught.value)


def test_daemon_name_and_directory():
    assert daemon_name({"environment": {"server": "incus"}}) == "Incus"
    assert daemon_name({"environment": {"server": "lxd"}}) == "LXD"
    assert daemon_name({"auth": "untrusted"}) == "LXD"
    assert daemon_dir("/var/lib/incus/unix.socket") == "/var/lib/incus"
    assert daemon_dir("/run/incus/unix.socket") == "/var/lib/incus"
    assert daemon_dir("/var/snap/lxd/common/lxd/unix.socket") == "/var/snap/lxd/common/lxd"
    assert daemon_dir("https://h:8443") is None


class FakeResponse:
    def __init__(self, body=None, content=b"", headers=None):
        self.body, self.content, self.headers = body, content, headers or {}

    def json(self):
        return self.body


class FakeNode:
    """pylxd's raw API node over a dict of canned answers: path -> {method: response}."""

    def __init__(self, daemon, path=""):
        self.daemon, self.path = daemon, path

    def __getattr__(self, name):
        return FakeNode(self.daemon, "%s/%s" % (self.path, name))

    def __getitem__(self, item):
        return FakeNode(self.daemon, "%s/%s" % (self.path, item))

    def _answer(self, method, **kwargs):
        self.daemon.calls.append((method, self.path))
        answer = self.daemon.answers.get((method, self.path))
        if answer is None:
            raise AssertionError("unexpected %s %s" % (method.upper(), self.path))
        return answer(**kwargs) if callable(answer) else answer

    def get(self, **kwargs):
        return self._answer("get", **kwargs)

    def post(self, **kwargs):
        return self._answer("post", **kwargs)

    def delete(self, **kwargs):
        return self._answer("delete", **kwargs)


class FakeDaemon:
    def __init__(self, server, logs_dir):
        self.host_info = {"environment": {"server": server}, "auth": "trusted"}
        self.answers, self.calls = {}, []
        self.api = FakeNode(self)
        self.logs_dir = logs_dir

    def exec_answers(self, name, op_id, meta=None):
        logs = "/instances/%s/logs" % name + ("/" + self.logs_dir if self.logs_dir else "")
        self.answers[("post", "/instances/%s/exec" % name)] = FakeResponse(
            {"type": "async", "operation": "/1.0/operations/%s" % op_id})
        output = {"1": "/1.0%s/exec_%s.stdout" % (logs, op_id), "2": "/1.0%s/exec_%s.stderr" % (logs, op_id)}
        self.answers[("get", "/operations/%s/wait" % op_id)] = FakeResponse(
            {"metadata": {"status": "Success", "metadata": meta if meta is not None else {"return": 3, "output": output}}})
        for suffix, text in (("stdout", b"out\n"), ("stderr", b"err\n")):
            self.answers[("get", "%s/exec_%s.%s" % (logs, op_id, suffix))] = FakeResponse(content=text)
            self.answers[("delete", "%s/exec_%s.%s" % (logs, op_id, suffix))] = FakeResponse()


def fake_client(monkeypatch, tmp_path, server, logs_dir, socket_name="unix.socket"):
    import pylxd
    daemon = FakeDaemon(server, logs_dir)
    monkeypatch.setattr(pylxd, "Client", lambda **kwargs: daemon)
    sock = tmp_path / socket_name
    sock.write_text("")
    return LxdClient(url=str(sock), timeout=5), daemon


@pytest.mark.parametrize("server, logs_dir, daemon_label", [
    ("lxd", "", "LXD"),                    # LXD: /1.0/instances/C/logs/exec_ID.stdout
    ("incus", "exec-output", "Incus"),     # Incus: /1.0/instances/C/logs/exec-output/exec_ID.stdout
])
def test_exec_reads_and_deletes_the_records_at_the_paths_the_operation_gave(monkeypatch, tmp_path, server, logs_dir, daemon_label):
    client, daemon = fake_client(monkeypatch, tmp_path, server, logs_dir)
    assert client.daemon == daemon_label and client.local_dir == str(tmp_path)
    daemon.exec_answers("c1", "abc")
    result = client.exec("c1", ["sh", "-c", "x"])
    client.close()
    assert result == (3, "out\n", "err\n")
    logs = "/instances/c1/logs/" + (logs_dir + "/" if logs_dir else "")
    for suffix in ("stdout", "stderr"):
        assert ("get", logs + "exec_abc." + suffix) in daemon.calls
        assert ("delete", logs + "exec_abc." + suffix) in daemon.calls


def test_exec_refuses_a_record_outside_the_instances_logs(monkeypatch, tmp_path):
    client, daemon = fake_client(monkeypatch, tmp_path, "incus", "exec-output")
    for path in ("/1.0/instances/other/logs/exec_x.stdout", "/1.0/instances/c1/logs/../../c1", "/1.0/images/x",
                 "/1.0/instances/c1/logs/", "/1.0/instances/c1/logs//x"):
        daemon.exec_answers("c1", "abc", meta={"return": 0, "output": {"1": path, "2": path}})
        with pytest.raises(LxdError, match="Incus gave an output record outside the instance's logs"):
            client.exec("c1", ["true"])
    assert not [call for call in daemon.calls if call[0] == "delete"]


def test_exec_without_a_record_names_the_daemon_that_answered(monkeypatch, tmp_path):
    client, daemon = fake_client(monkeypatch, tmp_path, "incus", "exec-output")
    daemon.exec_answers("c1", "abc", meta={"return": 0})
    with pytest.raises(LxdError, match="Incus returned no exit code or output record"):
        client.exec("c1", ["true"])


def test_exec_record_path_with_a_project_query_is_read_without_it(monkeypatch, tmp_path):
    client, daemon = fake_client(monkeypatch, tmp_path, "incus", "exec-output")
    daemon.exec_answers("c1", "abc")
    op = daemon.answers[("get", "/operations/abc/wait")].body["metadata"]["metadata"]["output"]
    for fd in ("1", "2"):
        op[fd] += "?project=p1"
    assert client.exec("c1", ["true"]).stdout == "out\n"
    client.close()


@pytest.mark.parametrize("header", ["X-LXD-type", "X-Incus-Type"])
def test_pull_file_of_a_directory_fails_on_either_daemons_header(monkeypatch, tmp_path, header):
    import requests.structures
    client, daemon = fake_client(monkeypatch, tmp_path, "incus", "exec-output")
    headers = requests.structures.CaseInsensitiveDict({header: "directory"})
    daemon.answers[("get", "/instances/c1/files")] = FakeResponse(content=b"[]", headers=headers)
    with pytest.raises(LxdError, match="is a directory"):
        client.pull_file("c1", "/etc")
    headers[header] = "file"
    assert client.pull_file("c1", "/etc/x") == b"[]"


def test_socket_under_run_incus_reads_leases_under_var_lib_incus(monkeypatch):
    import pylxd
    from ansible_collections.homelab.onebox.plugins.module_utils import _lxd
    daemon = FakeDaemon("incus", "exec-output")
    monkeypatch.setattr(pylxd, "Client", lambda **kwargs: daemon)
    monkeypatch.setattr(_lxd, "endpoint_from_url", lambda url: "/run/incus/unix.socket")
    client = LxdClient(url="/run/incus/unix.socket")
    assert (client.daemon, client.local_dir) == ("Incus", "/var/lib/incus")


def test_a_wait_that_outlives_its_timeout_reads_the_operation_on_either_daemon(monkeypatch, tmp_path):
    """LXD answers a timed-out wait with the operation still running; Incus answers it with an error
    ("context deadline exceeded", HTTP 200 of type error): both come to "did not finish"."""
    import pylxd.exceptions
    client, daemon = fake_client(monkeypatch, tmp_path, "incus", "exec-output")
    running = FakeResponse({"metadata": {"status": "Running"}})

    def incus_wait(**kwargs):
        raise pylxd.exceptions.LXDAPIException(FakeResponse({"type": "error", "error": "context deadline exceeded"}))

    daemon.answers[("get", "/operations/op1/wait")] = incus_wait
    daemon.answers[("get", "/operations/op1")] = running
    daemon.answers[("delete", "/operations/op1")] = FakeResponse()
    with pytest.raises(LxdError, match="x: did not finish within 0 s"):
        client.wait(FakeResponse({"type": "async", "operation": "/1.0/operations/op1"}), "x", timeout=0)
    daemon.answers[("get", "/operations/op1")] = FakeResponse({"metadata": {"status": "Success", "metadata": {"a": 1}}})
    assert client.wait(FakeResponse({"type": "async", "operation": "/1.0/operations/op1"}), "x", timeout=0)["metadata"] == {"a": 1}
    daemon.answers[("get", "/operations/op1/wait")] = running  # LXD
    daemon.answers[("get", "/operations/op1")] = None
    with pytest.raises(LxdError, match="x: did not finish within 0 s"):
        client.wait(FakeResponse({"type": "async", "operation": "/1.0/operations/op1"}), "x", timeout=0)


# ---- for the lxd connection: bytes exactly, a file streamed, one shared pool per socket ----
def test_exec_raw_gives_the_bytes_as_written(monkeypatch, tmp_path):
    client, daemon = fake_client(monkeypatch, tmp_path, "lxd", "")
    daemon.exec_answers("c1", "abc")
    daemon.answers[("get", "/instances/c1/logs/exec_abc.stdout")] = FakeResponse(content=b"\xff\xfe\x00 bin")
    assert client.exec("c1", ["true"], raw=True) == (3, b"\xff\xfe\x00 bin", b"err\n")
    assert client.exec("c1", ["true"]).stdout == "\ufffd\ufffd\x00 bin"  # text, as before
    client.close()


class StreamedResponse(FakeResponse):
    def __init__(self, chunks, headers=None):
        super().__init__(headers=headers or {})
        self.chunks, self.closed, self.asked = chunks, False, None

    def iter_content(self, size):
        self.asked = size
        return iter(self.chunks)

    def close(self):
        self.closed = True


def test_pull_file_to_streams_chunks_into_the_handle(monkeypatch, tmp_path):
    import io
    client, daemon = fake_client(monkeypatch, tmp_path, "lxd", "")
    response = StreamedResponse([b"\x00" * 5, b"\xff" * 3])
    seen = {}

    def answer(**kwargs):
        seen.update(kwargs)
        return response
    daemon.answers[("get", "/instances/c1/files")] = answer
    handle = io.BytesIO()
    assert client.pull_file_to("c1", "/x", handle, chunk_size=4) == 8
    assert handle.getvalue() == b"\x00" * 5 + b"\xff" * 3
    assert seen["stream"] is True and seen["params"] == {"path": "/x"} and response.asked == 4 and response.closed


def test_pull_file_to_a_missing_or_directory_path(monkeypatch, tmp_path):
    import io
    import pylxd.exceptions
    client, daemon = fake_client(monkeypatch, tmp_path, "lxd", "")

    def missing(**kwargs):
        raise pylxd.exceptions.NotFound(FakeResponse({"error": "not found"}))
    daemon.answers[("get", "/instances/c1/files")] = missing
    handle = io.BytesIO()
    assert client.pull_file_to("c1", "/nope", handle) is None and handle.getvalue() == b""
    daemon.answers[("get", "/instances/c1/files")] = StreamedResponse([b"[]"], headers={"X-LXD-type": "directory"})
    with pytest.raises(LxdError, match="read /etc in c1: is a directory"):
        client.pull_file_to("c1", "/etc", handle)
    assert handle.getvalue() == b""


def test_the_unix_session_keeps_one_pool_per_socket_for_every_url():
    from ansible_collections.homelab.onebox.plugins.module_utils._lxd import UNIX_POOL_SIZE, unix_session
    adapter = unix_session().get_adapter("http+unix://%2Fvar%2Flib%2Flxd%2Funix.socket/1.0")
    first = adapter.get_connection("http+unix://%2Fvar%2Flib%2Flxd%2Funix.socket/1.0/operations/a/wait")
    for index in range(40):  # pylxd's own made a pool per URL and closed the 26th-last
        assert adapter.get_connection("http+unix://%%2Fvar%%2Flib%%2Flxd%%2Funix.socket/1.0/x/%d" % index) is first
    assert first.pool is not None and first.pool.maxsize == UNIX_POOL_SIZE
    assert first.socket_url == "http+unix://%2Fvar%2Flib%2Flxd%2Funix.socket"
    other = adapter.get_connection("http+unix://%2Fvar%2Flib%2Fincus%2Funix.socket/1.0")
    assert other is not first


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200001])
def test_a_websocket_frame_is_what_a_server_reads_back(size):
    """websocket_frame's masking checked by ws4py's own frame parser, a server's side (masked input expected)."""
    import os
    from ws4py.streaming import Stream
    from ansible_collections.homelab.onebox.plugins.module_utils._lxd import websocket_frame
    data = os.urandom(size)
    frame = websocket_frame(data)
    assert frame[0] == 0x82 and frame[1] & 0x80  # a final binary frame, masked
    server = Stream(always_mask=False, expect_masking=True)
    rest = frame
    wanted = next(server.parser)
    while rest:
        chunk, rest = rest[:wanted], rest[wanted:]
        wanted = server.parser.send(chunk) or 2
    assert server.has_message and bytes(server.message.data) == data


def test_exec_stream_is_refused_over_https(monkeypatch, tmp_path):
    client, _daemon = fake_client(monkeypatch, tmp_path, "lxd", "")
    client.endpoint = "https://192.0.2.10:8443"
    with pytest.raises(LxdError, match="only over the local socket"):
        client.exec_stream("c", ["python3"], None, None, None)
