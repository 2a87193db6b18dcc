"""_lxd's pylxd check: a pylxd too old (Debian 12's 2.2.10) or missing is refused before any call, saying
which is installed, the minimum and how to install it; the requirement files say the same minimum."""
import os
import re

import pytest

from ansible_collections.homelab.onebox.plugins.module_utils import _lxd
from ansible_collections.homelab.onebox.plugins.module_utils._lxd import (
    PYLXD_MINIMUM, LxdClient, LxdError, pylxd_problem, version_tuple)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
MINIMUM = ".".join(str(part) for part in PYLXD_MINIMUM)


def test_the_minimum_is_the_first_pylxd_with_project_and_session():
    # Client(project=...) is 2.3.0's, Client(session=...) and get_session_for_url 2.3.2's.
    assert MINIMUM == "2.3.2"


@pytest.mark.parametrize("text, parsed", [
    ("2.2.10", (2, 2, 10)), ("2.4.2", (2, 4, 2)), ("2.2.10-1", (2, 2, 10)), ("2.4.2.dev3", (2, 4, 2)),
    (" 3.0 ", (3, 0)), ("unknown", None), ("", None), (None, None),
])
def test_version_tuple(text, parsed):
    assert version_tuple(text) == parsed


def test_debian_12s_pylxd_is_refused_naming_it_the_minimum_and_the_fix():
    said = pylxd_problem("2.2.10", python="/usr/bin/python3", path="/usr/lib/python3/dist-packages/pylxd")
    assert said.startswith("pylxd 2.2.10 is installed (/usr/lib/python3/dist-packages/pylxd); "
                           "homelab.onebox needs pylxd >= 2.3.2: ")
    assert "pip install 'pylxd>=2.3.2' in the Python that runs the modules (/usr/bin/python3;" in said
    assert "ansible_python_interpreter" in said


@pytest.mark.parametrize("version", ["0.19.0", "2.2.11", "2.3.0", "2.3.1"])
def test_every_release_below_the_minimum_is_refused(version):
    assert "pylxd %s is installed" % version in pylxd_problem(version)


@pytest.mark.parametrize("version", ["2.3.2", "2.3.9", "2.4.2", "2.10.0", "3.0", "unknown", None])
def test_the_minimum_and_later_or_an_unreadable_version_pass(version):
    assert pylxd_problem(version) is None


def test_a_pylxd_that_does_not_import_is_named_with_its_error():
    trace = "Traceback (most recent call last):\n  ...\nModuleNotFoundError: No module named 'pylxd'\n"
    said = pylxd_problem(None, import_error=trace, python="/usr/bin/python3")
    assert said.startswith("pylxd cannot be imported (ModuleNotFoundError: No module named 'pylxd'); "
                           "homelab.onebox needs pylxd >= 2.3.2: pip install 'pylxd>=2.3.2'")


def test_this_venvs_pylxd_passes():
    assert _lxd.PYLXD_VERSION and pylxd_problem(_lxd.PYLXD_VERSION, _lxd.PYLXD_IMPORT_ERROR) is None


def test_the_client_refuses_an_old_pylxd_before_talking_to_the_daemon(monkeypatch):
    import pylxd

    def never(**kwargs):
        raise AssertionError("pylxd.Client was called: %s" % kwargs)

    monkeypatch.setattr(pylxd, "Client", never)
    monkeypatch.setattr(_lxd, "PYLXD_VERSION", "2.2.10")
    monkeypatch.setattr(_lxd, "PYLXD_PATH", "/usr/lib/python3/dist-packages/pylxd")
    with pytest.raises(LxdError) as err:
        LxdClient(url="https://lxd.example:8443")
    assert err.value.msg.startswith("pylxd 2.2.10 is installed (/usr/lib/python3/dist-packages/pylxd); "
                                    "homelab.onebox needs pylxd >= 2.3.2")


def test_the_client_refuses_a_missing_pylxd(monkeypatch):
    monkeypatch.setattr(_lxd, "PYLXD_IMPORT_ERROR", "ImportError: No module named 'pylxd'\n")
    with pytest.raises(LxdError, match=r"pylxd cannot be imported \(ImportError: No module named 'pylxd'\)"):
        LxdClient(url="https://lxd.example:8443")


@pytest.mark.parametrize("path", ["requirements.txt", os.path.join("tests", "unit", "requirements.txt")])
def test_the_requirement_files_ask_for_the_same_minimum(path):
    # requirements.txt is what users and ansible-builder install; tests/unit/requirements.txt what
    # ansible-test units installs (it copies that file alone, so it cannot include the other).
    with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
        lines = [line.split("#")[0].strip() for line in handle]
    assert [re.sub(r"\s+", "", line) for line in lines if line.startswith("pylxd")] == ["pylxd>=%s" % MINIMUM]
