"""_provision_spec: the checks of the input with field paths, the specs they give, the rendering of units
and environment files."""
import hashlib
import os
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


# ---- files from a src (a file or a directory of the module's host) --------------------------------
def src_tree(root):
    (root / "sub").mkdir(parents=True)
    (root / "index.html").write_text("<h1>hi</h1>\n")
    (root / "sub" / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "sub" / "run.sh", 0o755)
    return str(root)


def test_a_src_file_is_a_file_spec_with_its_source_and_its_own_mode(tmp_path):
    artifact = tmp_path / "app.jar"
    artifact.write_bytes(b"\x00jar")
    os.chmod(artifact, 0o750)
    spec = spec_of({"name": "a", "files": [{"path": "/opt/app.jar", "src": str(artifact)},
                                           {"path": "/opt/b.jar", "src": str(artifact), "mode": "0600"}]})
    first, second = spec.files
    assert first.content is None and first.source.path == str(artifact) and first.mode == 0o750
    assert first.size == 4 and first.digest == hashlib.sha256(b"\x00jar").hexdigest() and second.mode == 0o600
    assert spec.trees == []


def test_a_src_directory_is_a_tree_spec(tmp_path):
    spec = spec_of({"name": "a", "files": [{"path": "/srv/site/", "src": src_tree(tmp_path / "s"), "sync": True,
                                            "owner": "www-data"}]})
    tree, = spec.trees
    assert spec.files == [] and tree.path == "/srv/site" and tree.sync and tree.mode is None
    assert tree.dirs == ["sub"] and sorted(tree.files) == ["index.html", "sub/run.sh"]
    one = tree.file_spec("sub/run.sh")
    assert (one.path, one.mode, one.owner, one.field) == ("/srv/site/sub/run.sh", 0o755, "www-data", "instances[0].files[0].path")
    assert "www-data" in spec.user_names()


@pytest.mark.parametrize("item, field, words", [
    ({"content": "x", "src": "/etc/hostname"}, "files[0].src", "give content or src, not both"),
    ({}, "files[0].content", "or src"),
    ({"src": "/etc/hostname", "state": "absent"}, "files[0].src", "only a present file has a source"),
    ({"src": "relative/file"}, "files[0].src", "must be an absolute path"),
    ({"src": "/no/such/thing"}, "files[0].src", "no such file or directory"),
    ({"src": "/dev/null"}, "files[0].src", "must be a regular file or a directory"),
    ({"src": "/etc/hostname", "sync": True}, "files[0].sync", "only a directory src is synced"),
    ({"content": "x", "sync": True}, "files[0].sync", "only a directory src is synced"),
    ({"src": "/etc", "path": "/"}, "files[0].path", "must not be /"),
])
def test_src_refusals_name_the_field(item, field, words):
    err = error_of([{"name": "a", "files": [dict({"path": "/srv/x"}, **item)]}])
    assert err.field == "instances[0].%s" % field and words in err.reason, err.msg


def test_paths_inside_a_tree(tmp_path):
    tree = {"path": "/srv/site", "src": src_tree(tmp_path / "s")}
    other = {"path": "/srv/site/extra.txt", "content": "x"}
    assert len(spec_of({"name": "a", "files": [tree, other]}).files) == 1     # not one of its files: fine
    for files, field in (([dict(tree, sync=True), other], "files[1].path"),   # a synced tree would remove it
                         ([tree, {"path": "/srv/site/index.html", "content": "x"}], "files[1].path"),
                         ([tree, dict(tree, path="/srv/site/sub")], "files[1].path"),
                         ([tree, dict(tree)], "files[1].path")):
        err = error_of([{"name": "a", "files": files}])
        assert err.field == "instances[0].%s" % field, err.msg


def test_file_fields_name_every_files_item_as_written():
    items = [{"name": "a", "files": [{"path": "/x"}, "junk", {"path": "/y"}]}, {"name": "b"}, "junk"]
    assert [f for f, _item in ps.file_fields(items)] == ["instances[0].files[0]", "instances[0].files[2]"]


# ---- setup steps and the process's limits --------------------------------------------------------
SHOP = {
    "name": "shop",
    "users": [{"name": "shop", "home": "/srv/shop"}],
    "packages": ["python3-venv"],
    "files": [{"path": "/srv/shop/requirements.txt", "content": "django\n"},
              {"path": "/srv/shop/app/settings.py", "content": "DEBUG = False\n"}],
    "services": [{"name": "shop", "command": ["/srv/shop/venv/bin/gunicorn"], "user": "shop",
                  "working_directory": "/srv/shop", "environment": {"DJANGO_SETTINGS_MODULE": "app.settings"}}],
    "setup": [{"command": ["/usr/bin/python3", "-m", "venv", "/srv/shop/venv"], "creates": "/srv/shop/venv/bin/python",
               "service": "shop"},
              {"command": "venv/bin/pip install -r requirements.txt\nvenv/bin/python manage.py migrate",
               "when_changed": ["/srv/shop/requirements.txt", "/srv/shop/app/", "python3-venv", "DJANGO_SETTINGS_MODULE"],
               "service": "shop", "timeout": 900},
              {"command": ["touch", "/etc/marker"], "user": "root"}],
}


