# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The box's backups as the description says them (pure logic): ``onebox_backup`` checked, and the files the host's agent runs from.

``parse_backup_options`` checks the options (schedule, retention, targets, their secrets); the
BoxBackup it returns with the parsed box derives the agent's configuration (which containers and
volumes each service has, what runs first), each target's secrets file and the systemd units
that run the agent on the schedule. An error names the field (``backup.targets[1].repository``).
"""
from __future__ import annotations

import json
import re

from ansible_collections.homelab.onebox.plugins.module_utils import _validate as v
from ansible_collections.homelab.onebox.plugins.module_utils._backup_agent import CONFIG_DIR, DRILL_UNIT, LOG, PROGRAM, RETENTION_KEYS, UNIT
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError

TARGET_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
# What restic reads from the environment for S3 and the like; anything else in a target's
# environment is refused (a typo would otherwise be a silent no-op).
ENV_NAME = re.compile(r"(AWS|RESTIC|B2|AZURE|GOOGLE|OS|ST|RCLONE)_[A-Z0-9_]+")
DEFAULT_RETENTION = {"daily": 7, "weekly": 4, "monthly": 6}
# The first line of every unit the backups write: what a removal looks for before deleting one.
UNIT_MARK = "# Managed by homelab.onebox (backups of box "

ARGUMENT_SPEC = dict(
    schedule=dict(type="str", default="daily"),
    drill_schedule=dict(type="str"),
    randomized_delay=dict(type="int", default=0),
    retention=dict(type="dict"),
    password=dict(type="str", no_log=True),
    targets=dict(type="list", elements="dict", required=True, options=dict(
        name=dict(type="str", required=True),
        repository=dict(type="str", required=True),
        password=dict(type="str", no_log=True),
        environment=dict(type="dict", default={}, no_log=True),
    )),
    check=dict(type="bool", default=True),
    parallel=dict(type="int", default=2),
    timeout=dict(type="int", default=21600),
    command_timeout=dict(type="int", default=600),
    object_timeout=dict(type="int", default=3600),
)


def parse_backup_options(raw, field="backup"):
    """The box's ``onebox_backup`` (already through ARGUMENT_SPEC) -> checked options."""
    options = dict(raw)
    if not isinstance(options.get("schedule"), str) or not options["schedule"].strip() or "\n" in options["schedule"]:
        raise ValidationError(field + ".schedule", options.get("schedule"), "must be a systemd OnCalendar expression (daily, *-*-* 03:00)")
    drill = options.get("drill_schedule")
    if drill is not None and (not isinstance(drill, str) or not drill.strip() or "\n" in drill):
        raise ValidationError(field + ".drill_schedule", drill, "must be a systemd OnCalendar expression (weekly, Sun *-*-* 05:00)")
    v.whole(options["randomized_delay"], field + ".randomized_delay")
    retention = DEFAULT_RETENTION if options.get("retention") is None else options["retention"]
    unknown = sorted(set(retention) - set(RETENTION_KEYS))
    if unknown:
        raise ValidationError("%s.retention.%s" % (field, unknown[0]), retention[unknown[0]],
                              "unknown (known: %s)" % ", ".join(RETENTION_KEYS))
    options["retention"] = {key: v.whole(count, "%s.retention.%s" % (field, key)) for key, count in retention.items()}
    if not any(options["retention"].values()):
        raise ValidationError(field + ".retention", retention, "keeps nothing: give at least one count above 0")
    for key in ("parallel", "timeout", "command_timeout", "object_timeout"):
        v.whole(options[key], "%s.%s" % (field, key), 1)
    seen = set()
    for index, target in enumerate(options["targets"]):
        where = "%s.targets[%d]" % (field, index)
        if not TARGET_NAME.fullmatch(target["name"]):
            raise ValidationError(where + ".name", target["name"], "must be lowercase letters, digits, '-' or '_' (up to 32)")
        if target["name"] in seen:
            raise ValidationError(where + ".name", target["name"], "two targets have this name")
        seen.add(target["name"])
        repository = target["repository"]
        if not repository or "\n" in repository or not (repository.startswith("/") or re.match(r"[a-z0-9]+:", repository)):
            raise ValidationError(where + ".repository", repository,
                                  "must be an absolute directory or a restic repository (s3:https://host/bucket/path, sftp:...)")
        if not (target.get("password") or options.get("password")):
            raise ValidationError(where + ".password", None, "the repository needs a password (backup.password or the target's own)")
        for name, value in (target.get("environment") or {}).items():
            if not ENV_NAME.fullmatch(str(name)):
                raise ValidationError("%s.environment.%s" % (where, name), "(hidden)",
                                      "is not an environment name restic reads (AWS_*, RESTIC_*, B2_*, AZURE_*, GOOGLE_*, ...)")
            if not isinstance(value, (str, int)) or "\n" in str(value):
                raise ValidationError("%s.environment.%s" % (where, name), "(hidden)", "must be one line of text")
    return options


