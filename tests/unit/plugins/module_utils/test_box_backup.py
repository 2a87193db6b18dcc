"""The box's backups as described: onebox_backup checked (every bad value named), and what the
host's agent is given (each service's containers and volumes, the first command, secrets apart
from the configuration, the units)."""
import json

import pytest
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.homelab.onebox.plugins.module_utils import _box_backup as bb
from ansible_collections.homelab.onebox.plugins.module_utils._box import parse_box
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError

SERVICES = [
    {"name": "db", "kind": "internal", "volumes": [{"name": "data", "path": "/var/lib/db"},
                                                   {"name": "media", "path": "/media", "shared": True}],
     "backup_command": "pg_dumpall > /var/lib/db/dump.sql"},
    {"name": "web", "kind": "pool", "count": 2, "domains": ["web.example.org"],
     "volumes": [{"name": "media", "path": "/srv/media", "shared": True, "readonly": True}]},
    {"name": "scratch", "kind": "internal", "backup": False, "backup_command": ["/bin/true", "x y"]},
]
TARGETS = [{"name": "disk", "repository": "/srv/backup"},
           {"name": "s3", "repository": "s3:http://127.0.0.1:9000/b/box", "environment": {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "sk-secret"}}]


def options(**given):
    raw = dict({"password": "pw", "targets": TARGETS}, **given)
    checked = ArgumentSpecValidator(bb.ARGUMENT_SPEC).validate(raw)
    assert not checked.error_messages, checked.error_messages
    return bb.parse_backup_options(checked.validated_parameters)


def backups(**given):
    return bb.BoxBackup(parse_box(SERVICES, {"owner": "mybox"}), options(**given), "/var/lib/lxd/unix.socket", "/run/lock/x.lock")


def error(**given):
    with pytest.raises(ValidationError) as err:
        options(**given)
    return err.value


def test_defaults_keep_a_week_a_month_and_half_a_year_daily():
    parsed = options()
    assert parsed["schedule"] == "daily" and parsed["retention"] == {"daily": 7, "weekly": 4, "monthly": 6}


@pytest.mark.parametrize("given, field", [
    ({"retention": {"dayly": 3}}, "backup.retention.dayly"),
    ({"retention": {"daily": -1}}, "backup.retention.daily"),
    ({"retention": {"daily": 0}}, "backup.retention"),
    ({"schedule": ""}, "backup.schedule"),
    ({"parallel": 0}, "backup.parallel"),
    ({"targets": [{"name": "Disk", "repository": "/x"}]}, "backup.targets[0].name"),
    ({"targets": [{"name": "a", "repository": "/x"}, {"name": "a", "repository": "/y"}]}, "backup.targets[1].name"),
    ({"targets": [{"name": "a", "repository": "relative/dir"}]}, "backup.targets[0].repository"),
    ({"password": None}, "backup.targets[0].password"),
    ({"targets": [{"name": "a", "repository": "/x", "environment": {"HOME": "/"}}]}, "backup.targets[0].environment.HOME"),
])
def test_a_bad_value_is_refused_by_its_field(given, field):
    assert error(**given).field == field


def test_each_service_gives_its_containers_volumes_and_first_command():
    services = {s["name"]: s for s in backups().services()}
    assert services["db"] == {"name": "db", "containers": ["db"], "volumes": ["mybox-db-data", "mybox-shared-media"],
                              "include": True, "command": ["/bin/sh", "-c", "pg_dumpall > /var/lib/db/dump.sql"],
                              "command_in": "db", "command_timeout": 600}
    # The shared volume goes once, with the first service that mounts it; a pool's members all go.
    assert services["web"]["containers"] == ["web-1", "web-2"] and services["web"]["volumes"] == []
    assert services["scratch"]["include"] is False and services["scratch"]["command"] == ["/bin/true", "x y"]
    # The proxy and its certificates' volume are backed up as one more service.
    assert services["mybox-proxy"] == {"name": "mybox-proxy", "containers": ["mybox-proxy"], "volumes": ["mybox-proxy-tls"],
                                       "include": True}


def test_the_configuration_holds_no_secret_and_the_secrets_files_hold_them():
    made = backups()
    config = json.loads(made.config())
    assert config["targets"] == [{"name": "disk", "repository": "/srv/backup"},
                                 {"name": "s3", "repository": "s3:http://127.0.0.1:9000/b/box"}]
    assert "pw" not in json.dumps(config["targets"]) and "sk-secret" not in made.config()
    assert made.secrets() == {"disk": "RESTIC_PASSWORD=pw\n",
                              "s3": "AWS_ACCESS_KEY_ID=k\nAWS_SECRET_ACCESS_KEY=sk-secret\nRESTIC_PASSWORD=pw\n"}
    files = made.files("#!/usr/bin/python3\n")
    assert files["/etc/onebox/backup-mybox/s3.env"][1] == 0o600 and files["/etc/onebox/backup-mybox/config.json"][1] == 0o600
    assert files["/usr/local/sbin/onebox-backup"][1] == 0o755


def test_a_target_may_have_its_own_password():
    made = backups(targets=[dict(TARGETS[0], password="other")])
    assert made.secrets() == {"disk": "RESTIC_PASSWORD=other\n"}


def test_the_units_run_the_agent_on_the_schedule():
    units = backups(schedule="*-*-* 03:00:00", randomized_delay=600).units("/u")
    timer, service = units["/u/onebox-backup-mybox.timer"], units["/u/onebox-backup-mybox.service"]
    assert "OnCalendar=*-*-* 03:00:00\nPersistent=true\nRandomizedDelaySec=600\n" in timer
    assert "ExecStart=/usr/local/sbin/onebox-backup --config /etc/onebox/backup-mybox/config.json backup\n" in service
    assert "TimeoutStartSec=21600" in service


def test_secrets_are_found_in_options_not_yet_checked():
    raw = {"password": "pw", "targets": [{"name": "s3", "password": "own", "environment": {"AWS_SECRET_ACCESS_KEY": "sk"}}, "junk"]}
    assert sorted(bb.backup_secrets(raw)) == ["own", "pw", "sk"]
    assert bb.backup_secrets(None) == []
