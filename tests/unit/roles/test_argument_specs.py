"""The roles' argument specs (roles/*/meta/argument_specs.yml) against what they describe: every
default of defaults/main.yml has an entry with its type and value, every tasks_from a playbook
imports has its entry point, the part roles' and backup's repeated entries equal the box role's,
and the options of onebox_tls and onebox_backup equal the modules' own specs. (What Ansible does
with them - ansible-doc, the check at a role's start - is tests/integration/test_role_specs.py.)"""
from __future__ import annotations

import glob
import os
import re

import pytest
import yaml

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.homelab.onebox.plugins.module_utils import _box_backup, _box_tls

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
ROLES = sorted(os.path.basename(path) for path in glob.glob(os.path.join(ROOT, "roles", "*")))
# Roles that are the box role with one or two parts: what they repeat of the box role's variables.
PART_ROLES = ("service", "reverse_proxy", "port_forward", "backup")
# Variables a role reads that no defaults/main.yml sets: the description (no default on purpose),
# and the optional dicts whose absence means "none" (HTTP only, no backups).
NO_DEFAULT = {"onebox_services", "onebox_tls", "onebox_backup"}
# What a spec entry says besides its description; equal where an entry is repeated.
FACTS = ("type", "elements", "default", "choices", "required", "no_log", "options")


def load(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def specs(role):
    return load("roles", role, "meta", "argument_specs.yml")["argument_specs"]


def defaults(role):
    return load("roles", role, "defaults", "main.yml")


def templated(value):
    return "{{" in yaml.safe_dump(value) or "{%" in yaml.safe_dump(value)


def facts(entry):
    """An entry without its descriptions (nested options too), for comparing repeated entries."""
    out = {key: entry[key] for key in FACTS if key in entry and key != "options"}
    if "options" in entry:
        out["options"] = {name: facts(sub) for name, sub in entry["options"].items()}
    out.setdefault("required", False)
    return out


def test_every_role_has_a_spec_with_a_main_entry_point():
    assert ROLES == ["backup", "base_image", "box", "lxd_host", "port_forward", "reverse_proxy", "service"]
    for role in ROLES:
        entry = specs(role)["main"]
        assert entry["short_description"] and entry["description"], role


@pytest.mark.parametrize("role", ROLES)
def test_every_default_has_an_entry_of_its_value(role):
    """A default added without a spec entry (or one whose value moved) fails here."""
    options = specs(role)["main"]["options"]
    for name, value in defaults(role).items():
        assert name in options, "%s: %s is in defaults/main.yml but not in meta/argument_specs.yml" % (role, name)
        entry = options[name]
        if templated(value):
            # Ansible templates the spec it validates with: a template there would be evaluated
            # (and fail before the role's own tasks set what it reads); the words say it instead.
            assert "default" not in entry, "%s: %s's default is a template, describe it in words" % (role, name)
        else:
            assert entry.get("default") == value, "%s: %s's default %r, defaults/main.yml %r" % (
                role, name, entry.get("default"), value)


@pytest.mark.parametrize("role", ROLES)
def test_the_defaults_pass_their_own_spec(role):
    for entry_point, spec in specs(role).items():
        given = {name: value for name, value in defaults(role).items()
                 if name in spec["options"] and not templated(value)}
        result = ArgumentSpecValidator(spec["options"]).validate(given)
        assert not result.error_messages, (role, entry_point, result.error_messages)


@pytest.mark.parametrize("role", ROLES)
def test_no_template_in_a_spec(role):
    """Ansible templates the options it validates against: text with {{ }} there would be
    evaluated at the role's start."""
    for entry_point, spec in specs(role).items():
        assert not templated(spec["options"]), (role, entry_point)


@pytest.mark.parametrize("role", ROLES)
def test_an_option_is_a_default_or_a_known_input(role):
    """Every entry describes something the role reads: its defaults, the inputs without one, or
    (a part role, backup) one of the box role's variables."""
    box = specs("box")["main"]["options"]
    for name in specs(role)["main"]["options"]:
        known = name in defaults(role) or name in NO_DEFAULT or (role in PART_ROLES and name in box)
        assert known, "%s: %s is in meta/argument_specs.yml but nowhere else" % (role, name)


@pytest.mark.parametrize("role", PART_ROLES)
def test_repeated_entries_equal_the_box_roles(role):
    box = specs("box")["main"]["options"]
    own = defaults(role)
    repeated = {name: entry for name, entry in specs(role)["main"]["options"].items() if name not in own and name in box}
    assert "onebox_services" in repeated and "onebox_owner" in repeated
    for name, entry in repeated.items():
        assert facts(entry) == facts(box[name]), "%s: %s differs from the box role's entry" % (role, name)


def test_each_tasks_from_a_playbook_uses_is_an_entry_point_of_its_own():
    """Ansible checks an import with tasks_from against the entry point of that exact name (none:
    no check at all)."""
    used = set()
    for path in glob.glob(os.path.join(ROOT, "playbooks", "*.yml")) + [os.path.join(ROOT, "site.yml")]:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        used.update(re.findall(r"name: homelab\.onebox\.(\w+)\n\s+tasks_from: (\S+)", text))
    assert ("box", "check.yml") in used and ("box", "converge.yml") in used
    for role, tasks_from in used:
        assert tasks_from in specs(role), "%s: no entry point %s" % (role, tasks_from)
    for role in ROLES:
        for entry_point in specs(role):
            assert os.path.exists(os.path.join(ROOT, "roles", role, "tasks", entry_point if entry_point.endswith(".yml")
                                               else entry_point + ".yml")), (role, entry_point)


def test_box_converge_reads_what_main_reads_and_check_a_part_of_it():
    box = specs("box")
    assert box["converge.yml"]["options"] == box["main"]["options"]
    assert set(box["check.yml"]["options"]) == {"onebox_services", "onebox_allow_empty", "onebox_owner"}
    # The check's own task says what is wrong with the description (a near miss named): the spec
    # takes anything there.
    assert box["check.yml"]["options"]["onebox_services"]["type"] == "raw"
    assert box["main"]["options"]["onebox_services"]["type"] == "list"


def module_facts(spec):
    """A module's ARGUMENT_SPEC in the facts a role spec states (defaults the module leaves
    unset are null)."""
    out = {}
    for name, entry in spec.items():
        item = {key: entry[key] for key in ("type", "elements", "default", "choices", "no_log") if key in entry}
        if "choices" in item:
            item["choices"] = list(item["choices"])
        item["required"] = entry.get("required", False)
        if "options" in entry:
            item["options"] = module_facts(entry["options"])
        out[name] = item
    return out


def test_onebox_tls_is_the_box_modules_tls():
    spec = facts(specs("box")["main"]["options"]["onebox_tls"])["options"]
    assert spec == module_facts(_box_tls.ARGUMENT_SPEC)


def test_onebox_backup_is_the_backup_modules_backup():
    spec = facts(specs("backup")["main"]["options"]["onebox_backup"])["options"]
    assert spec == module_facts(_box_backup.ARGUMENT_SPEC)
