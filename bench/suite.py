"""The project's own test run, timed: ``pytest -q -p no:cacheprovider`` from the repo root.

It takes minutes, so ``bench/run.py`` runs it only with ``--parts suite``; a default run
prints the figure's line with no value.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARGS = ("-q", "-p", "no:cacheprovider")
TARGET_MIN = 6.0
FIGURE = f"the project's pytest ({' '.join(('pytest', *ARGS))}) on {os.cpu_count()} cores"
TARGET = f"<= {TARGET_MIN:g} min on 2 cores"


def pytest_command() -> list[str]:
    """Return the project's test command, with this interpreter's own ``pytest`` script."""
    script = Path(sys.executable).with_name("pytest")
    return [str(script) if script.exists() else shutil.which("pytest") or "pytest", *ARGS]


def suite(command: Sequence[str] | None = None) -> dict[str, object]:
    """Run the test command in a subprocess from the repo root; report its wall time.

    A run that fails misses the target whatever its time: a suite cut short is fast.
    """
    command = list(command) if command is not None else pytest_command()
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else "no output"
    return {
        "figure": FIGURE,
        "value": seconds / 60,
        "unit": "min",
        "target": TARGET,
        "ok": done.returncode == 0 and seconds / 60 <= TARGET_MIN,
        "detail": f"{seconds:.0f} s; {summary}; exit {done.returncode}",
    }


def placeholder() -> dict[str, object]:
    """Return the suite's line for a run that does not measure it."""
    return {
        "figure": FIGURE,
        "value": None,
        "unit": "min",
        "target": TARGET,
        "ok": None,
        "detail": "measured with --parts suite (about 8 min)",
    }
