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
    assert "systemctl show -p LoadState -p UnitFileState -p ActiveState -- basic.target nginx.service" in script
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
