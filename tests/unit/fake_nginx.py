"""Stand-ins for the nginx side of unit tests: nginx itself answering ``-T`` from a directory
(FakeNginx), an LxdClient whose exec runs sh here (ShellLxd), a module whose run_command asks the
fake nginx (HostModule), a whole Target in memory (MemoryTarget: a dict of files), and APP, a
site that uses every part.

Import them as ``from unit.fake_nginx import ...`` (``tests/`` is on sys.path under pytest).
"""
from __future__ import annotations

import os
import subprocess

from ansible_collections.homelab.onebox.plugins.module_utils._lxd import ExecResult
from ansible_collections.homelab.onebox.plugins.module_utils._nginx_render import SUFFIX
from ansible_collections.homelab.onebox.plugins.module_utils._nginx_target import (
    STAGE_PREFIX, HostTarget, LxdTarget, Target, backup_name, stage_name)


class FakeNginx:
    """Answers -T with a dump listing the directory's *.conf files, or fails when told to."""

    def __init__(self, conf_dir):
        self.conf_dir = conf_dir
        self.fail = None
        self.include = True
        self.tests = 0
        self.reloads = 0
        self.seen = None

    def __call__(self, argv):
        if "-T" in argv:
            self.tests += 1
            self.seen = {}
            for fname in os.listdir(self.conf_dir):
                if fname.endswith(SUFFIX):
                    with open(os.path.join(self.conf_dir, fname)) as handle:
                        self.seen[fname] = handle.read()
            if self.fail:
                return 1, "", self.fail
            files = sorted(self.seen) if self.include else []
            return 0, "".join("# configuration file %s:\n" % os.path.join(self.conf_dir, f) for f in files), ""
        self.reloads += 1
        return 0, "", ""


class ShellLxd:
    """Stands in for LxdClient: exec runs argv here (nginx: the fake), files are local paths."""

    def __init__(self, nginx):
        self.nginx = nginx
        self.calls = []

    def instance(self, name):
        return {"name": name}

    def exec(self, name, argv, timeout=60):
        self.calls.append(argv[:2])
        if argv[0] == "nginx":
            return ExecResult(*self.nginx(argv))
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        return ExecResult(proc.returncode, proc.stdout, proc.stderr)

    def push_file(self, name, path, data, mode=0o644):
        with open(path, "wb") as handle:
            handle.write(data)


class HostModule:
    """The two AnsibleModule methods HostTarget uses."""

    def __init__(self, nginx):
        self.nginx = nginx

    def run_command(self, argv):
        return self.nginx(argv)

    def atomic_move(self, src, dst):
        os.rename(src, dst)


def directory_target(kind, tmp_path):
    """A HostTarget (``kind`` "host") or an LxdTarget ("lxd") on a new ``conf.d`` in ``tmp_path``,
    its nginx a FakeNginx (as ``target.fake``)."""
    conf = tmp_path / "conf.d"
    conf.mkdir()
    fake = FakeNginx(str(conf))
    if kind == "host":
        target = HostTarget(HostModule(fake), str(conf), ["nginx", "-T"], ["nginx", "-s", "reload"])
    else:
        target = LxdTarget(ShellLxd(fake), "proxy", str(conf), ["nginx", "-T"], ["nginx", "-s", "reload"])
    target.fake = fake
    return target


class MemoryTarget(Target):
    """A Target whose directory is ``files`` (name -> text) and whose nginx is scripted: ``fail``
    makes the test fail with that text; ``tested`` keeps the files nginx saw at each test,
    ``reloads`` counts reloads, ``writes`` the files written."""

    def __init__(self, files=None, conf_dir="/etc/nginx/conf.d"):
        super().__init__(conf_dir, ["nginx", "-T", "-q"], ["nginx", "-s", "reload"])
        self.files = dict(files or {})
        self.fail = None
        self.tested = []
        self.reloads = 0
        self.writes = []

    def read(self):
        live = {f: text for f, text in self.files.items() if f.endswith(SUFFIX) and not f.startswith(STAGE_PREFIX)}
        return live, sorted(f for f in self.files if f.startswith(STAGE_PREFIX))

    def write(self, fname, text):
        self.writes.append(fname)
        self.files[fname] = text

    def swap(self, pairs):
        for fname, has_before, has_after in pairs:
            if has_before:
                self.files[backup_name(fname)] = self.files[fname]
            if has_after:
                self.files[fname] = self.files.pop(stage_name(fname))
            else:
                del self.files[fname]

    def restore(self, pairs):
        for fname, has_before, _has_after in pairs:
            if has_before and backup_name(fname) in self.files:
                self.files[fname] = self.files.pop(backup_name(fname))
            elif not has_before:
                self.files.pop(fname, None)

    def remove(self, fnames):
        for fname in fnames:
            self.files.pop(fname, None)

    def command(self, argv):
        if "-T" in argv:
            self.tested.append(dict(self.files))
            if self.fail:
                return 1, "", self.fail
            return 0, "".join("# configuration file %s:\n" % self.path(f) for f in sorted(self.files)
                              if f.endswith(SUFFIX) and not f.startswith(STAGE_PREFIX)), ""
        self.reloads += 1
        return 0, "", ""


# A site that uses every part: a pool, a path kept, one stripped, static files, an exact status.
APP = {
    "name": "app",
    "server_names": ["app.example.org", "*.app.example.org"],
    "listen": [80],
    "upstreams": [{"name": "app_pool", "method": "least_conn", "keepalive": 8,
                   "servers": ["web1:8000", {"address": "web2:8000", "weight": 2},
                               {"address": "web3:8000", "backup": True, "fail_timeout": "3s"}]}],
    "locations": [
        {"path": "/", "backend": "http://app_pool"},
        {"path": "/jenkins/", "backend": "http://jenkins:8080/jenkins/"},
        {"path": "/api/", "backend": "http://api:9000", "strip_prefix": True},
        {"path": "/static/", "root": "/srv/static"},
        {"path": "/health", "exact": True, "status": 204},
    ],
}
