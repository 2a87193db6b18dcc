"""Real nginx and real backends for the nginx_site / reverse_proxy tests.

Two environments with one interface:
  HostEnv  an nginx master of our own (``nginx -p DIR -c DIR/nginx.conf``, loopback ports, pid file
           in DIR) and python3 backends on loopback ports; every process is ours and stopped by PID.
  LxdEnv   nginx inside a proxy container and the backends inside a second container, reached by
           its name through LXD's DNS; requests go from the host to the proxy container's address.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import uuid

# A backend that answers with its name, the path and the request headers (JSON), and does a
# WebSocket handshake followed by a raw echo when asked to upgrade.
BACKEND = r'''
import base64, hashlib, json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
NAME, PORT = sys.argv[1], int(sys.argv[2])
BIND = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            key = self.headers.get("Sec-WebSocket-Key", "")
            accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", accept.decode())
            self.end_headers()
            self.wfile.flush()
            while True:
                data = self.rfile.read1(4096)
                if not data:
                    break
                self.wfile.write(b"echo:" + data)
                self.wfile.flush()
            self.close_connection = True
            return
        body = json.dumps({"name": NAME, "path": self.path,
                           "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ThreadingHTTPServer.allow_reuse_address = True
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer((BIND, PORT), H).serve_forever()
'''


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(host, port, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("nothing listens on %s:%s after %ss" % (host, port, timeout))


def until(fn, timeout=15, interval=0.1):
    """Call fn until it returns something true; return that, or fail with the last answer."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as exc:  # pylint: disable=broad-except
            last = exc
        time.sleep(interval)
    raise AssertionError("condition not met in %ss, last: %r" % (timeout, last))


class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)


def request(address, port, host, path="/", tls=False, timeout=10, headers=None):
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(address, port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=dict({"Host": host}, **(headers or {})))
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode("utf-8", "replace"))
    finally:
        conn.close()


def websocket_echo(address, port, host, path="/", timeout=10):
    """Upgrade through the proxy; return (status line, echoed bytes)."""
    with socket.create_connection((address, port), timeout=timeout) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path, host, key)).encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        head, _sep, rest = data.partition(b"\r\n\r\n")
        sock.sendall(b"ping")
        deadline = time.monotonic() + timeout
        while b"echo:ping" not in rest and time.monotonic() < deadline:
            chunk = sock.recv(4096)
            if not chunk:
                break
            rest += chunk
        return head.decode().split("\r\n")[0], rest


class RequestLoop:
    """Requests in a thread until stopped; counts successes and failures."""

    def __init__(self, fn):
        self.fn = fn
        self.ok = 0
        self.failures = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.fn()
                self.ok += 1
            except Exception as exc:  # pylint: disable=broad-except
                self.failures.append(repr(exc))
            time.sleep(0.005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=30)


def snapshot(directory):
    """Every file in the directory (hidden ones too), byte for byte."""
    out = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        with open(path, "rb") as handle:
            out[name] = handle.read()
    return out


# ---- host ---------------------------------------------------------------------------------------
NGINX_CONF = """worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 512; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    include {d}/conf.d/*.conf;
}}
"""


class HostBackend:
    def __init__(self, name, port):
        self.name, self.port, self.proc = name, port, None
        self.upstream = "127.0.0.1:%d" % port

    def start(self):
        self.proc = subprocess.Popen(["python3", "-c", BACKEND, self.name, str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port("127.0.0.1", self.port)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


class HostEnv:
    kind = "host"

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="onebox-nginx-")
        self.conf_dir = os.path.join(self.dir, "conf.d")
        os.makedirs(self.conf_dir)
        tmp = os.path.join(self.dir, "tmp")
        os.makedirs(tmp)
        os.chmod(tmp, 0o777)
        with open(os.path.join(self.dir, "nginx.conf"), "w") as handle:
            handle.write(NGINX_CONF.format(d=self.dir))
        self.address = "127.0.0.1"
        self.http_port = free_port()
        self.https_port = free_port()
        self.backends = []
        subprocess.run(["nginx", "-p", self.dir, "-c", os.path.join(self.dir, "nginx.conf")],
                       check=True, timeout=30, capture_output=True)
        self.pid = self._pid()

    def _pid(self):
        deadline = time.monotonic() + 10
        path = os.path.join(self.dir, "nginx.pid")
        while time.monotonic() < deadline:
            if os.path.exists(path):
                with open(path) as handle:
                    text = handle.read().strip()
                if text:
                    return int(text)
            time.sleep(0.05)
        raise AssertionError("our nginx wrote no pid file")

    @property
    def listen(self):
        return "127.0.0.1:%d" % self.http_port

    @property
    def tls_listen(self):
        return "127.0.0.1:%d" % self.https_port

    def module_args(self, **args):
        base = dict(conf_dir=self.conf_dir, nginx_prefix=self.dir, nginx_conf=os.path.join(self.dir, "nginx.conf"))
        base.update(args)
        return base

    def backend(self, name):
        backend = HostBackend(name, free_port())
        backend.start()
        self.backends.append(backend)
        return backend

    def snapshot(self):
        return snapshot(self.conf_dir)

    def write_file(self, name, text):
        with open(os.path.join(self.conf_dir, name), "w") as handle:
            handle.write(text)

    def make_cert(self, cn):
        key, crt = os.path.join(self.dir, "%s.key" % cn), os.path.join(self.dir, "%s.pem" % cn)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt,
                        "-days", "2", "-subj", "/CN=%s" % cn], check=True, capture_output=True, timeout=60)
        return crt, key

    def close(self):
        for backend in self.backends:
            backend.stop()
        try:
            os.kill(self.pid, signal.SIGQUIT)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.kill(self.pid, signal.SIGKILL)
        subprocess.run(["rm", "-rf", self.dir], check=False, timeout=30)


