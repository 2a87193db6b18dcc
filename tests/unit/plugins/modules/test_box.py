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
from ansible_collections.homelab.onebox.plugins.modules import box as box_module

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


class RecordedProgress(box_module.Progress):
    """The progress file's counts as the run writes them."""
    written = []

    def _write(self):
        super()._write()
        if self.path is not None:
            with open(self.path, encoding="utf-8") as handle:
                RecordedProgress.written.append(json.load(handle))


def test_progress_counts_each_container_done_in_the_tasks_directory_and_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(box_module, "Progress", RecordedProgress)
    RecordedProgress.written = []
    lxd = box_lxd(owned("gone"), owned("gone2"))
    box = manager(lxd, parts=["containers", "insides"], prune_confirm=True)
    box.module._tmpdir = str(tmp_path)
    box.run()
    # web, app, db made, gone and gone2 pruned: one count each, up to 5 of 5
    assert RecordedProgress.written == [{"done": done, "total": 5} for done in range(6)]
    assert list(tmp_path.iterdir()) == []
    # the insides of containers this run does not make are counted too
    RecordedProgress.written = []
    box = manager(lxd, parts=["insides"])
    box.module._tmpdir = str(tmp_path)
    box.run()
    # (web and app: db has nothing inside)
    assert RecordedProgress.written[-1] == {"done": 2, "total": 2} and list(tmp_path.iterdir()) == []


def test_progress_is_written_only_in_the_directory_the_controller_gave(monkeypatch):
    monkeypatch.setattr(box_module, "Progress", RecordedProgress)
    RecordedProgress.written = []
    box = manager(box_lxd(), parts=["containers", "insides"])   # a module without _tmpdir
    box.run()
    assert box.progress.done_count == 3 and RecordedProgress.written == []


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
    assert result["volumes"] == [{"name": "unit-proxy-tls", "pool": "default", "service": None, "action": "create"}]


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
    assert result["certificates"][0]["action"] == "requested" and result["volumes"][0]["action"] == "create"
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
    assert result["volumes"] == [{"name": "unit-proxy-tls", "pool": "default", "service": None, "action": "delete"}]
    assert lxd.volumes == {}


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


# ---- volumes ---------------------------------------------------------------------------------------
DATA = {"name": "data", "path": "/var/lib/db", "size": "1GiB"}
MEDIA = {"name": "media", "path": "/srv/media", "shared": True}
STORE = [{"name": "db", "kind": "internal", "volumes": [DATA, MEDIA]},
         {"name": "reader", "kind": "internal", "volumes": [dict(MEDIA, path="/mnt/media", readonly=True)]}]


def volume_box(lxd, services=None, **params):
    return manager(lxd, services=STORE if services is None else services, parts=["containers", "insides"], **params)


def volume_names(lxd):
    return sorted(name for _pool, name in lxd.volumes)


def test_volumes_are_made_before_the_containers_that_mount_them_and_a_second_run_changes_nothing():
    lxd = box_lxd()
    predicted = volume_box(lxd, check=True, diff=True).run()
    assert lxd.changes() == [] and predicted["changed"]
    assert predicted["volumes"] == [{"name": "unit-db-data", "pool": "default", "service": "db", "action": "create"},
                                    {"name": "unit-shared-media", "pool": "default", "service": None, "action": "create"}]
    volume_diff = [d for d in predicted["diff"] if d["before_header"] == "storage volumes"][0]
    assert volume_diff["after"] == "default/unit-db-data size=1GiB\ndefault/unit-shared-media\n"
    result = volume_box(lxd).run()
    assert [a["action"] for a in result["volumes"]] == ["create", "create"]
    changes = [(c[0], c[1]) for c in lxd.changes() if c[0] in ("create_volume", "create_instance")]
    assert changes[:2] == [("create_volume", "unit-db-data"), ("create_volume", "unit-shared-media")]
    assert lxd.volumes[("default", "unit-db-data")]["config"] == {
        "user.onebox.owner": OWNER, "user.onebox.service": "db", "size": "1GiB"}
    assert lxd.volumes[("default", "unit-shared-media")]["config"] == {
        "user.onebox.owner": OWNER, "user.onebox.shared": "true"}
    assert lxd.instances_by_name["reader"]["devices"]["vol-media"] == {
        "type": "disk", "pool": "default", "source": "unit-shared-media", "path": "/mnt/media", "readonly": "true"}
    assert set(lxd.instances_by_name["db"]["devices"]) == {"eth0", "vol-data", "vol-media"}
    again = volume_box(lxd).run()
    assert again["changed"] is False and [a["action"] for a in again["volumes"]] == ["none", "none"]


