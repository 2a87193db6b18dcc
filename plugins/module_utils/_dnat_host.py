# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The forwards made live on the host (dnat, box): iptables read once, diffed with the wanted set
(_dnat's pure logic), written with one iptables-restore, plus the saved rules and restore script."""
from __future__ import annotations

import os
import stat
import tempfile

from ansible_collections.homelab.onebox.plugins.module_utils import _dnat
from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError

FORWARD_SPEC = dict(
    proto=dict(type="str", choices=list(_dnat.PROTOCOLS), default="tcp"),
    port=dict(type="raw", required=True),
    target=dict(type="str", required=True),
    target_port=dict(type="raw"),
    host_address=dict(type="str"),
    source=dict(type="list", elements="str"),
    comment=dict(type="str"),
)
ARGUMENT_SPEC = dict(
    forwards=dict(type="list", elements="dict", options=FORWARD_SPEC, default=[]),
    isolate=dict(type="list", elements="str", default=[]),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    chain_prefix=dict(type="str", default=_dnat.DEFAULT_PREFIX),
    backend=dict(type="str", choices=["auto", "nft", "legacy"], default="auto"),
    ip_forward=dict(type="bool", default=True),
    sysctl_file=dict(type="path", default="/etc/sysctl.d/60-onebox-ip-forward.conf"),
    save_path=dict(type="path", default="/etc/onebox/dnat.rules"),
    restore_script=dict(type="path", default="/usr/local/sbin/onebox-dnat-restore"),
)
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
SYSCTL_TEXT = "# homelab.onebox.dnat: port forwards need IPv4 forwarding.\nnet.ipv4.ip_forward = 1\n"


class DnatManager:
    """Reads the collection's chains once, diffs them with the wanted set, writes once.

    ``params``: the dnat module's options (the module's own by default). Everything given is
    checked when the manager is made, before anything changes."""

    def __init__(self, module, params=None):
        self.module = module
        self.params = params = module.params if params is None else params
        self.prefix = _dnat.check_prefix(params["chain_prefix"])
        self.present = params["state"] == "present"
        self.forwards = _dnat.normalise(params["forwards"]) if self.present else []
        self.isolate = _dnat.normalise_isolate(params["isolate"]) if self.present else ()

    def run(self):
        params, prefix, present, isolate = self.params, self.prefix, self.present, self.isolate
        forwards = self.resolve(self.forwards)  # targets looked up before anything changes
        backend, iptables, save, restore = self.tools()

        current = _dnat.parse_save(self.command([save], "read the rules"), prefix)
        networks = self.networks() if forwards else []
        desired = _dnat.desired_state(forwards, prefix, networks, isolate) if present else _dnat.empty_state()
        restore_text = _dnat.plan(current, desired)
        files = [f for f in self.files(desired, prefix, present, iptables, restore) if self.differs(*f)]
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
                      isolate=list(isolate), rules=_dnat.render(desired))
        if self.module._diff:
            result["diff"] = [dict(before_header="iptables (%s_* chains and jumps)" % prefix,
                                   after_header="iptables (%s_* chains and jumps)" % prefix,
                                   before=_dnat.render(current), after=result["rules"])]
            result["diff"] += [dict(before_header=path, after_header=path, before=self.read(path) or "",
                                    after=content or "") for path, content, _mode in files]
            if ip_forward_off:
                result["diff"].append(dict(before_header=IP_FORWARD, after_header=IP_FORWARD,
                                           before="0\n", after="1\n"))
        return result

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

    def files(self, desired, prefix, present, iptables, restore):
        """(path, wanted content or None to delete, mode) of every file the module keeps."""
        params = self.params
        out = []
        if params["save_path"]:
            out.append((params["save_path"], _dnat.save_file(desired, prefix) if present else None, 0o644))
            if params["restore_script"]:
                script = _dnat.restore_script(params["save_path"], iptables, restore, prefix, params["ip_forward"])
                out.append((params["restore_script"], script if present else None, 0o755))
        if params["ip_forward"] and params["sysctl_file"]:
            # Gone with the forwards; the running value stays (LXD's own NAT needs forwarding).
            out.append((params["sysctl_file"], SYSCTL_TEXT if present else None, 0o644))
        return out

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
