"""_health: probes against real servers on loopback (an HTTP server answering a chosen status, a
listening socket, a port nobody listens on) and the wait's clock."""
from __future__ import annotations

import http.server
import socket
import threading

import pytest

from ansible_collections.homelab.onebox.plugins.module_utils import _health
from ansible_collections.homelab.onebox.plugins.module_utils._health import HealthError, describe, probe, wait_healthy


@pytest.fixture
def server():
    """An HTTP server on loopback answering GET with the status in ``server.status``, recording
    the Host header it was sent."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            httpd.hosts.append(self.headers.get("Host"))
            httpd.paths.append(self.path)
            self.send_response(httpd.status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.status, httpd.hosts, httpd.paths = 200, [], []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_http_passes_on_the_expected_status_and_sends_the_proxys_host_name(server):
    check = {"http": "/health/", "port": server.server_port, "expect": 200, "host": "shop.example.test"}
    assert probe("127.0.0.1", check) is None
    assert server.hosts == ["shop.example.test"] and server.paths == ["/health/"]


def test_http_fails_on_another_status_saying_which(server):
    server.status = 503
    check = {"http": "/", "port": server.server_port, "expect": 200}
    assert probe("127.0.0.1", check) == "GET http://127.0.0.1:%d/ answered 503, expected 200" % server.server_port
    assert probe("127.0.0.1", dict(check, expect=503)) is None
    assert server.hosts[-1] == "127.0.0.1"  # no name given: the address


def test_a_refused_connection_is_what_a_probe_says():
    port = free_port()
    said = probe("127.0.0.1", {"http": "/", "port": port, "expect": 200})
    assert said.startswith("GET http://127.0.0.1:%d/: " % port) and "refused" in said.lower()
    said = probe("127.0.0.1", {"tcp": port})
    assert said.startswith("tcp 127.0.0.1:%d: " % port) and "refused" in said.lower()


def test_tcp_passes_once_something_listens():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        assert probe("127.0.0.1", {"tcp": sock.getsockname()[1]}) is None


def test_describe():
    assert describe("10.0.0.5", {"tcp": 5432}) == "tcp 10.0.0.5:5432"
    assert describe("10.0.0.5", {"http": "/h", "port": 8000}) == "GET http://10.0.0.5:8000/h"


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_the_wait_returns_once_a_probe_passes_with_the_time_it_took():
    clock, answers = Clock(), ["refused", "refused", None]
    waited = wait_healthy("a", {"tcp": 1, "timeout": 10}, clock=clock, sleep=clock.sleep,
                          probe_once=lambda address, check, seconds: answers.pop(0))
    assert waited == pytest.approx(2 * _health.POLL_SECONDS) and answers == []


def test_the_wait_gives_up_after_its_timeout_with_the_last_probes_words():
    clock, seen = Clock(), []

    def never(address, check, seconds):
        seen.append(seconds)
        return "tcp a:1: refused %d" % len(seen)
    with pytest.raises(HealthError) as caught:
        wait_healthy("a", {"tcp": 1, "timeout": 2}, clock=clock, sleep=clock.sleep, probe_once=never)
    assert caught.value.msg == "not healthy after 2 s: tcp a:1: refused %d" % len(seen)
    assert len(seen) == int(2 / _health.POLL_SECONDS) + 1
    # A probe never outlasts what is left of the wait.
    assert all(0 < seconds <= _health.PROBE_SECONDS for seconds in seen) and seen[-1] <= 0.1 + 1e-9
