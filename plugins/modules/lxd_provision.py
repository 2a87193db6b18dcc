#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: lxd_provision
short_description: Set up the inside of running LXD or Incus containers (users, packages, files, services) in one task
version_added: 0.1.0
description:
  - Brings the inside of each listed container to what it declares, through the daemon's API only (LXD or Incus)
    (exec with a timeout, file push and pull). The container needs C(sh), coreutils, C(getent),
    C(useradd), C(apt-get)/C(dpkg-query) and systemd as init (and util-linux's C(setpriv) for a
    setup step run as another user than root); no Python, no SSH, no Ansible connection into it.
  - Reads each container's state in one exec (files by size-independent SHA-256 and
    owner/mode, users with C(getent), packages with C(dpkg-query), units with
    C(systemctl show)), compares, and changes only what differs. The containers are worked on
    in parallel (O(parallel)).
  - A container that declares services is read once its systemd has reached C(basic.target) (not
    the end of boot, which waits for DHCP). One just started or restarted is waited for, within
    O(timeout); a container that is up costs no extra exec.
  - "Order inside a container: packages, users, parent directories, removals, files (owner and
    mode set before content), unit and environment files, one C(systemctl daemon-reload) if a
    unit changed (or a declared file under C(/etc/systemd/system) was removed; before the setup
    steps when any runs), the setup steps that need to run (O(instances[].setup)), C(enable)/C(disable),
    C(stop), then C(restart) or C(start), and one second later the check that each started service stays up."
  - A service is restarted when its unit or environment file changed, when a setup step ran, or when any declared file
    (unless its O(instances[].files[].restart=false)) or package of the same container changed; a
    service that is not running is started.
  - Every item is validated, and every container's state is read and checked (the container
    exists and runs; each user, group and unit named exists or is declared), before anything
    changes.
    Errors name the field (C(instances[0].files[2].path)) and the value.
extends_documentation_fragment:
  - homelab.onebox.lxd
  - homelab.onebox.module
  - homelab.onebox.src
  - ansible.builtin.action_common_attributes
attributes:
  diff_mode:
    details:
      - The content of every changed file, before and after, keyed by container then path.
        Environment files show C(********) for every value. A file larger than 64 KiB, or not
        UTF-8, shows its size and SHA-256 instead (and is not pulled from the container for it).
