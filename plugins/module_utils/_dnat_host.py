# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The forwards made live on the host (dnat, box): iptables read once, diffed with the wanted set
(_dnat's pure logic), written with one iptables-restore, plus the saved rules and restore script.
Before that, the same read and the host's sockets (/proc/net) refuse what would break another box
or the host: another owner's chains or ports, a port the host itself serves."""
from __future__ import annotations

import os
import stat
import sys
import tempfile

from ansible_collections.homelab.onebox.plugins.module_utils import _dnat
from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError, ValidationError

FORWARD_SPEC = dict(
    proto=dict(type="str", choices=list(_dnat.PROTOCOLS), default="tcp"),
    port=dict(type="raw", required=True),
    target=dict(type="str", required=True),
    target_port=dict(type="raw"),
    host_address=dict(type="str"),
    source=dict(type="list", elements="str"),
    comment=dict(type="str"),
    allow_host_listener=dict(type="bool", default=False),
)
# chain_prefix and the files default to None: derived from owner (_dnat.owner_defaults); "" for a
# file keeps no such file, as before.
ARGUMENT_SPEC = dict(
    forwards=dict(type="list", elements="dict", options=FORWARD_SPEC, default=[]),
    isolate=dict(type="list", elements="str", default=[]),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    owner=dict(type="str"),
    chain_prefix=dict(type="str"),
    backend=dict(type="str", choices=["auto", "nft", "legacy"], default="auto"),
    ip_forward=dict(type="bool", default=True),
    sysctl_file=dict(type="path"),
    save_path=dict(type="path"),
    restore_script=dict(type="path"),
)
FILE_OPTIONS = ("save_path", "restore_script", "sysctl_file")
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
# The host's sockets, by the protocol of the forwards they would meet.
PROC_NET = (("tcp", "/proc/net/tcp"), ("tcp", "/proc/net/tcp6"), ("udp", "/proc/net/udp"), ("udp", "/proc/net/udp6"))


class DnatManager:
    """Reads the collection's chains once, diffs them with the wanted set, writes once.

    ``params``: the dnat module's options (the module's own by default). Everything given is
    checked when the manager is made, and what the host says (other owners, its listeners) by
    preflight(), before anything changes."""

    def __init__(self, module, params=None):
        self.module = module
        self.params = params = module.params if params is None else params
        self.owner = _dnat.check_owner_name(params.get("owner"))
        defaults = _dnat.owner_defaults(self.owner)
        given = params.get("chain_prefix")
        self.prefix = _dnat.check_prefix(defaults["chain_prefix"] if given is None else given)
        # None: the owner's own file; "": none kept (a file turned off).
        self.paths = {key: defaults[key] if params.get(key) is None else params[key] for key in FILE_OPTIONS}
        self.unit_name = defaults["unit_name"]
        self.present = params["state"] == "present"
        self.forwards = _dnat.normalise(params["forwards"]) if self.present else []
        self.isolate = _dnat.normalise_isolate(params["isolate"]) if self.present else ()

    def preflight(self):
        """Reads the host (iptables-save, and the sockets when there are forwards) and refuses,
        before anything changes: chains of our prefix or files that name another owner, a forward
        over another owner's, a forward over a port the host itself serves. Returns (backend,
        iptables, iptables-save, iptables-restore, the iptables-save text). A caller with work of
        its own to do first (the box module, before its containers) calls it early to fail early;
        run() calls it again, so the rules it diffs are those of that moment."""
        backend, iptables, save, restore = self.tools()
        text = self.command([save], "read the rules")
        owners = _dnat.collection_owners(text)
        _dnat.check_owner(owners, self.prefix, self.owner)
        self.check_files()
        if self.forwards:  # state=absent, or no forward: nothing is taken from anyone
            _dnat.check_claims(self.forwards, _dnat.other_claims(text, owners, self.prefix))
            self.check_listeners()
        return backend, iptables, save, restore, text

    def run(self):
        params, prefix, present, isolate, owner = self.params, self.prefix, self.present, self.isolate, self.owner
        backend, iptables, save, restore, text = self.preflight()
        forwards = self.resolve(self.forwards)  # targets looked up before anything changes

        current = _dnat.parse_save(text, prefix)
        networks = self.networks() if forwards else []
        desired = (_dnat.desired_state(forwards, prefix, networks, isolate, owner) if present
                   else _dnat.empty_state())
        restore_text = _dnat.plan(current, desired)
        files = [f for f in self.files(desired, iptables, restore) if self.differs(*f)]
        ip_forward_off = present and params["ip_forward"] and self.read(IP_FORWARD).strip() == "0"

        changed = bool(restore_text or files or ip_forward_off)
        if changed and not self.module.check_mode:
            if restore_text:
                self.load(restore, save, restore_text, current, prefix)
            for path, content, mode in files:
                self.write(path, content, mode)
            if ip_forward_off:
                self.write_proc(IP_FORWARD, "1\n")

        result = dict(changed=changed, backend=backend, forwards=_dnat.summary(forwards),
                      isolate=list(isolate), rules=_dnat.render(desired), **self.names())
        if self.module._diff:
            header = "iptables (%s_* chains and jumps%s)" % (prefix, ", owner %s" % owner if owner else "")
            result["diff"] = [dict(before_header=header, after_header=header,
                                   before=_dnat.render(current), after=result["rules"])]
            result["diff"] += [dict(before_header=path, after_header=path, before=self.read(path) or "",
                                    after=content or "") for path, content, _mode in files]
            if ip_forward_off:
                result["diff"].append(dict(before_header=IP_FORWARD, after_header=IP_FORWARD,
                                           before="0\n", after="1\n"))
        return result

    def names(self):
        """What this run's forwards are kept under (the boot unit is templated from these): owner,
        chain_prefix, save_path, restore_script, sysctl_file (None when not kept) and unit_name."""
        save_path = self.paths["save_path"] or None
        return dict(owner=self.owner, chain_prefix=self.prefix, save_path=save_path,
                    restore_script=(self.paths["restore_script"] or None) if save_path else None,
                    sysctl_file=(self.paths["sysctl_file"] or None) if self.params["ip_forward"] else None,
                    unit_name=self.unit_name)

    # ---- reading ---------------------------------------------------------------------------
    def resolve(self, forwards):
        """Instance targets -> their static addresses; LXD is opened only when one is named."""
        if all(f.address for f in forwards):
            return forwards
        instances = {instance["name"]: instance for instance in self.module.lxd.instances()}
        return [f if f.address else f._replace(address=_dnat.static_ipv4(
            instances.get(f.target), f.target, f.field + ".target")) for f in forwards]

    def tools(self):
        """(backend, iptables, iptables-save, iptables-restore) of the backend the host uses."""
        backend = self.params["backend"]
        if backend == "auto":
            plain = self.module.get_bin_path("iptables")
            if plain is None:
                raise OneboxError("iptables is not installed (install the iptables package)")
            backend = "nft" if "nf_tables" in self.command([plain, "-V"], "ask iptables its backend") else "legacy"
        paths = []
        for tool in ("iptables", "iptables-save", "iptables-restore"):
            name = tool.replace("iptables", "iptables-" + backend, 1)
            path = self.module.get_bin_path(name) or (
                self.params["backend"] == "auto" and self.module.get_bin_path(tool))
            if not path:
                raise OneboxError("%s not found: the %s backend of iptables is not installed" % (name, backend))
            paths.append(path)
        return [backend] + paths

    def networks(self):
        """The networks the host is attached to (a target's neighbours are masqueraded)."""
        return _dnat.connected_networks(self.module.from_json(
            self.command([self.module.get_bin_path("ip", required=True), "-j", "-4", "addr", "show"],
                         "list the host's addresses")))

    def files(self, desired, iptables, restore):
        """(path, wanted content or None to delete, mode) of every file the module keeps."""
        params, paths, prefix, present, owner = self.params, self.paths, self.prefix, self.present, self.owner
        out = []
        if paths["save_path"]:
            out.append((paths["save_path"], _dnat.save_file(desired, prefix, owner) if present else None, 0o644))
            if paths["restore_script"]:
                script = _dnat.restore_script(paths["save_path"], iptables, restore, prefix, params["ip_forward"], owner)
                out.append((paths["restore_script"], script if present else None, 0o755))
        if params["ip_forward"] and paths["sysctl_file"]:
            # Gone with the forwards; the running value stays (LXD's own NAT needs forwarding).
            out.append((paths["sysctl_file"], _dnat.sysctl_text(owner) if present else None, 0o644))
        return out

    def check_files(self):
        """A file this run would write or delete must not be another owner's (its first line says
        whose it is): two boxes given the same path would otherwise lose each other's forwards at
        the next boot."""
        names = self.names()
        for key in FILE_OPTIONS:
            path = names[key]  # only the files this run keeps
            theirs = _dnat.file_owner(self.read(path)) if path else None
            if theirs is not None and theirs != self.owner:
                raise ValidationError(key, path, "the file is owner %s's (its first line says so); give this box its own %s"
                                      % (theirs, key))

    def check_listeners(self):
        """Refuses a forward over a port the host itself serves (unless it says allow_host_listener)."""
        listeners = []
        for proto, path in PROC_NET:
            listeners.extend(_dnat.parse_proc_net(self.read(path), proto, sys.byteorder))
        conflicts = _dnat.listener_conflicts(self.forwards, listeners)
        if conflicts:
            fwd, listener = conflicts[0]
            raise _dnat.listener_error(fwd, listener, self.process_of(listener.inode))

    @staticmethod
    def process_of(inode):
        """'NAME pid N' of a process holding the socket ``inode`` (the lowest pid), or None. Looked
        up only for a refusal's message: it reads every process's file descriptors."""
        if not inode:
            return None
        wanted = "socket:[%d]" % inode
        try:
            pids = sorted((int(p) for p in os.listdir("/proc") if p.isdigit()))
        except OSError:
            return None
        for pid in pids:
            fd_dir = "/proc/%d/fd" % pid
            try:
                fds = os.listdir(fd_dir)
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(os.path.join(fd_dir, fd)) != wanted:
                        continue
                    with open("/proc/%d/comm" % pid, encoding="utf-8", errors="replace") as handle:
                        return "%s pid %d" % (handle.read().strip(), pid)
                except OSError:
                    continue
        return None

    @staticmethod
    def read(path):
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def differs(self, path, content, mode):
        if content is None:
            return os.path.lexists(path)
        return self.read(path) != content or stat.S_IMODE(os.stat(path).st_mode) != mode

    def command(self, argv, what, data=None):
        rc, out, err = self.module.run_command(argv, data=data, binary_data=True)
        if rc != 0:
            raise OneboxError("%s: %s exited %d: %s" % (what, " ".join(argv), rc, (err or out).strip()),
                              rc=rc, stdout=out, stderr=err)
        return out

    # ---- writing ---------------------------------------------------------------------------
    def load(self, restore, save, text, previous, prefix):
        """One iptables-restore; on failure put the previous rules back and fail."""
        try:
            self.command([restore, "--wait=10", "--noflush"], "load the forwards", data=text)
        except OneboxError as exc:
            back = _dnat.plan(_dnat.parse_save(self.command([save], "read the rules"), prefix), previous)
            if back:
                self.command([restore, "--wait=10", "--noflush"], "put the previous forwards back", data=back)
            exc.msg += " (the previous forwards were kept)"
            exc.details["rules"] = text
            raise

    def write(self, path, content, mode):
        if content is None:
            os.unlink(path)
            return
        directory = os.path.dirname(path)
        os.makedirs(directory, mode=0o755, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".%s." % os.path.basename(path))
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
        os.chmod(tmp, mode)
        self.module.atomic_move(tmp, path)
        os.chmod(path, mode)

    @staticmethod
    def write_proc(path, value):
        with open(path, "w", encoding="ascii") as handle:
            handle.write(value)
