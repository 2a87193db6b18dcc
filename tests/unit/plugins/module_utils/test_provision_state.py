"""_provision_state: the state-reading script (run by a real sh, with a fake systemctl for the wait for
init) and its parser."""
import hashlib
import os
import shlex
import subprocess
import time

import pytest

from ansible_collections.homelab.onebox.plugins.module_utils import _provision_state as st
from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError

from unit.plugins.module_utils.test_provision_spec import spec_of


# ---- state script and parser --------------------------------------------------------------------
def test_state_script_quotes_and_ends_with_end():
    spec = spec_of({"name": "a", "files": [{"path": "/srv/it's here", "content": "x"}], "packages": ["jq"],
                    "services": [{"name": "nginx"}]})
    script = st.state_script(spec)
    assert shlex.quote("/srv/it's here") in script
    assert "systemctl show -p LoadState -p UnitFileState -p ActiveState -p SubState -- basic.target nginx.service" in script
    assert "dpkg-query" in script
    assert script.rstrip().endswith("echo END")


def test_state_script_runs_in_sh(tmp_path):
    """The script itself, run by a real sh on this machine's files (no systemctl needed)."""
    present = tmp_path / "present.txt"
    present.write_bytes(b"hello")
    link = tmp_path / "link"
    link.symlink_to(present)
    odd = tmp_path / "odd \\ name|x"
    odd.write_bytes(b"")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    spec = spec_of({"name": "a", "files": [{"path": str(present), "content": "hello"},
                                           {"path": str(tmp_path / "missing" / "x"), "content": ""},
                                           {"path": str(link), "content": "hello"},
                                           {"path": str(tmp_path), "state": "absent"},
                                           {"path": str(odd), "content": ""},
                                           {"path": str(fifo), "state": "absent"}]})
    output = subprocess.run(["sh", "-c", st.state_script(spec)], capture_output=True, text=True, check=True,
                            timeout=10).stdout
    state = st.parse_state(spec, output)
    first = state.files[0]
    assert first.kind == "file" and first.digest == hashlib.sha256(b"hello").hexdigest()
    assert first.mode == present.stat().st_mode & 0o7777
    assert [f.kind for f in state.files[1:]] == ["none", "link", "dir", "file", "other"]
    assert state.files[4].digest == hashlib.sha256(b"").hexdigest()
    assert state.dirs == {str(tmp_path): True, str(tmp_path / "missing"): False}
    assert state.passwd["root"][0] == 0


# ---- waiting for the container's init ------------------------------------------------------------
def test_the_state_script_waits_for_init_only_when_there_are_services():
    quiet = st.state_script(spec_of({"name": "a", "files": [{"path": "/srv/x", "content": "x"}]}))
    assert "systemctl" not in quiet and "until" not in quiet and "sleep" not in quiet
    script = st.state_script(spec_of({"name": "a", "services": [{"name": "nginx"}]}), timeout=120)
    # One systemctl asks whether basic.target is reached and reads the units; the wait comes first.
    assert script.count("systemctl show") == 1
    assert script.index("until ready; do") < script.index('sed \'s/^/S /\'') < script.rindex("echo END")
    assert "-ge 11000 ]" in script   # 110 s of a 120 s exec: time left to report
    assert "-ge 240 ]" in st.state_script(spec_of({"name": "a", "services": [{"name": "nginx"}]}), timeout=3)


@pytest.mark.parametrize("timeout,seconds", [(120, 110.0), (30, 24.0), (3, 2.4), (1, 0.5), (600, 590.0)])
def test_the_wait_for_init_ends_a_little_before_the_exec_timeout(timeout, seconds):
    assert st.init_wait_seconds(timeout) == pytest.approx(seconds)


BOOTING = """I waited 1102
I state starting
I init /usr/lib/systemd/systemd
I queued 13
I job 52 slowboot.service                     start running
I job 61 systemd-tmpfiles-setup.service       start running
END
"""


def test_init_not_ready_is_a_clear_error():
    spec = spec_of({"name": "web", "services": [{"name": "nginx"}]})
    with pytest.raises(OneboxError) as err:
        st.parse_state(spec, BOOTING, "web")
    msg = err.value.msg
    assert msg.startswith("reading the state of web: its init was not ready after 11.0 s (basic.target not reached): "
                          "systemd says 'starting'; PID 1 is /usr/lib/systemd/systemd; 13 jobs queued, running: "
                          "slowboot.service start, systemd-tmpfiles-setup.service start"), msg
    assert "larger timeout" in msg
    assert err.value.details == {"instance": "web", "waited": 11.02, "init_state": "starting", "queued": 13,
                                 "jobs": ["slowboot.service start", "systemd-tmpfiles-setup.service start"]}


