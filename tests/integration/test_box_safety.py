"""No single mistake destroys a box (homelab.onebox.box against the real LXD, iptables and nginx):
an empty or missing description, a container the box does not own, a prune that would delete
most of the box, two runs at once. Each refusal leaves `lxc list`, `iptables-save` and the proxy's
`nginx -T` as they were. The box: a static site on a random host port and three internal
containers, under an owner, chain prefix and files of its own."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import pytest

from conftest import RUN_PREFIX, ansible_env, delete_instance_quietly, run_module, run_playbook
from netns import Netns
from ansible_collections.homelab.onebox.plugins.module_utils._lock import RunLock
from ansible_collections.homelab.onebox.plugins.module_utils._lxd import endpoint_from_url

OWNER = "%s-sf" % RUN_PREFIX
WEB = "%s-sf-web" % RUN_PREFIX
INSIDE = ["%s-sf-c%d" % (RUN_PREFIX, i) for i in range(1, 4)]
PORT = random.randrange(40000, 45000, 10)
IMAGE = "onebox-debian12"


def services(page="safe page\n", inside=INSIDE, **web):
    out = [dict({"name": WEB, "kind": "static", "host_port": PORT,
                 "files": [{"path": "/var/www/html/index.html", "content": page}]}, **web)]
    return out + [{"name": name, "kind": "internal"} for name in inside]


def iptables_save():
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, timeout=30, check=True).stdout
    return [line.split(" [")[0] for line in out.splitlines() if not line.startswith("#")]


def listing(lxd):
    """This test's containers (others may come and go on a shared machine), as LXD lists them."""
    return sorted((i["name"], i["status"], json.dumps(i.get("config"), sort_keys=True), json.dumps(i.get("devices"), sort_keys=True))
                  for i in lxd.instances() if i["name"].startswith(OWNER))


