"""lxd_provision's pure logic: validation with field paths, rendering, the state script and its
parser, the plan (what changes, what restarts)."""
import hashlib
import os
import shlex
import subprocess
import time

import pytest

from ansible_collections.homelab.onebox.plugins.module_utils import _provision as p
from ansible_collections.homelab.onebox.plugins.module_utils import _validate as v
from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError, ValidationError

APP = {
    "name": "app",
    "users": [{"name": "app", "home": "/srv/app"}],
    "packages": ["procps"],
    "files": [{"path": "/srv/app/app.py", "content": "print(1)\n", "mode": "0644", "owner": "app", "group": "app"},
              {"path": "/etc/nginx/sites-enabled/default", "state": "absent"}],
    "services": [{"name": "app", "command": ["/usr/bin/python3", "/srv/app/app.py"], "user": "app",
                  "working_directory": "/srv/app", "environment": {"PORT": "8000", "SECRET_KEY": "s3cret"}},
                 {"name": "nginx"}],
}


def spec_of(item=None, **changes):
    item = dict(APP if item is None else item, **changes)
    return p.instance_specs([item])[0]


def error_of(items):
    with pytest.raises(ValidationError) as err:
        p.instance_specs(items)
    return err.value


# ---- _validate additions ------------------------------------------------------------------------
@pytest.mark.parametrize("value,expected", [("/srv/app", "/srv/app"), ("/srv//app/", "/srv/app"), ("/", "/"),
                                            ("/a b/c..d", "/a b/c..d")])
def test_absolute_path_normalises(value, expected):
    assert v.absolute_path(value) == expected


@pytest.mark.parametrize("value", ["srv/app", "", "/srv/../etc/passwd", "/srv/./x", "/a\nb", "/a\x00b", 5])
def test_absolute_path_rejects(value):
    with pytest.raises(ValidationError) as err:
        v.absolute_path(value, "files[0].path")
    assert err.value.field == "files[0].path" and repr(value) in err.value.msg


@pytest.mark.parametrize("value,expected", [("0644", 0o644), ("644", 0o644), ("0o600", 0o600), ("4755", 0o4755),
                                            ("04755", 0o4755), (0o644, 0o644), (0, 0)])
def test_file_mode(value, expected):
    assert v.file_mode(value) == expected


@pytest.mark.parametrize("value", ["rw-r--r--", "0999", "88", "", "0o77777", True, -1, 0o10000, None, 6.4])
def test_file_mode_rejects(value):
    with pytest.raises(ValidationError):
        v.file_mode(value, "mode")


@pytest.mark.parametrize("value", ["app", "_apt", "www-data", "a1"])
def test_posix_name(value):
    assert v.posix_name(value) == value


@pytest.mark.parametrize("value", ["", "App", "1app", "-app", "a;b", "a{b", "a/b", "a\nb", "a'b", 'a"b', "x" * 33])
def test_posix_name_rejects(value):
    with pytest.raises(ValidationError):
        v.posix_name(value)


@pytest.mark.parametrize("value,ok", [("PORT", True), ("_X1", True), ("1X", False), ("A-B", False), ("A B", False),
                                      ("", False)])
def test_env_name(value, ok):
    if ok:
        assert v.env_name(value) == value
    else:
        with pytest.raises(ValidationError):
            v.env_name(value)


# ---- the declaration ----------------------------------------------------------------------------
def test_spec_of_the_app():
    spec = spec_of()
    svc, nginx = spec.services
    assert svc.unit == "onebox-app.service" and svc.short == "onebox-app"
    assert nginx.unit == "nginx.service" and nginx.unit_file is None and nginx.env_file is None
    assert [f.path for f in spec.all_files] == [
        "/srv/app/app.py", "/etc/nginx/sites-enabled/default",
        "/etc/systemd/system/onebox-app.service", "/etc/onebox/app.env"]
    assert svc.env_file.mode == 0o600 and svc.env_file.owner == "root"
    assert spec.user_names() == ["app", "root"]
    assert spec.group_names() == ["app"]


