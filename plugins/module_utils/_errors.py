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
