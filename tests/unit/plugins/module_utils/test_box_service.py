"""_box_service: one service of the description (most of its checks are exercised through
parse_box in test_box.py, as the user meets them)."""
from __future__ import annotations

from ansible_collections.homelab.onebox.plugins.module_utils._box_service import parse_service, secret_values
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError

import pytest

DEFAULTS = {"image": "onebox-debian12"}


def test_secret_values_are_every_environment_value_even_of_a_bad_description():
    services = [{"name": "a", "environment": {"TOKEN": "t0k", "PORT": 8000, "ON": True}}, "junk",
                {"name": "b", "environment": ["not", "a", "dict"]}, {"name": "c"}]
    assert sorted(secret_values(services)) == ["8000", "t0k"]
    assert list(secret_values("not a list")) == []


def test_a_pool_has_its_members_and_limits_are_checked_once():
    pool = parse_service(0, {"name": "web", "kind": "pool", "count": 3, "domains": ["w.test"],
                             "memory": "256MiB", "memory_swap": "512MiB", "cpus": 1}, DEFAULTS)
    assert pool.members == ["web-1", "web-2", "web-3"]
    assert pool.limits == {"memory": "256MiB", "memory_swap": "512MiB", "cpus": "1"}


@pytest.mark.parametrize("raw, field, reason", [
    ({"name": "a", "memory_swap": "1GiB"}, "services[a].memory_swap", "needs memory too"),
    ({"name": "a", "memory": "256MiB", "memory_swap": "128MiB"}, "services[a].memory_swap", "at least memory"),
    ({"name": "a", "files": "x"}, "services[a].files", "must be a list"),
    ({"name": "a", "boot": {"order": 1}}, "services[a].boot", "takes autostart, priority and delay"),
])
def test_a_bad_key_is_named_as_written(raw, field, reason):
    with pytest.raises(ValidationError) as err:
        parse_service(0, raw, DEFAULTS)
    assert err.value.field == field and reason in err.value.reason


# ---- volumes, backup, a removed service ----------------------------------------------------------
OWNED = dict(DEFAULTS, owner="box")


def test_volumes_are_named_after_the_owner_and_the_service_or_shared():
    service = parse_service(0, {"name": "db", "volumes": [
        {"name": "data", "path": "/var/lib/db/", "size": "1 GiB"},
        {"name": "media", "path": "/srv/media", "shared": True, "readonly": True}]}, OWNED)
    assert service.volumes == [
        {"name": "data", "volume": "box-db-data", "path": "/var/lib/db", "size": "1GiB", "readonly": False,
         "shared": False, "device": "vol-data"},
        {"name": "media", "volume": "box-shared-media", "path": "/srv/media", "size": None, "readonly": True,
         "shared": True, "device": "vol-media"}]


def test_backup_and_backup_command_are_parsed_and_checked_like_command():
    plain = parse_service(0, {"name": "db"}, OWNED)
    assert plain.backup is True and plain.backup_command is None and plain.volumes == []
    dumped = parse_service(0, {"name": "db", "backup": False, "backup_command": "pg_dump -f /var/lib/db/dump.sql"}, OWNED)
    # A line runs under a shell (a dump redirected onto a volume), a list as it is.
    assert dumped.backup is False and dumped.backup_command == ["/bin/sh", "-c", "pg_dump -f /var/lib/db/dump.sql"]
    listed = parse_service(0, {"name": "db", "backup_command": ["/bin/sh", "-c", "dump > /d/x"]}, OWNED)
    assert listed.backup_command == ["/bin/sh", "-c", "dump > /d/x"]


def test_a_removed_service_builds_nothing_and_says_whether_to_purge():
    gone = parse_service(0, {"name": "db", "state": "absent", "purge": True}, OWNED)
    assert (gone.state, gone.purge, gone.volumes) == ("absent", True, [])
    assert parse_service(0, {"name": "db", "state": "absent"}, OWNED).purge is False
    assert parse_service(0, {"name": "db"}, OWNED).state == "present"


VOLUME = {"name": "data", "path": "/data"}


