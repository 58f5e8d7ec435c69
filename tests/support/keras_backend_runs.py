"""Run an inner test file once per Keras backend, in subprocesses started together.

Keras picks its backend when it is imported, so each backend needs its own process. The
processes for every installed backend start on the first request and run side by side;
each writes one JSON verdict record per case to the file PADAUDIT_VERDICTS names.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

import pytest_padaudit

BACKENDS = ("tensorflow", "jax", "torch")
TESTS = Path(__file__).resolve().parents[1]
#: the padaudit this process imported: the subprocesses must import the same one.
SRC = Path(pytest_padaudit.__file__).resolve().parents[1]
TIMEOUT = 900


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
    """One backend's run of the inner file: pytest's outcome and the verdict records."""

    backend: str
    result: pytest.RunResult
    records: dict[str, dict[str, Any]]
    seconds: float

    def assert_passed(self, cases: Sequence[str]) -> None:
        """Assert the inner pytest ran and passed one test per case, each recorded."""
        outcomes = self.result.parseoutcomes()
        counts = {k: outcomes.get(k, 0) for k in ("passed", "failed", "errors")}
        assert counts == {"passed": len(cases), "failed": 0, "errors": 0}, self.failures()
        assert self.result.ret == 0, self.failures()
        assert list(self.records) == list(cases), sorted(self.records)
        assert {r["backend"] for r in self.records.values()} == {self.backend}

    def failures(self) -> str:
        """Return what the inner pytest printed about its failures (the message to show)."""
        out = self.result.stdout.str()
        start = out.find("= FAILURES =")
        text = out[out.rfind("\n", 0, start) + 1 :] if start >= 0 else out[-12000:]
        return f"{text}\n{self.result.stderr.str()[-4000:]}"


def record(entry: dict[str, Any]) -> None:
    """Append ``entry`` as one JSON line to the file PADAUDIT_VERDICTS names, if any.

    Called by the inner files; :class:`ZooRuns` reads the lines back.
    """
    path = os.environ.get("PADAUDIT_VERDICTS")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry, sort_keys=True) + "\n")


class ZooRuns:
    """Run ``cases`` once per installed backend, all started on the first request."""

    def __init__(self, tmp: Path, cases: Path) -> None:
        self.tmp = tmp
        self.cases = cases
        self.started: dict[str, tuple[subprocess.Popen[str], Any, Any, float]] = {}
        self.done: dict[str, ZooRun] = {}

    def __call__(self, backend: str) -> ZooRun:
        if not self.started:
            for name in BACKENDS:
                if installed(name):
                    self.started[name] = self._start(name)
        if backend not in self.done:
            self.done[backend] = self._finish(backend)
        return self.done[backend]

    def complete(self, cases: Sequence[str]) -> dict[str, ZooRun]:
        """Return each installed backend's run (skip under two), every case recorded."""
        backends = [b for b in BACKENDS if installed(b)]
        if len(backends) < 2:
            pytest.skip(f"needs two Keras backends installed, found {backends}")
        runs = {b: self(b) for b in backends}
        missing = {
            b: {c: run.records.get(c, {}).get("error", "no record") for c in cases}
            for b, run in runs.items()
            if any("passed" not in run.records.get(c, {}) for c in cases)
        }
        assert not missing, json.dumps(missing, indent=1)
        return runs

    def _verdicts(self, backend: str) -> Path:
        return self.tmp / f"{backend}.jsonl"

    def _start(self, backend: str) -> tuple[subprocess.Popen[str], Any, Any, float]:
        self._verdicts(backend).unlink(missing_ok=True)
        env = backend_env(
            backend, self.tmp / "keras_home", PADAUDIT_VERDICTS=str(self._verdicts(backend))
        )
        # one process: tests/conftest.py would run the inner file on every core too
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist"]
        command.append("-rA")
        # the files outlive this call: _finish reads and closes them
        out = tempfile.TemporaryFile("w+")  # noqa: SIM115
        err = tempfile.TemporaryFile("w+")  # noqa: SIM115
        process = subprocess.Popen(
            [*command, "--tb=short", str(self.cases)],
            cwd=TESTS.parent,
            env=env,
            stdout=out,
            stderr=err,
            text=True,
        )
        return process, out, err, time.perf_counter()

    def _finish(self, backend: str) -> ZooRun:
        process, out, err, start = self.started[backend]
        try:
            code = process.wait(timeout=max(1.0, TIMEOUT - (time.perf_counter() - start)))
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        result = pytest.RunResult(code, out.read().splitlines(), err.read().splitlines(), seconds)
        out.close()
        err.close()
        records = {}
        verdicts = self._verdicts(backend)
        if verdicts.exists():
            for line in verdicts.read_text(encoding="utf-8").splitlines():
                entry = json.loads(line)
                records[entry["case"]] = entry
        return ZooRun(backend, result, records, seconds)
