"""_box_service: one service of the description (most of its checks are exercised through
parse_box in test_box.py, as the user meets them)."""
from __future__ import annotations

from ansible_collections.homelab.onebox.plugins.module_utils._box_service import parse_service, secret_values
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError

import pytest

DEFAULTS = {"image": "onebox-debian12"}


def test_secret_values_are_every_environment_value_even_of_a_bad_description():
    services = [{"name": "a", "environment": {"TOKEN": "t0k", "PORT": 8000, "ON": True}}, "junk",
                {"name": "b", "environment": ["not", "a", "dict"]}, {"name": "c"}]
    assert sorted(secret_values(services)) == ["8000", "t0k"]
    assert list(secret_values("not a list")) == []


def test_a_pool_has_its_members_and_limits_are_checked_once():
    pool = parse_service(0, {"name": "web", "kind": "pool", "count": 3, "domains": ["w.test"],
                             "memory": "256MiB", "memory_swap": "512MiB", "cpus": 1}, DEFAULTS)
    assert pool.members == ["web-1", "web-2", "web-3"]
    assert pool.limits == {"memory": "256MiB", "memory_swap": "512MiB", "cpus": "1"}


@pytest.mark.parametrize("raw, field, reason", [
    ({"name": "a", "memory_swap": "1GiB"}, "services[a].memory_swap", "needs memory too"),
    ({"name": "a", "memory": "256MiB", "memory_swap": "128MiB"}, "services[a].memory_swap", "at least memory"),
    ({"name": "a", "files": "x"}, "services[a].files", "must be a list"),
    ({"name": "a", "boot": {"order": 1}}, "services[a].boot", "takes autostart, priority and delay"),
])
def test_a_bad_key_is_named_as_written(raw, field, reason):
    with pytest.raises(ValidationError) as err:
        parse_service(0, raw, DEFAULTS)
    assert err.value.field == field and reason in err.value.reason