@pytest.mark.parametrize("item,field,value", [
    ({"name": "no;pe"}, "instances[0].name", "no;pe"),
    ({"name": "a", "files": [{"path": "srv/x", "content": ""}]}, "instances[0].files[0].path", "srv/x"),
    ({"name": "a", "files": [{"path": "/srv/../etc/x", "content": ""}]}, "instances[0].files[0].path", "/srv/../etc/x"),
    ({"name": "a", "files": [{"path": "/srv/x\ny", "content": ""}]}, "instances[0].files[0].path", "/srv/x\ny"),
    ({"name": "a", "files": [{"path": "/srv/", "content": ""}]}, "instances[0].files[0].path", "/srv/"),
    ({"name": "a", "files": [{"path": "/x", "content": "", "mode": "rw-r--r--"}]}, "instances[0].files[0].mode",
     "rw-r--r--"),
    ({"name": "a", "files": [{"path": "/x"}]}, "instances[0].files[0].content", None),
    ({"name": "a", "files": [{"path": "/x", "content": "", "owner": "a;b"}]}, "instances[0].files[0].owner", "a;b"),
    ({"name": "a", "files": [{"path": "/x", "content": ""}, {"path": "//x", "state": "absent"}]},
     "instances[0].files[1].path", "/x"),
    ({"name": "a", "users": [{"name": "a{b"}]}, "instances[0].users[0].name", "a{b"),
    ({"name": "a", "users": [{"name": "app"}, {"name": "app"}]}, "instances[0].users[1].name", "app"),
    ({"name": "a", "users": [{"name": "app", "home": "home/app"}]}, "instances[0].users[0].home", "home/app"),
    ({"name": "a", "packages": ["jq;rm"]}, "instances[0].packages[0]", "jq;rm"),
    ({"name": "a", "services": [{"name": "a/b", "command": ["/bin/true"]}]}, "instances[0].services[0].name", "a/b"),
    ({"name": "a", "services": [{"name": "x\n", "command": ["/bin/true"]}]}, "instances[0].services[0].name", "x\n"),
    ({"name": "a", "services": [{"name": "x'y"}]}, "instances[0].services[0].name", "x'y"),
    ({"name": "a", "services": [{"name": "x", "command": []}]}, "instances[0].services[0].command", []),
    ({"name": "a", "services": [{"name": "x", "command": ["-/bin/true"]}]}, "instances[0].services[0].command[0]",
     "-/bin/true"),
    ({"name": "a", "services": [{"name": "x", "command": ["/bin/echo", "a\nb"]}]},
     "instances[0].services[0].command[1]", "a\nb"),
    ({"name": "a", "services": [{"name": "x", "command": ["/bin/true"], "user": "Root"}]},
     "instances[0].services[0].user", "Root"),
    ({"name": "a", "services": [{"name": "x", "command": ["/bin/true"], "environment": {"1BAD": "v"}}]},
     "instances[0].services[0].environment", "1BAD"),
    ({"name": "a", "services": [{"name": "nginx", "user": "www-data"}]}, "instances[0].services[0].user", "www-data"),
    ({"name": "a", "services": [{"name": "x", "command": ["/bin/true"]}, {"name": "x", "command": ["/bin/false"]}]},
     "instances[0].services[1].name", "x"),
    ({"name": "a", "services": [{"name": "x", "command": ["/bin/true"], "restart": "sometimes"}]},
     "instances[0].services[0].restart", "sometimes"),
    ({"name": "a", "files": [{"path": "/etc/systemd/system/onebox-x.service", "content": ""}],
      "services": [{"name": "x", "command": ["/bin/true"]}]}, "instances[0].services[0].name",
     "/etc/systemd/system/onebox-x.service"),
])
def test_bad_items_name_field_and_value(item, field, value):
    err = error_of([item])
    assert err.field == field, err.msg
    assert err.value == value
    assert err.msg.startswith("%s: invalid value %r" % (field, value))


def test_an_environment_value_with_a_newline_is_refused_without_showing_it():
    err = error_of([{"name": "a", "services": [{"name": "x", "command": ["/bin/true"],
                                                "environment": {"KEY": "top\nsecret"}}]}])
    assert err.field == "instances[0].services[0].environment.KEY"
    assert "secret" not in err.msg and p.MASK in err.msg


def test_duplicate_instances_are_refused():
    err = error_of([{"name": "a"}, {"name": "b"}, {"name": "a"}])
    assert err.field == "instances[2].name" and "instances[0]" in err.msg


