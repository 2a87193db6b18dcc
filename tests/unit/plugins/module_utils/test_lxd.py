"""_lxd: finding the daemon, its errors, reading addresses out of a state."""
import pytest

from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError, ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._lxd import LxdClient, LxdError, endpoint_from_url, find_socket


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
    with pytest.raises(LxdError, match="no LXD socket found"):
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
