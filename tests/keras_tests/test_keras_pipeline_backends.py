"""Keras ``batch=`` and ``step=`` on every installed Keras 3 backend, against ``model.fit``.

Keras picks its backend at import, so tests/keras_backends/pipeline_cases.py runs once per
backend in a subprocess, all started together (keras_backend_runs.py).
"""

from __future__ import annotations

import pytest

from support.keras_backend_runs import BACKENDS, TESTS, ZooRuns, need

CASES = ("masked", "unmasked")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> ZooRuns:
    return ZooRuns(
        tmp_path_factory.mktemp("keras_pipeline"), TESTS / "keras_backends" / "pipeline_cases.py"
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_batch_and_step_on_backend(runs: ZooRuns, backend: str) -> None:
    need(backend)
    runs(backend).assert_passed(CASES)