def test_setup_steps_run_as_their_service_in_its_directory_with_its_environment():
    spec = spec_of(SHOP)
    venv, pip, plain = spec.setup
    assert venv.command == ["/usr/bin/python3", "-m", "venv", "/srv/shop/venv"] and venv.creates == "/srv/shop/venv/bin/python"
    assert (venv.user, venv.working_directory, venv.environment) == ("shop", "/srv/shop", {"DJANGO_SETTINGS_MODULE": "app.settings"})
    # A line (a script, newlines and all) runs under sh; a directory stands for the files under it.
    assert pip.command == ["/bin/sh", "-c", SHOP["setup"][1]["command"]] and pip.timeout == 900
    assert pip.when_changed == ["/srv/shop/requirements.txt", "/srv/shop/app", "python3-venv", "DJANGO_SETTINGS_MODULE"]
    assert (venv.label, venv.stamp, venv.field) == ("setup shop[0]", "/var/lib/onebox/setup/shop.0", "instances[0].setup[0]")
    # Without a service: root, in /, no environment; its stamp is the container's.
    assert (plain.user, plain.working_directory, plain.environment, plain.timeout) == ("root", "/", {}, None)
    assert (plain.label, plain.stamp) == ("setup[2]", "/var/lib/onebox/setup/container.2")
    assert "shop" in spec.user_names() and "root" in spec.user_names()


def test_open_files_is_the_units_limit():
    spec = spec_of(SHOP, services=[dict(SHOP["services"][0], open_files=65536, restart="on-failure")])
    unit = spec.services[0].unit_file.content.decode()
    assert "LimitNOFILE=65536\n" in unit and "Restart=on-failure\n" in unit
    assert "LimitNOFILE" not in spec_of(SHOP).services[0].unit_file.content.decode()


def step(**changes):
    return dict(SHOP["setup"][1], **changes)


@pytest.mark.parametrize("changes, field, value, reason", [
    ({"setup": "pip install"}, "instances[0].setup", "pip install", "must be a list"),
    ({"setup": [step(command=None)]}, "instances[0].setup[0].command", None, "runs a command"),
    ({"setup": [step(command="  ")]}, "instances[0].setup[0].command", "  ", "not empty"),
    ({"setup": [step(command=[])]}, "instances[0].setup[0].command", [], "non-empty list"),
    ({"setup": [step(command=["pip", {"a": 1}])]}, "instances[0].setup[0].command[1]", {"a": 1}, "text without NUL"),
    ({"setup": [step(command=["bad prog"])]}, "instances[0].setup[0].command[0]", "bad prog", "plain program name"),
    ({"setup": [step(always=True)]}, "instances[0].setup[0]", None, "unknown key(s) always"),
    ({"setup": [step(service="web")]}, "instances[0].setup[0].service", "web", "names no service of this container"),
    ({"setup": [step(user="Bad User")]}, "instances[0].setup[0].user", "Bad User", "lower-case"),
    ({"setup": [step(creates="venv")]}, "instances[0].setup[0].creates", "venv", "absolute path"),
    ({"setup": [step(timeout=0)]}, "instances[0].setup[0].timeout", 0, "1 or more"),
    ({"setup": [step(timeout="60")]}, "instances[0].setup[0].timeout", "60", "1 or more"),
    ({"setup": [step(timeout=True)]}, "instances[0].setup[0].timeout", True, "1 or more"),
    ({"setup": [step(when_changed="/srv/shop/requirements.txt")]}, "instances[0].setup[0].when_changed",
     "/srv/shop/requirements.txt", "must be a list"),
    ({"setup": [step(when_changed=["/srv/shop/requirements.txt", "/srv/shop/other.txt"])]},
     "instances[0].setup[0].when_changed[1]", "/srv/shop/other.txt", "not a declared file's path"),
    ({"setup": [step(when_changed=["/srv/shop/requirements.txt/x"])]},
     "instances[0].setup[0].when_changed[0]", "/srv/shop/requirements.txt/x", "not a declared file's path"),
    ({"setup": [step(when_changed=["jq"])]}, "instances[0].setup[0].when_changed[0]", "jq",
     "packages (python3-venv) or environment keys of the service (DJANGO_SETTINGS_MODULE)"),
    ({"setup": [step(when_changed=["DJANGO_SETTINGS_MODULE"], service=None)]},
     "instances[0].setup[0].when_changed[0]", "DJANGO_SETTINGS_MODULE", "environment keys of the service (none)"),
    ({"services": [dict(SHOP["services"][0], open_files=0)]}, "instances[0].services[0].open_files", 0, "1 or more"),
    ({"services": [dict(SHOP["services"][0], open_files=2 ** 21)]}, "instances[0].services[0].open_files", 2 ** 21,
     "at most 1048576"),
    ({"services": [{"name": "nginx", "open_files": 1024}]}, "instances[0].services[0].open_files", 1024,
     "only applies to a service with a command"),
])
def test_a_bad_setup_step_or_limit_is_named_with_its_value(changes, field, value, reason):
    err = error_of([dict(SHOP, **changes)])
    assert err.field == field and reason in err.reason, err.msg
    if value is not None:
        assert err.value == value
