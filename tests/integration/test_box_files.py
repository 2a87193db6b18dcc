"""Files from the controller (a files item's src) against the real LXD, through the box module and its
action plugin: a 20 MiB random artifact and a tree of nested directories arrive byte-identical (the
sha256 inside the container against the source's), an executable stays executable; a second run moves
nothing; a mode change alone is applied; without sync a file deleted from the source stays, with sync it
goes and what is outside the tree stays; diff shows a large or binary file as its size and checksum; a
connection that is not local gets the sources copied to the host and unpacked by the module; bad input
fails before any change, naming the field.

The box has an owner of its own and only the containers and insides parts; its container is removed at
the end, even when a test fails."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time

import pytest

from conftest import ROOT, RUN_PREFIX, _ansible, delete_instance_quietly, run_module

OWNER = "%s-files" % RUN_PREFIX
NAME = "%s-fi" % RUN_PREFIX
BIG = 20 * 1024 * 1024
TREE = "/srv/tree"
ARTIFACT = "/opt/app/app.bin"


def sh(script, check=True):
    return subprocess.run(["lxc", "exec", NAME, "--", "sh", "-c", script], capture_output=True, text=True,
                          timeout=60, check=check)


def digest(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def local_tree(root):
    """relative path -> sha256 of every file under ``root`` (as the container's side below)."""
    out = {}
    for top, _dirs, names in os.walk(root):
        for name in names:
            full = os.path.join(top, name)
            out[os.path.relpath(full, root)] = digest(full)
    return out


def container_tree():
    lines = sh("cd %s && find . -type f -exec sha256sum {} +" % TREE).stdout.splitlines()
    return {line[66:][2:]: line[:64] for line in lines}


def files(sources, mode=None, sync=None, tree_mode=None):
    tree = {"path": TREE, "src": sources["tree"]}
    if tree_mode:
        tree["mode"] = tree_mode
    if sync is not None:
        tree["sync"] = sync
    artifact = {"path": ARTIFACT, "src": sources["big"]}
    if mode:
        artifact["mode"] = mode
    return [artifact, tree, {"path": "/srv/outside.txt", "content": "outside the tree\n"}]


def args(sources, **kwargs):
    return {"owner": OWNER, "parts": ["containers", "insides"],
            "services": [{"name": NAME, "kind": "internal", "files": files(sources, **kwargs)}]}


def ok(result, changed=True):
    assert not result.get("failed"), result.get("msg", result)
    assert result["changed"] is changed, result
    return result


def provision(result):
    return {r["name"]: r for r in result["provision"]}[NAME]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A 20 MiB random artifact and a tree: 36 files in nested directories, one executable."""
    base = tmp_path_factory.mktemp("src")
    big = base / "app.bin"
    big.write_bytes(os.urandom(BIG))
    tree = base / "tree"
    for index in range(36):
        where = tree / ("d%d" % (index % 4)) / ("e%d" % (index % 3))
        where.mkdir(parents=True, exist_ok=True)
        (where / ("f%02d.txt" % index)).write_text("file %d\n" % index * (index + 1))
    (tree / "bin").mkdir()
    (tree / "bin" / "run.sh").write_text("#!/bin/sh\necho ran\n")
    os.chmod(tree / "bin" / "run.sh", 0o755)
    return {"big": str(big), "tree": str(tree), "base": str(base)}


@pytest.fixture(scope="module")
def built(lxd, sources):
    try:
        started = time.monotonic()
        result = run_module("box", args(sources), timeout=600)
        yield {"result": result, "seconds": time.monotonic() - started}
    finally:
        run_module("box", {"owner": OWNER, "state": "absent"})
        delete_instance_quietly(lxd, NAME)


def test_an_artifact_and_a_tree_arrive_byte_identical(built, sources):
    ok(built["result"])
    actions = provision(built["result"])["actions"]
    dirs = 1 + sum(len(d) for _top, d, _names in os.walk(sources["tree"]))
    assert actions == ["file %s" % ARTIFACT, "file /srv/outside.txt", "tree %s (37 pushed, %d dirs)" % (TREE, dirs)]
    assert sh("sha256sum %s" % ARTIFACT).stdout.split()[0] == digest(sources["big"])
    assert container_tree() == local_tree(sources["tree"])
    assert sh("%s/bin/run.sh" % TREE).stdout == "ran\n"                  # executable still
    assert sh("stat -c '%%a %%U' %s %s/d0/e0 %s/d0/e0/f00.txt" % (ARTIFACT, TREE, TREE)).stdout.split("\n")[:3] == [
        "644 root", "755 root", "644 root"]


def test_a_second_run_moves_nothing(built, sources):
    started = time.monotonic()
    again = ok(run_module("box", args(sources)), changed=False)
    print("first run %.1f s, unchanged run %.1f s" % (built["seconds"], time.monotonic() - started))
    assert provision(again)["actions"] == []


def test_a_mode_change_alone_is_applied(built, sources):
    result = ok(run_module("box", args(sources, mode="0600", tree_mode="0640")))
    assert set(provision(result)["actions"]) == {"file %s" % ARTIFACT, "tree %s (37 fixed)" % TREE}, result
    assert sh("stat -c %%a %s %s/bin/run.sh" % (ARTIFACT, TREE)).stdout.split() == ["600", "640"]
    ok(run_module("box", args(sources, mode="0600", tree_mode="0640")), changed=False)
    ok(run_module("box", args(sources)))                                 # back to the sources' own bits
    assert sh("stat -c %%a %s %s/bin/run.sh" % (ARTIFACT, TREE)).stdout.split() == ["644", "755"]


def test_a_changed_source_file_moves_alone_and_diff_shows_a_large_file_by_its_checksum(built, sources):
    path = os.path.join(sources["tree"], "d1", "e1", "f01.txt")
    with open(path, "a") as handle:
        handle.write("one more line\n")
    with open(sources["big"], "r+b") as handle:
        handle.seek(BIG // 2)
        handle.write(b"changed")
    predicted = ok(run_module("box", args(sources), check=True, diff=True))
    inside = [d for d in predicted["diff"] if d["before_header"] == "inside the containers"][0]
    assert inside["after"][NAME]["%s/d1/e1/f01.txt" % TREE].endswith("one more line\n")
    assert inside["before"][NAME][ARTIFACT].startswith("<%d bytes, sha256 " % BIG)
    assert inside["after"][NAME][ARTIFACT] == "<%d bytes, sha256 %s>" % (BIG, digest(sources["big"]))
    assert sh("sha256sum %s" % ARTIFACT).stdout.split()[0] != digest(sources["big"])    # check mode wrote nothing
    result = ok(run_module("box", args(sources)))
    assert set(provision(result)["actions"]) == {"file %s" % ARTIFACT, "tree %s (1 pushed)" % TREE}
    assert container_tree() == local_tree(sources["tree"])
    assert sh("sha256sum %s" % ARTIFACT).stdout.split()[0] == digest(sources["big"])


def test_sync_removes_what_the_source_no_longer_has_and_only_under_its_path(built, sources):
    os.remove(os.path.join(sources["tree"], "d2", "e2", "f02.txt"))
    shutil.rmtree(os.path.join(sources["tree"], "d3", "e0"))
    sh("echo by hand > %s/by-hand.txt && echo keep > /srv/keep.txt" % TREE)
    ok(run_module("box", args(sources)), changed=False)                  # without sync: they stay
    assert sh("test -f %s/d2/e2/f02.txt && test -d %s/d3/e0 && echo there" % (TREE, TREE)).stdout == "there\n"
    result = ok(run_module("box", args(sources, sync=True)))
    assert provision(result)["actions"] == ["tree %s (3 removed)" % TREE], result
    assert container_tree() == local_tree(sources["tree"])
    assert not os.path.exists(os.path.join(sources["tree"], "d3", "e0"))
    assert sh("test -e %s/d3/e0 || echo gone" % TREE).stdout == "gone\n"
    assert sh("cat /srv/keep.txt /srv/outside.txt").stdout == "keep\noutside the tree\n"
    ok(run_module("box", args(sources, sync=True)), changed=False)


def test_a_connection_that_is_not_local_gets_the_sources_copied_and_unpacked(built, sources, monkeypatch):
    """The onebox_elsewhere connection (tests/plugins/connection) is the local one under another
    name: the action plugin archives the sources, puts them into the task's directory and the module
    unpacks them, as on a remote host."""
    with open(sources["big"], "r+b") as handle:
        handle.write(b"remote")
    with open(os.path.join(sources["tree"], "bin", "run.sh"), "a") as handle:
        handle.write("echo and again\n")
    monkeypatch.setenv("ANSIBLE_CONNECTION_PLUGINS", os.path.join(ROOT, "tests", "plugins", "connection"))
    _rc, out = _ansible("ansible", ["localhost", "-i", "localhost,", "-c", "onebox_elsewhere",
                                    "-m", "homelab.onebox.box", "-a", __import__("json").dumps(args(sources))],
                        False, False, 300)
    result = ok(out["plays"][0]["tasks"][0]["hosts"]["localhost"])
    archives = result["invocation"]["module_args"]["src_archives"]
    assert sorted(archives) == sorted([sources["big"], sources["tree"]]), archives
    assert set(provision(result)["actions"]) == {"file %s" % ARTIFACT, "tree %s (1 pushed)" % TREE}
    assert sh("sha256sum %s" % ARTIFACT).stdout.split()[0] == digest(sources["big"])
    assert container_tree() == local_tree(sources["tree"])
    assert sh("%s/bin/run.sh" % TREE).stdout == "ran\nand again\n"
    assert not any(os.path.exists(path) for path in archives.values())  # the task's directory is gone


@pytest.mark.parametrize("change, field, words", [
    (lambda f: f[0].update(content="x"), "files[0].src", "give content or src, not both"),
    (lambda f: f[0].update(src="no/such/file"), "files[0].src", "no such file or directory on the controller"),
    (lambda f: f[0].update(src="/no/such/file"), "files[0].src", "no such file or directory on the controller"),
    (lambda f: f[0].update(sync=True), "files[0].sync", "only a directory src is synced"),
    (lambda f: f[2].pop("content"), "files[2].content", "or src"),
    (lambda f: f.append({"path": TREE + "/d0/x", "content": "x"}), "files[3].path", "inside the tree of"),
])
def test_bad_input_fails_before_any_change_naming_the_field(built, sources, change, field, words):
    before = sh("find /srv /opt/app -printf '%p %s %m\\n' | sort").stdout
    wanted = args(sources, sync=True)
    change(wanted["services"][0]["files"])
    result = run_module("box", wanted)
    assert result.get("failed") and "services[%s].%s" % (NAME, field) in result["msg"], result
    assert words in result["msg"], result["msg"]
    assert sh("find /srv /opt/app -printf '%p %s %m\\n' | sort").stdout == before
