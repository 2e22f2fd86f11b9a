"""The code's style is checked, not argued: ruff's lint rules and its formatter (configured in
pyproject.toml) hold for the package, the tests, the benchmarks and the examples."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHS = ["goodnet", "tests", "benchmarks", "examples"]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args, *PATHS], cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module", autouse=True)
def _ruff_installed():
    pytest.importorskip("ruff", reason="ruff comes with the test extra: pip install -e '.[test]'")


def test_ruff_lint_rules_hold():
    done = _ruff("check", "--no-cache")
    assert done.returncode == 0, done.stdout + done.stderr


def test_code_is_formatted_as_ruff_formats_it():
    done = _ruff("format", "--check", "--no-cache")
    assert done.returncode == 0, done.stdout + done.stderr
