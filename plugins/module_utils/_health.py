# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether a service answers: one probe (HTTP or TCP) of a container's address, and the wait for it.

A converge that changed a service waits here until the service answers (its ``health``), and a
rolling change puts a pool member back into the proxy only once it does. The probe goes from the
module's host to the container's address on the bridge, the way the proxy and the host's
forwards reach it: a service listening on 127.0.0.1 only would pass a probe made inside its
container and still answer nobody.

A check is a dict: ``http`` (a path) with ``port``, ``expect`` (the status) and ``host`` (the Host
header: the name the proxy passes, so an app that checks its host names, as Django does, answers
as it would through the proxy), or ``tcp`` (a port: a connect is enough); and ``timeout`` (seconds
the wait may take).
"""
from __future__ import annotations

import http.client
import socket
import time

from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError

# Between two probes: a service that starts in a second is seen within a fifth of one more.
POLL_SECONDS = 0.2
# One probe's connect and answer: on the bridge a connect takes well under a millisecond, so a
# probe that needs seconds is a service that does not answer; the wait goes on until ``timeout``.
PROBE_SECONDS = 3.0
USER_AGENT = "homelab.onebox health check"


class HealthError(OneboxError):
    """The service did not answer its check within its time; ``last`` says what the last probe saw."""


def describe(address, check):
    """The check as a message shows it: ``GET http://10.0.0.5:8000/health/`` or ``tcp 10.0.0.5:5432``."""
    if check.get("tcp"):
        return "tcp %s:%d" % (address, check["tcp"])
    return "GET http://%s:%d%s" % (address, check["port"], check["http"])


def probe(address, check, seconds=PROBE_SECONDS):
    """One try: None when the service answers as ``check`` expects, else what was wrong."""
    if check.get("tcp"):
        try:
            socket.create_connection((address, check["tcp"]), timeout=seconds).close()
        except OSError as exc:
            return "%s: %s" % (describe(address, check), exc.strerror or exc)
        return None
    conn = http.client.HTTPConnection(address, check["port"], timeout=seconds)
    try:
        conn.request("GET", check["http"], headers={"Host": check.get("host") or address, "User-Agent": USER_AGENT})
        response = conn.getresponse()
        response.read()
        status = response.status
    except (OSError, http.client.HTTPException) as exc:
        return "%s: %s" % (describe(address, check), getattr(exc, "strerror", None) or exc or exc.__class__.__name__)
    finally:
        conn.close()
    if status != check.get("expect", 200):
        return "%s answered %d, expected %d" % (describe(address, check), status, check.get("expect", 200))
    return None


def wait_healthy(address, check, clock=time.monotonic, sleep=time.sleep, probe_once=probe):
    """Probe until the service answers; return the seconds it took. HealthError (with the last
    probe's words) once ``check["timeout"]`` seconds have gone by."""
    start = clock()
    deadline = start + check["timeout"]
    while True:
        last = probe_once(address, check, min(PROBE_SECONDS, max(0.1, deadline - clock())))
        if last is None:
            return clock() - start
        if clock() >= deadline:
            raise HealthError("not healthy after %d s: %s" % (check["timeout"], last), last=last)
        sleep(POLL_SECONDS)
