"""The box module's orchestration against the in-memory LXD, in seconds: which containers each part
makes, insides set up once their container runs, check mode changing nothing, prune choosing only
the owner's containers, a failed container named while the others finish."""
import json
from types import SimpleNamespace

import pytest

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError, ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._instance_set import OWNER_KEY
from ansible_collections.homelab.onebox.plugins.modules.box import ARGUMENT_SPEC, BoxManager

from unit.fake_lxd import FakeLxd
from unit.plugins.module_utils.test_provision import APP_USER, is_state_script, output_for, writes

OWNER = "unit"
SERVICES = [
    {"name": "web", "domains": ["web.test"], "files": [{"path": "/var/www/html/index.html", "content": "hi\n"}]},
    {"name": "app", "command": ["/usr/bin/python3", "-m", "http.server", "8000"], "port": 8000},
    {"name": "db", "kind": "internal"},
]


def manager(lxd, check=False, diff=False, **params):
    checked = ArgumentSpecValidator(ARGUMENT_SPEC).validate(dict(dict(services=SERVICES, owner=OWNER), **params))
    assert not checked.error_messages, checked.error_messages
    warnings = []
    module = SimpleNamespace(params=dict(checked.validated_parameters, lxd_timeout=30), lxd=lxd, check_mode=check,
                             _diff=diff, warn=warnings.append, warnings=warnings)
    box = BoxManager(module)

    def inside(name, command, _kwargs):
        """A new container's inside: nothing of its spec there yet (its units known, stopped)."""
        if is_state_script(command):
            spec = box.inside_specs[name]
            return 0, output_for(spec, units={svc.unit: "enabled|inactive" for svc in spec.services}), ""
        if command[:2] == ["sh", "-c"] and "useradd" in command[2]:
            return 0, APP_USER.replace("app:", "%s:" % name), ""
        return None
    lxd.on_exec = inside
    return box


def box_lxd(*instances):
    return FakeLxd(instances, images=("onebox-debian12",))


def owned(name, owner=OWNER, status="Stopped"):
    return {"name": name, "status": status, "config": {OWNER_KEY: owner} if owner else {}}


def test_containers_and_insides_make_the_services_and_what_runs_in_them_not_the_proxy():
    lxd = box_lxd()
    result = manager(lxd, parts=["containers", "insides"]).run()
    assert sorted(lxd.names("create_instance")) == ["app", "db", "web"]   # unit-proxy is the sites part's
    assert [r["name"] for r in result["instances"]] == ["web", "app", "db"]
    assert all("create" in r["actions"] for r in result["instances"])
    assert lxd.files[("web", "/var/www/html/index.html")] == b"hi\n"
    assert ("app", "/etc/systemd/system/onebox-app.service") in lxd.files
    assert [r["name"] for r in result["provision"]] == ["web", "app"]      # db has nothing inside
    assert result["changed"] and result["pruned"] == [] and "sites" not in result and "forwards" not in result
    # each container is created before anything is done inside it
    calls = [(c[0], c[1]) for c in lxd.calls if c[0] in ("create_instance", "push_file")]
    assert calls.index(("create_instance", "web")) < calls.index(("push_file", "web"))


def test_check_mode_changes_nothing_and_says_what_would_be_made():
    lxd = box_lxd()
    result = manager(lxd, check=True, diff=True, parts=["containers", "insides", "sites"]).run()
    assert lxd.changes() == []
    assert sorted(r["name"] for r in result["instances"]) == ["app", "db", "unit-proxy", "web"]
    assert all("create" in r["actions"] for r in result["instances"])
    assert result["provision"] == [] and "sites" not in result   # nothing inside a container that is not there
    assert [d["before_header"] for d in result["diff"]][:2] == ["containers", "inside the containers"]


def test_sites_alone_makes_only_the_proxy():
    lxd = box_lxd()
    result = manager(lxd, check=True, parts=["sites"]).run()
    assert [(r["name"], "create" in r["actions"]) for r in result["instances"]] == [("unit-proxy", True)]
    assert set(result["addresses"]) == {"web", "app", "db", "unit-proxy"}   # the sites' backends, known up front


def test_prune_deletes_only_the_owners_containers_no_longer_described():
    lxd = box_lxd(owned("web"), owned("app"), owned("db"), owned("gone"),
                  owned("hand-made", owner=None), owned("theirs", owner="other"))
    box = manager(lxd, parts=["containers"])
    result = box.run()
    assert lxd.names("delete_instance") == ["gone"]
    assert result["pruned"] == ["gone"] and "gone" in box.module.warnings[0]
    assert {"hand-made", "theirs"} <= set(lxd.instances_by_name)


def test_a_run_that_would_delete_most_of_the_box_stops_before_any_change():
    lxd = box_lxd(owned("web"), owned("old-1"), owned("old-2"), owned("old-3"))
    with pytest.raises(ValidationError) as err:
        manager(lxd, services=[SERVICES[0]], parts=["containers"]).run()
    assert err.value.field == "prune" and "old-1, old-2, old-3" in err.value.reason
    assert lxd.changes() == []


