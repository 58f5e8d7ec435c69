"""The README's demo: ``pytest examples`` passes its clean models and catches the leaky one."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_the_demo_runs_as_documented(pytester):
    result = pytester.runpytest_subprocess(str(EXAMPLES / "test_torch_models.py"), "-rxX")
    result.assert_outcomes(passed=4, xfailed=1)
    result.stdout.fnmatch_lines(["*XFAIL*test_leaky_classifier_is_caught*"])
