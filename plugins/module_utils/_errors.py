# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one exception type of the collection.

Every module_util raises OneboxError (or a subclass); OneboxModule.run() turns it into
fail_json in one place, so no module needs its own try/except ladder.
"""
from __future__ import annotations


class OneboxError(Exception):
    """A failure with a message fit for the user, plus optional structured details."""

    def __init__(self, msg, **details):
        super().__init__(msg)
        self.msg = msg
        self.details = details


class ValidationError(OneboxError):
    """Bad input: raised before anything is changed. Names the field and the value."""

    def __init__(self, field, value, reason):
        super().__init__("%s: invalid value %r: %s" % (field, value, reason), field=field, value=value)
        self.field = field
        self.value = value
        self.reason = reason


def named_failure(errors):
    """One error for several containers' failures, ``errors`` being (name, OneboxError) in the
    order to report them: the first, its message prefixed with its container's name and followed
    by the others', with ``failed_instances`` naming them all."""
    name, first = errors[0]
    first.msg = "%s: %s" % (name, first.msg)
    if len(errors) > 1:
        first.msg += " (and %s)" % "; ".join("%s: %s" % (n, e.msg) for n, e in errors[1:])
    first.details.setdefault("failed_instances", [n for n, _e in errors])
    return first
