"""The first audit in a fresh process, the framework imported before the clock starts.

Each figure runs in its own interpreter: what a first audit pays once per process (torch's
lazy imports, JAX's compiles) is gone in any process that audited before.
"""

from __future__ import annotations

import os
import subprocess
import sys

TORCH = """
import sys, time
import torch
from torch import nn
from pytest_padaudit import audit

model = nn.Sequential(nn.Embedding(50, 16, padding_idx=0), nn.Linear(16, 4))
start = time.perf_counter()
audit(model, pad_idx=0)
first = time.perf_counter() - start
start = time.perf_counter()
audit(model, pad_idx=0)
print(first, time.perf_counter() - start, "torch._dynamo" in sys.modules)
"""

KERAS = """
import sys, time
import keras
from keras import layers
from pytest_padaudit import audit

ids = keras.Input((None,), dtype="int32")
x = layers.Embedding(1000, 32, mask_zero=True)(ids)
x = layers.MultiHeadAttention(2, 16)(x, x)
x = layers.GlobalAveragePooling1D()(x)
model = keras.Model(ids, layers.Dense(3)(x))
start = time.perf_counter()
audit(model, pad_idx=0, allow=["no_padding_idx"])
first = time.perf_counter() - start
start = time.perf_counter()
audit(model, pad_idx=0, allow=["no_padding_idx"])
print(first, time.perf_counter() - start, "-")
"""

CASES = (
    ("tiny torch model", TORCH, {}, 1.0),
    ("Keras on jax, small attention model", KERAS, {"KERAS_BACKEND": "jax"}, 3.0),
)


def first_audits() -> list[dict[str, object]]:
    """Time each case's first and second audit in a fresh interpreter."""
    rows: list[dict[str, object]] = []
    for name, code, env, target in CASES:
        done = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
        )
        if done.returncode:
            tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
            rows.append({"figure": f"{name}: first audit failed: {tail[0]}", "ok": False})
            continue
        first, second, dynamo = done.stdout.split()[-3:]
        detail = f"then {float(second) * 1e3:.0f} ms"
        if dynamo != "-":
            detail += f"; torch._dynamo imported: {dynamo}"
        rows.append(
            {
                "figure": f"{name}: first audit in a fresh process",
                "value": float(first),
                "unit": "s",
                "target": f"<= {target:g} s",
                "ok": float(first) <= target,
                "detail": detail,
            }
        )
    return rows
