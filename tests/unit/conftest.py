"""The unit tests import their helpers as ``unit.*`` (unit.fake_lxd, unit.plugins...): tests/ on sys.path.

pytest run from the project's root puts tests/ there itself (tests/conftest.py, outside any package,
is imported with its directory prepended); ansible-test imports conftests through Ansible's
collection loader, which does not, so ``ansible-test units`` needs this."""
import os
import sys

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