# ---- LXD -----------------------------------------------------------------------------------------
def launch(lxd, name, image="onebox-debian12", timeout=120):
    lxd.create_instance({"name": name, "source": {"type": "image", "alias": image}}, timeout=timeout)
    lxd.change_state(name, "start", timeout=60)
    addresses, _state = lxd.wait_ipv4(name, timeout=60)
    return addresses[0]


class LxdBackend:
    def __init__(self, env, name, port):
        self.env, self.name, self.port = env, name, port
        self.upstream = "%s:%d" % (env.backend_instance, port)

    def start(self):
        out = self.env.lxd.run(self.env.backend_instance, [
            "sh", "-c", 'nohup setsid python3 -c "$1" "$2" "$3" 0.0.0.0 >/dev/null 2>&1 </dev/null & echo $!',
            "sh", BACKEND, self.name, str(self.port)], timeout=30)
        self.pid = int(out.strip())
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.env.backend_address, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("backend %s did not start in the container" % self.name)

    def stop(self):
        self.env.lxd.exec(self.env.backend_instance, ["kill", str(self.pid)], timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.env.backend_address, self.port), timeout=1):
                    time.sleep(0.1)
            except OSError:
                return
        raise AssertionError("backend %s did not stop" % self.name)


class LxdEnv:
    kind = "lxd"
    http_port = 80
    https_port = 443
    conf_dir = "/etc/nginx/conf.d"

    def __init__(self, lxd, prefix):
        self.lxd = lxd
        self.instance = "%s-proxy-%s" % (prefix, uuid.uuid4().hex[:4])
        self.backend_instance = "%s-back-%s" % (prefix, uuid.uuid4().hex[:4])
        self.names = [self.instance, self.backend_instance]
        try:
            self.address = launch(lxd, self.instance)
            self.backend_address = launch(lxd, self.backend_instance)
            # nginx as the image ships it, minus Debian's default site (its default_server on :80).
            # (no server block left, so it listens nowhere until the tests add sites)
            lxd.run(self.instance, ["sh", "-c", "rm -f /etc/nginx/sites-enabled/default && systemctl enable --now nginx "
                                                "&& systemctl is-active nginx"], timeout=90)
        except BaseException:
            self.close()
            raise
        self.next_port = 9001

    listen = "80"
    tls_listen = "443"

    def module_args(self, **args):
        base = dict(instance=self.instance)
        base.update(args)
        return base

    def backend(self, name):
        port = self.next_port
        self.next_port += 1
        backend = LxdBackend(self, name, port)
        backend.start()
        return backend

    def snapshot(self):
        out = self.lxd.run(self.instance, [
            "sh", "-c", 'cd "$1" && for f in .[!.]* *; do [ -f "$f" ] && printf "%s %s\\n" "$f" "$(sha256sum < "$f")"; done; true',
            "sh", self.conf_dir], timeout=30)
        return out

    def write_file(self, name, text):
        self.lxd.push_file(self.instance, "%s/%s" % (self.conf_dir, name), text)

    def close(self):
        import conftest  # the suite's own clean-up helper
        for name in self.names:
            conftest.delete_instance_quietly(self.lxd, name)