def test_check_instances_unknown_and_stopped():
    specs = p.instance_specs([{"name": "a"}, {"name": "b"}])
    with pytest.raises(ValidationError) as err:
        p.check_instances(specs, {"a": {"status": "Running"}})
    assert err.value.field == "instances[1].name" and err.value.value == "b"
    with pytest.raises(ValidationError) as err:
        p.check_instances(specs, {"a": {"status": "Running"}, "b": {"status": "Stopped"}})
    assert "Stopped" in err.value.msg
    p.check_instances(specs, {"a": {"status": "Running"}, "b": {"status": "Running"}})


def test_numbers_and_booleans_become_text():
    svc = spec_of({"name": "a", "services": [{"name": "x", "command": ["/bin/sleep", 5],
                                              "environment": {"N": 8000, "B": True}}]}).services[0]
    assert svc.command == ["/bin/sleep", "5"]
    assert svc.environment == {"N": "8000", "B": "true"}


# ---- rendering ----------------------------------------------------------------------------------
def test_unit_file():
    text = spec_of().services[0].unit_file.content.decode()
    assert text.startswith(p.MARKER + "\n[Unit]\n")
    for line in ("User=app", "WorkingDirectory=/srv/app", "EnvironmentFile=/etc/onebox/app.env",
                 'ExecStart="/usr/bin/python3" "/srv/app/app.py"', "Restart=always", "RestartSec=1",
                 "StartLimitIntervalSec=0", "WantedBy=multi-user.target"):
        assert line + "\n" in text


def test_unit_without_environment_or_user_runs_as_root_and_has_no_environment_file():
    svc = spec_of({"name": "a", "services": [{"name": "x", "command": ["sleep", "9"], "restart": "no"}]}).services[0]
    text = svc.unit_file.content.decode()
    assert "User=root\n" in text and "EnvironmentFile" not in text and "StartLimitIntervalSec" not in text
    assert svc.env_file.state == "absent" and svc.env_file.path == "/etc/onebox/x.env"


@pytest.mark.parametrize("word,quoted", [("plain", '"plain"'), ("a b", '"a b"'), ('say "hi"', r'"say \"hi\""'),
                                         ("back\\slash", r'"back\\slash"'), ("$HOME", '"$$HOME"'),
                                         ("100%", '"100%%"'), (";", '";"'), ("it's", "\"it's\"")])
def test_systemd_quote(word, quoted):
    assert p.systemd_quote(word) == quoted


def test_environment_file_round_trips_through_a_shell_like_parser_and_masks():
    env = {"PORT": "8000", "SECRET": "s3cr'\"$`\\et x"}
    text = p.render_env(env)
    assert text.splitlines()[1:] == ['PORT="8000"', 'SECRET="s3cr\'\\"\\$\\`\\\\et x"']
    # sh reads the double-quoted values the same way systemd's EnvironmentFile parser does.
    out = subprocess.run(["sh", "-c", "set -a; . /dev/stdin; printf '%s\\n' \"$SECRET\""], input=text,
                         capture_output=True, text=True, check=True).stdout
    assert out == env["SECRET"] + "\n"
    masked = p.render_env(env, masked=True)
    assert "8000" not in masked and "s3cr" not in masked and "SECRET=********" in masked


def test_mask_env_hides_every_value_of_a_file_read_back():
    text = "# comment\nA=1\nexport B='x'\n  C = \"y\"\ngarbage line\n\n"
    assert p.mask_env(text) == "# comment\nA=********\nexport B=********\n  C=********\n********\n\n"


# ---- state script and parser --------------------------------------------------------------------
def test_state_script_quotes_and_ends_with_end():
    spec = spec_of({"name": "a", "files": [{"path": "/srv/it's here", "content": "x"}], "packages": ["jq"],
                    "services": [{"name": "nginx"}]})
    script = p.state_script(spec)
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
    output = subprocess.run(["sh", "-c", p.state_script(spec)], capture_output=True, text=True, check=True,
                            timeout=10).stdout
    state = p.parse_state(spec, output)
    first = state.files[0]
    assert first.kind == "file" and first.digest == hashlib.sha256(b"hello").hexdigest()
    assert first.mode == present.stat().st_mode & 0o7777
    assert [f.kind for f in state.files[1:]] == ["none", "link", "dir", "file", "other"]
    assert state.files[4].digest == hashlib.sha256(b"").hexdigest()
    assert state.dirs == {str(tmp_path): True, str(tmp_path / "missing"): False}
    assert state.passwd["root"][0] == 0


