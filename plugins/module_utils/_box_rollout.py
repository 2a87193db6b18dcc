# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rolling changes of a box's pools: one member at a time, drained from the proxy, changed, healthy, back.

A change to a running pool (its files, packages, environment, setup steps, or its image) would
otherwise reach every member at once, and for the moment they all restart the pool answers
nothing. Here a member about to change first waits for its pool's turn (one member of a pool at
a time; other pools and services go on beside), is marked ``down`` in the pool's upstream (one
``nginx -t`` and reload: nginx sends it no new request, and its old workers finish the requests
already with it), is changed, and keeps the turn until it answers its health check. The next
member's drain puts it back; the box's sites, applied once every container is done, put the
last one back.

A member that fails ends its pool's roll: the members after it are not changed (the run fails
naming them), so a bad release stops at the first member and the others keep serving the
previous version; the failed member stays drained until a run succeeds.

Only running members of a pool of two or more roll: a new member is in no upstream yet (the
sites take it in once it is healthy), and a pool of one has no other member to serve meanwhile.
"""
from __future__ import annotations

import threading

from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError


class Rollout:
    """The turns of the pools' members in one run.

    ``services``: the box's parsed services; ``running``: names of the containers running before
    this run; ``drain(service, member)``: applies the proxy's sites with ``member`` down (None:
    there is no proxy to drain through, and a member only takes its turn); ``warn``: the module's.
    """

    def __init__(self, services, running, drain=None, check_mode=False, warn=None):
        self.pools = {member: service for service in services if service.kind == "pool" and len(service.members) > 1
                      for member in service.members}
        self.turns = {service.name: threading.Lock() for service in self.pools.values()}
        self.running, self.drain, self.check_mode = set(running), drain, check_mode
        self.warn = warn or (lambda msg: None)
        self.held = {}      # member -> its pool's service, while the member has the turn
        self.stopped = {}   # pool name -> the member whose failure ended its roll
        self.drained = []   # members drained by this run, in order

    def rolls(self, member):
        """Whether a change to ``member`` waits for its pool's turn."""
        return not self.check_mode and member in self.pools and member in self.running

    def take(self, member):
        """Before ``member`` changes: wait for its pool's turn, then drain it. Nothing for a
        container that does not roll, nor a second time for one that has its turn."""
        if not self.rolls(member) or member in self.held:
            return
        service = self.pools[member]
        self.turns[service.name].acquire()
        if service.name in self.stopped:
            self.turns[service.name].release()
            raise OneboxError("not changed: the rolling change of pool %s stopped at %s, which failed; the "
                              "members not yet changed keep serving" % (service.name, self.stopped[service.name]))
        self.held[member] = service
        if self.drain is None:
            return
        try:
            self.drain(service, member)
        except OneboxError as exc:
            # nginx still moves on to another member when this one does not answer (passive
            # failover): a change without the drain is slower for some requests, not broken.
            self.warn("%s was changed without first being drained from the proxy: %s" % (member, exc.msg))
        else:
            self.drained.append(member)

    def has_turn(self, member):
        return member in self.held

    def release(self, member, ok):
        """``member``'s work is over (``ok``: it ended healthy): the next member's turn."""
        service = self.held.pop(member, None)
        if service is None:
            return
        if not ok:
            self.stopped.setdefault(service.name, member)
        self.turns[service.name].release()
