"""Keras on JAX and torch: the failure message names the backend, and its snippet runs there.

Each backend runs in its own process (Keras picks its backend at import time).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import keras
    from keras import layers, ops
    from pytest_padaudit import audit

    ids = keras.Input((None,), dtype="int32", name="ids")
    x = layers.Embedding(50, 8, mask_zero=True, name="tok")(ids)
    model = keras.Model(ids, layers.Dense(1, use_bias=False, name="dense")(x))
    before = [np.array(ops.convert_to_numpy(v)) for v in model.variables]
    message = audit(model, checks=("grad",)).failure_message()
    after = [np.array(ops.convert_to_numpy(v)) for v in model.variables]
    assert all((a == b).all() for a, b in zip(before, after)), "the audit changed the model"
    if keras.config.backend() == "torch":
        assert all(v.value.grad is None for v in model.variables), "the audit left .grad"
    print(message)
    code = message.split("reproduction:\\n")[1].splitlines()[:4]  # it imports what it uses
    print("SNIPPET", "\\n".join(line.strip() for line in code))
    for line in code:
        exec(line.strip())
    """
)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_failure_message_names_the_backend_and_its_snippet_shows_the_leak(backend, tmp_path):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    env = {**os.environ, "KERAS_BACKEND": backend, "KERAS_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert f"padaudit found 1 pad leak in Functional (keras on {backend})" in out
    assert "[grad] tok (pad id 0): pad-row gradient max|g| = " in out
    assert "Dense 'dense' receives the mask without applying it" in out
    assert f"plain keras on {backend} reproduction:" in out
    printed = out.strip().splitlines()[-1]  # the snippet's last line prints max|g| of the row
    value = float(printed.removeprefix("tensor(").removesuffix(")"))
    assert value > 0, out