# ---- waiting for the container's init ------------------------------------------------------------
def test_the_state_script_waits_for_init_only_when_there_are_services():
    quiet = p.state_script(spec_of({"name": "a", "files": [{"path": "/srv/x", "content": "x"}]}))
    assert "systemctl" not in quiet and "until" not in quiet and "sleep" not in quiet
    script = p.state_script(spec_of({"name": "a", "services": [{"name": "nginx"}]}), timeout=120)
    # One systemctl asks whether basic.target is reached and reads the units; the wait comes first.
    assert script.count("systemctl show") == 1
    assert script.index("until ready; do") < script.index('sed \'s/^/S /\'') < script.rindex("echo END")
    assert "-ge 11000 ]" in script   # 110 s of a 120 s exec: time left to report
    assert "-ge 240 ]" in p.state_script(spec_of({"name": "a", "services": [{"name": "nginx"}]}), timeout=3)


@pytest.mark.parametrize("timeout,seconds", [(120, 110.0), (30, 24.0), (3, 2.4), (1, 0.5), (600, 590.0)])
def test_the_wait_for_init_ends_a_little_before_the_exec_timeout(timeout, seconds):
    assert p.init_wait_seconds(timeout) == pytest.approx(seconds)


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
        p.parse_state(spec, BOOTING, "web")
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
        p.parse_state(spec, "I waited 240\nI state \nI init \nI queued \nEND\n", "web")
    assert err.value.msg.startswith("reading the state of web: its init was not ready after 2.4 s (basic.target not "
                                    "reached): no answer from systemd"), err.value.msg
    assert err.value.details["init_state"] == "no answer from systemd"
    for odd in ("I waited soon\nI job\nI what ever\n", "I\n", "I state initializing\n"):   # no END: cut short too
        with pytest.raises(OneboxError, match="reading the state of web: its init was not ready after "):
            p.parse_state(spec, odd, "web")


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
    output = subprocess.run(["sh", "-c", p.state_script(spec, timeout)], capture_output=True, text=True, check=True,
                            timeout=timeout + 5, env=env).stdout
    return output, time.monotonic() - started


def test_the_script_waits_through_no_bus_and_early_boot_then_reads_the_units(tmp_path):
    spec = spec_of({"name": "a", "services": [{"name": "nginx"}]})
    output, _elapsed = run_with_fake_systemctl(tmp_path, spec, 30, NO_BUS="2", READY="5")
    assert p.parse_state(spec, output, "a").units == [("enabled", "active")]   # basic.target's block not among them
    assert (tmp_path / "calls").read_text().strip() == "5"   # asked until ready, then no more


def test_the_script_reports_init_that_is_never_ready_before_the_exec_timeout(tmp_path):
    spec = spec_of({"name": "a", "services": [{"name": "nginx"}]})
    output, elapsed = run_with_fake_systemctl(tmp_path, spec, 2, NO_BUS="3")
    assert 1.4 <= elapsed < 2.0, elapsed   # init_wait_seconds(2) is 1.6 s: done before the exec's 2 s
    with pytest.raises(OneboxError) as err:
        p.parse_state(spec, output, "a")
    assert err.value.details["init_state"] == "starting"
    assert err.value.details["jobs"] == ["slowboot.service start"] and err.value.details["queued"] == 2
    assert 1.5 <= err.value.details["waited"] < 2.0


def test_parse_state_refuses_a_cut_output():
    spec = spec_of()
    with pytest.raises(OneboxError, match="missing or cut short"):
        p.parse_state(spec, "F regular file|644|0|0|/srv/app/app.py\n")


def test_parse_digest_unescapes_what_sha256sum_escapes():
    digest = "a" * 64
    assert p.parse_digest("%s  /srv/a b" % digest) == ("/srv/a b", digest)
    assert p.parse_digest("\\%s  /srv/back\\\\slash" % digest) == ("/srv/back\\slash", digest)


