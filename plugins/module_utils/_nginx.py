# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The nginx transaction: a set of parsed sites made live on a target without ever leaving nginx
broken; SiteSet is its component (read, plan, apply, result) for nginx_site and box.

plan() compares the wanted files with the directory's; apply() makes the changes live, for all
changed files at once:
  1. stage: write each new text to ``.onebox-NAME.conf.new`` beside the live file (a dot-file
     that neither ``*.conf`` nor ``*`` include globs match);
  2. swap: hard-link the live file to ``.onebox-NAME.conf.old``, then rename the staged file over
     the live one (rename is atomic: the live path always holds a whole file);
  3. test the whole configuration (``nginx -T``: ``-t`` plus the dump, used to check every
     written file is really included);
  4. on failure rename every ``.old`` back (removing files that were new) and raise with nginx's
     own words: nginx was never reloaded, so it keeps serving the previous configuration;
  5. on success remove the ``.old`` files and reload nginx once.
"""
from __future__ import annotations

from ansible_collections.homelab.onebox.plugins.module_utils._diff import entry
from ansible_collections.homelab.onebox.plugins.module_utils._nginx_render import (
    SUFFIX, file_name, is_managed, render_site, site_of)
from ansible_collections.homelab.onebox.plugins.module_utils._nginx_target import (
    NginxError, backup_name, included_files, stage_name)


def plan(current, sites, prune=False):
    """What to change. ``current``: {file name: text} of the ``*.conf`` files in the directory;
    ``sites``: parsed sites (present or absent). Returns a list of changes, each a dict
    ``{name, file, before, after, action}`` (``after`` None = remove), sorted by file name.

    Raises NginxError when a declared site's file exists but was not written by this module."""
    changes = []
    declared = set()
    for site in sites:
        fname = file_name(site["name"])
        declared.add(fname)
        before = current.get(fname)
        if before is not None and not is_managed(before):
            raise NginxError("%s exists and was not written by homelab.onebox.nginx_site (no marker on its "
                             "first line): refusing to %s it" % (
                                 fname, "remove" if site["state"] == "absent" else "overwrite"), file=fname)
        if site["state"] == "absent":
            if before is not None:
                changes.append({"name": site["name"], "file": fname, "before": before, "after": None,
                                "action": "removed"})
            continue
        after = render_site(site)
        if after != before:
            changes.append({"name": site["name"], "file": fname, "before": before, "after": after,
                            "action": "created" if before is None else "updated"})
    if prune:
        for fname, text in current.items():
            if fname not in declared and is_managed(text):
                changes.append({"name": site_of(fname), "file": fname, "before": text, "after": None,
                                "action": "removed"})
    return sorted(changes, key=lambda c: c["file"])


def apply(target, changes, leftovers=()):
    """Make ``changes`` (from plan()) live; the steps are in the module docstring. Returns (test_output, reloaded).

    On a failed test every file is back as it was and NginxError carries nginx's own text."""
    if leftovers:
        target.remove(leftovers)  # a crashed earlier run's staging files: ours by name, never live
    if not changes:
        return "", False
    pairs = [(c["file"], c["before"] is not None, c["after"] is not None) for c in changes]
    staged = []
    try:
        for change in changes:
            if change["after"] is not None:
                target.write(stage_name(change["file"]), change["after"])
                staged.append(stage_name(change["file"]))
    except Exception:
        target.remove(staged)
        raise
    try:
        target.swap(pairs)
    except Exception:
        target.restore(pairs)
        target.remove(staged)
        raise
    rc, stdout, stderr = target.command(target.test_command)
    test_output = (stderr or "").strip()
    missing = []
    if rc == 0:
        loaded = included_files(stdout)
        missing = [c["file"] for c in changes if c["after"] is not None and target.path(c["file"]) not in loaded]
    if rc != 0 or missing:
        target.restore(pairs)
        target.remove([backup_name(f) for f, _b, _a in pairs])
        if rc != 0:
            text = (stderr or stdout).strip()
            raise NginxError("nginx rejected the new configuration; the previous files are restored and "
                             "nginx keeps serving its current configuration. nginx -t said:\n%s" % text,
                             nginx_output=text, rc=rc)
        raise NginxError("%s is not included by nginx's configuration (nginx -T does not show %s): nothing "
                         "changed; include %s/*%s in the http block or set conf_dir"
                         % (target.conf_dir, ", ".join(missing), target.conf_dir, SUFFIX), files=missing)
    target.remove([backup_name(f) for f, b, _a in pairs if b])
    rc, stdout, stderr = target.command(target.reload_command)
    if rc != 0:
        raise NginxError("the new configuration passed nginx -t and is in place, but reloading nginx failed "
                         "(%s exited %d): %s" % (" ".join(target.reload_command), rc, (stderr or stdout).strip()),
                         rc=rc)
    return test_output, True


class SiteSet:
    """A set of parsed sites on one target. ``read()`` lists the directory once, ``plan()`` finds
    the changes (refusing a file without the marker), ``apply()`` makes them live as one
    transaction (one ``nginx -T``, at most one reload; never in check mode), ``result()`` is the
    nginx_site result: ``changed``, ``reloaded``, ``sites`` (each with its action), ``diff`` in
    diff mode and ``nginx_output`` once nginx was tested."""

    def __init__(self, target, sites, prune=False, check_mode=False, diff=False, warn=None):
        self.target = target
        self.sites = sites
        self.prune = prune
        self.check_mode = check_mode
        self.diff = diff
        self.warn = warn
        self.current, self.leftovers = {}, []
        self.changes = []
        self.output = None
        self.reloaded = False

    def read(self):
        """{file name: text} of the directory's site files (and the leftovers of a crashed run)."""
        self.current, self.leftovers = self.target.read()
        return self.current

    def plan(self):
        """The changes from what read() found to the sites; see plan()."""
        self.changes = plan(self.current, self.sites, prune=self.prune)
        return self.changes

    def apply(self):
        """Make the planned changes live (and clear the leftovers); nginx's warnings go to ``warn``."""
        if self.check_mode:
            return
        self.output, self.reloaded = apply(self.target, self.changes, self.leftovers)
        for line in self.output.splitlines():
            if "[warn]" in line and self.warn is not None:
                self.warn(line)

    def result(self):
        result = dict(changed=bool(self.changes), reloaded=self.reloaded, sites=self._report())
        if self.diff:
            result["diff"] = [entry(self.target.path(c["file"]), c["before"] or "", c["after"] or "")
                              for c in self.changes]
        if self.output is not None and self.changes:
            result["nginx_output"] = self.output
        return result

    def _report(self):
        by_file = {c["file"]: c["action"] for c in self.changes}
        report = []
        for site in self.sites:
            fname = file_name(site["name"])
            report.append(dict(name=site["name"], file=self.target.path(fname), action=by_file.pop(fname, "unchanged")))
        for fname, action in sorted(by_file.items()):
            report.append(dict(name=site_of(fname), file=self.target.path(fname), action=action))
        return report
