"""Keras 3 on every backend: the zoo, cross-backend verdicts, a light import, the fixture.

Keras picks its backend when it is imported, so each backend runs in its own process:
tests/keras_backends/zoo_cases.py (the zoo against plain autodiff) under KERAS_BACKEND=
tensorflow, jax and torch, each once per module, writing one verdict record per case.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pytest_padaudit

BACKENDS = ("tensorflow", "jax", "torch")
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
TESTS = Path(__file__).resolve().parents[1]
ZOO = TESTS / "keras_backends" / "zoo_cases.py"
#: the padaudit this process imported: the subprocesses must import the same one.
SRC = Path(pytest_padaudit.__file__).resolve().parents[1]


def installed(backend: str) -> bool:
    """Say whether Keras 3 and ``backend``'s package can be imported (without importing)."""
    try:
        keras = distribution("keras")
    except PackageNotFoundError:
        return False
    return int(keras.version.split(".")[0]) >= 3 and find_spec(backend) is not None


def need(backend: str) -> None:
    if not installed(backend):
        pytest.skip(f"Keras 3 on {backend} needs keras>=3 and {backend} installed")


def backend_env(backend: str, home: Path, **extra: str) -> dict[str, str]:
    """Return this process's environment for a child on ``backend`` that imports SRC."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "GITHUB_STEP_SUMMARY")
    }
    path = [str(SRC), env.get("PYTHONPATH", "")]
    env.update(
        KERAS_BACKEND=backend,
        KERAS_HOME=str(home),
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=os.pathsep.join(p for p in path if p),
        **extra,
    )
    return env


@dataclass
class ZooRun:
    """One backend's run of zoo_cases.py: pytest's outcome and the verdict records."""

    backend: str
    result: pytest.RunResult
    records: dict[str, dict[str, Any]]
    seconds: float

    def failures(self) -> str:
        """Return what the inner pytest printed about its failures (the message to show)."""
        out = self.result.stdout.str()
        start = out.find("= FAILURES =")
        text = out[out.rfind("\n", 0, start) + 1 :] if start >= 0 else out[-12000:]
        return f"{text}\n{self.result.stderr.str()[-4000:]}"


class ZooRuns:
    """Run zoo_cases.py (or ``cases``) once per backend (on first request); keep the result."""

    def __init__(self, tmp: Path, cases: Path = ZOO) -> None:
        self.tmp = tmp
        self.cases = cases
        self.done: dict[str, ZooRun] = {}

    def __call__(self, backend: str) -> ZooRun:
        if backend not in self.done:
            self.done[backend] = self._run(backend)
        return self.done[backend]

    def _run(self, backend: str) -> ZooRun:
        verdicts = self.tmp / f"{backend}.jsonl"
        verdicts.unlink(missing_ok=True)
        env = backend_env(backend, self.tmp / "keras_home", PADAUDIT_VERDICTS=str(verdicts))
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-rA",
            "--tb=short",
            str(self.cases),
        ]
        start = time.perf_counter()
        done = subprocess.run(
            command, cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=900
        )
        seconds = time.perf_counter() - start
        result = pytest.RunResult(
            done.returncode, done.stdout.splitlines(), done.stderr.splitlines(), seconds
        )
        records = {}
        if verdicts.exists():
            for line in verdicts.read_text(encoding="utf-8").splitlines():
                entry = json.loads(line)
                records[entry["case"]] = entry
        return ZooRun(backend, result, records, seconds)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> ZooRuns:
    return ZooRuns(tmp_path_factory.mktemp("keras_backends"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_zoo_verdicts_match_plain_autodiff_on_backend(zoo: ZooRuns, backend: str) -> None:
    need(backend)
    run = zoo(backend)
    outcomes = run.result.parseoutcomes()
    counts = {k: outcomes.get(k, 0) for k in ("passed", "failed", "errors")}
    assert counts == {"passed": len(CASES), "failed": 0, "errors": 0}, run.failures()
    assert run.result.ret == 0, run.failures()
    # one outcome line per case (CI=true prints whole messages below them: read only these)
    lines = [line for line in run.result.outlines if line.startswith("PASSED ")]
    assert len(lines) == len(CASES) and all(f"[{c}]" in "".join(lines) for c in CASES), lines
    assert list(run.records) == list(CASES), sorted(run.records)
    assert {r["backend"] for r in run.records.values()} == {backend}


def test_verdicts_are_identical_across_backends(zoo: ZooRuns) -> None:
    backends = [b for b in BACKENDS if installed(b)]
    if len(backends) < 2:
        pytest.skip(f"needs two Keras backends installed, found {backends}")
    runs = {b: zoo(b) for b in backends}
    missing = {
        b: {c: run.records.get(c, {}).get("error", "no record") for c in CASES}
        for b, run in runs.items()
        if any("passed" not in run.records.get(c, {}) for c in CASES)
    }
    assert not missing, json.dumps(missing, indent=1)
    first, *others = backends
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