def test_init_that_never_answers_and_odd_lines_still_fail_clearly():
    spec = spec_of({"name": "web", "services": [{"name": "nginx"}]})
    with pytest.raises(OneboxError) as err:
        st.parse_state(spec, "I waited 240\nI state \nI init \nI queued \nEND\n", "web")
    assert err.value.msg.startswith("reading the state of web: its init was not ready after 2.4 s (basic.target not "
                                    "reached): no answer from systemd"), err.value.msg
    assert err.value.details["init_state"] == "no answer from systemd"
    for odd in ("I waited soon\nI job\nI what ever\n", "I\n", "I state initializing\n"):   # no END: cut short too
        with pytest.raises(OneboxError, match="reading the state of web: its init was not ready after "):
            st.parse_state(spec, odd, "web")


FAKE_SYSTEMCTL = """#!/bin/sh
# systemd booting: no bus for the first $NO_BUS calls of show, then basic.target inactive until
# call $READY (never when empty).
calls=$(($(cat "$CALLS" 2>/dev/null || echo 0) + 1)); echo $calls > "$CALLS"
case "$1" in
show)
    if [ $calls -le "$NO_BUS" ]; then echo "Failed to connect to bus: No such file or directory" >&2; exit 1; fi
    if [ -n "$READY" ] && [ $calls -ge "$READY" ]; then basic=active; else basic=inactive; fi
    printf 'LoadState=loaded\\nActiveState=%s\\nUnitFileState=static\\n\\n' $basic
    printf 'LoadState=loaded\\nActiveState=active\\nUnitFileState=enabled\\n' ;;
is-system-running)
    if [ $calls -le "$NO_BUS" ]; then echo "Failed to connect to bus: No such file or directory" >&2; exit 1; fi
    echo starting; exit 1 ;;
list-jobs)
    echo "2 basic.target                start waiting"
    echo "7 slowboot.service            start running" ;;
esac
"""


