"""The set-up contract: `.ci/run` is `make test`, and a second run does not reinstall."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readmes_test_command():
    assert "make test" in (ROOT / ".ci/run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


@pytest.mark.skipif(not (ROOT / ".venv/.installed").exists() or not shutil.which("make"), reason="runs inside make test")
@pytest.mark.parametrize("target", ["test", "demo"])
def test_a_second_run_installs_nothing_again(target):
    plan = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "pip install" not in plan and "-m venv" not in plan