options:
  instances:
    description: The containers and what each must contain. Each must exist and be running.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Name of an existing, running container.
        type: str
        required: true
      users:
        description:
          - System users, created when missing with C(useradd --system --create-home --home-dir HOME
            --shell /usr/sbin/nologin) (with a group of the same name). An existing user is left
            as it is; users are never deleted.
        type: list
        elements: dict
        suboptions:
          name:
            description: User name (lower-case letters, digits, C(_), C(-)).
            type: str
            required: true
          home:
            description: Home directory; C(/home/NAME) when unset.
            type: str
      packages:
        description:
          - Debian packages installed (C(apt-get install -y --no-install-recommends)) when
            C(dpkg-query) does not report them installed. Never removed or upgraded.
          - C(apt-get update) runs first only when the container has no package lists, or when
            the install fails for lack of them.
        type: list
        elements: str
        default: []
      files:
        description:
          - Files, compared byte for byte (and by owner and mode) and written when different.
            Missing parent directories are created, owned by root, mode C(0755).
          - A file's bytes are its O(instances[].files[].content), or O(instances[].files[].src)
            on the controller - a file of any size or kind (streamed into the container, never
            held in memory whole), or a directory whose tree goes to O(instances[].files[].path).
            Each is compared by SHA-256 (the container's side in the same one exec as everything
            else, however many files a tree has), so only changed files move.
        type: list
        elements: dict
        suboptions:
          path:
            description: Absolute path in the container, without C(.) or C(..) components.
            type: str
            required: true
          content:
            description:
              - The file's text (UTF-8). With O(instances[].files[].state=present), this or
                O(instances[].files[].src) is required, not both.
            type: str
          src:
            description:
              - A file or a directory on the controller (a relative path is looked for as
                M(ansible.builtin.copy) does - the role's C(files/), the playbook's C(files/) and
                directory; links are followed). It must exist, or the task fails before any change.
              - A directory is a tree - O(instances[].files[].path) is the directory in the container,
                its files and directories are made under it (directories mode C(0755), owned like
                the files), each file with O(instances[].files[].mode) or else its own permission
                bits (an executable stays executable).
              - A change of any of its files restarts the container's services as any file's does
                (O(instances[].files[].restart)).
            type: str
          sync:
            description:
              - With a directory O(instances[].files[].src), remove what is under
                O(instances[].files[].path) in the container and not in the source (never anything
                outside it). Without it, a file removed from the source stays in the container.
            type: bool
            default: false
          mode:
            description:
              - Permissions, octal; quote it (C("0644")). An unquoted YAML C(0644) is read as the
                number it means; an unquoted C(644) is not.
              - Default C(0644) for O(instances[].files[].content), the source file's own permission
                bits for O(instances[].files[].src) (for a tree, given, every file's).
            type: raw
          owner:
            description: Owning user; it must exist or be declared in O(instances[].users).
            type: str
            default: root
          group:
            description:
              - Owning group; it must exist or be the name of a declared user. The owner's primary
                group when unset.
            type: str
          state:
            description: V(absent) removes the file (a file or link, never a directory).
            type: str
            choices: [present, absent]
            default: present
          restart:
            description:
              - Whether a change of this file restarts the container's services. V(false) for a file
                no running service reads at start (a script, a configuration read by a timer).
            type: bool
            default: true
      services:
        description:
          - Services under the container's systemd.
          - With O(instances[].services[].command), the module writes the unit
            C(/etc/systemd/system/onebox-NAME.service) itself (and C(/etc/onebox/NAME.env) for
            O(instances[].services[].environment)).
          - Without it, NAME is an existing unit (C(nginx), C(php8.2-fpm), C(foo.socket)),
            only enabled or disabled and started, restarted or stopped.
        type: list
        elements: dict
        suboptions:
          name:
            description:
              - Service name. With a command, letters, digits, C(_), C(.), C(-); the unit is
                C(onebox-NAME.service).
            type: str
            required: true
          command:
            description:
              - The program and its arguments, one list item per argument (quoted for systemd's
                C(ExecStart) by the module, with no shell and no variable expansion). The program is an
                absolute path or a name systemd finds in its search path.
            type: list
            elements: str
          user:
            description:
              - User the command runs as (C(root) when unset). It must exist or be declared in
                O(instances[].users).
            type: str
          working_directory:
            description: Directory the command starts in.
            type: str
          environment:
            description:
              - Environment variables of the command, written to C(/etc/onebox/NAME.env) (root,
                mode C(0600)) and referenced by C(EnvironmentFile=). Keys are shell identifiers,
                values one line each.
              - The values are C(no_log); they never appear in the module's output or diff.
              - Without it, an environment file an earlier run wrote for this service is removed.
            type: dict
          restart:
            description:
              - systemd's C(Restart=). With C(RestartSec=1), a process that dies is back within about
                a second; unless V(no), the unit never gives up restarting (C(StartLimitIntervalSec=0)).
            type: str
            choices: [always, on-failure, on-abnormal, on-abort, on-success, on-watchdog, "no"]
            default: always
          state:
            description: Whether the service runs.
            type: str
            choices: [started, stopped]
            default: started
          enabled:
            description: Whether the service starts at boot (C(systemctl enable)/C(disable)).
            type: bool
            default: true
          open_files:
            description:
              - The most files its process may have open (C(LimitNOFILE=) in the unit), 1 to 1048576.
                Only with O(instances[].services[].command).
            type: int
      setup:
        description:
          - Setup steps, run in order after the container's packages, users and files and before its
            services are (re)started; any step that runs restarts the container's started services.
          - A step runs when it never ran, when its command, user or working directory changed, when
            something O(instances[].setup[].when_changed) names changed, or when
            O(instances[].setup[].creates) is missing. What it last ran against is a sha256 kept in
            C(/var/lib/onebox/setup/SERVICE.N) (root's only, C(container.N) without a service),
            read with the rest of the state and written only once the step succeeded.
          - A step that fails (non-zero exit, or its timeout) fails the container with the last 20
            lines of its output (stdout and stderr); its services are not restarted.
        type: list
        elements: dict
        suboptions:
          command:
            description:
              - A list runs as it is (the program an absolute path or a name in C(PATH)); a string
                runs as C(/bin/sh -c STRING) (a line, or a script).
            type: raw
            required: true
          when_changed:
            description:
              - What the step depends on. An absolute path of a declared file, or a directory
                holding declared files (the declared content of every file under it); a package
                of O(instances[].packages) (its installed version, as C(dpkg-query) reports it); an
                environment key of the step's O(instances[].setup[].service) (its value).
              - Without it the step runs once (and again when the step itself changes).
            type: list
            elements: str
            default: []
          creates:
            description: An absolute path; the step runs whenever it is missing.
            type: str
          service:
            description:
              - A service of the container with a command (O(instances[].services[].name)); the step
                runs in its working directory (C(/) when it has none) with its environment, as its
                user. Without it, as root, in C(/), with no environment of a service.
            type: str
          user:
            description:
              - The user the step runs as (C(setpriv), with its groups; C(HOME), C(USER) and
                C(LOGNAME) set). Default the service's user, else root. It must exist or be declared.
            type: str
          timeout:
            description: Seconds the step may take (then it is killed and fails). Default O(package_timeout).
            type: int
  parallel:
    description: How many containers are worked on at once.
    type: int
    default: 4
  timeout:
    description:
      - Seconds each exec in a container may take (reads, file operations, C(systemctl)).
      - The read of a container that is still booting waits for its systemd within this time (a
        little less, so the failure can say what systemd was doing).
    type: int
    default: 120
  package_timeout:
    description: Seconds C(apt-get update) and C(apt-get install) may each take.
    type: int
    default: 600
notes:
  - Runs on the LXD host (or anywhere with O(lxd_url) pointing at an LXD API). Needs pylxd there.
  - Ansible hides a C(no_log) value wherever it occurs in the output, so a short environment
    value (C(8000)) also masks that text elsewhere in the result (in a diff, for example).
  - File content is not C(no_log); put a secret in O(instances[].services[].environment) or use
    C(no_log) on the task.
  - "C(systemctl start) of a C(Type=simple) unit returns once the process is spawned: so one second
    after a (re)start the module asks systemd whether each service it started is running (active,
    never restarted since), and fails the container naming a service that is not, with the last 20
    lines of its journal (C(journalctl -u UNIT)). A process that dies later is not seen."
seealso:
  - module: homelab.onebox.lxd_instances
"""

EXAMPLES = r"""
- name: An app as a service of a non-root user, and a static site, in one task
  homelab.onebox.lxd_provision:
    parallel: 4
    instances:
      - name: app
        users:
          - {name: app, home: /srv/app}
        packages: [python3-flask]
        files:
          - path: /srv/app/app.py
            content: "{{ lookup('file', 'app.py') }}"
            mode: "0644"
            owner: app
            group: app
        services:
          - name: app
            command: [/usr/bin/python3, /srv/app/app.py]
            user: app
            working_directory: /srv/app
            environment:
              PORT: "8000"
              SECRET_KEY: "{{ vault_app_secret }}"
      - name: www
        files:
          - {path: /var/www/html/index.html, content: "<h1>Hello</h1>\n"}
          - {path: /var/www/html/index.nginx-debian.html, state: absent}
          # files/site/ of the role or playbook: the whole tree, what the source no longer has removed
          - {path: /var/www/html/assets, src: site/, sync: true}
        services:
          - name: nginx
  register: provisioned

- name: Stop a service and keep it from starting at boot
  homelab.onebox.lxd_provision:
    instances:
      - name: app
        services:
          - {name: app, command: [/usr/bin/python3, /srv/app/app.py], user: app, state: stopped, enabled: false}
"""

RETURN = r"""
instances:
  description: One result per declared container, in the declared order.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The container worked in.
      type: str
    changed:
      description: Whether anything in this container changed (in check mode, would change).
      type: bool
    actions:
      description:
        - What was done, in order (in check mode, what would be done), for example C(package jq),
          C(user app), C(file /srv/app/app.py), C(remove /var/www/html/old.html),
          C(tree /var/www/html/assets (3 pushed, 1 removed)),
          C(environment onebox-app), C(unit onebox-app), C(daemon-reload), C(enable onebox-app),
          C(stop nginx), C(start onebox-app), C(restart onebox-app), C(setup app[0]) (a setup step
          that ran, or would run).
      type: list
      elements: str
  sample: [{name: app, changed: true, actions: [user app, file /srv/app/app.py, unit onebox-app,
                                                  daemon-reload, enable onebox-app, start onebox-app]}]
"""

from concurrent.futures import ThreadPoolExecutor

from ansible_collections.homelab.onebox.plugins.module_utils import _validate
from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError
from ansible_collections.homelab.onebox.plugins.module_utils._module import OneboxModule
from ansible_collections.homelab.onebox.plugins.module_utils._provision import Provisioner, check_instances, take_diff
from ansible_collections.homelab.onebox.plugins.module_utils._provision_spec import (
    FILE_STATES, RESTART_CHOICES, SERVICE_STATES, file_fields, parse_insides)

ARGUMENT_SPEC = dict(
    instances=dict(type="list", elements="dict", default=[], options=dict(
        name=dict(type="str", required=True),
        users=dict(type="list", elements="dict", options=dict(
            name=dict(type="str", required=True),
            home=dict(type="str"),
        )),
        packages=dict(type="list", elements="str", default=[]),
        files=dict(type="list", elements="dict", options=dict(
            path=dict(type="str", required=True),
            content=dict(type="str"),
            src=dict(type="str"),
            sync=dict(type="bool", default=False),
            mode=dict(type="raw"),
            owner=dict(type="str", default="root"),
            group=dict(type="str"),
            state=dict(type="str", choices=list(FILE_STATES), default="present"),
            restart=dict(type="bool", default=True),
        )),
        services=dict(type="list", elements="dict", options=dict(
            name=dict(type="str", required=True),
            command=dict(type="list", elements="str"),
            user=dict(type="str"),
            working_directory=dict(type="str"),
            # no_log: Ansible masks these values in the invocation, the log and the whole result.
            environment=dict(type="dict", no_log=True),
            restart=dict(type="str", choices=list(RESTART_CHOICES), default="always"),
            state=dict(type="str", choices=list(SERVICE_STATES), default="started"),
            enabled=dict(type="bool", default=True),
            open_files=dict(type="int"),
        )),
        setup=dict(type="list", elements="dict", options=dict(
            command=dict(type="raw", required=True),
            when_changed=dict(type="list", elements="str", default=[]),
            creates=dict(type="str"),
            user=dict(type="str"),
            timeout=dict(type="int"),
            service=dict(type="str"),
        )),
    )),
    parallel=dict(type="int", default=4),
    timeout=dict(type="int", default=120),
    package_timeout=dict(type="int", default=600),
)


class ProvisionManager:
    """Check everything, read and plan every container (in parallel), then apply outside check mode."""

    def __init__(self, module):
        self.module = module
        params = module.params
        _validate.at_least_one(params, ("parallel", "timeout", "package_timeout"))
        self.specs = parse_insides(params["instances"])

    def run(self):
        module, lxd, params = self.module, self.module.lxd, self.module.params
        check_instances(self.specs, {inst["name"]: inst for inst in lxd.instances()})
        workers = [Provisioner(lxd, spec, params["timeout"], params["package_timeout"], diff=module._diff)
                   for spec in self.specs]
        with ThreadPoolExecutor(max_workers=params["parallel"]) as pool:
            # Every read and check first: one bad container stops the run before any change.
            list(pool.map(lambda worker: (worker.read(), worker.plan()), workers))
            changed = [worker for worker in workers if worker.planned.changed]
            failures = {}
            if not module.check_mode:
                failures = dict(filter(None, pool.map(self._apply, changed)))
        results = [worker.result() for worker in workers]
        diff = take_diff(results)
        if failures:
            raise OneboxError("; ".join("%s: %s" % item for item in failures.items()),
                              instances=results, failed_instances=sorted(failures))
        result = {"changed": bool(changed), "instances": results}
        if module._diff:
            result["diff"] = [diff]
        return result

    @staticmethod
    def _apply(worker):
        """Apply one container's plan; (name, message) when it fails, so the others still finish."""
        try:
            worker.apply()
        except OneboxError as exc:
            return worker.spec.name, exc.msg
        return None


def main():
    module = OneboxModule(ARGUMENT_SPEC, lxd=True, supports_check_mode=True,
                          sources=lambda params: [item for _field, item in file_fields(params["instances"])])
    module.run(ProvisionManager)


if __name__ == "__main__":
    main()
