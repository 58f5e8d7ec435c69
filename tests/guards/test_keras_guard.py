"""KerasPadGuard on every installed Keras 3 backend (tensorflow, jax, torch).

Keras picks its backend at import, so tests/keras_backends/guard_cases.py runs once per
backend in a subprocess, all started together (keras_backend_runs.py); each case checks
the pad row with plain Keras and records a verdict.
"""

from __future__ import annotations

import pytest

from support.keras_backend_runs import BACKENDS, TESTS, ZooRuns, need

CASES = (
    "adamw",
    "adam",
    "adamw_excluded",
    "warn",
    "lookup",
    "first_batch_mismatch",
    "first_batch_clean",
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> ZooRuns:
    return ZooRuns(
        tmp_path_factory.mktemp("keras_guards"), TESTS / "keras_backends" / "guard_cases.py"
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_pad_guard_on_backend(runs: ZooRuns, backend: str) -> None:
    need(backend)
    runs(backend).assert_passed(CASES)
