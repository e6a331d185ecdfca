"""A bare ``pytest`` (what a contributor types) never collects the tiers that need a process
of their own: the multinode tier's clusters run ``ray stop``, which kills the session's."""

import subprocess
import sys

from tests.helpers import ROOT


def collected(*args: str) -> list[str]:
    run = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    return [line for line in run.stdout.splitlines() if "::" in line]


def test_a_bare_pytest_leaves_the_multinode_and_demo_tiers_out():
    bare = collected("tests/test_multinode.py", "tests/test_demo_run.py", "tests/test_tiers.py")
    assert bare == ["tests/test_tiers.py::test_a_bare_pytest_leaves_the_multinode_and_demo_tiers_out"]
