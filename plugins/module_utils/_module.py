# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A thin wrapper around AnsibleModule: the common LXD options, a lazily opened client, and the
one place where OneboxError becomes fail_json."""
from __future__ import annotations

import traceback

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.parameters import remove_values

from ansible_collections.homelab.onebox.plugins.module_utils import _validate
from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError
from ansible_collections.homelab.onebox.plugins.module_utils._lock import RunLock

# Options every module that talks to LXD accepts (documented in doc_fragments/lxd.py).
LXD_ARGUMENT_SPEC = dict(
    lxd_url=dict(type="str"),
    lxd_client_cert=dict(type="path"),
    lxd_client_key=dict(type="path", no_log=True),
    lxd_verify=dict(type="raw", default=True),
    lxd_project=dict(type="str"),
    lxd_timeout=dict(type="int", default=30),
    lock_timeout=dict(type="int", default=300),
)


class OneboxModule(AnsibleModule):
    """AnsibleModule plus ``self.lxd`` (an LxdClient opened on first use) and ``run()``."""

    def __init__(self, argument_spec, lxd=False, secrets=None, run_lock=True, sources=None, **kwargs):
        """``secrets``: params -> secret values inside options that cannot be no_log as a whole
        (Ansible would then mask every string of them, names included). They are kept out of the
        log, the invocation and error messages; the result itself must not carry them.
        ``sources``: params -> the ``files`` items that may have a ``src``; with it the module
        takes ``src_archives`` (its action plugin's transferred copies), unpacked before the run."""
        spec = dict(argument_spec)
        if lxd:
            spec.update(LXD_ARGUMENT_SPEC)
        if sources is not None:
            spec["src_archives"] = dict(type="dict")
        self._sources = sources
        self._secrets = secrets
        self._takes_run_lock = run_lock  # False: what the module runs takes the lock itself (the backup agent)
        self._secret_values = set()
        self._lxd_client = None
        super().__init__(argument_spec=spec, **kwargs)

    def _log_invocation(self):
        # AnsibleModule logs the invocation from __init__, so this is where the secrets are first read.
        if self._secrets is not None:
            self._secret_values = {value for value in self._secrets(self.params) if value}
        saved = set(self.no_log_values)
        self.no_log_values.update(self._secret_values)
        try:
            super()._log_invocation()
        finally:
            self.no_log_values = saved

    def _hide_secrets(self, value):
        return remove_values(value, self._secret_values) if self._secret_values else value

    @property
    def lxd(self):
        if self._lxd_client is None:
            # Imported here so modules that never talk to LXD do not need pylxd. A missing or too
            # old pylxd is LxdClient's one check (require_pylxd), an LxdError like any other.
            from ansible_collections.homelab.onebox.plugins.module_utils._lxd import LxdClient
            self._lxd_client = LxdClient.from_params(self.params)
        return self._lxd_client

    def run(self, manager_factory):
        """Build the manager (it checks the input), then run it holding the daemon's run lock;
        exit with its result. Any OneboxError becomes fail_json."""
        try:
            if self._sources is not None and self.params.get("src_archives"):
                # Imported here: only a run with transferred sources needs it.
                from ansible_collections.homelab.onebox.plugins.module_utils._provision_source import unpack_archives
                unpack_archives(self.params["src_archives"], self._sources(self.params), self.tmpdir)
            manager = manager_factory(self)
            with self._run_lock() as lock:
                result = manager.run()
            if lock is not None and lock.note():
                self.warn(lock.note())
        except OneboxError as exc:
            self._close_lxd()
            self.fail_json(**self._hide_secrets(dict(exc.details, msg=exc.msg,
                                                     invocation={"module_args": self.params})))
        except Exception as exc:  # pylint: disable=broad-except
            self._close_lxd()
            # Unexpected: keep the traceback so a bug report has it.
            self.fail_json(msg="unexpected error: %s" % exc, exception=traceback.format_exc())
        self._close_lxd()
        self.exit_json(**dict(result, invocation={"module_args": self._hide_secrets(self.params)}))

    def _run_lock(self):
        """The lock of the daemon (LXD or Incus) this run talks to (one converge at a time per daemon)."""
        if "lock_timeout" not in self.params or not self._takes_run_lock:
            return _NoLock()
        _validate.whole(self.params["lock_timeout"], "lock_timeout")
        from ansible_collections.homelab.onebox.plugins.module_utils._lxd import LxdError, endpoint_from_url
        try:
            key = endpoint_from_url(self.params.get("lxd_url"))
        except LxdError:
            key = "(none on this host)"  # dnat without LXD: still one run at a time on this host
        return RunLock(key, self.params["lock_timeout"], "module %s" % getattr(self, "_name", "?"))

    def _close_lxd(self):
        if self._lxd_client is not None:
            self._lxd_client.close()


class _NoLock:
    def __enter__(self):
        return None

    def __exit__(self, *exc_info):
        return False