def test_a_container_without_the_mark_is_refused_before_any_change():
    lxd = box_lxd(owned("app", owner=None))
    with pytest.raises(ValidationError) as err:
        manager(lxd, parts=["containers", "insides"]).run()
    assert err.value.field == "services[app].name" and "carries no owner mark" in err.value.reason
    assert lxd.changes() == []


def test_a_failed_container_is_named_and_the_others_finish():
    lxd = box_lxd()
    lxd.fail("create_instance", "app")
    with pytest.raises(OneboxError) as err:
        manager(lxd, parts=["containers", "insides"]).run()
    assert err.value.msg.startswith("app: ") and err.value.details["failed_instances"] == ["app"]
    assert {"web", "db"} <= set(lxd.instances_by_name) and "app" not in lxd.instances_by_name
    assert lxd.files[("web", "/var/www/html/index.html")] == b"hi\n"


def test_insides_alone_need_their_containers():
    lxd = box_lxd(owned("web", status="Running"))
    with pytest.raises(OneboxError) as err:
        manager(lxd, parts=["insides"]).run()
    assert err.value.msg.startswith("app: no such container") and err.value.details["failed_instances"] == ["app"]
    assert lxd.changes() == []
    # in check mode the missing one is skipped (it would be made first); the one there is compared
    result = manager(lxd, check=True, parts=["insides"]).run()
    assert [r["name"] for r in result["provision"]] == ["web"] and writes(lxd) == []


def test_an_empty_description_is_refused_only_where_it_would_prune():
    with pytest.raises(ValidationError) as err:
        manager(box_lxd(), services=[])
    assert err.value.field == "services" and "allow_empty" in err.value.reason
    assert manager(box_lxd(), services=[], parts=["insides"]).inside_specs == {}


def test_the_proxy_of_extra_sites_is_kept_by_a_run_of_other_parts():
    """reverse_proxy made the proxy for onebox_proxy_sites; the service role's run (containers
    only) is given the same sites and must not prune that proxy."""
    site = {"name": "extra", "server_names": ["extra.test"], "locations": [{"path": "/", "status": 404}]}
    plain = [{"name": "app", "command": ["/usr/bin/python3", "-m", "http.server", "8000"], "port": 8000}]
    lxd = box_lxd(owned("app"), owned("unit-proxy", status="Running"))
    result = manager(lxd, services=plain, parts=["containers"], proxy={"sites": [site]}).run()
    assert result["pruned"] == [] and lxd.names("delete_instance") == []
    assert [r["name"] for r in result["instances"]] == ["app"]   # the proxy is the sites part's to change


def test_extra_sites_are_checked_whatever_the_parts():
    with pytest.raises(ValidationError) as err:
        manager(box_lxd(), parts=["containers"], proxy={"sites": [{"name": "bad;name"}]})
    assert err.value.field.startswith("proxy.sites[0]")


# ---- HTTPS: the certificate volume and the agent in the proxy ------------------------------------
TLS = {"email": "admin@example.org"}


def tls_manager(lxd, pending=("web.test",), failed=(), **params):
    """A box with TLS whose proxy's agent answers as told: ``pending`` certificates after prepare,
    ``failed`` ones not obtained."""
    box = manager(lxd, tls=TLS, **params)
    answer = lxd.on_exec

    def agent(name, command, kwargs):
        if command[0] == "/usr/local/sbin/onebox-tls":
            if command[1] == "prepare":
                certs = [dict(name=c["name"], mode=c["mode"], pending=c["name"] in pending,
                              serving="placeholder" if c["name"] in pending else "acme") for c in box.box.tls.certificates()]
                return 0, json.dumps({"changed": True, "actions": [], "certs": certs, "removed": []}), ""
            if command[1] == "obtain":
                return 0, json.dumps({"changed": True, "obtained": [n for n in pending if n not in failed],
                                      "failed": [{"name": n, "reason": "connection refused"} for n in failed],
                                      "reloaded": True}), ""
        if command[:3] == ["nginx", "-T", "-q"]:  # the dump shows every file of the conf dir loaded
            names = ["000-default"] + [site["name"] for site in box.box.sites()]
            return 0, "".join("# configuration file /etc/nginx/conf.d/%s.conf:\n" % n for n in names), ""
        return answer(name, command, kwargs)
    lxd.on_exec = agent
    return box


def agent_calls(lxd):
    return [c[2][1:] for c in lxd.calls if c[0] == "exec" and c[2][0] == "/usr/local/sbin/onebox-tls"]