@pytest.fixture(scope="module")
def args(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("safety")
    return {"owner": OWNER, "services": services(),
            "forwards": {"save_path": str(tmp / "dnat.rules"), "restore_script": str(tmp / "restore"),
                         "sysctl_file": str(tmp / "ip_forward.conf")}}


@pytest.fixture(scope="module")
def box(lxd, args):
    try:  # a converge that fails half-way has made containers too: always torn down
        result = run_module("box", args, timeout=600)
        assert not result.get("failed") and result["changed"], result
        yield result
    finally:
        gone = run_module("box", dict(args, state="absent"))
        assert not gone.get("failed"), gone


@pytest.fixture(scope="module")
def client():
    with Netns("safe") as ns:
        yield ns


def ask(client):
    return client.run(["curl", "-s", "--max-time", "5", "http://%s:%d/" % (client.host_address, PORT)],
                      timeout=20).stdout


@pytest.fixture
def unchanged(lxd, box):
    """Asserts, after the test, that LXD, iptables and the proxy's nginx are as they were."""
    proxy = "%s-proxy" % OWNER

    def state():
        return listing(lxd), iptables_save(), lxd.run(proxy, ["nginx", "-T"], timeout=30)

    before = state()
    yield
    assert state() == before


def test_the_box_serves(box, client):
    assert ask(client) == "safe page\n"


def test_an_empty_description_is_refused(args, unchanged):
    result = run_module("box", dict(args, services=[]))
    assert result.get("failed") and "services" in result["msg"] and "allow_empty" in result["msg"], result
    assert "teardown" in result["msg"]


def test_no_description_is_refused(args, unchanged):
    result = run_module("box", {k: v for k, v in args.items() if k != "services"})
    assert result.get("failed") and "services" in result["msg"], result


def test_a_prune_of_most_of_the_box_is_refused_naming_them(args, unchanged):
    for check in (True, False):
        result = run_module("box", dict(args, services=services(inside=[])), check=check)
        assert result.get("failed"), result
        assert "prune" in result["msg"] and all(name in result["msg"] for name in INSIDE), result["msg"]
        assert "prune_confirm" in result["msg"]


@pytest.fixture
def stranger(lxd):
    """A container made by hand, with a file of the user's inside, named like the next service."""
    name = "%s-sf-hand" % RUN_PREFIX
    lxd.create_instance({"name": name, "type": "container", "source": {"type": "image", "alias": IMAGE},
                         "config": {}, "devices": {}})
    lxd.change_state(name, "start")
    lxd.push_file(name, "/root/mine.txt", b"the user's own file\n")
    try:
        yield name
    finally:
        delete_instance_quietly(lxd, name)


@pytest.mark.parametrize("mark", [None, "%s-other" % RUN_PREFIX])
def test_a_container_the_box_does_not_own_is_never_adopted(lxd, args, stranger, mark):
    if mark:
        lxd.patch_instance(stranger, {"config": {"user.onebox.owner": mark}})
    before = (listing(lxd), iptables_save())
    result = run_module("box", dict(args, services=services() + [{"name": stranger, "kind": "internal"}]))
    assert result.get("failed"), result
    assert "services[%s].name" % stranger in result["msg"] and stranger in result["msg"]
    assert ("belongs to owner %s" % mark if mark else "no owner mark") in result["msg"]
    assert (listing(lxd), iptables_save()) == before
    assert lxd.pull_file(stranger, "/root/mine.txt") == b"the user's own file\n"


def test_adopt_takes_a_container_over_as_a_change(lxd, args, stranger):
    described = dict(args, services=services() + [{"name": stranger, "kind": "internal", "adopt": True}])
    result = run_module("box", described)
    assert result["changed"] and not result.get("failed"), result.get("msg")
    assert "update" in next(r["actions"] for r in result["instances"] if r["name"] == stranger)
    assert lxd.instance(stranger, state=False)["config"]["user.onebox.owner"] == OWNER
    assert lxd.pull_file(stranger, "/root/mine.txt") == b"the user's own file\n"
    again = run_module("box", described, diff=True)
    assert again["changed"] is False, json.dumps(again.get("diff"))[:3000]
    # Now the box's own: dropping it from the description deletes it (one container: no confirm).
    dropped = run_module("box", args)
    assert dropped["pruned"] == [stranger] and lxd.instance(stranger) is None, dropped
    assert any(stranger in w for w in dropped.get("warnings", [])), dropped


def _ansible_box(args):
    """A box module run as its own process, for runs at once; (Popen, its args file)."""
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-i", "localhost,", "-c", "local",
           "-e", "ansible_python_interpreter=%s" % sys.executable, "-m", "homelab.onebox.box", "-a", json.dumps(args)]
    return subprocess.Popen(cmd, env=ansible_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _box_modules(*procs):
    """The box module processes (AnsiballZ_box.py) started by these ansible runs."""
    parents = {proc.pid for proc in procs}
    found = set()
    for _round in range(4):  # ansible -> its worker -> sh -> python AnsiballZ_box.py
        for pid in os.listdir("/proc"):
            try:
                with open("/proc/%s/stat" % pid, encoding="utf-8") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
                with open("/proc/%s/cmdline" % pid, "rb") as handle:
                    cmdline = handle.read()
            except (OSError, ValueError, IndexError):
                continue
            if ppid in parents:
                parents.add(int(pid))
                if b"AnsiballZ_box.py" in cmdline:
                    found.add(int(pid))
    return found


def _holding_open(pids, path):
    """Those of ``pids`` that have ``path`` open: a module waiting for the run lock keeps its file
    open while it polls, from its first try on."""
    out = set()
    for pid in pids:
        try:
            fds = os.listdir("/proc/%d/fd" % pid)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink("/proc/%d/fd/%s" % (pid, fd)) == path:
                    out.add(pid)
                    break
            except OSError:
                continue
    return out


def _result(proc):
    out, err = proc.communicate(timeout=600)
    try:
        return json.loads(out)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (ValueError, KeyError, IndexError):
        raise AssertionError("no result (rc %s): %s %s" % (proc.returncode, out[-2000:], err[-2000:]))


def test_two_runs_at_once_take_turns(lxd, args, box, client):
    """The test holds the daemon's lock while two runs with different pages start: both wait, then
    run one after the other; neither sees LXD's "busy"; the box ends as the later one says."""
    key = endpoint_from_url(None)
    with RunLock(key, 10, "the test") as held:
        first = _ansible_box(dict(args, services=services(page="first\n")))
        time.sleep(1.5)
        second = _ansible_box(dict(args, services=services(page="second\n")))
        # Held until both modules are trying the lock (its file open), then a second more: waiting
        # only for the module processes was not enough on a loaded machine (load 8-10), where a
        # module's start-up (imports, its client) outlasted the second and it found the lock free.
        deadline = time.monotonic() + 120
        while len(_holding_open(_box_modules(first, second), held.path)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
    results = [_result(first), _result(second)]
    for result in results:
        assert not result.get("failed") and result["changed"], result
        assert "busy" not in json.dumps(result).lower()
        assert any("waited" in w for w in result.get("warnings", [])), result
    assert ask(client) in ("first\n", "second\n")
    back = run_module("box", args)
    assert back["changed"] and ask(client) == "safe page\n"


def test_a_run_that_cannot_get_the_lock_fails_naming_the_holder(args, unchanged):
    with RunLock(endpoint_from_url(None), 10, "the test holding it"):
        started = time.monotonic()
        result = run_module("box", dict(args, services=services(page="never\n"), lock_timeout=2))
        assert time.monotonic() - started < 60
    assert result.get("failed"), result
    assert "lock" in result["msg"] and "the test holding it" in result["msg"], result["msg"]


# ---- two owners on one host -------------------------------------------------------------------
SECOND = "%s-sg" % RUN_PREFIX
SECOND_WEB = "%s-sg-web" % RUN_PREFIX


def second_args(port):
    return {"owner": SECOND, "services": [{"name": SECOND_WEB, "kind": "static", "host_port": port,
                                          "files": [{"path": "/var/www/html/index.html", "content": "second box\n"}]}]}


def test_two_owners_side_by_side(lxd, args, box, client):
    """A second box (its own owner; chains, files and proxy named after it) converges beside the
    first; a port the first forwards is refused naming it; its teardown leaves the first whole."""
    def first_state():
        rules = [line for line in iptables_save() if OWNER.upper().replace("-", "_") in line or OWNER in line]
        return listing(lxd), rules, open(args["forwards"]["save_path"], encoding="utf-8").read()

    first = first_state()
    taken = run_module("box", second_args(PORT))
    assert taken.get("failed") and OWNER in taken["msg"] and str(PORT) in taken["msg"], taken
    assert lxd.instance(SECOND_WEB) is None and first_state() == first
    try:
        result = run_module("box", second_args(PORT + 1), timeout=600)
        assert result["changed"] and not result.get("failed"), result.get("msg")
        kept = result["forwards_kept"]
        assert kept["owner"] == SECOND and kept["chain_prefix"] not in ("ONEBOX", OWNER.upper().replace("-", "_"))
        assert SECOND in kept["save_path"] and SECOND in kept["unit_name"] and os.path.exists(kept["save_path"])
        assert ask(client) == "safe page\n"
        second = client.run(["curl", "-s", "--max-time", "5", "http://%s:%d/" % (client.host_address, PORT + 1)],
                            timeout=20).stdout
        assert second == "second box\n"
        assert first_state() == first
    finally:
        gone = run_module("box", dict(second_args(PORT + 1), state="absent"))
        kept = gone.get("forwards_kept") or {}
    assert not gone.get("failed"), gone
    assert lxd.instance(SECOND_WEB) is None and lxd.instance("%s-proxy" % SECOND) is None
    assert not any(SECOND in line for line in iptables_save())
    assert not os.path.exists(kept["save_path"]) and not os.path.exists(kept["restore_script"])
    assert first_state() == first and ask(client) == "safe page\n"


def test_the_proxy_takes_the_longest_names_a_description_accepts(lxd, box):
    """Two exact names of 48+ characters failed Debian's `nginx -t` (server_names_hash_bucket_size
    64): a valid description would fail at the proxy. The box's proxy has room for 253."""
    proxy = "%s-proxy" % OWNER
    longest = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 57, "org"])
    assert len(longest) == 253
    site = {"name": "%s-long" % RUN_PREFIX, "server_names": [longest, "e" * 60 + ".example.org", "*." + "f" * 60 + ".org"],
            "listen": [str(PORT + 5)], "locations": [{"path": "/", "status": 204}]}
    made = run_module("nginx_site", {"instance": proxy, "sites": [site]})
    gone = run_module("nginx_site", {"instance": proxy, "sites": [dict(site, state="absent")]})
    # Without the room, `nginx -t` refuses the whole configuration and nothing is applied.
    assert made["changed"] and made["reloaded"] and not made.get("failed"), made.get("msg")
    assert gone["changed"] and not gone.get("failed"), gone