@pytest.mark.parametrize("raw, field, value, reason", [
    ({"volumes": {"name": "data"}}, "services[db].volumes", {"name": "data"}, "must be a list"),
    ({"volumes": ["data"]}, "services[db].volumes[0]", "data", "a dict with name and path"),
    ({"volumes": [dict(VOLUME, mode="rw")]}, "services[db].volumes[0].mode", "rw", "unknown key"),
    ({"volumes": [{"path": "/data"}]}, "services[db].volumes[0].name", None, "needs a name"),
    ({"volumes": [{"name": "data"}]}, "services[db].volumes[0].path", None, "needs a path"),
    ({"volumes": [dict(VOLUME, name="Data")]}, "services[db].volumes[0].name", "Data", "lower-case"),
    ({"volumes": [dict(VOLUME, name="da_ta")]}, "services[db].volumes[0].name", "da_ta", "letters, digits or hyphens"),
    ({"volumes": [dict(VOLUME, name="data-")]}, "services[db].volumes[0].name", "data-", "not end with a hyphen"),
    ({"volumes": [dict(VOLUME, path="data")]}, "services[db].volumes[0].path", "data", "absolute path"),
    ({"volumes": [dict(VOLUME, path="/srv/../etc")]}, "services[db].volumes[0].path", "/srv/../etc", "'..'"),
    ({"volumes": [dict(VOLUME, path="/")]}, "services[db].volumes[0].path", "/", "own root"),
    ({"volumes": [dict(VOLUME, path="//")]}, "services[db].volumes[0].path", "//", "own root"),
    ({"volumes": [dict(VOLUME, path="/da\nta")]}, "services[db].volumes[0].path", "/da\nta", "must not contain"),
    ({"volumes": [dict(VOLUME, size="1")]}, "services[db].volumes[0].size", "1", "give a unit"),
    ({"volumes": [dict(VOLUME, size="big")]}, "services[db].volumes[0].size", "big", "a size such as"),
    ({"volumes": [dict(VOLUME, size="0GiB")]}, "services[db].volumes[0].size", "0GiB", "more than nothing"),
    ({"volumes": [dict(VOLUME, readonly="yes")]}, "services[db].volumes[0].readonly", "yes", "true or false"),
    ({"volumes": [dict(VOLUME, shared=1)]}, "services[db].volumes[0].shared", 1, "true or false"),
    ({"volumes": [VOLUME, dict(VOLUME, path="/other")]}, "services[db].volumes[1].name", "data",
     "declared twice (also services[db].volumes[0])"),
    ({"volumes": [VOLUME, dict(VOLUME, name="other", path="/data/")]}, "services[db].volumes[1].path", "/data/",
     "declared twice"),
    ({"kind": "pool", "count": 2, "volumes": [VOLUME]}, "services[db].volumes[0].shared", False, "use shared: true"),
    ({"backup": "no"}, "services[db].backup", "no", "true or false"),
    ({"backup_command": ""}, "services[db].backup_command", "", "a command line or a list of arguments"),
    ({"backup_command": ["dump", 3]}, "services[db].backup_command", ["dump", 3], "a list of arguments"),
    ({"backup_command": ["dump", "a\nb"]}, "services[db].backup_command", ["dump", "a\nb"], "newline"),
    ({"state": "gone"}, "services[db].state", "gone", "present, absent"),
    ({"purge": True}, "services[db].purge", True, "only a removed service"),
    ({"state": "absent", "purge": "yes"}, "services[db].purge", "yes", "true or false"),
    ({"state": "absent", "volumes": [VOLUME]}, "services[db].volumes", [VOLUME], "takes only name, state and purge"),
    ({"state": "absent", "image": "x"}, "services[db].image", "x", "takes only name, state and purge"),
])
def test_a_bad_volume_backup_or_state_is_named_with_its_value(raw, field, value, reason):
    with pytest.raises(ValidationError) as err:
        parse_service(0, dict(raw, name="db"), OWNED)
    assert err.value.field == field and err.value.value == value and reason in err.value.reason, err.value.msg


# ---- health ------------------------------------------------------------------------------------
def test_health_is_none_or_one_check_with_its_defaults():
    assert parse_service(0, {"name": "web"}, DEFAULTS).health is None
    http = parse_service(0, {"name": "web", "health": {"http": "/healthz"}}, DEFAULTS)
    assert http.health == {"http": "/healthz", "tcp": None, "expect": 200, "timeout": 60}
    app = parse_service(0, {"name": "api", "command": ["/srv/api"], "port": 8000,
                            "health": {"http": "/", "expect": 204, "timeout": 5}}, DEFAULTS)
    assert app.health == {"http": "/", "tcp": None, "expect": 204, "timeout": 5}
    # A plain or internal service has no HTTP, but its port can be asked.
    db = parse_service(0, {"name": "db", "kind": "internal", "command": ["/srv/db"], "health": {"tcp": 5432}}, DEFAULTS)
    assert db.health == {"http": None, "tcp": 5432, "expect": None, "timeout": 60}


APP = {"command": ["/srv/db"], "kind": "internal"}


