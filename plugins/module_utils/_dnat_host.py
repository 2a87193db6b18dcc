# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One owner's forwards made live on the host (the dnat module, box): DnatManager, the thin I/O shell.

read() runs iptables-save once; plan() refuses what would break another box or the host (another
owner's chains, files or ports, a port the host itself serves: _dnat_claims) and diffs the wanted
rules with what was read (_dnat_rules); apply() writes them with one iptables-restore, then the
saved rules, the restore script and the sysctl file; result() says what was (or would be) done."""
from __future__ import annotations

import os
import stat
import sys

from ansible_collections.homelab.onebox.plugins.module_utils import _dnat
from ansible_collections.homelab.onebox.plugins.module_utils import _dnat_claims
from ansible_collections.homelab.onebox.plugins.module_utils import _dnat_rules
from ansible_collections.homelab.onebox.plugins.module_utils._diff import entry
from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError, ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._host_files import write_host_file

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
    """One owner's forwards: read() the host once, plan() (refusals, then desired vs current),
    apply() (never in check mode), result().

    ``params``: the dnat module's options (the module's own by default), checked when the manager
    is made. ``addresses``: {instance name: IPv4} known to the caller (a box's containers, before
    they exist); other instance targets are looked up in LXD by plan(). ``field_of``: how the
    caller names a forward's field (``forwards[i]`` -> what its user wrote), for messages."""

    def __init__(self, module, params=None, addresses=None, field_of=None):
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
        self.forwards = _dnat.parse_forwards(params["forwards"]) if self.present else []
        if field_of is not None:
            self.forwards = [f._replace(field=field_of(f.field)) for f in self.forwards]
        self.isolate = _dnat.parse_isolate(params["isolate"]) if self.present else ()
        self.addresses = dict(addresses or {})
        # Where the host is read and written (a unit test points them elsewhere).
        self.proc_net, self.ip_forward_path = PROC_NET, IP_FORWARD
        self.tools = self.saved = self.current = None
        self.desired = self.restore_text = self.resolved = None
        self.files, self.ip_forward_off = [], False

    def read(self):
        """The iptables backend and tools, and the iptables-save text: read once, so plan() and
        apply() work from the rules of that moment (a box reads before its containers change)."""
        self.tools = self.find_tools()
        self.saved = self.command([self.tools[2]], "read the rules")
        self.current = _dnat_rules.parse_save(self.saved, self.prefix)

    def plan(self):
        """Refuses, before anything changes: chains of our prefix or files that name another
        owner, a forward over another owner's, a forward over a port the host itself serves, an
        instance target without a static address. Then the wanted rules against the current ones:
        the restore text, the files that differ, IPv4 forwarding off. Returns whether anything would change."""
        owners = _dnat_claims.collection_owners(self.saved)
        _dnat_claims.check_owner(owners, self.prefix, self.owner)
        kept = self.names()
        contents = {kept[key]: self.read_file(kept[key]) for key in FILE_OPTIONS if kept[key]}
        self.check_files(contents)
        if self.forwards:  # state=absent, or no forward: nothing is taken from anyone
            _dnat_claims.check_claims(self.forwards, _dnat_claims.other_claims(self.saved, owners, self.prefix))
            self.check_listeners()
        self.resolved = self.resolve(self.forwards)  # targets looked up before anything changes
        networks = self.networks() if self.resolved else []
        self.desired = (_dnat_rules.desired_rules(self.resolved, self.prefix, networks, self.isolate, self.owner)
                        if self.present else _dnat_rules.empty_rules())
        self.restore_text = _dnat_rules.plan(self.current, self.desired)
        self.files = [(path, contents.get(path), content, mode) for path, content, mode in self.wanted_files()
                      if self.differs(path, contents.get(path), content, mode)]
        self.ip_forward_off = (self.present and self.params["ip_forward"]
                               and (self.read_file(self.ip_forward_path) or "").strip() == "0")
        return self.changed

    @property
    def changed(self):
        return bool(self.restore_text or self.files or self.ip_forward_off)

    def apply(self):
        """One iptables-restore (the previous rules put back if it fails), then the files; in check
        mode nothing."""
        if self.module.check_mode:
            return
        if self.restore_text:
            self.load(self.restore_text)
        for path, _before, content, mode in self.files:
            self.write(path, content, mode)
        if self.ip_forward_off:
            self.write_proc(self.ip_forward_path, "1\n")

    def result(self):
        """The module's result: changed, backend, forwards (resolved), isolate, rules (after the
        run), the names (names()) and, in diff mode, the rules, each file and ip_forward."""
        rules = _dnat_rules.render(self.desired)
        result = dict(changed=self.changed, backend=self.tools[0], forwards=_dnat.summary(self.resolved),
                      isolate=list(self.isolate), rules=rules, **self.names())
        if self.module._diff:
            header = "iptables (%s_* chains and jumps%s)" % (self.prefix, ", owner %s" % self.owner if self.owner else "")
            result["diff"] = [entry(header, _dnat_rules.render(self.current), rules)]
            result["diff"] += [entry(path, before or "", content or "") for path, before, content, _mode in self.files]
            if self.ip_forward_off:
                result["diff"].append(entry(self.ip_forward_path, "0\n", "1\n"))
        return result

    def run(self):
        """The dnat module's run: read, plan, apply unless in check mode, result."""
        self.read()
        if self.plan():
            self.apply()
        return self.result()

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
        """Instance targets -> their static addresses: the caller's, else LXD's (opened only then)."""
        forwards = [f if f.address or f.target not in self.addresses else f._replace(address=self.addresses[f.target])
                    for f in forwards]
        if all(f.address for f in forwards):
            return forwards
        instances = {instance["name"]: instance for instance in self.module.lxd.instances()}
        return [f if f.address else f._replace(address=_dnat.static_ipv4(
            instances.get(f.target), f.target, f.field + ".target")) for f in forwards]

    def find_tools(self):
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
        return _dnat_rules.connected_networks(self.module.from_json(
            self.command([self.module.get_bin_path("ip", required=True), "-j", "-4", "addr", "show"],
                         "list the host's addresses")))

    def wanted_files(self):
        """(path, wanted content or None to delete, mode) of every file the module keeps."""
        params, paths, prefix, owner = self.params, self.paths, self.prefix, self.owner
        iptables, restore = self.tools[1], self.tools[3]
        present = self.present
        out = []
        if paths["save_path"]:
            out.append((paths["save_path"], _dnat_rules.save_file(self.desired, prefix, owner) if present else None, 0o644))
            if paths["restore_script"]:
                script = _dnat_rules.restore_script(paths["save_path"], iptables, restore, prefix, params["ip_forward"], owner)
                out.append((paths["restore_script"], script if present else None, 0o755))
        if params["ip_forward"] and paths["sysctl_file"]:
            # Gone with the forwards; the running value stays (LXD's own NAT needs forwarding).
            out.append((paths["sysctl_file"], _dnat_rules.sysctl_text(owner) if present else None, 0o644))
        return out

    def check_files(self, contents):
        """A file this run would write or delete must not be another owner's (its first line says
        whose it is): two boxes given the same path would otherwise lose each other's forwards at
        the next boot. ``contents``: {path: text or None} of the files this run keeps."""
        names = self.names()
        for key in FILE_OPTIONS:
            path = names[key]  # only the files this run keeps
            theirs = _dnat_rules.file_owner(contents[path]) if path else None
            if theirs is not None and theirs != self.owner:
                raise ValidationError(key, path, "the file is owner %s's (its first line says so); give this box its own %s"
                                      % (theirs, key))

    def check_listeners(self):
        """Refuses a forward over a port the host itself serves (unless it says allow_host_listener)."""
        listeners = []
        for proto, path in self.proc_net:
            listeners.extend(_dnat_claims.parse_proc_net(self.read_file(path), proto, sys.byteorder))
        conflicts = _dnat_claims.listener_conflicts(self.forwards, listeners)
        if conflicts:
            fwd, listener = conflicts[0]
            raise _dnat_claims.listener_error(fwd, listener, self.process_of(listener.inode))

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
    def read_file(path):
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    @staticmethod
    def differs(path, before, content, mode):
        """Whether the file at ``path`` (its text ``before``, None when absent) is not ``content``
        with ``mode`` (None: the file should not exist)."""
        if content is None:
            return os.path.lexists(path)
        return before != content or stat.S_IMODE(os.stat(path).st_mode) != mode

    def command(self, argv, what, data=None):
        rc, out, err = self.module.run_command(argv, data=data, binary_data=True)
        if rc != 0:
            raise OneboxError("%s: %s exited %d: %s" % (what, " ".join(argv), rc, (err or out).strip()),
                              rc=rc, stdout=out, stderr=err)
        return out

    # ---- writing ---------------------------------------------------------------------------
    def load(self, text):
        """One iptables-restore; on failure put the rules read by read() back and fail."""
        restore = [self.tools[3], "--wait=10", "--noflush"]
        try:
            self.command(restore, "load the forwards", data=text)
        except OneboxError as exc:
            now = _dnat_rules.parse_save(self.command([self.tools[2]], "read the rules"), self.prefix)
            back = _dnat_rules.plan(now, self.current)
            if back:
                self.command(restore, "put the previous forwards back", data=back)
            exc.msg += " (the previous forwards were kept)"
            exc.details["rules"] = text
            raise

    def write(self, path, content, mode):
        write_host_file(self.module, path, content, mode)

    @staticmethod
    def write_proc(path, value):
        with open(path, "w", encoding="ascii") as handle:
            handle.write(value)
