"""_nginx_target: the host and LXD targets on a real directory (the LXD target's sh scripts run
here through a stand-in for LxdClient.exec; nginx is a scripted answer), nginx's command lines."""
import os

import pytest

from ansible_collections.homelab.onebox.plugins.module_utils import _nginx_target as nt
from unit.fake_nginx import HostModule, directory_target


@pytest.fixture(params=["host", "lxd"])
def target(request, tmp_path):
    return directory_target(request.param, tmp_path)


def test_read_sees_conf_files_and_leftovers(target):
    d = target.conf_dir
    for name, text in (("a.conf", "one\ntwo\n"), ("b.conf", "no newline"), ("c.txt", "x"),
                       (".onebox-a.conf.new", "x"), ("empty.conf", "")):
        with open(os.path.join(d, name), "w") as handle:
            handle.write(text)
    os.mkdir(os.path.join(d, "dir.conf"))
    os.symlink("a.conf", os.path.join(d, "link.conf"))
    files, leftovers = target.read()
    assert files == {"a.conf": "one\ntwo\n", "b.conf": "no newline", "empty.conf": ""}
    assert leftovers == [".onebox-a.conf.new"]


def test_included_files():
    dump = "# configuration file /etc/nginx/nginx.conf:\nx\n# configuration file /etc/nginx/conf.d/a.conf:\n"
    assert nt.included_files(dump) == {"/etc/nginx/nginx.conf", "/etc/nginx/conf.d/a.conf"}


def test_nginx_command_lines():
    assert nt.test_and_dump_command("nginx") == ["nginx", "-T", "-q"]
    assert nt.reload_command("/usr/sbin/nginx", "/srv/n", "/srv/n/nginx.conf") == [
        "/usr/sbin/nginx", "-p", "/srv/n", "-c", "/srv/n/nginx.conf", "-s", "reload"]


def test_host_target_refuses_a_missing_directory(tmp_path):
    target = nt.HostTarget(HostModule(None), str(tmp_path / "nope"), ["nginx", "-T"], ["nginx", "-s", "reload"])
    with pytest.raises(nt.NginxError) as err:
        target.read()
    assert "does not exist" in err.value.msg