@pytest.mark.parametrize("raw, field, value, reason", [
    ({"health": "/healthz"}, "services[db].health", "/healthz", "must be a dict"),
    ({"health": {"http": "/", "retries": 3}}, "services[db].health", {"http": "/", "retries": 3}, "unknown key(s) retries"),
    ({"health": {}}, "services[db].health", {}, "exactly one of http"),
    ({"health": {"http": "/", "tcp": 80}}, "services[db].health", {"http": "/", "tcp": 80}, "exactly one of http"),
    ({"health": {"http": "healthz"}}, "services[db].health.http", "healthz", "start with '/'"),
    ({"health": {"http": "/a b"}}, "services[db].health.http", "/a b", "must not contain"),
    ({"health": {"http": "/", "expect": 700}}, "services[db].health.expect", 700, "100-599"),
    ({"health": {"http": "/", "timeout": 0}}, "services[db].health.timeout", 0, "1 or more"),
    ({"health": {"http": "/", "timeout": "5"}}, "services[db].health.timeout", "5", "1 or more"),
    (dict(APP, health={"http": "/"}), "services[db].health.http", "/", "no port to ask"),
    (dict(APP, health={"tcp": 0}), "services[db].health.tcp", 0, "port number"),
    (dict(APP, health={"tcp": 5432, "expect": 200}), "services[db].health.expect", 200, "only with http"),
])
def test_a_bad_health_is_named_with_its_value(raw, field, value, reason):
    with pytest.raises(ValidationError) as err:
        parse_service(0, dict(raw, name="db"), DEFAULTS)
    assert err.value.field == field and err.value.value == value and reason in err.value.reason, err.value.msg


def test_a_file_from_the_controller_and_the_items_the_action_plugin_resolves():
    from ansible_collections.homelab.onebox.plugins.module_utils._box import parse_box
    from ansible_collections.homelab.onebox.plugins.module_utils._box_service import file_fields
    services = [{"name": "web", "kind": "pool", "count": 2, "domains": ["w.test"],
                 "files": [{"path": "/srv/@INSTANCE@.txt", "content": "I am @INSTANCE@"},
                           {"path": "/srv/app", "src": "app/@INSTANCE@"}]}]
    items = {i["name"]: i["files"] for i in parse_box(services).provision() if i["name"].startswith("web")}
    assert items["web-2"] == [{"path": "/srv/@INSTANCE@.txt", "content": "I am web-2"},
                              {"path": "/srv/app", "src": "app/@INSTANCE@"}]   # a src is left as it is
    assert [field for field, _item in file_fields(services + ["junk", {"name": "x!", "files": [{}]}])] == [
        "services[web].files[0]", "services[web].files[1]", "services[2].files[0]"]
    for files, field in (([{"path": "/a", "src": 5}], "services[a].files[0].src"),
                         ([{"path": "/a"}], "services[a].files[0].content")):
        with pytest.raises(ValidationError) as err:
            parse_service(0, {"name": "a", "files": files}, DEFAULTS)
        assert err.value.field == field


# ---- setup steps and the process -------------------------------------------------------------------
SHOP = {"name": "shop", "command": ["/srv/shop/venv/bin/gunicorn", "app.wsgi"], "port": 8000, "domains": ["shop.test"],
        "packages": ["python3-venv"], "environment": {"DJANGO_SETTINGS_MODULE": "app.settings"},
        "files": [{"path": "/srv/shop/requirements.txt", "content": "django\n"},
                  {"path": "/srv/shop/app", "src": "shop/app"}]}


def test_setup_steps_default_to_the_services_user_and_name_what_they_depend_on():
    shop = parse_service(0, dict(SHOP, setup=[
        {"command": ["/usr/bin/python3", "-m", "venv", "/srv/shop/venv"], "creates": "/srv/shop/venv/bin/python"},
        {"command": "venv/bin/pip install -r requirements.txt", "timeout": 900,
         "when_changed": ["/srv/shop/requirements.txt", "/srv/shop/app/settings.py", "/srv/shop/", "python3-venv",
                          "DJANGO_SETTINGS_MODULE"]},
        {"command": "chown -R shop /srv/shop/media", "user": "root", "when_changed": "/srv/shop/app"}]), DEFAULTS)
    assert shop.setup == [
        {"command": ["/usr/bin/python3", "-m", "venv", "/srv/shop/venv"], "when_changed": [],
         "creates": "/srv/shop/venv/bin/python", "user": "shop", "timeout": None},
        # A path under a src (a tree, maybe) is its; a directory stands for the files under it.
        {"command": ["/bin/sh", "-c", "venv/bin/pip install -r requirements.txt"], "timeout": 900, "creates": None,
         "user": "shop", "when_changed": ["/srv/shop/requirements.txt", "/srv/shop/app/settings.py", "/srv/shop",
                                          "python3-venv", "DJANGO_SETTINGS_MODULE"]},
        {"command": ["/bin/sh", "-c", "chown -R shop /srv/shop/media"], "when_changed": ["/srv/shop/app"],
         "creates": None, "user": "root", "timeout": None}]
    # A static service's steps run as root (it has no user of its own).
    site = parse_service(0, {"name": "site", "files": [{"path": "/var/www/html/index.html", "content": "x"}],
                             "setup": [{"command": "gzip -k /var/www/html/index.html"}]}, DEFAULTS)
    assert site.setup[0]["user"] == "root"
    assert (shop.restart, shop.open_files, shop.after) == ("always", None, [])