def output_for(spec, files=None, users=None, groups=None, units=None, packages=None, dirs=None, lists=5):
    """What the state script would print for a container in the given state. ``files``: path ->
    "file MODE UID GID DIGEST" or a kind (link, dir)."""
    lines = []
    for path, desc in (files or {}).items():
        parts = desc.split()
        kind = {"file": "regular file", "link": "symbolic link", "dir": "directory"}.get(parts[0], "fifo")
        if parts[0] == "file":
            lines.append("F %s|%s|%s|%s|%s" % (kind, parts[1], parts[2], parts[3], path))
            lines.append("H %s  %s" % (parts[4], path))
        else:
            lines.append("F %s|777|0|0|%s" % (kind, path))
    for i, d in enumerate(sorted({p.parents(f.path) for f in spec.all_files if f.state == "present"})):
        lines.append("D %d %d" % (0 if d in (dirs or ()) else 1, i))
    users = dict({"root": "root:x:0:0:root:/root:/bin/bash"}, **(users or {}))
    lines += ["U " + users[u] for u in spec.user_names() if u in users]
    lines += ["G " + (groups or {})[g] for g in spec.group_names() if g in (groups or {})]
    for svc in spec.services:
        enabled, active = (units or {}).get(svc.unit, "|inactive").split("|")
        lines += ["S LoadState=%s" % ("loaded" if enabled else "not-found"), "S ActiveState=%s" % active,
                  "S UnitFileState=%s" % enabled, "S "]
    if spec.packages:
        lines.append("A %d" % lists)
        lines += ["P %s %s" % (name, status) for name, status in (packages or {}).items()]
    return "\n".join(lines + ["END", ""])


def converged(spec):
    """The state of a container where everything declared is already there."""
    files = {}
    for f in spec.all_files:
        if f.state == "present":
            uid = 0 if f.owner == "root" else 998
            files[f.path] = "file %o %d %d %s" % (f.mode, uid, uid, f.digest)
    return dict(files=files, users={"app": "app:x:998:998::/srv/app:/usr/sbin/nologin"},
                groups={"app": "app:x:998:"},
                units={svc.unit: "enabled|active" for svc in spec.services},
                packages={pkg: "ii " for pkg in spec.packages})


def plan_for(spec, **state):
    return p.plan(spec, p.parse_state(spec, output_for(spec, **state)))


def test_first_run_plans_everything_in_order():
    spec = spec_of()
    todo = plan_for(spec, packages={"procps": "ii "}, units={"nginx.service": "disabled|inactive"},
                    files={"/etc/nginx/sites-enabled/default": "link"})
    assert todo.actions == ["user app", "file /srv/app/app.py", "remove /etc/nginx/sites-enabled/default",
                            "unit onebox-app", "environment onebox-app", "daemon-reload",
                            "enable onebox-app", "enable nginx", "start onebox-app", "start nginx"]
    assert todo.users == [("app", "/srv/app")] and todo.packages == []
    assert todo.removals == ["/etc/nginx/sites-enabled/default"]


def test_systemctl_steps_are_one_script_with_one_reload():
    spec = spec_of()
    todo = plan_for(spec, packages={"procps": "ii "}, units={"nginx.service": "disabled|inactive"})
    assert p.systemctl_script(todo).splitlines() == [
        "set -e", "systemctl daemon-reload",
        "systemctl enable --no-reload -- onebox-app.service nginx.service",
        "systemctl restart -- onebox-app.service nginx.service"]
    assert p.systemctl_script(plan_for(spec, **converged(spec))) == ""


def test_converged_container_plans_nothing():
    spec = spec_of()
    assert plan_for(spec, **converged(spec)).actions == []


def test_a_changed_file_restarts_every_started_service_of_the_instance():
    spec = spec_of()
    state = converged(spec)
    state["files"]["/srv/app/app.py"] = "file 644 998 998 " + "0" * 64
    todo = plan_for(spec, **state)
    assert todo.actions == ["file /srv/app/app.py", "restart onebox-app", "restart nginx"]
    assert not todo.daemon_reload and [f.path for f in todo.pushes] == ["/srv/app/app.py"] and not todo.meta


def test_a_changed_environment_restarts_only_its_service_without_daemon_reload():
    spec = spec_of()
    state = converged(spec)
    state["files"]["/etc/onebox/app.env"] = "file 600 0 0 " + "0" * 64
    todo = plan_for(spec, **state)
    assert todo.actions == ["environment onebox-app", "restart onebox-app"]


def test_a_changed_unit_reloads_systemd_once_and_restarts():
    spec = spec_of()
    state = converged(spec)
    state["files"]["/etc/systemd/system/onebox-app.service"] = "file 644 0 0 " + "0" * 64
    assert plan_for(spec, **state).actions == ["unit onebox-app", "daemon-reload", "restart onebox-app"]


def test_mode_or_owner_only_changes_metadata():
    spec = spec_of()
    state = converged(spec)
    digest = spec.files[0].digest
    state["files"]["/srv/app/app.py"] = "file 600 998 998 %s" % digest
    todo = plan_for(spec, **state)
    assert todo.meta == [spec.files[0]] and todo.pushes == []
    assert todo.actions[0] == "file /srv/app/app.py"


