# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bringing one instance to its InstanceSpec (InstanceReconciler): read, diff, create or patch,
start or stop, wait for its address; outside check mode only does it change anything."""
from __future__ import annotations

from ansible_collections.homelab.onebox.plugins.module_utils import _addresses
from ansible_collections.homelab.onebox.plugins.module_utils._lxd import LxdError

_UNREAD = object()


class InstanceReconciler:
    """Bring one instance to what its spec declares: read (unless given), diff, act outside check mode.

    Used by lxd_instance for one instance and by lxd_instances for each of a set; ``current`` lets
    the set read every instance in one request first.
    """

    def __init__(self, lxd, spec, check_mode=False, diff=False, current=_UNREAD, pending=(), state_of=None):
        self.lxd, self.spec, self.check_mode, self.diff = lxd, spec, check_mode, diff
        self.current = current
        # name -> state read for a whole set at once (InstanceSet): an instance this run leaves
        # untouched needs no request of its own for its addresses.
        self.state_of = state_of
        self.pending = pending
        self.actions = []
        self.recreated = None  # why the instance was deleted and made again (its image changed)
        self._reached = None  # (before, current) once run() has brought the instance there
        self._settled = None

    def run(self, settle=True):
        """Reconcile; the result. With ``settle=False`` the wait for the address is left to
        settle(), so work inside a just-started container can go on while it asks for its lease."""
        lxd, spec, name = self.lxd, self.spec, self.spec.name
        current = lxd.instance(name) if self.current is _UNREAD else self.current
        before = spec.view(current)
        if spec.state == "absent":
            if current is not None:
                self._act("delete", lambda: self._delete(current))
            return self._result(before, {}, None)

        body, replaced = None, spec.why_replaced(current)
        if replaced is not None:
            # LXD never changes an instance's image: a new image is a new container (its volumes
            # stay, attached again by its devices). An unknown image fails before the old one goes.
            body = spec.create_body(lxd, self.pending)
            self.recreated = replaced
            self._act("delete", lambda: self._delete(current))
            current = None
        if current is None:
            body = body or spec.create_body(lxd, self.pending)  # fails on an unknown image or source first
            if not self.check_mode:
                self._release_stale_lease(body)  # or fails, before anything is made, on a holder
            self._act("create", lambda: lxd.create_instance(body, timeout=max(120, spec.wait_timeout),
                                                            target=spec.target))
            current = spec.predicted(body) if self.check_mode else lxd.instance(name, state=False)
        else:
            patch = spec.patch_body(current, lxd)
            stale = spec.stale_devices(current)
            if stale:
                body = spec.put_body(current, patch, stale)
                self._act("update", lambda: lxd.put_instance(name, body))
                current = (spec.predicted_after_put(current, body) if self.check_mode
                           else lxd.instance(name, state=False))
            elif patch:
                self._act("update", lambda: lxd.patch_instance(name, patch))
                current = (spec.predicted_after_patch(current, patch) if self.check_mode
                           else lxd.instance(name, state=False))

        # Before the container asks for its address (a new one was seen to before it was made).
        if (not self.check_mode and "create" not in self.actions
                and spec.state in ("started", "restarted") and current.get("status") != "Running"):
            self._release_stale_lease(current)
        current = self._run_state(current)
        self._reached = (before, current)
        if settle:
            return self.settle()
        return self._result(before, spec.view(current), current, lxd.ipv4_addresses(current.get("state")))

    def settle(self):
        """After run(): wait for the address (as wait_for_ipv4 says); the final result. Once."""
        if self._settled is None:
            before, current = self._reached
            state = current.get("state")
            if state is None and current.get("status") == "Running" and "create" not in self.actions:
                # Read without state: addresses need it.
                state = self.state_of(self.spec.name) if self.state_of and not self.actions else None
                state = state or self.lxd.instance_state(self.spec.name)
            if self.spec.state in ("started", "restarted") and self.spec.wait_for_ipv4:
                state = self._settle_address(current, state)
            self._settled = self._result(before, self.spec.view(current), current, self.lxd.ipv4_addresses(state))
        return self._settled

    def _settle_address(self, current, state):
        """Wait for an IPv4 address; a declared static one must be the address eth0 holds.

        A container can hold another lease than its reservation: one DHCP'd before the reservation
        reached the bridge's DHCP server, or kept after the static address changed; or the address
        was still leased to a machine that is gone. It never moves by itself before the lease runs
        out, so a stale lease of the address is released and the container restarted once (a fresh
        DHCP request); a forward or an upstream at the static address would otherwise reach nobody."""
        lxd, spec, name = self.lxd, self.spec, self.spec.name
        static = spec.static_ipv4
        nic = "eth0" if static else None
        held = lxd.ipv4_addresses(state, nic)
        if self.check_mode:
            if static and held and static not in held:
                self.actions.append("restart")  # what a real run would do
            return state
        if held and (not static or static in held):
            return state
        if not held:
            held, state = lxd.wait_ipv4(name, nic=nic, timeout=spec.wait_timeout)
        if static and static not in held:
            self._release_stale_lease(current)
            self._act("restart", lambda: lxd.change_state(name, "restart", force=spec.force_stop,
                                                          timeout=spec.wait_timeout))
            held, state = lxd.wait_ipv4(name, nic=nic, timeout=spec.wait_timeout)
            if static not in held:
                raise LxdError("instance %s holds %s on eth0, not its static address %s, even after a restart "
                               "(does another machine on the bridge hold a lease of %s?)"
                               % (name, ", ".join(held), static, static))
        return state

    def _release_stale_lease(self, instance):
        """A lease of the static address left by a machine that is gone would block it for the
        lease time (an hour by default): released, so the container gets its address.
        ``instance``: the instance, or the body that creates it (its eth0 names the network)."""
        static = self.spec.static_ipv4
        network = ((instance.get("devices") or {}).get("eth0") or {}).get("network")
        if static and network:
            _addresses.release_stale_lease(self.lxd, network, static, self.spec.name)

    def _run_state(self, current):
        lxd, spec, name = self.lxd, self.spec, self.spec.name
        running = current.get("status") == "Running"
        if spec.state == "started" and not running:
            self._act("start", lambda: lxd.change_state(name, "start", timeout=spec.wait_timeout))
        elif spec.state == "stopped" and running:
            self._act("stop", lambda: lxd.change_state(name, "stop", force=spec.force_stop, timeout=spec.wait_timeout))
        elif spec.state == "restarted":
            action = "restart" if running else "start"
            self._act(action, lambda: lxd.change_state(name, action, force=spec.force_stop, timeout=spec.wait_timeout))
        else:
            return current
        if self.check_mode:
            return dict(current, status="Stopped" if spec.state == "stopped" else "Running")
        return lxd.instance(name, state=False)

    def _delete(self, current):
        if current.get("status") == "Running":
            try:
                self.lxd.change_state(self.spec.name, "stop", force=self.spec.force_stop, timeout=self.spec.wait_timeout)
            except LxdError:
                # It goes anyway: one that did not shut down cleanly (a container still booting
                # ignores the request; seen under load as "shutting down the container failed")
                # is stopped by force, as a delete of a running instance would.
                if self.spec.force_stop:
                    raise
                self.lxd.change_state(self.spec.name, "stop", force=True, timeout=self.spec.wait_timeout)
        self.lxd.delete_instance(self.spec.name)

    def _act(self, action, change):
        self.actions.append(action)
        if not self.check_mode:
            change()

    def _result(self, before, after, current, addresses=None):
        result = {
            "changed": bool(self.actions),
            "actions": self.actions,
            "instance": self.spec.returned(current) if current else {},
            "addresses": addresses or [],
        }
        if self.recreated:
            result["recreated"] = self.recreated
        if self.diff:
            result["diff"] = {"before": before, "after": after}
        return result
