"""The printed plain reproduction runs in a fresh interpreter, as printed (issue 22 item 5).

One process builds other models first (so Keras auto-names its table ``embedding_3``),
audits a leaking model and prints the snippet. A second, fresh process builds only that
model (its table is now ``embedding``) and pastes the snippet with no import of its own:
it must show a training pad row where plain-framework truth, computed there without
padaudit, shows one (the snippet's random loss weights make the values differ).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

#: builds ``model``: a leaking model (no padding_idx / no mask_zero), seeded weights.
TORCH_MODEL = """
import torch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Embedding(20, 4), torch.nn.Linear(4, 1))
"""

KERAS_MODEL = """
import keras
keras.utils.set_random_seed(0)
def build():
    ids = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(20, 4)(ids)  # auto-named
    return keras.Model(ids, keras.layers.Dense(1)(x))
if OTHERS:
    for _ in range(3):
        build()  # the process has built other models: the table is embedding_3
    keras.utils.set_random_seed(0)
model = build()
"""

AUDIT = """
from pytest_padaudit import audit
message = audit(model, pad_idx=0, checks=("grad",)).failure_message()
code = message.split("reproduction:\\n")[1].split("\\n")
print("\\n".join(line[4:] for line in code if line.startswith("    ")))
"""

#: plain-framework truth in the fresh process: the pad row's gradient, densified.
TRUTH = {
    "torch": """
model.zero_grad()
out = model(torch.tensor(IDS)); out.sum().backward()
print("TRUTH", float(model[0].weight.grad[0].abs().max()))
""",
    "keras": """
import numpy as np
from keras import ops
layer = [l for l in model.layers if isinstance(l, keras.layers.Embedding)][0]
ids = np.array(IDS)
if keras.config.backend() == "tensorflow":
    import tensorflow as tf
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(ids))
    g = tape.gradient(loss, layer.embeddings)
    g = tf.math.unsorted_segment_sum(g.values, g.indices, g.dense_shape[0])
    value = float(tf.reduce_max(tf.abs(g[0])))
else:  # one-hot arithmetic: the rows the pad id looks up, times d(loss)/d(output)
    onehot = np.eye(20)[ids]  # (batch, seq, vocab)
    w = ops.convert_to_numpy(model.layers[-1].kernel)[:, 0]  # d out / d x
    value = float(np.abs(onehot[..., 0].sum() * w).max())
print("TRUTH", value)
""",
}


def _run(script: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize(
    "framework, backend",
    [("torch", None), ("keras", "tensorflow"), ("keras", "jax"), ("keras", "torch")],
    ids=["torch", "keras-tensorflow", "keras-jax", "keras-torch"],
)
def test_the_snippet_runs_in_a_fresh_interpreter(
    framework: str, backend: str | None, tmp_path: Path
) -> None:
    for needed in {framework, backend or framework}:
        if importlib.util.find_spec(needed) is None:
            pytest.skip(f"{needed} is not installed")
    env = {**os.environ, "KERAS_HOME": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "3"}
    if backend:
        env["KERAS_BACKEND"] = backend
    build = TORCH_MODEL if framework == "torch" else KERAS_MODEL
    snippet = _run(f"OTHERS = True\n{build}\n{AUDIT}", env).strip()
    assert "embedding_" not in snippet  # no auto-generated name
    ids = snippet.split("np.array(" if framework == "keras" else "torch.tensor(")[1]
    ids = ids.split(")")[0]
    fresh = _run(  # a fresh process: the snippet's own imports, nothing else added
        f"OTHERS = False\n{build}\n{snippet}\nIDS = {ids}\n{TRUTH[framework]}", env
    )
    lines = fresh.strip().splitlines()
    printed, truth = lines[-2], float(lines[-1].removeprefix("TRUTH "))
    value = float(re.search(r"\d+\.?\d*(e[-+]?\d+)?", printed)[0])  # tensor(0.8), tf.Tensor(0.8,
    assert truth > 0 and value > 0, fresh  # the pad row trains: the snippet shows the leak
