"""The test suite's own guarantees: a hang fails in time, with the test's name."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

HANGING = '''
import time
import pytest

def test_hangs_under_the_default_limit():
    time.sleep(60)

@pytest.mark.timeout(1)
def test_hangs_under_its_own_limit():
    time.sleep(60)
'''


def test_a_hanging_test_fails_with_its_name_under_the_projects_timeout(tmp_path):
    (tmp_path / "test_hanging.py").write_text(HANGING)
    # the project's configuration, with the default limit lowered from minutes to a second
    run = subprocess.run([sys.executable, "-m", "pytest", "test_hanging.py", "-c", str(ROOT / "pyproject.toml"),
                          "--rootdir", str(tmp_path), "-p", "no:cacheprovider", "-o", "timeout=1", "-rN"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 1, run.stdout[-2000:]
    # one failure section per test, headed by its name (-rN: no short summary, whose width varies)
    for name in ("test_hangs_under_the_default_limit", "test_hangs_under_its_own_limit"):
        assert f"_ {name} _" in run.stdout, run.stdout[-2000:]
    assert run.stdout.count("E       Failed: Timeout (>1.0s) from pytest-timeout") == 2, run.stdout[-2000:]
