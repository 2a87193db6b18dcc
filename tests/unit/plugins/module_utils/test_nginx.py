"""_nginx: the plan of site files and the transaction: on real directories through both targets,
and on an in-memory target for SiteSet's orchestration."""
import copy
import os

import pytest

from ansible_collections.homelab.onebox.plugins.module_utils import _nginx as n
from ansible_collections.homelab.onebox.plugins.module_utils import _nginx_render as nr
from ansible_collections.homelab.onebox.plugins.module_utils import _nginx_site as ns
from ansible_collections.homelab.onebox.plugins.module_utils import _nginx_target as nt
from unit.fake_nginx import APP, MemoryTarget, directory_target


# ---- planning ------------------------------------------------------------------------------------
def test_plan_create_update_unchanged_remove_prune():
    app = ns.parse_site(copy.deepcopy(APP))
    text = nr.render_site(app)
    other = ns.parse_site({"name": "other", "server_names": ["o.org"], "locations": [{"path": "/", "status": 404}]})
    gone = {"name": "gone", "state": "absent"}
    assert [c["action"] for c in n.plan({}, [app, other])] == ["created", "created"]
    current = {"app.conf": text, "other.conf": nr.render_site(other).replace("404", "403"),
               "gone.conf": nr.marker_line("gone"), "old.conf": nr.marker_line("old"), "hand.conf": "server {}\n"}
    changes = n.plan(current, [app, other, ns.parse_site(gone)])
    assert [(c["file"], c["action"]) for c in changes] == [("gone.conf", "removed"), ("other.conf", "updated")]
    pruned = n.plan(current, [app, other], prune=True)
    assert [(c["file"], c["action"]) for c in pruned] == [
        ("gone.conf", "removed"), ("old.conf", "removed"), ("other.conf", "updated")]
    assert n.plan({"app.conf": text}, [app]) == []


def test_plan_never_touches_unmarked_files():
    app = ns.parse_site(copy.deepcopy(APP))
    for site in (app, ns.parse_site({"name": "app", "state": "absent"})):
        with pytest.raises(nt.NginxError) as err:
            n.plan({"app.conf": "# mine\nserver {}\n"}, [site])
        assert "not written by homelab.onebox.nginx_site" in err.value.msg


@pytest.fixture(params=["host", "lxd"])
def target(request, tmp_path):
    return directory_target(request.param, tmp_path)


def snapshot(directory):
    return {f: open(os.path.join(directory, f), "rb").read() for f in sorted(os.listdir(directory))}


def sites(*names, status=404):
    return [ns.parse_site({"name": name, "server_names": ["%s.org" % name],
                           "locations": [{"path": "/", "status": status}]}) for name in names]


def converge(target, desired, prune=False):
    current, leftovers = target.read()
    changes = n.plan(current, desired, prune=prune)
    n.apply(target, changes, leftovers)
    return changes


def test_apply_creates_updates_removes_with_one_test_and_one_reload(target):
    d = target.conf_dir
    with open(os.path.join(d, "hand.conf"), "w") as handle:
        handle.write("# hand-written\n")
    converge(target, sites("a", "b", "c"))
    assert (target.fake.tests, target.fake.reloads) == (1, 1)
    assert sorted(os.listdir(d)) == ["a.conf", "b.conf", "c.conf", "hand.conf"]
    assert converge(target, sites("a", "b", "c")) == []
    assert (target.fake.tests, target.fake.reloads) == (1, 1)
    changes = converge(target, sites("a", status=403) + sites("b"), prune=True)
    assert [(c["file"], c["action"]) for c in changes] == [("a.conf", "updated"), ("c.conf", "removed")]
    assert (target.fake.tests, target.fake.reloads) == (2, 2)
    assert sorted(os.listdir(d)) == ["a.conf", "b.conf", "hand.conf"]
    assert "return 403;" in open(os.path.join(d, "a.conf")).read()


def test_failed_test_restores_everything(target):
    d = target.conf_dir
    converge(target, sites("a", "b"))
    with open(os.path.join(d, "hand.conf"), "w") as handle:
        handle.write("# hand-written\n")
    before = snapshot(d)
    target.fake.fail = 'nginx: [emerg] host not found in upstream "nope:80" in x.conf:5'
    current, leftovers = target.read()
    changes = n.plan(current, sites("a", status=403) + sites("new"), prune=True)
    assert [c["action"] for c in changes] == ["updated", "removed", "created"]
    with pytest.raises(nt.NginxError) as err:
        n.apply(target, changes, leftovers)
    assert 'host not found in upstream "nope:80"' in err.value.msg
    # nginx tested the new set, then everything came back byte for byte; no reload
    assert "return 403;" in target.fake.seen["a.conf"] and "b.conf" not in target.fake.seen
    assert snapshot(d) == before
    assert target.fake.reloads == 1


def test_files_not_included_roll_back(target):
    d = target.conf_dir
    before = snapshot(d)
    target.fake.include = False
    with pytest.raises(nt.NginxError) as err:
        converge(target, sites("a"))
    assert "is not included" in err.value.msg
    assert snapshot(d) == before


def test_leftovers_of_a_crashed_run_are_cleared(target):
    d = target.conf_dir
    for name in (".onebox-a.conf.new", ".onebox-a.conf.old"):
        with open(os.path.join(d, name), "w") as handle:
            handle.write("stale")
    converge(target, sites("a"))
    assert sorted(os.listdir(d)) == ["a.conf"]