def run_with_fake_systemctl(tmp_path, spec, timeout, **env):
    """The state script of ``spec`` run by a real sh against FAKE_SYSTEMCTL; (output, seconds)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "systemctl"
    fake.write_text(FAKE_SYSTEMCTL)
    fake.chmod(0o755)
    env = dict({"NO_BUS": "0", "READY": ""}, **env)
    env.update(CALLS=str(tmp_path / "calls"), PATH="%s:%s" % (bin_dir, os.environ["PATH"]))
    started = time.monotonic()
    output = subprocess.run(["sh", "-c", st.state_script(spec, timeout)], capture_output=True, text=True, check=True,
                            timeout=timeout + 5, env=env).stdout
    return output, time.monotonic() - started


def test_the_script_waits_through_no_bus_and_early_boot_then_reads_the_units(tmp_path):
    spec = spec_of({"name": "a", "services": [{"name": "nginx"}]})
    output, _elapsed = run_with_fake_systemctl(tmp_path, spec, 30, NO_BUS="2", READY="5")
    assert st.parse_state(spec, output, "a").units == [("enabled", "active")]   # basic.target's block not among them
    assert (tmp_path / "calls").read_text().strip() == "5"   # asked until ready, then no more


def test_the_script_reports_init_that_is_never_ready_before_the_exec_timeout(tmp_path):
    spec = spec_of({"name": "a", "services": [{"name": "nginx"}]})
    output, elapsed = run_with_fake_systemctl(tmp_path, spec, 2, NO_BUS="3")
    assert 1.4 <= elapsed < 2.0, elapsed   # init_wait_seconds(2) is 1.6 s: done before the exec's 2 s
    with pytest.raises(OneboxError) as err:
        st.parse_state(spec, output, "a")
    assert err.value.details["init_state"] == "starting"
    assert err.value.details["jobs"] == ["slowboot.service start"] and err.value.details["queued"] == 2
    assert 1.5 <= err.value.details["waited"] < 2.0


def test_parse_state_refuses_a_cut_output():
    spec = spec_of()
    with pytest.raises(OneboxError, match="missing or cut short"):
        st.parse_state(spec, "F regular file|644|0|0|/srv/app/app.py\n")


def test_parse_digest_unescapes_what_sha256sum_escapes():
    digest = "a" * 64
    assert st.parse_digest("%s  /srv/a b" % digest) == ("/srv/a b", digest)
    assert st.parse_digest("\\%s  /srv/back\\\\slash" % digest) == ("/srv/back\\slash", digest)


def test_parse_units_from_systemctl_show():
    lines = ["LoadState=loaded", "ActiveState=active", "UnitFileState=enabled", "",
             "LoadState=not-found", "ActiveState=inactive", "UnitFileState=", "",
             "LoadState=loaded", "ActiveState=activating", "UnitFileState=static"]
    assert st.parse_units(lines, 3) == [("enabled", "active"), ("", "inactive"), ("static", "activating")]
    assert st.parse_units(lines, 2) is None
    assert st.parse_units(["System has not been booted with systemd as init system (PID 1). Can't operate."], 1) is None
    assert st.parse_units([], 0) == []


def test_no_systemd_is_reported_clearly():
    spec = spec_of({"name": "a", "services": [{"name": "nginx"}]})
    with pytest.raises(OneboxError, match="is systemd the container's init"):
        st.parse_state(spec, "S Failed to connect to bus: No such file or directory\nEND\n")


# ---- trees (a src directory) and files from a src ----------------------------------------------------
def test_a_tree_is_read_by_a_script_that_does_not_grow_with_it(tmp_path):
    """Run by a real sh: the tree on this machine stands for the container's; two finds and a
    batched sha256sum, whatever the number of files."""
    source = tmp_path / "source"
    (source / "d").mkdir(parents=True)
    for index in range(50):
        (source / "d" / ("f%d" % index)).write_text("x")
    there = tmp_path / "there"
    (there / "d" / "gone").mkdir(parents=True)
    (there / "d" / "f1").write_text("old")
    (there / "odd \\ name|x").write_text("")
    (there / "new\nline").write_text("")                    # left out: its lines would break
    (there / "link").symlink_to(there / "d" / "f1")
    os.chmod(there / "d", 0o750)
    not_a_dir = tmp_path / "plain"
    not_a_dir.write_text("")
    artifact = tmp_path / "artifact"
    artifact.write_bytes(b"12345")
    spec = spec_of({"name": "a", "files": [{"path": str(there), "src": str(source)},
                                           {"path": str(tmp_path / "none"), "src": str(source)},
                                           {"path": str(not_a_dir), "src": str(source)},
                                           {"path": str(artifact), "src": str(artifact)}]})
    script = st.state_script(spec)
    assert "f49" not in script and script.count("find ") == 6
    state = st.parse_state(spec, subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True,
                                                timeout=10).stdout)
    tree, none, other = state.trees
    assert (tree.kind, none.kind, other.kind) == ("dir", "none", "other")
    assert sorted(tree.entries) == ["d", "d/f1", "d/gone", "link", "odd \\ name|x"]
    assert tree.entries["d"].kind == "dir" and tree.entries["d"].mode == 0o750 and tree.root.kind == "dir"
    f1 = tree.entries["d/f1"]
    assert (f1.kind, f1.size, f1.uid) == ("file", 3, os.getuid()) and f1.digest == hashlib.sha256(b"old").hexdigest()
    assert tree.entries["odd \\ name|x"].digest == hashlib.sha256(b"").hexdigest()
    assert tree.entries["link"].kind == "link" and tree.entries["link"].digest is None
    assert state.files[0].size == 5 and state.files[0].digest == hashlib.sha256(b"12345").hexdigest()


# ---- setup steps, package versions, a unit waiting to restart -----------------------------------
def test_the_state_script_reads_the_stamps_creates_and_pending_restart_with_builtins(tmp_path, monkeypatch):
    """Run by a real sh against stamps in a temporary directory: a stamp's digest, a creates path
    there or not, the restart a failed step owed; no process for any of it."""
    from ansible_collections.homelab.onebox.plugins.module_utils import _provision_spec as ps
    monkeypatch.setattr(ps, "STAMP_DIR", str(tmp_path))
    monkeypatch.setattr(st, "RESTART_PENDING", str(tmp_path / ".restart-pending"))
    (tmp_path / "container.0").write_text("d" * 64 + "\n")
    (tmp_path / "made").write_text("")
    spec = spec_of({"name": "a", "setup": [{"command": "true", "creates": str(tmp_path / "made")},
                                           {"command": "true", "creates": str(tmp_path / "missing")},
                                           {"command": "true"}]})
    script = st.state_script(spec)
    assert not any("$(" in line or "cat " in line for line in st.setup_lines(spec.setup))   # builtins only
    state = st.parse_state(spec, subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True,
                                                timeout=10).stdout)
    assert state.stamps == {0: "d" * 64} and state.created == {0} and state.restart_pending is False
    (tmp_path / ".restart-pending").write_text("")
    state = st.parse_state(spec, subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True,
                                                timeout=10).stdout)
    assert state.restart_pending is True


def test_no_setup_step_no_stamp_read():
    assert "onebox/setup" not in st.state_script(spec_of({"name": "a", "files": [{"path": "/x", "content": ""}]}))


def test_installed_packages_have_their_versions():
    spec = spec_of({"name": "a", "packages": ["jq", "gone", "curl"]})
    assert "${db:Status-Abbrev}${Version}" in st.state_script(spec)
    state = st.parse_state(spec, "A 3\nP jq ii 1.6-2.1\nP gone un \nP curl rc 7.88\nEND\n")
    assert state.packages == {"jq": "ii ", "gone": "un ", "curl": "rc "}
    assert state.versions == {"jq": "1.6-2.1"}


def test_a_unit_waiting_to_be_restarted_is_not_running():
    lines = ["LoadState=loaded", "ActiveState=activating", "SubState=auto-restart", "UnitFileState=enabled", "",
             "LoadState=loaded", "ActiveState=activating", "SubState=start", "UnitFileState=enabled"]
    assert st.parse_units(lines, 2) == [("enabled", "auto-restart"), ("enabled", "activating")]