def test_a_volume_of_someone_else_is_refused_before_any_change():
    lxd = box_lxd()
    lxd.volumes[("default", "unit-db-data")] = {"name": "unit-db-data", "config": {}}
    with pytest.raises(ValidationError) as err:
        volume_box(lxd).run()
    assert err.value.field == "services[db].volumes[0].name" and err.value.value == "data"
    assert "not marked as any box's" in err.value.reason
    assert lxd.changes() == [] and volume_names(lxd) == ["unit-db-data"]


def test_a_removed_service_keeps_its_volume_until_it_is_purged_after_its_container():
    lxd = box_lxd()
    volume_box(lxd).run()
    box = volume_box(lxd, services=STORE[1:])
    result = box.run()
    assert result["pruned"] == ["db"] and result["volumes_kept"] == ["unit-db-data"]
    assert volume_names(lxd) == ["unit-db-data", "unit-shared-media"]
    assert any("keeping the storage volumes of owner unit that are no longer described: unit-db-data" in w
               for w in box.module.warnings), box.module.warnings
    quiet = volume_box(lxd, services=STORE[1:])
    assert quiet.run()["volumes_kept"] == [] and quiet.module.warnings == []   # said once, when it was unmounted
    removed = STORE[1:] + [{"name": "db", "state": "absent"}]
    assert volume_names(lxd) == ["unit-db-data", "unit-shared-media"] and not volume_box(lxd, services=removed).run()["changed"]
    purged = STORE[1:] + [{"name": "db", "state": "absent", "purge": True}]
    predicted = volume_box(lxd, services=purged, check=True).run()
    assert predicted["volumes"][-1] == {"name": "unit-db-data", "pool": "default", "service": "db", "action": "delete"}
    assert volume_names(lxd) == ["unit-db-data", "unit-shared-media"]
    box = volume_box(lxd, services=purged)
    assert box.run()["changed"] and volume_names(lxd) == ["unit-shared-media"]
    assert "deleting the storage volumes of owner unit that are purged: unit-db-data" in box.module.warnings
    assert volume_box(lxd, services=purged).run()["changed"] is False


def test_a_purged_service_whose_container_is_there_is_deleted_first_and_its_volume_after():
    lxd = box_lxd()
    volume_box(lxd).run()
    lxd.calls.clear()
    volume_box(lxd, services=STORE[1:] + [{"name": "db", "state": "absent", "purge": True}]).run()
    changes = [(c[0], c[1]) for c in lxd.changes() if c[0] in ("delete_instance", "delete_volume")]
    assert changes == [("delete_instance", "db"), ("delete_volume", "unit-db-data")]


def test_the_prune_guard_names_the_volumes_a_purge_would_delete():
    lxd = box_lxd()
    volume_box(lxd, services=STORE + [{"name": "logs", "kind": "internal", "volumes": [DATA]}]).run()
    with pytest.raises(ValidationError) as err:
        volume_box(lxd, services=[STORE[1], {"name": "db", "state": "absent", "purge": True}]).run()
    assert err.value.field == "prune" and "(db, logs), and the storage volumes unit-db-data, which" in err.value.msg
    assert len(volume_names(lxd)) == 3 and {"db", "logs"} <= set(lxd.instances_by_name)


