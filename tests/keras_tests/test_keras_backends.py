"""Keras 3 on every backend: the zoo, cross-backend verdicts, a light import, the fixture.

Keras picks its backend when it is imported, so each backend runs in its own process:
tests/keras_backends/zoo_cases.py (the zoo against plain autodiff) under KERAS_BACKEND=
tensorflow, jax and torch, started together (keras_backend_runs.py), writing one verdict
record per case.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from support.keras_backend_runs import BACKENDS, TESTS, ZooRuns, backend_env, need

#: the cases of zoo_cases.py, in its order: each backend must run and pass every one.
CASES = (
    "seed_masked_dense",
    "seed_plain_dense",
    "seed_plain_dense_loss_masked",
    "lstm",
    "global_average_pooling",
    "flatten",
    "attention",
    "attention_no_mask_zero",
    "adamw",
    "adam",
    "adafactor",
    "adamw_clipnorm",
    "tied_logits",
)
ZOO = TESTS / "keras_backends" / "zoo_cases.py"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> ZooRuns:
    return ZooRuns(tmp_path_factory.mktemp("keras_backends"), ZOO)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zoo_verdicts_match_plain_autodiff_on_backend(zoo: ZooRuns, backend: str) -> None:
    need(backend)
    run = zoo(backend)
    run.assert_passed(CASES)
    # one outcome line per case (CI=true prints whole messages below them: read only these)
    lines = [line for line in run.result.outlines if line.startswith("PASSED ")]
    assert len(lines) == len(CASES) and all(f"[{c}]" in "".join(lines) for c in CASES), lines


def test_verdicts_are_identical_across_backends(zoo: ZooRuns) -> None:
    runs = zoo.complete(CASES)
    first, *others = runs
    for case in CASES:
        want = runs[first].records[case]
        for other in others:
            got = runs[other].records[case]
            where = (case, f"{first}: {want}", f"{other}: {got}")
            assert got["passed"] == want["passed"], where
            assert got["findings"] == want["findings"], where
            for key in ("grad", "update", "truth_grad", "truth_update"):
                assert np.isclose(got[key], want[key], rtol=1e-4, atol=1e-6), (key, *where)


def test_importing_padaudit_on_the_jax_backend_loads_no_framework(tmp_path: Path) -> None:
    script = (
        "import sys, pytest_padaudit, pytest_padaudit.plugin\n"
        "print(sorted(m for m in ('jax', 'keras', 'tensorflow') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=backend_env("jax", tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


PLUGIN_TESTS = """
import keras
import pytest
from keras import layers, ops


class MaskedDense(layers.Dense):
    def call(self, inputs, mask=None):
        if mask is not None:
            inputs = inputs * ops.cast(ops.expand_dims(mask, -1), inputs.dtype)
        return super().call(inputs)


def build(dense):
    ids = keras.Input((None,), dtype="int32")
    x = layers.Embedding(50, 8, mask_zero=True, name="tok")(ids)
    return keras.Model(ids, dense(1, use_bias=False, name="dense")(x))


@pytest.mark.padaudit
def test_leaky(padaudit):
    assert keras.config.backend() == BACKEND
    padaudit(build(layers.Dense))


@pytest.mark.padaudit
def test_masked(padaudit):
    assert keras.config.backend() == BACKEND
    padaudit(build(MaskedDense))
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_padaudit_fixture_fails_a_leaky_keras_model_on_backend(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    need(backend)
    for name, value in backend_env(backend, pytester.path / "keras_home").items():
        monkeypatch.setenv(name, value)
    for name in ("PYTEST_ADDOPTS", "GITHUB_STEP_SUMMARY"):
        monkeypatch.delenv(name, raising=False)
    pytester.makepyfile(test_models=f"BACKEND = {backend!r}\n{PLUGIN_TESTS}")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA")
    out = result.stdout.str()
    result.assert_outcomes(passed=1, failed=1)
    outcome = [line for line in result.outlines if line.startswith(("PASSED", "FAILED"))]
    assert sorted(line.split(" - ")[0] for line in outcome) == [
        "FAILED test_models.py::test_leaky",
        "PASSED test_models.py::test_masked",
    ], outcome
    above = out.split("short test summary info")[0]
    assert "[grad] tok (pad id 0)" in above, out
