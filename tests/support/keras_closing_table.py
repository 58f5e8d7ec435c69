"""Print issue 13's closing table for the Keras side: every audit zero-config (no forward=).

Run from the repository root: ``python tests/support/keras_closing_table.py``. Rows: the keras-hub
zoo (pad_idx= where the model has no preprocessor), keras-hub tasks with preprocessors (no
options), and the Keras zoo rebuilt with tf_keras. Ground truth is plain TensorFlow.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS), str(TESTS / "keras_tests")]  # support, and test_tf_keras_zoo

import numpy as np
import tensorflow as tf
from test_tf_keras_zoo import invariance_truth

from pytest_padaudit import audit

from support import zoo_keras_hub as zoo
from support.keras_backend_truth import batch_of
from support.keras_hub_tasks import TASKS
from support.keras_truth import pad_row_grad
from support.tf_keras_zoo import ZOO, table
from support.zoo_common import Entry, Row, format_table, run_row, verdict


def keras_hub_rows(tmp: Path) -> list[Row]:
    rows = []
    for entry in zoo.entries():
        if entry.needs_forward:  # the glue is not needed: audit it as it is
            entry = dataclasses.replace(entry, options=dict(entry.zero_config))
        rows.append(run_row(entry, tmp, zoo.truth, zoo.name))
    for name, (build, pad, segments) in sorted(TASKS.items()):
        source = "preprocessor.tokenizer.pad_token_id"
        entry = dataclasses.replace(
            zoo._entry(f"kh-{name}-preprocessor", build, pad, source, segments),
            options={"allow": ("tied",)},
            zero_config={},
        )
        rows.append(run_row(entry, tmp, zoo.truth, zoo.name))
    return rows


def noise_truth(model, ids) -> float:
    """Fixed width: relative change of every gradient when pad vectors become noise."""
    chain = model.layers[2:]  # Input, tok, then one layer after another

    def grads(noise: bool) -> list[np.ndarray]:
        with tf.GradientTape() as tape:
            x = table(model)(tf.constant(ids))
            if noise:
                rand = np.random.default_rng(7).normal(size=x.shape).astype(np.float32)
                x = tf.where((ids == 0)[..., None], rand, x)
            for layer in chain:
                x = layer(x)
            total = tf.reduce_sum(x * (np.random.default_rng(3).random(x.shape) + 0.5))
        return [
            np.asarray(tf.convert_to_tensor(g))[1:] if v.shape[0] == 50 else np.asarray(g)
            for v, g in zip(
                model.trainable_variables,
                tape.gradient(total, model.trainable_variables),
                strict=True,
            )
        ]

    a, b = grads(False), grads(True)
    scale = max(float(np.abs(g).max()) for g in a)
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True)) / scale


def tf_keras_rows() -> list[Row]:
    rows = []
    for name, (build, options) in sorted(ZOO.items()):
        model = build()
        start = time.perf_counter()
        report = audit(model, pad_idx=0, **options)
        ms = (time.perf_counter() - start) * 1e3
        ids, mask = batch_of(report)
        masked = mask if options.get("loss") == "masked" else None
        grad = pad_row_grad(
            lambda m=model, x=ids: m(x, training=True), table(model).embeddings, 0, masked
        )
        fixed = model.inputs and model.inputs[0].shape[1] is not None
        inv = noise_truth(model, ids) if fixed else invariance_truth(model, ids, mask)
        truth = {
            "tables": ["tok"],
            "grad": ["tok"] if grad > 0 else [],
            "tied": [],
            "invariance": "leak" if inv > 1e-4 else "clean",
        }
        got = verdict(report, lambda p: p)
        opts = ", ".join(f"{k}={v!r}" for k, v in options.items())
        entry = Entry(
            f"tfk-{name}",
            "tf-keras",
            build,
            None,
            None,
            0,
            f"mask_zero (pad_idx=0){' ' + opts if opts else ''}",
        )
        numbers = {"truth": {"grad": grad, "invariance": inv}, "audit": report.invariance.value}
        row = Row(entry, type(model).__name__, truth, got, numbers, ms)
        rows.append(row)
    return rows


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        rows = keras_hub_rows(Path(tmp)) + tf_keras_rows()
    print(format_table(rows))
    print()
    for r in rows:
        findings = r.numbers.get("audit")
        print(f"{r.entry.id}: truth {r.numbers.get('truth')}; audit {findings}")
    disagree = sum(r.truth[c] != r.verdict[c] for r in rows for c in r.truth)
    print(f"\n{len(rows)} models, {disagree} disagreements")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