def test_teardown_keeps_every_volume_and_a_purge_deletes_the_owners_after_the_containers():
    lxd = box_lxd()
    volume_box(lxd).run()
    lxd.volumes[("default", "by-hand")] = {"name": "by-hand", "config": {}}
    kept = manager(lxd, state="absent", services=None, parts=["containers", "sites"])
    result = kept.run()
    assert lxd.instances_by_name == {} and volume_names(lxd) == ["by-hand", "unit-db-data", "unit-shared-media"]
    assert result["volumes_kept"] == ["unit-db-data", "unit-shared-media"]
    with pytest.raises(ValidationError) as err:
        manager(lxd, state="absent", services=None, purge=True, parts=["sites", "forwards"])
    assert err.value.field == "purge" and "containers part" in err.value.reason
    result = manager(lxd, state="absent", services=None, purge=True, parts=["containers", "sites"]).run()
    assert sorted((v["name"], v["action"]) for v in result["volumes"]) == [("unit-db-data", "delete"),
                                                                           ("unit-shared-media", "delete")]
    assert volume_names(lxd) == ["by-hand"]


def test_a_volume_dropped_from_a_service_leaves_its_container_and_stays():
    lxd = box_lxd()
    volume_box(lxd).run()
    lxd.calls.clear()
    box = volume_box(lxd, services=[dict(STORE[0], volumes=[MEDIA]), STORE[1]])
    result = box.run()
    assert lxd.names("put_instance") == ["db"] and "vol-data" not in lxd.instances_by_name["db"]["devices"]
    assert result["volumes_kept"] == ["unit-db-data"] and volume_names(lxd) == ["unit-db-data", "unit-shared-media"]


def test_a_larger_size_grows_the_volume():
    lxd = box_lxd()
    volume_box(lxd).run()
    bigger = [dict(STORE[0], volumes=[dict(DATA, size="2GiB"), MEDIA]), STORE[1]]
    result = volume_box(lxd, services=bigger).run()
    assert result["volumes"][0]["action"] == "resize" and result["changed"]
    assert lxd.volumes[("default", "unit-db-data")]["config"]["size"] == "2GiB"


def test_a_new_image_re_creates_the_container_with_its_volumes_and_check_mode_predicts_it():
    lxd = FakeLxd(images=("onebox-debian12", "other-img"))
    volume_box(lxd).run()
    moved = [dict(STORE[0], image="other-img"), STORE[1]]
    lxd.calls.clear()
    box = volume_box(lxd, services=moved, check=True, diff=True)
    predicted = box.run()
    assert lxd.changes() == []
    db = {r["name"]: r for r in predicted["instances"]}["db"]
    assert db["actions"] == ["delete", "create", "start"] and db["recreated"] == "image onebox-debian12 -> other-img"
    assert any(w.startswith("would delete db to make it again (image onebox-debian12 -> other-img)") for w in box.module.warnings)
    containers = [d for d in predicted["diff"] if d["before_header"] == "containers"][0]
    assert containers["before"]["db"]["config"]["user.onebox.image"] == "onebox-debian12"
    assert containers["after"]["db"]["config"]["user.onebox.image"] == "other-img"
    result = volume_box(lxd, services=moved).run()
    assert {r["name"]: r["actions"] for r in result["instances"]} == {"db": ["delete", "create", "start"], "reader": []}
    created = [c[2] for c in lxd.calls if c[0] == "create_instance"][0]
    assert created["source"]["alias"] == "other-img" and created["devices"]["vol-data"]["source"] == "unit-db-data"
    assert volume_names(lxd) == ["unit-db-data", "unit-shared-media"] and lxd.names("delete_volume") == []
    assert volume_box(lxd, services=moved).run()["changed"] is False


def test_a_container_made_before_the_image_was_recorded_gets_the_record_not_a_new_container():
    lxd = box_lxd(dict(owned("db", status="Running")))
    result = manager(lxd, services=[{"name": "db", "kind": "internal"}], parts=["containers"]).run()
    assert result["instances"][0]["actions"][0] == "update" and "recreated" not in result["instances"][0]
    assert lxd.names("delete_instance") == [] and lxd.names("create_instance") == []
    assert lxd.instances_by_name["db"]["config"]["user.onebox.image"] == "onebox-debian12"


