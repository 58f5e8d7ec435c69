"""Warm default audit next to a jitted jax train step: Keras on jax, and Flax NNX.

Each figure runs in its own interpreter (Keras picks its backend at import, and the main
benchmark process already holds torch and TensorFlow), through the functions of
``keras_backends_cost.py`` and ``flax_cost.py``. Both time the small encoder of those scripts
on the audit's own batch shape (4 x 16): a warm default ``audit(model)`` against
``jax.jit`` of ``value_and_grad`` plus the optimizer update, interleaved in one process.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: (name, script module, extra environment, modules it needs)
CASES: tuple[tuple[str, str, dict[str, str], tuple[str, ...]], ...] = (
    ("Keras on jax", "keras_backends_cost", {"KERAS_BACKEND": "jax"}, ("keras", "jax")),
    ("Flax", "flax_cost", {}, ("flax", "jax", "optax")),
)


def measure_in_child(module: str, env: dict[str, str], repeats: int) -> tuple[float, float]:
    """Run ``module.audit_vs_jitted`` in a fresh interpreter; return its two medians (s)."""
    code = (
        f"import sys; sys.path.insert(0, {str(HERE)!r})\n"
        f"from {module} import audit_vs_jitted\n"
        f"print(*audit_vs_jitted({repeats}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env},
        capture_output=True,
        text=True,
    )
    if done.returncode:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(tail[0])
    audit_s, step_s = (float(x) for x in done.stdout.split()[-2:])
    return audit_s, step_s


def jitted_ratios(repeats: int) -> list[dict[str, object]]:
    """Time each case's warm default audit against its jitted train step."""
    rows: list[dict[str, object]] = []
    for name, module, env, needs in CASES:
        figure = f"{name}: warm default audit / jitted train step"
        if any(importlib.util.find_spec(m) is None for m in needs):
            rows.append({"figure": f"{figure}: {', '.join(needs)} not all installed", "ok": None})
            continue
        try:
            audit_s, step_s = measure_in_child(module, env, repeats)
        except RuntimeError as error:
            rows.append({"figure": f"{figure}: failed: {error}", "value": None, "ok": False})
            continue
        rows.append(
            {
                "figure": figure,
                "value": audit_s / step_s,
                "unit": "x",
                "target": "<= 2.5x",
                "ok": audit_s / step_s <= 2.5,
                "detail": f"{audit_s * 1e3:.1f} / {step_s * 1e3:.3f} ms, batch 4x16",
            }
        )
    return rows