def backup_secrets(raw):
    """Every secret of the options as given (not yet checked): passwords and environment values."""
    if not isinstance(raw, dict):
        return []
    out = [raw.get("password")]
    for target in raw.get("targets") or []:
        if isinstance(target, dict):
            out.append(target.get("password"))
            env = target.get("environment")
            out.extend(str(val) for val in (env.values() if isinstance(env, dict) else ()))
    return [str(s) for s in out if s]


class BoxBackup:
    """The backups of a parsed box (BoxParts) with checked options."""

    def __init__(self, box, options, socket, lock, lock_timeout=3600):
        self.box, self.options, self.socket, self.lock, self.lock_timeout = box, options, socket, lock, lock_timeout
        self.owner = box.options["owner"]
        self.config_dir = CONFIG_DIR % self.owner
        self.unit = UNIT % self.owner

    def services(self):
        """Each service's containers and volumes as the agent backs them up. A shared volume goes
        with the first service that mounts it; the proxy (its certificates' volume) is one too."""
        out, shared = [], set()
        for service in self.box.services:
            volumes = []
            for volume in service.volumes:
                if volume["shared"]:
                    if volume["volume"] in shared:
                        continue
                    shared.add(volume["volume"])
                volumes.append(volume["volume"])
            item = {"name": service.name, "containers": list(service.members), "volumes": volumes,
                    "include": bool(service.backup)}
            if service.backup_command:
                item.update(command=list(service.backup_command), command_in=service.members[0],
                            command_timeout=self.options["command_timeout"])
            out.append(item)
        if self.box.proxy:
            out.append({"name": self.box.proxy, "containers": [self.box.proxy], "volumes": [self.box.tls_volume],
                        "include": True})
        return out

    def config(self):
        """/etc/onebox/backup-OWNER/config.json: no secret in it."""
        config = {"owner": self.owner, "socket": self.socket, "lock": self.lock, "lock_timeout": self.lock_timeout,
                  "targets": [{"name": t["name"], "repository": t["repository"]} for t in self.options["targets"]],
                  "retention": {k: n for k, n in self.options["retention"].items() if n},
                  "check": self.options["check"], "parallel": self.options["parallel"],
                  "object_timeout": self.options["object_timeout"], "services": self.services()}
        return json.dumps(config, indent=1, sort_keys=True) + "\n"

    def environments(self):
        """Per target, what restic runs with: RESTIC_PASSWORD and the target's environment."""
        out = {}
        for target in self.options["targets"]:
            env = {"RESTIC_PASSWORD": target.get("password") or self.options["password"]}
            env.update((k, str(val)) for k, val in (target.get("environment") or {}).items())
            out[target["name"]] = env
        return out

    def secrets(self):
        """TARGET.env per target: its environment, one KEY=VALUE a line."""
        return {name: "".join("%s=%s\n" % item for item in sorted(env.items())) for name, env in self.environments().items()}

    def files(self, agent_source):
        """path -> (content, mode) of every file on the host (the secrets' included)."""
        files = {PROGRAM: (agent_source, 0o755),
                 "%s/config.json" % self.config_dir: (self.config(), 0o600)}
        for name, text in self.secrets().items():
            files["%s/%s.env" % (self.config_dir, name)] = (text, 0o600)
        return files

    def timers(self):
        """unit name -> (what it does, the agent's command, its OnCalendar): the backup, and the
        restore drill when it has a schedule."""
        out = {self.unit: ("back up", "backup", self.options["schedule"])}
        if self.options.get("drill_schedule"):
            out[DRILL_UNIT % self.owner] = ("restore-drill", "drill", self.options["drill_schedule"])
        return out

    def units(self, unit_dir="/etc/systemd/system"):
        """path -> text of each service a timer starts, and of the timer."""
        out = {}
        for unit, (what, command, calendar) in self.timers().items():
            out["%s/%s.service" % (unit_dir, unit)] = (
                UNIT_MARK + "%s). Do not edit: changes are overwritten.\n"
                "[Unit]\nDescription=homelab.onebox: %s box %s (%s)\n"
                "After=network-online.target lxd.service snap.lxd.daemon.service incus.service\n"
                "Wants=network-online.target\n\n"
                "[Service]\nType=oneshot\nExecStart=%s --config %s/config.json %s\nTimeoutStartSec=%d\nNice=10\n"
                "IOSchedulingClass=idle\n"
                % (self.owner, what, self.owner, LOG % self.owner, PROGRAM, self.config_dir, command, self.options["timeout"]))
            out["%s/%s.timer" % (unit_dir, unit)] = (
                UNIT_MARK + "%s). Do not edit: changes are overwritten.\n"
                "[Unit]\nDescription=homelab.onebox: %s box %s on schedule\n\n"
                "[Timer]\nOnCalendar=%s\nPersistent=true\nRandomizedDelaySec=%d\n\n"
                "[Install]\nWantedBy=timers.target\n"
                % (self.owner, what, self.owner, calendar, self.options["randomized_delay"]))
        return out
