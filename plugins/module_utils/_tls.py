# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The proxy's certificates in a converge: the agent in the proxy (_tls_agent.py) asked to place
every site's certificate, then to obtain what ACME must issue (place/obtain/result).

place() runs before the sites are written (nginx -t needs every certificate a site names: a
placeholder until the real one exists); obtain() runs once the sites and the forwards are in place
(the CA reaches the challenge through them). A certificate that cannot be obtained leaves its
placeholder serving and a warning; the renewal timer in the proxy tries again.
"""
from __future__ import annotations

import json

from ansible_collections.homelab.onebox.plugins.module_utils._box_tls import AGENT_PATH
from ansible_collections.homelab.onebox.plugins.module_utils._diff import entry
from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError

# Placing reads a few files and makes at most a few small keys (and, on a box's first TLS
# converge, registers the ACME account); obtaining talks to the CA, up to 8 orders at once (the
# agent gives each lineage its own certbot directories), each within certbot's own 600 s.
PLACE_TIMEOUT = 120
OBTAIN_TIMEOUT = 900


class ProxyCertificates:
    """The certificates of ``certs`` (BoxTls.certificates()) in container ``proxy``. ``config``:
    the agent's configuration text, given to a check-mode run (the file in the proxy is still the
    previous one)."""

    def __init__(self, lxd, proxy, certs, config, check_mode=False, diff=False, warn=None):
        self.lxd, self.proxy, self.certs, self.config = lxd, proxy, certs, config
        self.check_mode, self.diff, self.warn = check_mode, diff, warn or (lambda msg: None)
        self.placed = None
        self.obtained = {"obtained": [], "failed": [], "reloaded": False, "changed": False}

    def _agent(self, args, timeout, **kwargs):
        out = self.lxd.run(self.proxy, [AGENT_PATH] + list(args), timeout=timeout, **kwargs)
        try:
            return json.loads(out)
        except ValueError:
            raise OneboxError("in %s, onebox-tls %s gave no JSON: %s" % (self.proxy, args[0], out.strip()[-500:]))

    def place(self, new=False):
        """Every certificate linked where its site's file names it (check mode: what would be).
        ``new``: the proxy (or its agent) does not exist yet, so in check mode nothing is asked."""
        if self.check_mode and new:
            self.placed = {"changed": bool(self.certs),
                           "certs": [dict(name=c["name"], mode=c["mode"], serving="none", pending=c["mode"] == "acme")
                                     for c in self.certs]}
        elif self.check_mode:
            self.placed = self._agent(["prepare", "--check"], PLACE_TIMEOUT, environment={"ONEBOX_TLS_CONFIG": self.config})
        else:
            self.placed = self._agent(["prepare"], PLACE_TIMEOUT)
        return self.placed

    @property
    def pending(self):
        return [c["name"] for c in (self.placed or {}).get("certs", []) if c.get("pending")]

    def obtain(self, reload=False):
        """The pending certificates requested (nginx reloaded once after, when any came or
        ``reload``: links changed by place() that no site reload picked up)."""
        if self.check_mode or not (self.pending or reload):
            return self.obtained
        if self.pending:
            self.obtained = self._agent(["obtain"] + (["--reload"] if reload else []), OBTAIN_TIMEOUT)
        else:
            self.obtained = dict(self.obtained, reloaded=self._agent(["reload"], PLACE_TIMEOUT)["reloaded"])
        for failure in self.obtained.get("failed", []):
            self.warn("certificate %s not obtained: %s; its placeholder serves until the renewal timer in %s "
                      "obtains it (or the next converge)" % (failure["name"], failure["reason"], self.proxy))
        return self.obtained

    def result(self):
        placed = self.placed or {"certs": [], "changed": False}
        obtained, failed = set(self.obtained.get("obtained", [])), {f["name"] for f in self.obtained.get("failed", [])}
        certs = []
        for cert in placed["certs"]:
            state = dict(cert)
            if cert["name"] in obtained:
                state["serving"], state["pending"] = "acme", False
            state["action"] = ("obtained" if cert["name"] in obtained else "failed" if cert["name"] in failed
                               else "requested" if self.check_mode and cert.get("pending") else "none")
            certs.append(state)
        result = {"changed": bool(placed.get("changed") or obtained or self.obtained.get("changed")
                                  or (self.check_mode and self.pending)),
                  "certificates": certs}
        if self.diff:
            # Before: what serves each site once placed; after: what serves once obtained (or requested).
            result["diff"] = entry("certificates in %s" % self.proxy,
                                   "".join("%s: %s\n" % (c["name"], c["serving"]) for c in placed["certs"]),
                                   "".join("%s: %s\n" % (c["name"], "acme (requested)" if c["action"] == "requested"
                                                         else c["serving"]) for c in certs))
        return result
