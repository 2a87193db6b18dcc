"""Your box from outside, derived from its description (the inventory in ONEBOX_VERIFY_INVENTORY):
each domain, route, health check and host port answers an HTTP request from another machine
below 500 (a health check with its ``expect``), each TCP forward takes a connect. One test per
check, named after the service and what it asks. Add your own tests beside this file."""
import os

import pytest

from ansible_collections.homelab.onebox.extensions.molecule.onebox_verify import answer, checks, services_of

INVENTORY = os.environ.get("ONEBOX_VERIFY_INVENTORY")
CHECKS = checks(services_of(INVENTORY)) if INVENTORY else []


def test_the_description_has_something_to_check_from_outside():
    assert INVENTORY, "ONEBOX_VERIFY_INVENTORY is not set (molecule.yml, ansible.env: the scenario's inventory)"
    assert CHECKS, "%s describes no domain, route, host port or TCP forward: nothing to check from outside" % INVENTORY


@pytest.mark.parametrize("check", CHECKS, ids=[check.id for check in CHECKS])
def test_the_box_answers_from_outside(client, check):
    failure = answer(client, check)
    assert failure is None, failure
