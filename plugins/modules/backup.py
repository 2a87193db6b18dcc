#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: backup
short_description: The box's backups - scheduled on the host, encrypted off the box with restic, and restored
version_added: "0.2.0"
description:
  - Sets up the box's backups on the LXD host, runs one now, restores, or lists them. The work is
    done by an agent the module installs on the host (C(/usr/local/sbin/onebox-backup)), which a
    systemd timer (C(onebox-backup-OWNER.timer)) runs on O(backup.schedule) with nobody running
    Ansible.
  - "Each run, per service: its C(backup_command) first (a database dump into a volume, say), then
    a snapshot of each of its containers and volumes taken together, LXD's backup (instance and
    custom-volume backup API, uncompressed) of a copy of each snapshot streamed into C(restic
    backup) for every target at once. restic encrypts, compresses and de-duplicates: the
    containers of one image share nearly all their bytes."
  - Retention (C(restic forget --prune)) and C(restic check) run after every object reached every
    target; a run that fails anywhere leaves the earlier backups as they were and the unit failed.
  - A restore streams C(restic dump) into LXD's import API - the container comes back with its
    configuration (static address, volumes, owner's mark), so its forwards and sites work again.
  - Runs and restores take the box's run lock, so they take turns with converges.
options:
  action:
    description:
      - V(configure) - the agent, its configuration, the targets' secrets (mode 0600, root) and the
        timer in place, each target's repository initialised when missing (O(state=absent) removes
        them all but the repositories and the record of the last runs).
      - V(backup) - one run now, of O(services) or every included service.
      - V(restore) - O(restore_services) (or the whole box with O(restore_all)) from the newest
        backup holding all of each, or O(restore_run).
      - V(drill) - a restore drill now (see O(backup.drill_schedule)).
      - V(list) - the runs each service can be restored from (reads the first target).
      - V(status) - the last run and last good backup of each service, and its age (no repository read).
    type: str
    choices: [configure, backup, restore, drill, list, status]
    default: configure
  state:
    description: With O(action=configure), whether the backups are set up or removed.
    type: str
    choices: [present, absent]
    default: present
  owner:
    description: The box's owner (names the timer, the configuration and the record).
    type: str
    default: onebox
  services:
    description:
      - The box description (as the P(homelab.onebox.box#module) module takes it). Each service's
        containers, C(volumes), C(backup) and C(backup_command) say what is backed up.
    type: list
    elements: dict
    default: []
  proxy_name:
    description: The box's proxy container (backed up with its certificates' volume). Default C(OWNER-proxy).
    type: str
  image:
    description: As the box module's O(homelab.onebox.box#module:image).
    type: str
    default: onebox-debian12
  backup:
    description: The backups (the role's C(onebox_backup)). Needed by V(configure) with O(state=present).
    type: dict
    suboptions:
      schedule:
        description: When the timer runs the backup (systemd C(OnCalendar), checked with C(systemd-analyze calendar) where it exists).
        type: str
        default: daily
      drill_schedule:
        description:
          - When the restore drill runs (systemd C(OnCalendar)); none when omitted. The drill restores
            each service's newest backup into a throwaway container (no static address, no forwards,
            no sites, no owner's mark, copies of its volumes), starts it, compares its volumes' files
            with the checksums the backup read, deletes it and records the result; a failed drill
            fails its unit as a failed backup does.
        type: str
      randomized_delay:
        description: Seconds of random delay after O(backup.schedule) (C(RandomizedDelaySec)).
        type: int
        default: 0
      retention:
        description:
          - How many backups of each container and volume stay, by C(last), C(hourly), C(daily),
            C(weekly), C(monthly) and C(yearly) (restic's C(--keep-*)).
          - "Default C({daily: 7, weekly: 4, monthly: 6})."
        type: dict
      password:
        description: The repositories' password (from a vault). Without it the backups cannot be read.
        type: str
      targets:
        description:
          - Where the backups go, each a restic repository - a directory (a local disk or a mount)
            or S3-compatible storage (C(s3:https://host/bucket/path)). Every run writes to all of them.
        type: list
        elements: dict
        required: true
        suboptions:
          name:
            description: Its name (its secrets file, and what O(restore_target) picks).
            type: str
            required: true
          repository:
            description: The restic repository.
            type: str
            required: true
          password:
            description: Its own password instead of O(backup.password).
            type: str
          environment:
            description: What restic needs to reach it (C(AWS_ACCESS_KEY_ID), C(AWS_SECRET_ACCESS_KEY), C(AWS_DEFAULT_REGION)...), kept in its secrets file.
            type: dict
            default: {}
      check:
        description: Run C(restic check) on each target after each run.
        type: bool
        default: true
      parallel:
        description: How many services are backed up at once.
        type: int
        default: 2
      timeout:
        description: Seconds a whole run may take (the unit's C(TimeoutStartSec)).
        type: int
        default: 21600
      object_timeout:
        description:
          - Seconds one container's or volume's backup (or import, in a restore) may take. restic
            retries a failing target for many minutes; past this its processes are stopped and the
            run fails.
        type: int
        default: 3600
      command_timeout:
        description: Seconds a service's C(backup_command) may take.
        type: int
        default: 600
  restore_services:
    description: With O(action=restore), the services to restore (with O(action=backup) or V(list), the services to back up or list; all when empty).
    type: list
    elements: str
    default: []
  restore_all:
    description: With O(action=restore), every service of the box.
    type: bool
    default: false
  restore_run:
    description: With O(action=restore), the run to restore (as V(list) shows them) instead of the newest.
    type: str
  restore_target:
    description: With O(action=restore) or V(list), the target to read instead of the first.
    type: str
  overwrite:
    description: With O(action=restore), replace a service's containers and volumes that exist (otherwise such a restore fails before any change).
    type: bool
    default: false
  unit_dir:
    description: Where the systemd units go.
    type: path
    default: /etc/systemd/system
extends_documentation_fragment:
  - homelab.onebox.lxd
  - homelab.onebox.module
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    details: V(backup), V(restore) and V(drill) report what they would do; V(configure) what it would write and which repositories it would make.
  diff_mode:
    support: partial
    details: The configuration and the units (never the secrets files nor the agent's program).
notes:
  - Runs on the LXD host, whose unix socket O(lxd_url) must be (the agent talks to it; no pylxd needed). Needs Debian's
    C(restic) there (the P(homelab.onebox.backup#role) role installs it).
  - The agent, not the module, holds the box's run lock (O(lock_timeout)) while it backs up or restores.
  - Without systemd as the host's init, the units are written but no timer runs.
seealso:
  - module: homelab.onebox.box
"""

EXAMPLES = r"""
- name: Daily backups to a disk and to S3
  homelab.onebox.backup:
    owner: mybox
    services: "{{ onebox_services }}"
    backup:
      schedule: "*-*-* 03:00:00"
      retention: {daily: 7, weekly: 4, monthly: 12}
      password: "{{ vault_backup_password }}"
      targets:
        - {name: disk, repository: /srv/backup/mybox}
        - name: s3
          repository: s3:https://s3.example.org/backups/mybox
          environment: {AWS_ACCESS_KEY_ID: "{{ vault_s3_key }}", AWS_SECRET_ACCESS_KEY: "{{ vault_s3_secret }}"}

- name: Yesterday's database back
  homelab.onebox.backup:
    owner: mybox
    services: "{{ onebox_services }}"
    action: restore
    restore_services: [db]
    overwrite: true
"""

RETURN = r"""
files:
  description: The host's files the configuration changed (paths; secrets files by path only).
  returned: with O(action=configure)
  type: list
  elements: str
targets:
  description: Each target and what was done to its repository (C(init), C(none)), or after a run whether retention and check passed.
  returned: with O(action=configure) or V(backup)
  type: list
  elements: dict
services:
  description:
    - V(status) and V(configure) - per service C(name), C(last_good_time), C(age_seconds), C(ok), C(error).
    - V(backup) - per service C(ok), C(objects) (per object and target the restic snapshot, C(added) bytes), C(seconds).
    - V(restore) - per service the C(run) restored, its C(objects) and what it C(replaces).
    - V(list) - per service its C(runs), newest first.
  returned: always
  type: list
  elements: dict
failures:
  description: What failed in a V(backup) or V(drill) (services, C(target NAME)); on failure the task fails naming each with its error.
  returned: with O(action=backup) or V(drill)
  type: list
  elements: str
run:
  description: The run's id (restic tag C(run=...)).
  returned: with O(action=backup)
  type: str
timers:
  description: The timers (C(name), C(enabled)) - the backup's, and the drill's when scheduled.
  returned: with O(action=configure)
  type: list
  elements: dict
timers_note:
  description: Why no timer is enabled (the host's init is not systemd).
  returned: with O(action=configure), on a host without systemd
  type: str
"""

import inspect
import json
import os
import shutil
import tempfile

from ansible_collections.homelab.onebox.plugins.module_utils import _backup_agent
from ansible_collections.homelab.onebox.plugins.module_utils._box import parse_box
from ansible_collections.homelab.onebox.plugins.module_utils import _box_backup
from ansible_collections.homelab.onebox.plugins.module_utils._box_backup import BoxBackup, backup_secrets, parse_backup_options
from ansible_collections.homelab.onebox.plugins.module_utils._box_service import secret_values
from ansible_collections.homelab.onebox.plugins.module_utils._diff import entry
from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError, ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._host_files import write_host_file
from ansible_collections.homelab.onebox.plugins.module_utils._lock import lock_path
from ansible_collections.homelab.onebox.plugins.module_utils._lxd import LxdError, endpoint_from_url
from ansible_collections.homelab.onebox.plugins.module_utils._module import OneboxModule

ARGUMENT_SPEC = dict(
    action=dict(type="str", choices=["configure", "backup", "restore", "drill", "list", "status"], default="configure"),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    owner=dict(type="str", default="onebox"),
    services=dict(type="list", elements="dict", default=[]),
    proxy_name=dict(type="str"),
    image=dict(type="str", default="onebox-debian12"),
    backup=dict(type="dict", options=_box_backup.ARGUMENT_SPEC),
    restore_services=dict(type="list", elements="str", default=[]),
    restore_all=dict(type="bool", default=False),
    restore_run=dict(type="str"),
    restore_target=dict(type="str"),
    overwrite=dict(type="bool", default=False),
    unit_dir=dict(type="path", default="/etc/systemd/system"),
)


def agent_source():
    """The agent's program as the host runs it."""
    return "#!/usr/bin/python3\n" + inspect.getsource(_backup_agent)


class BackupManager:
    """Reads what is on the host, plans, then writes (outside check mode) or asks the agent."""

    def __init__(self, module):
        self.module, params = module, module.params
        try:
            self.socket = endpoint_from_url(params["lxd_url"])
        except LxdError as e:
            raise ValidationError("lxd_url", params["lxd_url"], str(e))
        if not self.socket.startswith("/"):
            raise ValidationError("lxd_url", params["lxd_url"], "backups run on the LXD host: give its unix socket")
        if params["action"] == "restore" and not params["restore_services"] and not params["restore_all"]:
            raise ValidationError("restore_services", [], "name the services to restore, or restore_all")
        present = params["action"] != "configure" or params["state"] == "present"
        if present and params["backup"] is None:
            raise ValidationError("backup", None, "the backups' targets and password are needed (onebox_backup)")
        options = parse_backup_options(params["backup"]) if params["backup"] is not None else None
        box = parse_box(params["services"] if present else [], {"owner": params["owner"], "image": params["image"],
                                                                "proxy_name": params["proxy_name"]})
        self.backups = BoxBackup(box, options, self.socket, lock_path(self.socket), params["lock_timeout"]) if options else None
        self.owner = params["owner"]
        self.config_path = "%s/config.json" % (_backup_agent.CONFIG_DIR % self.owner)
        if options is not None:
            for key in ("schedule", "drill_schedule"):
                if options.get(key) is not None:
                    self._check_schedule("backup." + key, options[key])

    def _check_schedule(self, field, schedule):
        tool = shutil.which("systemd-analyze")
        if tool is None:
            return  # no systemd tools: nothing would run the timer anyway (the result says so)
        rc, _out, err = self.module.run_command([tool, "calendar", schedule])
        if rc != 0:
            raise ValidationError(field, schedule, "systemd does not read it: %s" % " ".join(err.strip().splitlines()[-1:]))

    def run(self):
        action = self.module.params["action"]
        if action == "configure":
            return self.configure()
        return self.ask(action)

    # ---- configure -----------------------------------------------------------------------
    def desired(self):
        """path -> (content or None to remove, mode, secret)."""
        unit_dir = self.module.params["unit_dir"]
        config_dir = _backup_agent.CONFIG_DIR % self.owner
        if self.module.params["state"] == "absent":
            out = {path: (None, 0o644, False) for path in self._units_on_disk(unit_dir)}
            for name in self._listdir(config_dir):
                out[os.path.join(config_dir, name)] = (None, 0o600, name.endswith(".env"))
            others = [d for d in self._listdir(os.path.dirname(config_dir)) if d.startswith("backup-") and
                      os.path.join(os.path.dirname(config_dir), d) != config_dir]
            if not others and os.path.exists(_backup_agent.PROGRAM):  # the agent goes with the last box using it
                out[_backup_agent.PROGRAM] = (None, 0o755, False)
            return out
        out = {path: (content, mode, path.endswith(".env")) for path, (content, mode) in self.backups.files(agent_source()).items()}
        for name in self._listdir(config_dir):  # the secrets of a target no longer given
            path = os.path.join(config_dir, name)
            if path not in out:
                out[path] = (None, 0o600, name.endswith(".env"))
        out.update((path, (text, 0o644, False)) for path, text in self.backups.units(unit_dir).items())
        out.update((path, (None, 0o644, False)) for path in self._units_on_disk(unit_dir) if path not in out)  # a drill no longer scheduled
        return out

    def _units_on_disk(self, unit_dir):
        """The box's backup units there, those carrying the collection's mark (never a unit of the same name made otherwise)."""
        names = [unit % self.owner + ext for unit in (_backup_agent.UNIT, _backup_agent.DRILL_UNIT) for ext in (".service", ".timer")]
        paths = [os.path.join(unit_dir, name) for name in names]
        return [path for path in paths if (self._read(path)[0] or "").startswith(_box_backup.UNIT_MARK)]

    @staticmethod
    def _listdir(path):
        try:
            return sorted(os.listdir(path))
        except OSError:
            return []

    @staticmethod
    def _read(path):
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read(), os.stat(path).st_mode & 0o7777
        except OSError:
            return None, None

    def configure(self):
        module, check = self.module, self.module.check_mode
        present = module.params["state"] == "present"
        unit_dir = module.params["unit_dir"]
        planned = []  # (path, content or None, mode): what differs
        diffs = []
        for path, (content, mode, secret) in sorted(self.desired().items()):
            current, current_mode = self._read(path)
            if current == content and (content is None or current_mode == mode):
                continue
            planned.append((path, content, mode))
            if module._diff and not secret and path != _backup_agent.PROGRAM:
                diffs.append(entry(path, current or "", content or ""))
        result = {"changed": bool(planned), "files": [path for path, _c, _m in planned], "targets": []}
        if present and any(path.startswith(_backup_agent.CONFIG_DIR % self.owner) for path, _c, _m in planned):
            # The targets, with the configuration and secrets about to be written, before any of
            # them is: a wrong password or a missing mount fails with the host as it was. A run
            # that changes neither asks no repository anything (the timer's runs do).
            code, answer = self.agent("prepare", given=True)
            if code != 0:
                raise OneboxError("the backup targets: %s" % answer.get("error"), targets=answer.get("targets"))
            result.update(targets=answer["targets"], changed=result["changed"] or answer["changed"])
        systemd = os.path.isdir("/run/systemd/system")
        wanted = [name + ".timer" for name in self.backups.timers()] if present else []
        if not check:
            for path, content, mode in planned:
                if content is None and systemd and path.endswith(".timer"):
                    self._systemctl("disable", "--now", os.path.basename(path))
                self._write(path, content, mode)
            if systemd:
                if any(path.startswith(unit_dir) for path, _c, _m in planned):
                    self._systemctl("daemon-reload")
                for name in wanted:
                    self._systemctl("enable", "--now", name)
        result["timers"] = [{"name": name, "enabled": systemd and not check} for name in wanted]
        if not systemd:
            result["timers_note"] = "no systemd: the units are written, no timer runs them"
        if present:
            # The record of the last runs, read here (the agent's own code, no process of its own).
            agent = _backup_agent.Agent(json.loads(self.backups.config()))
            result["services"] = agent.status()[1]["services"]
        if module._diff:
            result["diff"] = diffs
        return result

    def _write(self, path, content, mode):
        write_host_file(self.module, path, content, mode, dir_mode=0o700 if mode == 0o600 else 0o755)
        directory = os.path.dirname(path)
        if content is None and directory == _backup_agent.CONFIG_DIR % self.owner and not self._listdir(directory):
            os.rmdir(directory)  # the configuration's directory goes with its last file

    def _systemctl(self, *args):
        rc, out, err = self.module.run_command(["systemctl"] + list(args))
        if rc != 0:
            raise OneboxError("systemctl %s: %s" % (" ".join(args), (err or out).strip()))

    # ---- asking the agent ----------------------------------------------------------------
    def agent(self, *args, given=None):
        """Run the agent (the installed one, or this module's copy): (exit status, its JSON).
        ``given`` (default: in check mode): with the configuration and secrets this run writes,
        not the files'."""
        check = self.module.check_mode
        env = {}
        program = _backup_agent.PROGRAM
        given = check if given is None else given
        if check or not os.path.exists(program):
            fd, program = tempfile.mkstemp(prefix="onebox-backup-")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(agent_source())
        if given and self.backups is not None:
            env["ONEBOX_BACKUP_CONFIG"] = self.backups.config()
            env["ONEBOX_BACKUP_SECRETS"] = json.dumps(self.backups.environments())
        argv = ["/usr/bin/python3", program, "--config", self.config_path] + list(args) + (["--check"] if check else [])
        try:
            rc, out, err = self.module.run_command(argv, environ_update=env)
        finally:
            if program != _backup_agent.PROGRAM:
                os.unlink(program)
        try:
            answer = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise OneboxError("onebox-backup %s printed no answer (exit %d): %s" % (args[0], rc, (err or out).strip()[-500:]))
        answer.setdefault("log", err.strip().splitlines()[-20:])
        return rc, answer

    def ask(self, action):
        params = self.module.params
        if action in ("backup", "restore", "drill") and not self.module.check_mode and not os.path.exists(self.config_path):
            raise OneboxError("the backups of %s are not configured on this host (run action=configure first)" % self.owner)
        args = [action]
        if action == "restore":
            args += ["--all"] if params["restore_all"] else []
            args += ["--overwrite"] if params["overwrite"] else []
            args += ["--run", params["restore_run"]] if params["restore_run"] else []
        if action in ("restore", "list", "drill") and params["restore_target"]:
            args += ["--target", params["restore_target"]]
        if action in ("backup", "restore", "list", "drill"):
            args += list(params["restore_services"])
        rc, answer = self.agent(*args)
        if rc != 0:
            failed = ["%s (%s)" % (s["name"], s.get("error")) for s in answer.get("services") or [] if not s.get("ok", True)]
            failed += ["target %s (%s)" % (t["name"], t.get("error")) for t in answer.get("targets") or [] if not t.get("ok", True)]
            raise OneboxError("onebox-backup %s: %s" % (action, answer.get("error") or "failed: %s" % "; ".join(failed)),
                              **{k: val for k, val in answer.items() if k != "error"})
        answer.pop("log", None)
        answer["changed"] = bool(answer.get("changed")) and action in ("backup", "restore")
        return answer


def main():
    module = OneboxModule(ARGUMENT_SPEC, lxd=True, run_lock=False, supports_check_mode=True,
                          secrets=lambda params: list(secret_values(params["services"])) + backup_secrets(params["backup"]))
    module.run(BackupManager)


if __name__ == "__main__":
    main()
