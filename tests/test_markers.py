"""The e2e marker is checked, not trusted: conftest fails a test that starts the command line or fits a
Lightning Trainer without it, so `pytest -m "not e2e"` stays fast. Shown on a throwaway suite that uses
this conftest, run by pytest in its own process (conftest wraps Popen and Trainer in the process it runs in)."""

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parent

SUITE = '''
import subprocess
import sys

import pytest


def test_unmarked_command_line():
    subprocess.run([sys.executable, "-m", "rmlab.train", "--help"], capture_output=True)


def test_unmarked_trainer():
    import lightning.pytorch as pl

    pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False).fit(None)


@pytest.mark.e2e
def test_marked_command_line():
    assert subprocess.run([sys.executable, "-m", "rmlab.train", "--help"], capture_output=True).returncode == 0


def test_unmarked_other_process():
    assert subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True).returncode == 0
'''


@pytest.mark.e2e  # its throwaway suite starts the command line once
def test_a_test_that_starts_the_command_line_or_a_trainer_without_the_e2e_marker_fails(pytester):
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    pytester.makepyprojecttoml((TESTS.parent / "pyproject.toml").read_text())  # the markers, --strict-markers
    pytester.makepyfile(test_throwaway=SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", "test_throwaway.py")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines([
        "*test_unmarked_command_line runs the command line (* -m rmlab.train ...) but is not marked e2e: "
        "add @pytest.mark.e2e",
        "*test_unmarked_trainer runs a Lightning Trainer (fit) but is not marked e2e: add @pytest.mark.e2e",
    ], consecutive=False)