def test_restart_open_files_and_after_are_the_processes():
    shop = parse_service(0, dict(SHOP, restart="on-failure", open_files=65536, after=["db", "cache"]), DEFAULTS)
    assert (shop.restart, shop.open_files, shop.after) == ("on-failure", 65536, ["db", "cache"])
    gone = parse_service(0, {"name": "shop", "state": "absent"}, DEFAULTS)
    assert (gone.health, gone.setup, gone.after) == (None, [], [])


def setup_step(**changes):
    return dict({"command": "pip install -r requirements.txt", "when_changed": ["/srv/shop/requirements.txt"]}, **changes)


@pytest.mark.parametrize("raw, field, value, reason", [
    ({"setup": {"command": "x"}}, "services[shop].setup", {"command": "x"}, "must be a list"),
    ({"setup": ["pip install"]}, "services[shop].setup[0]", "pip install", "a dict with a command"),
    ({"setup": [{"when_changed": []}]}, "services[shop].setup[0]", {"when_changed": []}, "a dict with a command"),
    ({"setup": [setup_step(when="always")]}, "services[shop].setup[0].when", "always", "unknown key"),
    ({"setup": [setup_step(command="")]}, "services[shop].setup[0].command", "", "not empty"),
    ({"setup": [setup_step(command=["pip", None])]}, "services[shop].setup[0].command[1]", None, "text"),
    ({"setup": [setup_step(), setup_step(when_changed=["python3-venv", "/srv/shop/other.txt"])]},
     "services[shop].setup[1].when_changed[1]", "/srv/shop/other.txt", "not a declared file's path"),
    ({"setup": [setup_step(when_changed=["SECRET"])]}, "services[shop].setup[0].when_changed[0]", "SECRET",
     "environment keys of the service (DJANGO_SETTINGS_MODULE)"),
    ({"setup": [setup_step(when_changed=["/srv/../etc/passwd"])]}, "services[shop].setup[0].when_changed[0]",
     "/srv/../etc/passwd", "'..'"),
    ({"setup": [setup_step(user="Root")]}, "services[shop].setup[0].user", "Root", "lower-case"),
    ({"setup": [setup_step(creates="venv/bin/python")]}, "services[shop].setup[0].creates", "venv/bin/python", "absolute"),
    ({"setup": [setup_step(timeout=0)]}, "services[shop].setup[0].timeout", 0, "1 or more"),
    ({"setup": [setup_step(timeout=1.5)]}, "services[shop].setup[0].timeout", 1.5, "1 or more"),
    ({"restart": "sometimes"}, "services[shop].restart", "sometimes", "must be one of always, on-failure"),
    ({"open_files": 0}, "services[shop].open_files", 0, "1 or more"),
    ({"open_files": "1024"}, "services[shop].open_files", "1024", "1 or more"),
    ({"open_files": 2 ** 21}, "services[shop].open_files", 2 ** 21, "at most 1048576"),
    ({"after": "db"}, "services[shop].after", "db", "must be a list"),
    ({"after": ["db", "db"]}, "services[shop].after[1]", "db", "named twice"),
    ({"after": ["shop"]}, "services[shop].after[0]", "shop", "after itself"),
    ({"after": ["no;pe"]}, "services[shop].after[0]", "no;pe", "letters, digits or hyphens"),
])
def test_a_bad_setup_or_process_key_is_named_with_its_value(raw, field, value, reason):
    with pytest.raises(ValidationError) as err:
        parse_service(0, dict(SHOP, **raw), DEFAULTS)
    assert err.value.field == field and err.value.value == value and reason in err.value.reason, err.value.msg


@pytest.mark.parametrize("key, value", [("restart", "no"), ("open_files", 1024)])
def test_restart_and_open_files_are_a_commands(key, value):
    with pytest.raises(ValidationError) as err:
        parse_service(0, {"name": "site", key: value}, DEFAULTS)
    assert err.value.field == "services[site].%s" % key and "only a service with a command" in err.value.reason
