"""OneboxModule.run, the one place a module's errors become fail_json: the manager runs holding the
daemon's run lock, a refusal names its field and value, secrets stay out of the message, the
invocation and the result's echo."""
import json

import pytest

from ansible.module_utils import basic

from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError, ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._lock import RunLock
from ansible_collections.homelab.onebox.plugins.module_utils._lxd import endpoint_from_url
from ansible_collections.homelab.onebox.plugins.module_utils._module import OneboxModule

# A daemon of its own (never connected to: no manager here talks to LXD), so a lock of its own.
SOCKET = "https://homelab-onebox-unit-test.invalid:8443"
KEY = endpoint_from_url(SOCKET)
SPEC = dict(name=dict(type="str"), environment=dict(type="dict", default={}))


def run(capsys, monkeypatch, manager, **args):
    """Run ``manager`` (module -> object with run()) as a module with ``args``: (rc, output)."""
    monkeypatch.setattr(basic, "_ANSIBLE_ARGS", json.dumps({"ANSIBLE_MODULE_ARGS": dict(
        args, lxd_url=SOCKET, lock_timeout=0)}).encode())
    monkeypatch.setattr(basic, "_ANSIBLE_PROFILE", "legacy", raising=False)  # 2.19 only
    module = OneboxModule(SPEC, lxd=True, secrets=lambda params: params["environment"].values())
    with pytest.raises(SystemExit) as done:
        module.run(manager)
    return done.value.code, json.loads(capsys.readouterr().out)


class Manager:
    def __init__(self, module, outcome):
        self.module, self.outcome = module, outcome

    def run(self):
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome(self.module)


def test_the_manager_runs_holding_the_daemons_lock(capsys, monkeypatch):
    def held(module):
        with pytest.raises(OneboxError) as err:
            with RunLock(KEY, 0, "a second run"):
                pass
        return {"changed": True, "second_run": err.value.msg}
    rc, out = run(capsys, monkeypatch, lambda module: Manager(module, held), name="web")
    assert rc == 0 and out["changed"] is True
    assert "another homelab.onebox run holds the lock" in out["second_run"]


def test_a_refusal_names_field_and_value_and_hides_the_secret(capsys, monkeypatch):
    refusal = ValidationError("services[web].environment.TOKEN", "s3cret-t0ken", "must be one line")
    rc, out = run(capsys, monkeypatch, lambda module: Manager(module, refusal),
                  name="web", environment={"TOKEN": "s3cret-t0ken"})
    assert rc == 1 and out["failed"] is True
    assert out["msg"].startswith("services[web].environment.TOKEN")
    assert "s3cret-t0ken" not in json.dumps(out)


def test_a_refusal_while_the_manager_is_built_changes_nothing_and_takes_no_lock(capsys, monkeypatch):
    def refuse(module):
        raise ValidationError("name", "-bad", "must start with a letter")
    rc, out = run(capsys, monkeypatch, refuse, name="-bad")
    assert rc == 1 and out["msg"] == "name: invalid value '-bad': must start with a letter"
    with RunLock(KEY, 0, "after"):   # free: it was never taken
        pass


def test_an_unexpected_error_fails_the_run_naming_it(capsys, monkeypatch):
    rc, out = run(capsys, monkeypatch, lambda module: Manager(module, KeyError("oops")), name="web")
    assert rc == 1 and out["msg"] == "unexpected error: 'oops'", out


def test_the_result_echoes_its_invocation_without_secrets(capsys, monkeypatch):
    rc, out = run(capsys, monkeypatch, lambda module: Manager(module, lambda m: {"changed": False}),
                  name="web", environment={"TOKEN": "s3cret-t0ken"})
    assert rc == 0 and out["invocation"]["module_args"]["name"] == "web"
    assert "s3cret-t0ken" not in json.dumps(out)