def test_the_health_check_a_changed_container_waits_for():
    from ansible_collections.homelab.onebox.plugins.module_utils._box import parse_box
    from ansible_collections.homelab.onebox.plugins.modules.box import POOL_HEALTH_SECONDS, health_check
    services = parse_box([
        {"name": "shop", "command": ["gunicorn"], "port": 8000, "domains": ["shop.example.org"],
         "health": {"http": "/health/"}},
        {"name": "db", "kind": "internal", "command": ["db"], "port": 5432, "health": {"tcp": 5432, "timeout": 9}},
        {"name": "web", "kind": "pool", "count": 2, "routes": [{"domain": "*.example.net", "path": "/w/"}]},
    ]).services
    shop, db, web = services
    # The proxy's Host header, so an app checking its names answers as through the proxy.
    assert health_check(shop) == {"http": "/health/", "tcp": None, "expect": 200, "timeout": 60, "port": 8000,
                                  "host": "shop.example.org"}
    assert health_check(db) == {"http": None, "tcp": 5432, "expect": None, "timeout": 9}
    # No health: a pool's member is waited for until it takes connections, anything else not at all.
    assert health_check(web) == {"tcp": 80, "timeout": POOL_HEALTH_SECONDS}
    assert health_check(parse_box([{"name": "plain", "kind": "internal", "command": ["x"], "port": 9}]).services[0]) is None


# ---- the containers as inventory hosts ---------------------------------------------------------
def test_hosts_are_every_described_container_at_its_address_and_a_second_run_keeps_their_marks(monkeypatch):
    monkeypatch.setattr(box_module, "find_socket", lambda: "/var/lib/lxd/unix.socket")
    lxd = box_lxd()
    result = manager(lxd, parts=["containers", "insides"]).run()
    hosts = {h["name"]: h for h in result["hosts"]}   # the proxy too: it is the box's whatever the parts
    assert list(hosts) == ["web", "app", "db", "unit-proxy"]
    assert hosts["app"]["groups"] == ["onebox", "onebox_owner_unit", "onebox_kind_app", "onebox_app"]
    assert hosts["unit-proxy"]["groups"] == ["onebox", "onebox_owner_unit", "onebox_kind_proxy"]
    assert hosts["app"]["vars"]["onebox_address"] == result["addresses"]["app"][0]
    assert hosts["app"]["vars"]["onebox_port"] == 8000 and hosts["web"]["vars"]["onebox_domains"] == ["web.test"]
    assert result["lxd_url"] == "unix:/var/lib/lxd/unix.socket"
    # recorded on the containers, read back alike; a second run changes nothing
    config = lxd.instances_by_name["app"]["config"]
    assert config["user.onebox.service"] == "app" and json.loads(config["user.onebox.host"])["kind"] == "app"
    again = manager(lxd, parts=["containers"]).run()   # (the fake's insides always look new)
    assert again["changed"] is False and all(r["actions"] == [] for r in again["instances"]) and again["hosts"] == result["hosts"]


def test_a_container_made_before_the_marks_gets_them_by_an_update_not_a_new_container():
    lxd = box_lxd(dict(owned("db", status="Running"), config={OWNER_KEY: OWNER, "user.onebox.image": "onebox-debian12"}))
    result = manager(lxd, services=[{"name": "db", "kind": "internal"}], parts=["containers"]).run()
    assert result["instances"][0]["actions"][0] == "update" and lxd.names("create_instance") == []
    assert lxd.instances_by_name["db"]["config"]["user.onebox.service"] == "db"


def test_hosts_in_check_mode_and_none_on_a_teardown():
    lxd = box_lxd()
    box = manager(lxd, check=True, parts=["containers", "insides", "sites"])
    box.module.params["lxd_url"] = "https://box.example.test:8443"   # the module's common option, given
    predicted = box.run()
    assert [h["name"] for h in predicted["hosts"]] == ["web", "app", "db", "unit-proxy"] and lxd.changes() == []
    assert predicted["lxd_url"] == "https://box.example.test:8443"
    assert manager(lxd, state="absent", services=None, parts=["containers"]).run()["hosts"] == []


def test_a_service_named_like_a_kinds_group_is_refused_before_any_change():
    lxd = box_lxd()
    with pytest.raises(ValidationError) as err:
        manager(lxd, services=SERVICES + [{"name": "kind-static", "kind": "internal"}]).run()
    assert err.value.field == "services[kind-static].name" and "onebox_kind_static" in err.value.reason
    assert lxd.changes() == []