def test_lxd_target_uses_few_execs(tmp_path):
    tgt = directory_target("lxd", tmp_path)
    converge(tgt, sites(*["s%02d" % i for i in range(20)]))
    # read, swap, test, remove backups (none: all new, so skipped), reload
    assert len(tgt.lxd.calls) <= 5, tgt.lxd.calls


# ---- SiteSet on an in-memory target: the component's orchestration --------------------------------
def site_set(target, desired, check_mode=False, prune=False, diff=True, warnings=None):
    """SiteSet run as nginx_site and box run it: read, plan, apply outside check mode."""
    component = n.SiteSet(target, desired, prune=prune, check_mode=check_mode, diff=diff,
                          warn=None if warnings is None else warnings.append)
    component.read()
    component.plan()
    if not check_mode:
        component.apply()
    return component.result()


def live(target):
    return {f: text for f, text in target.files.items() if f.endswith(".conf")}


def test_site_set_creates_and_reports_with_one_test_one_reload_and_diff_entries():
    target = MemoryTarget({"hand.conf": "server {}\n"})
    result = site_set(target, sites("a", "b"))
    assert result["changed"] is True and result["reloaded"] is True and result["nginx_output"] == ""
    assert result["sites"] == [{"name": "a", "file": "/etc/nginx/conf.d/a.conf", "action": "created"},
                               {"name": "b", "file": "/etc/nginx/conf.d/b.conf", "action": "created"}]
    assert result["diff"][0] == {"before_header": "/etc/nginx/conf.d/a.conf", "after_header": "/etc/nginx/conf.d/a.conf",
                                 "before": "", "after": target.files["a.conf"]}
    assert sorted(target.files) == ["a.conf", "b.conf", "hand.conf"]  # no staging or backup file left
    assert (len(target.tested), target.reloads) == (1, 1)
    again = site_set(target, sites("a", "b"))
    assert again == {"changed": False, "reloaded": False, "diff": [],
                     "sites": [dict(s, action="unchanged") for s in result["sites"]]}
    assert (len(target.tested), target.reloads) == (1, 1)  # no change: no test, no reload


def test_site_set_failed_nginx_test_leaves_the_previous_files_and_does_not_reload():
    target = MemoryTarget()
    site_set(target, sites("a", "b"))
    before = dict(target.files)
    target.fail = "nginx: [emerg] unknown directive in /etc/nginx/conf.d/a.conf:3"
    component = n.SiteSet(target, sites("a", status=403) + sites("c"), prune=True)
    component.read()
    assert [c["action"] for c in component.plan()] == ["updated", "removed", "created"]
    with pytest.raises(nt.NginxError) as err:
        component.apply()
    assert "unknown directive" in err.value.msg and err.value.details["rc"] == 1
    tested = target.tested[-1]
    assert "return 403;" in tested["a.conf"] and "b.conf" not in tested and "c.conf" in tested  # the new set was tested
    assert target.files == before  # then every file came back, nothing staged is left
    assert target.reloads == 1


def test_site_set_check_mode_writes_nothing_but_reports_and_diffs():
    target = MemoryTarget()
    site_set(target, sites("a"))
    before, writes = dict(target.files), list(target.writes)
    result = site_set(target, sites("a", status=403) + sites("b"), check_mode=True)
    assert result["changed"] is True and result["reloaded"] is False and "nginx_output" not in result
    assert [s["action"] for s in result["sites"]] == ["updated", "created"]
    assert "return 404;" in result["diff"][0]["before"] and "return 403;" in result["diff"][0]["after"]
    component = n.SiteSet(target, sites("b"), check_mode=True)
    component.read()
    component.plan()
    component.apply()  # a mistaken call in check mode changes nothing either
    assert target.files == before and target.writes == writes and len(target.tested) == 1


def test_site_set_prune_removes_only_marked_undeclared_files():
    target = MemoryTarget({"hand.conf": "# mine\nserver {}\n", "notes.txt": nr.marker_line("notes")})
    site_set(target, sites("keep", "old"))
    result = site_set(target, sites("keep"), prune=True)
    assert sorted(target.files) == ["hand.conf", "keep.conf", "notes.txt"]
    assert result["sites"] == [{"name": "keep", "file": "/etc/nginx/conf.d/keep.conf", "action": "unchanged"},
                               {"name": "old", "file": "/etc/nginx/conf.d/old.conf", "action": "removed"}]
    assert result["diff"][0]["after"] == "" and result["diff"][0]["before"].startswith(nr.MARKER)
    assert site_set(target, sites("keep"))["changed"] is False  # without prune nothing else is removed


def test_site_set_refuses_an_unmarked_file_in_plan_before_any_write():
    target = MemoryTarget({"a.conf": "# mine\n"})
    component = n.SiteSet(target, sites("a", "b"))
    component.read()
    with pytest.raises(nt.NginxError):
        component.plan()
    assert target.files == {"a.conf": "# mine\n"} and target.writes == []


def test_site_set_clears_leftovers_and_passes_nginx_warnings_on():
    target = MemoryTarget({".onebox-a.conf.new": "half"})
    original = target.command

    def command(argv):
        rc, out, _err = original(argv)
        return rc, out, "nginx: [warn] conflicting server name" if "-T" in argv else ""
    target.command = command
    warnings = []
    result = site_set(target, sites("a"), diff=False, warnings=warnings)
    assert ".onebox-a.conf.new" not in target.files and "diff" not in result
    assert warnings == ["nginx: [warn] conflicting server name"]
    assert result["nginx_output"] == "nginx: [warn] conflicting server name"