@pytest.mark.parametrize("group_vars, says", [
    ({"onebox_service": [{"name": "x1"}]}, ["onebox_services is not defined", "onebox_service: a typo?", "teardown"]),
    ({"onebox_services": []}, ["onebox_services is empty", "onebox_allow_empty", "teardown"]),
    ({"onebox_services": {"name": "x1"}}, ["onebox_services must be a list"]),
])
def test_site_yml_refuses_a_missing_or_empty_description_first(lxd, tmp_path, box, group_vars, says):
    """site.yml's first task, before the host's set-up: the box of this owner is not touched."""
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "all.yml").write_text(json.dumps(dict(group_vars, onebox_owner=OWNER)))
    (tmp_path / "hosts").write_text("localhost\n")
    before = (listing(lxd), iptables_save())
    rc, out = run_playbook("site.yml", inventory=str(tmp_path / "hosts"))
    assert rc != 0
    tasks = [t for play in out["plays"] for t in play["tasks"]]
    failed = [t["hosts"]["localhost"] for t in tasks if t["hosts"].get("localhost", {}).get("failed")]
    assert len(failed) == 1 and len(out["plays"]) == 1, [t["task"]["name"] for t in tasks]
    assert all(text in failed[0]["msg"] for text in says), failed[0]["msg"]
    assert (listing(lxd), iptables_save()) == before


def test_lxd_instances_prune_is_guarded_too(lxd, box):
    """The part roles' module: the same limit, naming the containers, nothing deleted."""
    before = listing(lxd)
    result = run_module("lxd_instances", {"owner": OWNER, "prune": True, "instances": []})
    assert result.get("failed") and "prune_confirm" in result["msg"], result
    assert all(name in result["msg"] for name in [WEB] + INSIDE)
    assert listing(lxd) == before
