"""Keras ``batch=`` and ``step=`` on whichever backend KERAS_BACKEND names, against fit.

Not collected by a plain ``pytest`` run (no ``test_`` prefix): tests/keras_tests/
test_keras_pipeline_backends.py runs this file once per backend in a subprocess. The truth
is one real ``model.fit`` step on the same (x, y) with the compiled loss, read with plain
Keras, never with padaudit; each case appends a verdict record to PADAUDIT_VERDICTS.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest

from pytest_padaudit import audit

from support.keras_backend_runs import record

VOCAB, CLASSES = 30, 4
SEQS = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12]]
TAGS = [[1, 2, 3, 1, 2], [2, 3], [1, 1, 1]]


def tagger(mask_zero: bool) -> keras.Model:
    """Return a compiled per-token classifier: fit trains the compiled loss."""
    keras.utils.set_random_seed(0)
    ids = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, 8, mask_zero=mask_zero, name="tok")(ids)
    x = keras.layers.Dense(8, activation="tanh")(x)
    built = keras.Model(ids, keras.layers.Dense(CLASSES)(x))
    built.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return built


def fit_batch() -> tuple[np.ndarray, np.ndarray]:
    pad = keras.utils.pad_sequences
    return pad(SEQS, padding="post"), pad(TAGS, padding="post")


def compiled_step(m: Any, b: Any) -> Any:
    return m.compute_loss(x=b[0], y=b[1], y_pred=m(b[0]))


def row0(built: keras.Model) -> np.ndarray:
    return keras.ops.convert_to_numpy(built.get_layer("tok").embeddings)[0].copy()


def fit_moves_row_0(built: keras.Model) -> float:
    """Return max|Δ| of row 0 after one real fit step; put the weights back."""
    saved = [keras.ops.convert_to_numpy(v).copy() for v in built.variables]
    before = row0(built)
    built.fit(*fit_batch(), batch_size=len(SEQS), epochs=1, verbose=0, shuffle=False)
    moved = float(np.abs(row0(built) - before).max())
    for var, value in zip(built.variables, saved, strict=True):
        var.assign(value)
    return moved


@pytest.mark.parametrize("mask_zero", [True, False], ids=["masked", "unmasked"])
def test_fit_batch_and_compiled_step_agree_with_fit(mask_zero: bool) -> None:
    built = tagger(mask_zero)
    truth = fit_moves_row_0(built)
    before = [keras.ops.convert_to_numpy(v).copy() for v in built.variables]
    report = audit(built, batch=fit_batch(), step=compiled_step, pad_idx=0)
    after = [keras.ops.convert_to_numpy(v) for v in built.variables]
    causes = sorted({f.cause for f in report.findings})
    record(
        {
            "case": "masked" if mask_zero else "unmasked",
            "backend": keras.config.backend(),
            "passed": report.passed,
            "truth_moved": truth,
            "causes": causes,
        }
    )
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert report.passed == (truth == 0.0), (truth, str(report))
    if not mask_zero:  # nothing masks the pads: the loss trains row 0 and counts pad columns
        assert truth > 1e-4 and causes == ["invariance", "no_padding_idx"], causes