def test_tls_makes_the_volume_before_the_proxy_that_mounts_it_then_places_and_obtains():
    lxd = box_lxd()
    result = tls_manager(lxd, parts=["containers", "insides", "sites"]).run()
    changes = [(c[0], c[1]) for c in lxd.changes() if c[0] in ("create_volume", "create_instance")]
    assert changes.index(("create_volume", "unit-proxy-tls")) < changes.index(("create_instance", "unit-proxy"))
    assert lxd.volumes[("default", "unit-proxy-tls")]["config"] == {OWNER_KEY: OWNER}
    proxy = lxd.instances_by_name["unit-proxy"]
    assert proxy["devices"]["onebox-tls"]["source"] == "unit-proxy-tls"
    assert lxd.files[("unit-proxy", "/usr/local/sbin/onebox-tls")].startswith(b"#!/usr/bin/python3\n")
    # placed before the sites are written (their certificates must exist for nginx -t), obtained after
    execs = [c for c in lxd.calls if c[0] in ("exec", "push_file") and c[1] == "unit-proxy"]
    placed = next(i for i, c in enumerate(execs) if c[0] == "exec" and c[2][:2] == ["/usr/local/sbin/onebox-tls", "prepare"])
    site_file = next(i for i, c in enumerate(execs) if c[0] == "push_file" and "web.test.conf" in c[2])
    assert placed < site_file
    assert agent_calls(lxd) == [["prepare"], ["obtain"]]
    assert result["certificates"] == [{"name": "web.test", "mode": "acme", "serving": "acme", "pending": False,
                                       "action": "obtained"}]
    assert result["volume"]["action"] == "create"


def test_tls_nothing_pending_asks_the_ca_nothing():
    lxd = box_lxd()
    box = tls_manager(lxd, pending=(), parts=["containers", "insides", "sites"])
    result = box.run()
    assert agent_calls(lxd) == [["prepare"]]   # the links changed with the new site files: one reload with them
    assert result["certificates"][0]["action"] == "none"


def test_tls_a_certificate_not_obtained_is_a_warning_and_its_placeholder_serves():
    lxd = box_lxd()
    box = tls_manager(lxd, failed=("web.test",), parts=["containers", "insides", "sites"])
    result = box.run()
    assert result["certificates"][0]["action"] == "failed" and result["certificates"][0]["serving"] == "placeholder"
    assert "web.test not obtained: connection refused" in box.module.warnings[-1]


def test_tls_check_mode_on_a_new_proxy_says_which_certificates_would_be_requested():
    lxd = box_lxd()
    result = tls_manager(lxd, check=True, diff=True, parts=["containers", "insides", "sites"]).run()
    assert lxd.changes() == [] and agent_calls(lxd) == []
    assert result["certificates"][0]["action"] == "requested" and result["volume"]["action"] == "create"
    cert_diff = [d for d in result["diff"] if d["before_header"] == "certificates in unit-proxy"][0]
    assert cert_diff["after"] == "web.test: acme (requested)\n"


def test_tls_volume_of_another_owner_is_refused_before_any_change():
    lxd = box_lxd()
    lxd.volumes[("default", "unit-proxy-tls")] = {"name": "unit-proxy-tls", "config": {OWNER_KEY: "other"}}
    with pytest.raises(ValidationError) as err:
        tls_manager(lxd, parts=["containers", "insides", "sites"]).run()
    assert err.value.field == "tls" and lxd.changes() == []


def test_teardown_keeps_the_certificates_unless_purged():
    lxd = box_lxd(owned("web"), owned("unit-proxy"))
    lxd.volumes[("default", "unit-proxy-tls")] = {"name": "unit-proxy-tls", "config": {OWNER_KEY: OWNER}}
    manager(lxd, state="absent", services=None, parts=["containers", "sites"]).run()
    assert ("default", "unit-proxy-tls") in lxd.volumes and lxd.instances_by_name == {}
    result = manager(lxd, state="absent", services=None, purge=True, parts=["containers", "sites"]).run()
    assert result["volume"]["action"] == "delete" and lxd.volumes == {}


def test_tls_on_a_proxy_there_places_beside_its_inside_and_again_only_when_the_agent_changed():
    lxd = box_lxd()
    tls_manager(lxd, pending=(), parts=["containers", "insides", "sites"]).run()
    # The proxy is there now; the fake's inside is never converged, so the agent's files change again.
    lxd.calls.clear()
    tls_manager(lxd, pending=(), parts=["containers", "insides", "sites"]).run()
    assert agent_calls(lxd) == [["prepare"], ["prepare"]]
    prepares = [i for i, c in enumerate(lxd.calls) if c[0] == "exec" and c[2][:2] == ["/usr/local/sbin/onebox-tls", "prepare"]]
    agent_push = next(i for i, c in enumerate(lxd.calls) if c[0] == "push_file" and c[2] == "/usr/local/sbin/onebox-tls")
    assert prepares[1] > agent_push   # the placing that counts ran on the new agent
    lxd.calls.clear()
    box = tls_manager(lxd, pending=(), parts=["containers", "insides", "sites"])
    box._agent_files_changed = lambda insides: {}   # as on a box that changes nothing
    box.run()
    assert agent_calls(lxd) == [["prepare"]]
