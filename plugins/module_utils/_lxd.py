# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The REST transport to LXD or Incus: finding the daemon, one client, its errors; nothing else talks to it.

Built on pylxd's client, using its raw API node (``client.api``) rather than its model objects:
the models re-read the instance on every attribute sync and exec through websockets, which was
measured at ~100 ms a call and lost output under load. Here every call is one REST round trip,
every wait has a timeout, and every LXD/pylxd/requests failure becomes an LxdError.

Incus (LXD's fork; Debian 13 has only it) speaks the same API 1.0 over its own socket. The
differences the collection meets are handled here, in one place, and were checked against Incus
6.0.4 beside LXD 5.0.2: the socket's path (``$INCUS_DIR``, /var/lib/incus, /run/incus in later
Incus); exec's record-output logs (LXD: ``/1.0/instances/C/logs/exec_ID.stdout``, Incus:
``.../logs/exec-output/exec_ID.stdout``: the paths the operation returns are used as they are);
the files API's response headers (``X-Incus-Type``; Incus still reads ``X-LXD-*`` request
headers); the daemon's name in messages (``LxdClient.daemon``). Leases (``networks/NAME/
dnsmasq.leases`` under the daemon's directory), images and aliases, custom volumes, backups,
``volatile.base_image`` and ``host_info`` have the same shape on both.
"""
from __future__ import annotations

import os
import re
import sys
import threading
import time
import traceback
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urlsplit

from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError

# The oldest pylxd this code works with: Client(project=...) came in 2.3.0, Client(session=...) and
# pylxd.client.get_session_for_url (the HTTPS session below) in 2.3.2. Debian 12's python3-pylxd is
# 2.2.10 ("unexpected keyword argument 'project'"). requirements.txt says the same.
PYLXD_MINIMUM = (2, 3, 2)

try:
    import pylxd
    import pylxd.client
    import pylxd.exceptions
    import requests.exceptions
except ImportError:  # pragma: no cover - reported by require_pylxd()
    PYLXD_IMPORT_ERROR = traceback.format_exc()
    PYLXD_VERSION = PYLXD_PATH = None
else:
    PYLXD_IMPORT_ERROR = None
    PYLXD_PATH = os.path.dirname(pylxd.__file__)
    try:  # the installed distribution's version (pylxd.__version__ is the same where it exists)
        from importlib.metadata import version as _distribution_version
        PYLXD_VERSION = _distribution_version("pylxd")
    except ImportError:  # no metadata for it (a copied tree): take pylxd's word
        PYLXD_VERSION = getattr(pylxd, "__version__", None)


def version_tuple(text):
    """(2, 2, 10) from "2.2.10" (or "2.2.10-1", "2.4.2.dev3"); None when it starts with no number."""
    numbers = re.match(r"\d+(?:\.\d+)*", str(text or "").strip())
    return tuple(int(part) for part in numbers.group(0).split(".")) if numbers else None


def pylxd_problem(version, import_error=None, python=None, path=None):
    """Why the modules cannot use a Python's pylxd, or None when they can: it did not import
    (``import_error``, its traceback) or its ``version`` is older than PYLXD_MINIMUM. An unreadable
    version is let through (the daemon's own errors say the rest)."""
    minimum = ".".join(str(part) for part in PYLXD_MINIMUM)
    fix = ("pip install 'pylxd>=%s' in the Python that runs the modules (%s; ansible_python_interpreter "
           "names it, e.g. a virtual environment's bin/python on the box's host)" % (minimum, python or sys.executable))
    if import_error:
        lines = import_error.strip().splitlines()
        return "pylxd cannot be imported (%s); homelab.onebox needs pylxd >= %s: %s" % (lines[-1], minimum, fix)
    found = version_tuple(version)
    if found is not None and found < PYLXD_MINIMUM:
        return "pylxd %s is installed%s; homelab.onebox needs pylxd >= %s: %s" % (
            version, " (%s)" % path if path else "", minimum, fix)
    return None


def require_pylxd():
    """Raise LxdError saying what to install when this Python's pylxd will not do (the one check)."""
    problem = pylxd_problem(PYLXD_VERSION, PYLXD_IMPORT_ERROR, path=PYLXD_PATH)
    if problem:
        raise LxdError(problem)


# LXD's Debian package, LXD's snap, Incus (its package; /run/incus in Incus releases after 6.0):
# the first that exists wins, after $LXD_DIR's and $INCUS_DIR's.
SOCKET_PATHS = (
    "/var/lib/lxd/unix.socket",
    "/var/snap/lxd/common/lxd/unix.socket",
    "/var/lib/incus/unix.socket",
    "/run/incus/unix.socket",
)
DIR_VARIABLES = ("LXD_DIR", "INCUS_DIR")
# A socket outside its daemon's directory: the directory (where networks/NAME/dnsmasq.leases is).
DAEMON_DIRS = {"/run/incus": "/var/lib/incus"}
# What host_info's environment.server says -> the daemon's name in messages.
DAEMON_NAMES = {"lxd": "LXD", "incus": "Incus"}
EITHER = "LXD or Incus"  # a message's daemon before one answered

ExecResult = namedtuple("ExecResult", "rc stdout stderr")


class LxdError(OneboxError):
    """Anything that went wrong talking to the daemon (LXD or Incus), with its own words in the message."""


class LxdNotFound(LxdError):
    pass


def find_socket(environ=None, exists=os.path.exists):
    """The socket to use when the user named none, or None when there is none: $LXD_DIR's,
    $INCUS_DIR's, then SOCKET_PATHS (LXD's first)."""
    environ = os.environ if environ is None else environ
    candidates = [os.path.join(environ[name], "unix.socket") for name in DIR_VARIABLES if environ.get(name)]
    candidates.extend(SOCKET_PATHS)
    for path in candidates:
        if exists(path):
            return path
    return None


def endpoint_from_url(url, environ=None, exists=os.path.exists):
    """Map the user's ``lxd_url`` to what pylxd.Client takes: a socket path or an https URL."""
    if not url:
        path = find_socket(environ, exists)
        if path is None:
            raise LxdError(
                "no %s socket found (looked at %s and %s); is LXD or Incus installed and running? "
                "Set lxd_url to its socket or https URL."
                % (EITHER, ", ".join("$%s/unix.socket" % name for name in DIR_VARIABLES), ", ".join(SOCKET_PATHS)))
        return path
    if url.startswith("unix:"):
        url = url[len("unix:"):]
        url = "/" + url.lstrip("/")
    if url.startswith("/"):
        if not exists(url):
            raise LxdError("lxd_url: socket %s does not exist; is %s running?" % (url, EITHER))
        return url
    if url.startswith("https://"):
        return url
    raise LxdError("lxd_url: invalid value %r: must be a socket path, unix:/path or https://host:port" % url)


UNIX_POOL_SIZE = 32  # connections kept to the socket: one a thread of a busy caller (the lxd connection's broker)


def unix_session():
    """A requests session to a daemon's socket whose connections are kept and shared by every
    request. pylxd's own (2.4.2) keeps one pool per request URL (each operation, each exec record
    a new one, never reused) and closes the 26th-last while another thread may be using it: under
    the broker's load an exec failed "'NoneType' object has no attribute 'qsize'" (a closed pool).
    None when this pylxd lacks the parts (its own session is used then)."""
    import requests
    import urllib3
    connection = getattr(pylxd.client, "_UnixSocketHTTPConnection", None)
    if connection is None:
        return None

    class SocketPool(urllib3.HTTPConnectionPool):
        def __init__(self, socket_url):
            super().__init__("localhost", maxsize=UNIX_POOL_SIZE)
            self.socket_url = socket_url

        def _new_conn(self):
            return connection(self.socket_url)

    class SocketAdapter(requests.adapters.HTTPAdapter):
        def __init__(self):
            super().__init__()
            self._pools = {}
            self._pools_lock = threading.Lock()

        def get_connection(self, url, proxies=None):
            socket_url = "http+unix://%s" % urlsplit(url).netloc
            with self._pools_lock:
                if socket_url not in self._pools:
                    self._pools[socket_url] = SocketPool(socket_url)
                return self._pools[socket_url]

        def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
            return self.get_connection(request.url)

        def request_url(self, request, proxies):
            return request.path_url

        def close(self):
            with self._pools_lock:
                for pool in self._pools.values():
                    pool.close()
                self._pools.clear()

    session = requests.Session()
    session.mount("http+unix://", SocketAdapter())
    return session


def daemon_name(host_info):
    """"LXD" or "Incus": which daemon answered, from its host_info (LXD when it does not say)."""
    server = ((host_info or {}).get("environment") or {}).get("server")
    return DAEMON_NAMES.get(server, "LXD")


def daemon_dir(endpoint):
    """The local daemon's directory of its socket path, None for an https URL."""
    if not endpoint.startswith("/"):
        return None
    directory = os.path.dirname(endpoint)
    return DAEMON_DIRS.get(directory, directory)


def describe_error(exc):
    """LXD's own error text out of a pylxd/requests exception."""
    if PYLXD_IMPORT_ERROR is None and isinstance(exc, pylxd.exceptions.LXDAPIException):
        try:
            return exc.response.json().get("error") or str(exc)
        except ValueError:
            return str(exc) or exc.response.text
    return str(exc) or exc.__class__.__name__


def websocket_frame(data, key=None):
    """One binary websocket frame of ``data``, masked as a client's must be (RFC 6455 5.3). The
    masking is one integer XOR: ws4py's own masks byte by byte in Python, 16 ms for a module's
    150 KB here."""
    key = key or os.urandom(4)
    size = len(data)
    if size < 126:
        head = bytes([0x82, 0x80 | size])
    elif size < 1 << 16:
        head = bytes([0x82, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x82, 0x80 | 127]) + size.to_bytes(8, "big")
    if not size:
        return head + key
    pad = (key * (size // 4 + 1))[:size]
    return head + key + (int.from_bytes(data, "big") ^ int.from_bytes(pad, "big")).to_bytes(size, "big")


class ExecStream:
    """A running exec's stdin, stdout and stderr websockets (LxdClient.exec_stream)."""

    def __init__(self, url, resource, fds, on_stdout, on_stderr, on_close, timeout=30):
        from ws4py.client import WebSocketBaseClient  # pylxd's own dependency; only the connection's broker needs it

        class Socket(WebSocketBaseClient):
            def __init__(self, secret, handler=None, closed=None):
                # No Origin header (as pylxd: LXD refuses one it does not know).
                super().__init__(url, exclude_headers=["origin"])
                self.resource = "%s?secret=%s" % (resource, secret)
                self._handler, self._on_closed = handler, closed

            def received_message(self, message):
                if self._handler is not None and message.data:
                    self._handler(bytes(message.data))

            def closed(self, code, reason=None):
                if self._on_closed is not None:
                    self._on_closed()

            def unhandled_error(self, error):
                pass  # the socket ends: closed() says so

        self._send_lock = threading.Lock()
        self._sockets = [Socket(fds["0"]), Socket(fds["1"], on_stdout, on_close), Socket(fds["2"], on_stderr)]
        try:
            for sock in self._sockets:
                sock.sock.settimeout(timeout)  # the handshake; then stdin's writes (a reader's run() blocks)
                sock.connect()
        except Exception:
            self.close()
            raise
        for sock in self._sockets[1:]:
            threading.Thread(target=sock.run, name="exec-stream", daemon=True).start()

    def send(self, data):
        """Write ``data`` to the command's stdin (several threads may)."""
        frame = websocket_frame(data)
        with self._send_lock:
            self._sockets[0].sock.sendall(frame)

    def close(self):
        """Close its stdin (the command reads its end) and the sockets."""
        for sock in self._sockets:
            try:
                sock.close()
            except Exception:  # pylint: disable=broad-except  # closing what may be gone already
                pass
        try:
            self._sockets[0].close_connection()
        except Exception:  # pylint: disable=broad-except
            pass


class LxdClient:
    """A connection to one daemon, LXD or Incus (``daemon`` says which). Create with
    ``LxdClient.from_params(module.params)``."""

    def __init__(self, url=None, client_cert=None, client_key=None, verify=True, project=None, timeout=30):
        require_pylxd()
        self.timeout = timeout
        endpoint = endpoint_from_url(url)
        cert = (client_cert, client_key) if client_cert else None
        if isinstance(verify, str) and verify.lower() in ("true", "yes", "false", "no"):
            verify = verify.lower() in ("true", "yes")
        session = None
        if endpoint.startswith("https://"):
            # pylxd pins the server's certificate when ``verify`` is its file, but requests lets
            # REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE in the environment replace a session's ``verify``
            # (set on this machine: the pin was then checked against the system's CA bundle, and
            # failed as "Fingerprints did not match"), and HTTPS_PROXY route the daemon's traffic
            # elsewhere. The daemon is reached as configured, whatever the environment says.
            endpoint = endpoint.rstrip("/")
            session = pylxd.client.get_session_for_url(endpoint, verify=verify, cert=cert)
            session.trust_env = False
        else:
            session = unix_session()
        try:
            self._client = pylxd.Client(endpoint=endpoint, cert=cert, verify=verify,
                                        project=project, timeout=timeout, session=session)
        except Exception as exc:  # pylxd raises ClientConnectionFailed, requests raises its own
            said = describe_error(exc)
            if "Fingerprints did not match" in said:
                said = ("its certificate is not the one lxd_verify names (%s): the daemon's own is its server.crt "
                        "(/var/lib/lxd/server.crt or /var/lib/incus/server.crt, or `lxc info` / `incus info` under its "
                        "certificate), copied to the controller; %s"
                        % (verify, said))
            raise LxdError("cannot connect to %s at %s: %s" % (EITHER, endpoint, said))
        self.daemon = daemon_name(self._client.host_info)
        if endpoint.startswith("https://") and self._client.host_info.get("auth") != "trusted":
            raise LxdError("%s at %s does not trust this client (lxd_client_cert %s): add its certificate on the "
                           "daemon's host with `lxc config trust add CERT` (LXD) or `incus config trust "
                           "add-certificate CERT` (Incus)" % (self.daemon, endpoint, client_cert))
        self.api = self._client.api
        self.server = self._client.host_info
        self.endpoint = endpoint  # what messages name as where the daemon is (a socket path or https URL)
        # A local daemon's directory: its bridges' dnsmasq lease files are read there (_addresses).
        self.local_dir = daemon_dir(endpoint)
        self._pool = None
        self._lock = threading.Lock()
        self._read_once = {}

    @classmethod
    def from_params(cls, params):
        return cls(url=params.get("lxd_url"), client_cert=params.get("lxd_client_cert"),
                   client_key=params.get("lxd_client_key"), verify=params.get("lxd_verify", True),
                   project=params.get("lxd_project"), timeout=params.get("lxd_timeout") or 30)

    # ---- raw requests -------------------------------------------------------------------
    def request(self, method, node, what, **kwargs):
        """One API call. Returns the response; raises LxdNotFound on 404, LxdError otherwise."""
        try:
            return getattr(node, method)(**kwargs)
        except pylxd.exceptions.NotFound as exc:
            raise LxdNotFound("%s: not found (%s)" % (what, describe_error(exc)))
        except (pylxd.exceptions.LXDAPIException, requests.exceptions.RequestException) as exc:
            raise LxdError("%s: %s" % (what, describe_error(exc)))

    def metadata(self, method, node, what, **kwargs):
        return self.request(method, node, what, **kwargs).json()["metadata"]

    def wait(self, response, what, timeout=None):
        """Wait for the operation a response started; return the operation's metadata."""
        body = response.json()
        if body.get("type") != "async":
            return body.get("metadata")
        timeout = self.timeout if timeout is None else timeout
        op_id = body["operation"].rstrip("/").split("/")[-1]
        deadline = time.monotonic() + timeout
        while True:
            # LXD caps one wait; loop so a long operation (an image unpack) can still finish.
            left = max(1, int(deadline - time.monotonic() + 0.999))
            try:
                op = self.metadata("get", self.api.operations[op_id].wait, what,
                                   params={"timeout": left}, timeout=left + 10)
            except LxdNotFound:
                raise
            except LxdError:
                # A wait that outlives its timeout: LXD answers the operation, still running; Incus
                # an error ("context deadline exceeded"). Read the operation itself.
                op = self.metadata("get", self.api.operations[op_id], what)
            if op["status"] == "Success":
                return op
            if op["status"] in ("Failure", "Cancelled"):
                raise LxdError("%s: %s" % (what, op.get("err") or op["status"]))
            if time.monotonic() >= deadline:
                # Best effort: ask LXD to cancel; not every operation can be cancelled.
                try:
                    self.api.operations[op_id].delete()
                except Exception:  # pylint: disable=broad-except
                    pass
                raise LxdError("%s: did not finish within %s s" % (what, timeout))

    # ---- instances ----------------------------------------------------------------------
    def instance(self, name, state=True):
        """The instance with its state (one round trip, recursion=1), or None when absent.
        ``state=False``: without it, which spares LXD collecting it (it enters the container)."""
        try:
            return self.metadata("get", self.api.instances[name], "instance %s" % name,
                                 params={"recursion": 1 if state else 0})
        except LxdNotFound:
            return None

    def instances(self, state=False):
        """Every instance in one request; ``state=True``: with its state (addresses, status)."""
        return self.metadata("get", self.api.instances, "list instances", params={"recursion": 2 if state else 1})

    def host_cpus(self):
        """How many CPUs the daemon's host has (limits.cpu beyond them cannot be met)."""
        return self._remembered("resources", "cpu", lambda: int(
            self.metadata("get", self.api.resources, "host resources")["cpu"]["total"]))

    def instance_state(self, name):
        return self.metadata("get", self.api.instances[name].state, "state of instance %s" % name)

    def create_instance(self, body, timeout=None, target=None):
        """``target``: the cluster member to make it on (None: where the daemon places it)."""
        what = "create instance %s" % body.get("name")
        params = {"target": target} if target else None
        self.wait(self.request("post", self.api.instances, what, json=body, params=params), what,
                  timeout=timeout or max(self.timeout, 120))

    def patch_instance(self, name, body):
        what = "update instance %s" % name
        self.wait(self.request("patch", self.api.instances[name], what, json=body), what)

    def put_instance(self, name, body):
        """Replace the instance's configuration (the way to remove a device: PATCH never does)."""
        what = "update instance %s" % name
        self.wait(self.request("put", self.api.instances[name], what, json=body), what)

    def change_state(self, name, action, force=False, timeout=None):
        what = "%s instance %s" % (action, name)
        timeout = self.timeout if timeout is None else timeout
        body = {"action": action, "timeout": timeout, "force": force}
        self.wait(self.request("put", self.api.instances[name].state, what, json=body), what,
                  timeout=timeout + 10)

    def delete_instance(self, name):
        what = "delete instance %s" % name
        self.wait(self.request("delete", self.api.instances[name], what), what)

    def ipv4_addresses(self, state, nic=None):
        """Global IPv4 addresses of an instance state, on one NIC or on all but loopback."""
        found = []
        for ifname, net in sorted(((state or {}).get("network") or {}).items()):
            if ifname == "lo" or (nic and ifname != nic):
                continue
            found.extend(a["address"] for a in net.get("addresses") or []
                         if a.get("family") == "inet" and a.get("scope") == "global")
        return found

    def wait_ipv4(self, name, nic=None, timeout=60, interval=0.25):
        """Poll until the instance has an IPv4 address; fail (never return empty) on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.instance_state(name)
            addresses = self.ipv4_addresses(state, nic)
            if addresses:
                return addresses, state
            if state.get("status") != "Running":
                raise LxdError("instance %s is %s, it will get no IPv4 address" % (name, state.get("status")))
            if time.monotonic() >= deadline:
                raise LxdError(
                    "instance %s has no IPv4 address on %s after %s s (is DHCP running in the image, "
                    "or is the static address outside the bridge's subnet?)" % (name, nic or "any NIC", timeout))
            time.sleep(interval)

    # ---- exec and files -----------------------------------------------------------------
    @staticmethod
    def _exec_body(name, command, environment, cwd, user, group):
        if isinstance(command, str) or not command:
            raise LxdError("exec in %s: command must be a non-empty list of arguments" % name)
        body = {"command": [str(arg) for arg in command], "environment": environment or {}, "interactive": False}
        if cwd:
            body["cwd"] = cwd
        if user is not None:
            body["user"] = int(user)
        if group is not None:
            body["group"] = int(group)
        return body

    def exec_stream(self, name, command, on_stdout, on_stderr, on_close, environment=None, cwd=None, user=None,
                    group=None):
        """Start ``command`` with its stdin, stdout and stderr as websockets (wait-for-websocket, not
        interactive) and return its ExecStream: ``send(bytes)`` writes to its stdin; its output goes to
        ``on_stdout(bytes)`` and ``on_stderr(bytes)`` as it comes, from threads of the stream's own;
        ``on_close()`` once its stdout closed (the command ended). For a command that stays (the lxd
        connection's agent); a command that ends is exec's, whose output is never lost.

        A local daemon only: over https, ws4py (pylxd's websocket library) would not check the
        daemon's certificate the way the API calls here do, and the socket's secret would go to
        whoever answered."""
        if not self.endpoint.startswith("/"):
            raise LxdError("exec_stream in %s: only over the local socket, not %s" % (name, self.endpoint))
        body = self._exec_body(name, command, environment, cwd, user, group)
        body["wait-for-websocket"] = True
        what = "exec %s in %s" % (command[0], name)
        started = self.request("post", self.api.instances[name].exec, what, json=body).json()
        try:
            fds = started["metadata"]["metadata"]["fds"]
            op_id = started["operation"].rstrip("/").split("/")[-1]
            resource = urlsplit(self.api.operations[op_id].websocket._api_endpoint).path
            return ExecStream(self._client.websocket_url, resource, fds, on_stdout, on_stderr, on_close,
                              timeout=self.timeout)
        except Exception as exc:  # pylint: disable=broad-except  # a body without fds, ws4py's HandshakeError, a socket's
            raise LxdError("%s: its websockets: %s" % (what, describe_error(exc)))

    def exec(self, name, command, timeout=60, environment=None, cwd=None, user=None, group=None, raw=False):
        """Run ``command`` (argv list) in the instance; return ExecResult(rc, stdout, stderr).

        Uses record-output (no websockets): measured ~20 ms a call here and never lost output.
        Fails when the command outlives ``timeout`` or when the daemon recorded no output files.
        stdout and stderr are text (UTF-8, undecodable bytes replaced), or with ``raw`` the bytes
        exactly as the command wrote them (the connection plugin's: a task's output is binary-safe).
        """
        body = self._exec_body(name, command, environment, cwd, user, group)
        body.update({"wait-for-websocket": False, "record-output": True})
        what = "exec %s in %s" % (command[0], name)
        op = self.wait(self.request("post", self.api.instances[name].exec, what, json=body), what,
                       timeout=timeout)
        meta = op.get("metadata") or {}
        logs = meta.get("output") or {}
        if "return" not in meta or "1" not in logs or "2" not in logs:
            raise LxdError("%s: %s returned no exit code or output record: %r" % (what, self.daemon, meta))
        nodes = [self._log_node(name, logs[fd], what) for fd in ("1", "2")]
        # Both records at once (stderr beside, stdout here); their deletion runs in the background
        # and is awaited in close().
        stderr_read = self._workers().submit(self.request, "get", nodes[1], what, is_api=False)
        stdout = self.request("get", nodes[0], what, is_api=False).content
        stderr = stderr_read.result().content
        if not raw:
            stdout, stderr = stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace")
        for node in nodes:
            self._workers().submit(self._forget_log, node)
        return ExecResult(int(meta["return"]), stdout, stderr)

    def _log_node(self, name, path, what):
        """The API node of an exec record at the path the operation gave: LXD keeps them at
        /1.0/instances/NAME/logs/exec_ID.stdout, Incus at .../logs/exec-output/exec_ID.stdout. A path
        outside the instance's logs is refused: the record is deleted once read."""
        path = urlsplit(path).path  # a ?project= is the node's own to add
        prefix = "/1.0/instances/%s/logs/" % name
        parts = path[len(prefix):].split("/")
        if not path.startswith(prefix) or not all(parts) or ".." in parts:
            raise LxdError("%s: %s gave an output record outside the instance's logs: %r" % (what, self.daemon, path))
        node = self.api.instances[name].logs
        for part in parts:
            node = node[part]
        return node

    def _workers(self):
        with self._lock:  # a set of instances execs from several threads
            if self._pool is None:
                # Enough for every exec of a set at once (box and lxd_instances work on up to
                # ``parallel`` containers): a read queued behind others' clean-ups is a slow exec.
                self._pool = ThreadPoolExecutor(max_workers=16)
            return self._pool

    @staticmethod
    def _forget_log(node):
        # The record stays on the host until deleted; a failure to delete is not the caller's.
        try:
            node.delete()
        except Exception:  # pylint: disable=broad-except
            pass

    def close(self):
        """Finish background clean-ups (exec records). Safe to call more than once."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def run(self, name, command, timeout=60, **kwargs):
        """exec that fails unless the command exits 0; returns stdout."""
        result = self.exec(name, command, timeout=timeout, **kwargs)
        if result.rc != 0:
            output = (result.stderr or result.stdout).strip()[-2000:]
            raise LxdError("in %s, %s exited %d: %s" % (name, " ".join(command), result.rc, output),
                           rc=result.rc, stdout=result.stdout, stderr=result.stderr)
        return result.stdout

    def _files(self, name):
        return self.api.instances[name].files

    def pull_file(self, name, path):
        """The file's bytes, or None when it does not exist."""
        what = "read %s in %s" % (path, name)
        try:
            response = self.request("get", self._files(name), what, params={"path": path}, is_api=False)
        except LxdNotFound:
            return None
        # LXD answers X-LXD-type, Incus X-Incus-Type (it reads either in a request).
        if "directory" in (response.headers.get("X-LXD-type"), response.headers.get("X-Incus-type")):
            raise LxdError("%s: is a directory" % what)
        return response.content

    def pull_file_to(self, name, path, handle, chunk_size=1 << 20):
        """Stream the file into ``handle`` (a binary file object) in chunks, never whole in memory;
        return how many bytes were written, or None when it does not exist (nothing written then)."""
        what = "read %s in %s" % (path, name)
        try:
            response = self.request("get", self._files(name), what, params={"path": path}, is_api=False, stream=True)
        except LxdNotFound:
            return None
        try:
            if "directory" in (response.headers.get("X-LXD-type"), response.headers.get("X-Incus-type")):
                raise LxdError("%s: is a directory" % what)
            written = 0
            try:
                for chunk in response.iter_content(chunk_size):
                    handle.write(chunk)
                    written += len(chunk)
            except requests.exceptions.RequestException as exc:
                raise LxdError("%s: %s" % (what, describe_error(exc)))
            return written
        finally:
            response.close()

    def push_file(self, name, path, data, mode=0o644, uid=0, gid=0):
        """Write a file: ``data`` is bytes, text (UTF-8) or a binary file object, which requests
        streams (its size from fstat) instead of holding it whole. LXD applies mode/uid/gid only
        when it creates the file (over an existing one it keeps the old ones) and only the
        permission bits of the mode (no setuid/setgid/sticky): change those with chmod/chown
        through exec."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        headers = {"X-LXD-type": "file", "X-LXD-mode": "0%o" % mode, "X-LXD-uid": str(uid),
                   "X-LXD-gid": str(gid), "X-LXD-write": "overwrite",
                   "Content-Type": "application/octet-stream"}
        self.request("post", self._files(name), "write %s in %s" % (path, name),
                     params={"path": path}, data=data, headers=headers)

    # ---- images -------------------------------------------------------------------------
    def image_alias(self, alias):
        """The alias's record ({name, target, ...}) or None."""
        try:
            return self.metadata("get", self.api.images.aliases[quote(alias, safe="")], "image alias %s" % alias)
        except LxdNotFound:
            return None

    def image(self, fingerprint):
        try:
            return self.metadata("get", self.api.images[fingerprint], "image %s" % fingerprint)
        except LxdNotFound:
            return None

    def network(self, name):
        """A network's record, or None. Read once per client: a module run changes no network."""
        node = self.api.networks[name]
        return self._remembered("network", name, lambda: self.metadata("get", node, "network %s" % name))

    def network_leases(self, name):
        """DHCP leases (and the gateway) of a managed network, one request."""
        return self.metadata("get", self.api.networks[name].leases, "leases of network %s" % name)

    # ---- custom storage volumes ---------------------------------------------------------
    def volume(self, pool, name):
        """A custom volume's record, or None."""
        try:
            return self.metadata("get", self.api.storage_pools[pool].volumes.custom[name],
                                 "storage volume %s/%s" % (pool, name))
        except LxdNotFound:
            return None

    def custom_volumes(self, pool):
        """Every custom volume of the pool, with its config and ``used_by``, in one request."""
        return self.metadata("get", self.api.storage_pools[pool].volumes.custom,
                             "list storage volumes of %s" % pool, params={"recursion": 1})

    def patch_volume(self, pool, name, body):
        """Change some of a custom volume's config (its size)."""
        self.request("patch", self.api.storage_pools[pool].volumes.custom[name],
                     "update storage volume %s/%s" % (pool, name), json=body)

    def create_volume(self, pool, body):
        self.request("post", self.api.storage_pools[pool].volumes.custom, "create storage volume %s/%s"
                     % (pool, body["name"]), json=body)

    def delete_volume(self, pool, name):
        self.request("delete", self.api.storage_pools[pool].volumes.custom[name],
                     "delete storage volume %s/%s" % (pool, name))

    def profile(self, name):
        """A profile's record, or None. Read once per client: a module run changes no profile."""
        node = self.api.profiles[name]
        return self._remembered("profile", name, lambda: self.metadata("get", node, "profile %s" % name))

    def _remembered(self, kind, name, read):
        # Every instance of a set asks for the same profile and network: one request each.
        key = (kind, name)
        with self._lock:
            if key in self._read_once:
                return self._read_once[key]
        try:
            value = read()
        except LxdNotFound:
            value = None
        with self._lock:
            self._read_once[key] = value
        return value
