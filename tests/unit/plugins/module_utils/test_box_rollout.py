"""_box_rollout: one member of a pool at a time, drained first; a failure ends the pool's roll."""
from __future__ import annotations

import threading
import time

import pytest

from ansible_collections.homelab.onebox.plugins.module_utils._box import parse_box
from ansible_collections.homelab.onebox.plugins.module_utils._box_rollout import Rollout
from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError

SERVICES = [{"name": "web", "kind": "pool", "count": 3, "domains": ["w.example.org"]},
            {"name": "one", "kind": "pool", "count": 1, "domains": ["o.example.org"]},
            {"name": "site", "domains": ["s.example.org"]}]
RUNNING = ["web-1", "web-2", "web-3", "one-1", "site"]


def rollout(drain=None, **kwargs):
    return Rollout(parse_box(SERVICES).services, kwargs.pop("running", RUNNING), drain=drain, **kwargs)


def test_only_running_members_of_a_pool_of_two_or_more_roll():
    roll = rollout(running=["web-1", "web-2", "one-1", "site"])
    assert [name for name in ("web-1", "web-2", "web-3", "one-1", "site") if roll.rolls(name)] == ["web-1", "web-2"]
    assert not rollout(check_mode=True).rolls("web-1")


def test_a_member_is_drained_before_its_change_and_others_wait_for_its_turn_to_end():
    drained, events = [], []
    roll = rollout(drain=lambda service, member: drained.append((service.name, member)))
    roll.take("web-1")
    assert drained == [("web", "web-1")] and roll.has_turn("web-1") and roll.drained == ["web-1"]
    roll.take("web-1")  # its turn already: nothing again
    assert drained == [("web", "web-1")]
    roll.take("site")   # not a pool: no turn to wait for
    assert not roll.has_turn("site")

    def second():
        roll.take("web-2")
        events.append("web-2 took its turn")
    waiting = threading.Thread(target=second)
    waiting.start()
    time.sleep(0.2)
    events.append("web-1 done")
    roll.release("web-1", ok=True)
    waiting.join(5)
    assert events == ["web-1 done", "web-2 took its turn"] and drained[-1] == ("web", "web-2")
    roll.release("web-2", ok=True)
    roll.release("site", ok=True)  # never took a turn: nothing


def test_a_failed_member_ends_its_pools_roll_and_the_next_is_not_changed():
    roll = rollout(drain=lambda service, member: None)
    roll.take("web-1")
    roll.release("web-1", ok=False)
    with pytest.raises(OneboxError) as caught:
        roll.take("web-2")
    assert "the rolling change of pool web stopped at web-1, which failed" in caught.value.msg
    assert not roll.has_turn("web-2")
    roll.release("web-2", ok=False)
    with pytest.raises(OneboxError):
        roll.take("web-3")  # the turn was given back: no member is left waiting forever


def test_a_drain_that_fails_is_a_warning_and_the_change_goes_on():
    warned = []

    def broken(service, member):
        raise OneboxError("nginx -t failed")
    roll = rollout(drain=broken, warn=warned.append)
    roll.take("web-1")
    assert roll.has_turn("web-1") and roll.drained == []
    assert warned == ["web-1 was changed without first being drained from the proxy: nginx -t failed"]
