# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller's side of a ``files[].src`` (box and lxd_provision action plugins): resolved, checked, and copied to a remote host.

Each is given to the module as a path when the module runs on the controller, or copied to the
host when it runs elsewhere.

A relative ``src`` is found as ansible.builtin.copy finds one (the role's ``files/``, the
playbook's ``files/`` and directory); one that is not there fails the task before the module
runs, naming the field as the user wrote it. A module on another host gets one tar per source in
the task's temporary directory on it, and ``src_archives`` saying which is which
(_provision_source.unpack_archives unpacks them there); the directory goes with the task.
"""
from __future__ import annotations

import copy
import os
import shutil
import tarfile
import tempfile

from ansible.errors import AnsibleError

from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._provision_source import ARCHIVE_ROOT

LOCAL_TRANSPORTS = ("local", "ansible.builtin.local")
LOCALHOST = ("localhost", "127.0.0.1", "::1")


def runs_here(transport, delegate_to=None):
    """Whether the module runs on the controller itself (a local connection, or a task delegated
    to localhost), so it reads a source where it is."""
    return transport in LOCAL_TRANSPORTS or delegate_to in LOCALHOST


def resolve(fields, find_needle):
    """Each ``src`` of the (field, item) pairs made an absolute path of the controller, in place:
    ``~`` expanded, a relative one found by ``find_needle('files', src)``; the sorted sources.
    A source that is not there raises ValidationError naming the field and the value. An item
    without ``src`` or with ``state: absent`` is the module's to check."""
    sources = set()
    for field, item in fields:
        src = item.get("src")
        if src is None or item.get("state", "present") == "absent":
            continue
        if not isinstance(src, str) or not src.strip():
            raise ValidationError(field + ".src", src, "must be a path on the controller")
        path = os.path.expanduser(src)
        if not os.path.isabs(path):
            try:
                path = find_needle("files", src)
            except AnsibleError:
                raise ValidationError(field + ".src", src, "no such file or directory on the controller (looked for "
                                      "in the role's and the playbook's files/ and directory)")
        path = os.path.abspath(path)
        if not os.path.exists(path):
            raise ValidationError(field + ".src", src, "no such file or directory on the controller")
        if not (os.path.isfile(path) or os.path.isdir(path)):
            raise ValidationError(field + ".src", src, "must be a regular file or a directory")
        item["src"] = path
        sources.add(path)
    return sorted(sources)


def archive(source, into):
    """One source as a tar (uncompressed: artifacts are mostly compressed already) in the local
    directory ``into``: the file or the tree as ARCHIVE_ROOT, links followed; its path."""
    handle, path = tempfile.mkstemp(suffix=".tar", dir=into)
    os.close(handle)
    with tarfile.open(path, "w", dereference=True) as out:
        out.add(source, arcname=ARCHIVE_ROOT, recursive=True,
                filter=lambda member: member if member.isfile() or member.isdir() else None)
    return path


def transfer(action, sources):
    """Every source archived and copied into the task's temporary directory on the host (made
    when there is none yet): {source: remote archive}."""
    shell = action._connection._shell
    tmpdir = shell.tmpdir or action._make_tmp_path()
    local_dir = tempfile.mkdtemp(prefix="onebox-src-")
    remote = {}
    try:
        for index, source in enumerate(sources):
            local = archive(source, local_dir)
            remote[source] = shell.join_path(tmpdir, "onebox-src-%d.tar" % index)
            action._transfer_file(local, remote[source])
            os.remove(local)
    finally:
        shutil.rmtree(local_dir, ignore_errors=True)
    action._fixup_perms2([tmpdir] + list(remote.values()))
    return remote


def run_module(action, module, fields_of, task_vars):
    """The action plugin's run: its task's ``src`` resolved, the sources transferred when the
    module runs elsewhere, the module executed (check and diff mode pass through as for any
    module), the task's temporary directory removed. ``fields_of``: args -> (field, item) of every
    ``files`` item."""
    args = copy.deepcopy(dict(action._task.args))
    args.pop("src_archives", None)   # the plugin's to set
    try:
        sources = resolve(fields_of(args), action._find_needle)
        if sources and not runs_here(action._connection.transport, action._task.delegate_to):
            args["src_archives"] = transfer(action, sources)
        return action._execute_module(module_name=module, module_args=args, task_vars=task_vars)
    except ValidationError as exc:
        return {"failed": True, "msg": exc.msg, "field": exc.field}
    finally:
        action._remove_tmp_path(action._connection._shell.tmpdir)
