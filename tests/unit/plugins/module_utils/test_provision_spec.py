"""_provision_spec: the checks of the input with field paths, the specs they give, the rendering of units
and environment files."""
import subprocess

import pytest

from ansible_collections.homelab.onebox.plugins.module_utils import _provision_spec as ps
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError

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
    return ps.parse_insides([item])[0]


def error_of(items):
    with pytest.raises(ValidationError) as err:
        ps.parse_insides(items)
    return err.value


# ---- the checker's path, mode and name checks, as the spec uses them ------------------------------


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
    ({"name": "a", "files": [{"path": "/x", "content": "", "restart": "perhaps"}]}, "instances[0].files[0].restart",
     "perhaps"),
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
    assert "secret" not in err.msg and ps.MASK in err.msg


def test_duplicate_instances_are_refused():
    err = error_of([{"name": "a"}, {"name": "b"}, {"name": "a"}])
    assert err.field == "instances[2].name" and "instances[0]" in err.msg


def test_numbers_and_booleans_become_text():
    svc = spec_of({"name": "a", "services": [{"name": "x", "command": ["/bin/sleep", 5],
                                              "environment": {"N": 8000, "B": True}}]}).services[0]
    assert svc.command == ["/bin/sleep", "5"]
    assert svc.environment == {"N": "8000", "B": "true"}


# ---- rendering ----------------------------------------------------------------------------------
def test_unit_file():
    text = spec_of().services[0].unit_file.content.decode()
    assert text.startswith(ps.MARKER + "\n[Unit]\n")
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
    assert ps.systemd_quote(word) == quoted


def test_environment_file_round_trips_through_a_shell_like_parser_and_masks():
    env = {"PORT": "8000", "SECRET": "s3cr'\"$`\\et x"}
    text = ps.render_env(env)
    assert text.splitlines()[1:] == ['PORT="8000"', 'SECRET="s3cr\'\\"\\$\\`\\\\et x"']
    # sh reads the double-quoted values the same way systemd's EnvironmentFile parser does.
    out = subprocess.run(["sh", "-c", "set -a; . /dev/stdin; printf '%s\\n' \"$SECRET\""], input=text,
                         capture_output=True, text=True, check=True).stdout
    assert out == env["SECRET"] + "\n"
    masked = ps.render_env(env, masked=True)
    assert "8000" not in masked and "s3cr" not in masked and "SECRET=********" in masked


def test_mask_env_hides_every_value_of_a_file_read_back():
    text = "# comment\nA=1\nexport B='x'\n  C = \"y\"\ngarbage line\n\n"
    assert ps.mask_env(text) == "# comment\nA=********\nexport B=********\n  C=********\n********\n\n"