def test_a_killed_or_stopped_service_is_started_and_a_stopped_one_stopped():
    spec = spec_of({"name": "a", "services": [{"name": "x", "command": ["/bin/true"]},
                                              {"name": "nginx", "state": "stopped", "enabled": False}]})
    state = converged(spec)
    state["units"] = {"onebox-x.service": "enabled|failed", "nginx.service": "enabled|active"}
    assert plan_for(spec, **state).actions == ["disable nginx", "stop nginx", "start onebox-x"]
    state["units"]["onebox-x.service"] = "enabled|activating"   # in its RestartSec: leave it
    assert plan_for(spec, **state).actions == ["disable nginx", "stop nginx"]


def test_missing_package_is_installed_and_restarts():
    spec = spec_of({"name": "a", "packages": ["jq", "procps"], "services": [{"name": "nginx"}]})
    state = converged(spec)
    state["packages"] = {"procps": "ii ", "jq": "un "}
    todo = plan_for(spec, **state)
    assert todo.packages == ["jq"] and todo.actions == ["package jq", "restart nginx"]


def test_unknown_unit_is_refused_unless_a_package_is_being_installed():
    spec = spec_of({"name": "a", "services": [{"name": "nosuch"}]})
    with pytest.raises(ValidationError) as err:
        plan_for(spec)
    assert err.value.field == "instances[0].services[0].name" and err.value.value == "nosuch"
    spec = spec_of({"name": "a", "packages": ["nosuch"], "services": [{"name": "nosuch"}]})
    assert plan_for(spec).actions == ["package nosuch", "enable nosuch", "start nosuch"]


def test_service_user_must_exist_or_be_declared():
    item = {"name": "a", "services": [{"name": "x", "command": ["/bin/true"], "user": "ghost"}]}
    with pytest.raises(ValidationError) as err:
        plan_for(spec_of(item))
    assert err.value.field == "instances[0].services[0].user" and err.value.value == "ghost"
    assert plan_for(spec_of(item), users={"ghost": "ghost:x:5:5::/:/bin/sh"}).actions[-1] == "start onebox-x"
    assert "user ghost" in plan_for(spec_of(dict(item, users=[{"name": "ghost"}]))).actions


def test_file_owner_and_group_must_exist_or_be_declared():
    spec = spec_of({"name": "a", "files": [{"path": "/x", "content": "", "owner": "ghost"}]})
    with pytest.raises(ValidationError) as err:
        plan_for(spec)
    assert err.value.field == "instances[0].files[0].owner"
    spec = spec_of({"name": "a", "files": [{"path": "/x", "content": "", "group": "ghosts"}]})
    with pytest.raises(ValidationError) as err:
        plan_for(spec)
    assert err.value.field == "instances[0].files[0].group" and err.value.value == "ghosts"


def test_a_directory_where_a_file_is_declared_is_refused():
    spec = spec_of({"name": "a", "files": [{"path": "/srv", "state": "absent"}]})
    with pytest.raises(ValidationError) as err:
        plan_for(spec, files={"/srv": "dir"})
    assert err.value.field == "instances[0].files[0].path"


def test_missing_parents_are_created():
    spec = spec_of({"name": "a", "files": [{"path": "/srv/new/deep/x", "content": ""}]})
    assert plan_for(spec, dirs={"/srv/new/deep"}).mkdirs == ["/srv/new/deep"]


def test_parse_units_from_systemctl_show():
    lines = ["LoadState=loaded", "ActiveState=active", "UnitFileState=enabled", "",
             "LoadState=not-found", "ActiveState=inactive", "UnitFileState=", "",
             "LoadState=loaded", "ActiveState=activating", "UnitFileState=static"]
    assert p.parse_units(lines, 3) == [("enabled", "active"), ("", "inactive"), ("static", "activating")]
    assert p.parse_units(lines, 2) is None
    assert p.parse_units(["System has not been booted with systemd as init system (PID 1). Can't operate."], 1) is None
    assert p.parse_units([], 0) == []


def test_no_systemd_is_reported_clearly():
    spec = spec_of({"name": "a", "services": [{"name": "nginx"}]})
    with pytest.raises(OneboxError, match="is systemd the container's init"):
        p.parse_state(spec, "S Failed to connect to bus: No such file or directory\nEND\n")
