"""Keras ``batch=`` and ``step=``: each verdict checked against plain TensorFlow and fit.

The ground truth never runs padaudit: it takes the batch as ``model.fit`` takes it, the
library's own loss (``model.compute_loss`` of the compiled loss, or ``model.fit`` itself),
reads the pad row of the densified ``IndexedSlices`` gradient, and compares every
variable's gradient with and without extra pad columns (ids 0, labels 0).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
pytest.importorskip("keras.layers")
keras = pytest.importorskip("keras")

from keras import layers, ops

from pytest_padaudit import PadAuditError, audit

VOCAB, CLASSES, EXTRA = 30, 4, 8  # EXTRA: the audit's default extra_pad (seq_len 16 // 2)
SEQS = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12]]
TAGS = [[1, 2, 3, 1, 2], [2, 3], [1, 1, 1]]
Step = Callable[[Any, Any], Any]


def tagger(mask_zero: bool) -> Any:
    """Return a compiled per-token classifier (the compiled loss is what fit trains)."""
    keras.utils.set_random_seed(0)
    ids = keras.Input((None,), dtype="int32")
    x = layers.Embedding(VOCAB, 8, mask_zero=mask_zero, name="tok")(ids)
    x = layers.Dense(8, activation="tanh", name="hidden")(x)
    model = keras.Model(ids, layers.Dense(CLASSES, name="head")(x))
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def fit_batch() -> tuple[np.ndarray, np.ndarray]:
    """Return (x, y) padded with 0 on the right, as keras.utils.pad_sequences pads them."""
    x = keras.utils.pad_sequences(SEQS, padding="post")
    return x, keras.utils.pad_sequences(TAGS, padding="post")


def compiled_step(m: Any, b: Any) -> Any:
    """Return the compiled loss of one step, as fit's train_step computes it."""
    return m.compute_loss(x=b[0], y=b[1], y_pred=m(b[0]))


def unmasked_step(m: Any, b: Any) -> Any:
    """Return a loss that averages over every position, pads too."""
    return ops.mean(keras.losses.sparse_categorical_crossentropy(b[1], m(b[0]), True))


# -- ground truth (plain TensorFlow, model.fit) ----------------------------------------------
def gradients(model: Any, step: Step, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Return every trainable variable's dense gradient of ``step``'s loss."""
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        loss = step(model, (tf.constant(x), tf.constant(y)))
    dense = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, variables)]
    return {v.path: g for v, g in zip(variables, dense, strict=True)}


def truth_pad_grad(model: Any, step: Step) -> float:
    """Return max|g| of the token table's pad row (IndexedSlices densified, summed)."""
    return float(np.abs(gradients(model, step, *fit_batch())["tok/embeddings"][0]).max())


def truth_widened(model: Any, step: Step) -> float:
    """Return how much EXTRA pad columns (ids 0, labels 0) change the gradients (rel.)."""
    x, y = fit_batch()
    base = gradients(model, step, x, y)
    wide = gradients(model, step, *(np.pad(a, ((0, 0), (0, EXTRA))) for a in (x, y)))
    for grads in (base, wide):  # the pad row is the grad check's business
        grads["tok/embeddings"] = grads["tok/embeddings"][1:]
    scale = max(float(np.abs(g).max()) for g in base.values())
    return max(float(np.abs(base[k] - wide[k]).max()) for k in base) / scale


def truth_fit_moves_row_0(model: Any) -> float:
    """Return max|Δ| of row 0 after one real model.fit step; put the weights back."""
    saved = [v.numpy() for v in model.variables]
    before = model.get_layer("tok").embeddings.numpy()[0].copy()
    model.fit(*fit_batch(), batch_size=len(SEQS), epochs=1, verbose=0, shuffle=False)
    moved = float(np.abs(model.get_layer("tok").embeddings.numpy()[0] - before).max())
    for var, value in zip(model.variables, saved, strict=True):
        var.assign(value)
    return moved


def checks(report: Any) -> dict[str, str]:
    return {f.check: f.cause for f in report.findings if not f.allowed}


# -- verdicts ----------------------------------------------------------------------------------
def test_masked_tagger_with_its_compiled_loss_is_clean() -> None:
    model = tagger(mask_zero=True)
    assert truth_pad_grad(model, compiled_step) == 0.0
    assert truth_widened(model, compiled_step) < 1e-5
    assert truth_fit_moves_row_0(model) == 0.0
    report = audit(model, batch=fit_batch(), step=compiled_step, pad_idx=0)
    assert report.passed, report.findings


def test_tagger_without_mask_zero_trains_its_pad_row() -> None:
    model = tagger(mask_zero=False)
    assert truth_pad_grad(model, compiled_step) > 1e-3
    assert truth_fit_moves_row_0(model) > 1e-4
    report = audit(model, batch=fit_batch(), step=compiled_step, pad_idx=0)
    found = {f.check: f for f in report.findings}
    assert found["grad"].value == pytest.approx(truth_pad_grad(model, compiled_step), rel=1e-4)
    assert found["grad"].cause == "no_padding_idx" and found["update"].value > 0
    # nothing masks the loss either: pad columns with label 0 change what the real ones learn
    assert truth_widened(model, compiled_step) > 1e-2
    assert found["invariance"].value == pytest.approx(truth_widened(model, compiled_step), rel=0.05)


def test_a_step_whose_loss_counts_the_pads_leaks_and_is_blamed() -> None:
    model = tagger(mask_zero=True)
    assert truth_pad_grad(model, unmasked_step) > 1e-3
    assert truth_widened(model, unmasked_step) > 1e-2
    report = audit(model, batch=fit_batch(), step=unmasked_step, pad_idx=0)
    found = {f.check: f for f in report.findings}
    assert found["grad"].value == pytest.approx(truth_pad_grad(model, unmasked_step), rel=1e-4)
    inv = found["invariance"]
    assert inv.value == pytest.approx(truth_widened(model, unmasked_step), rel=0.05)
    assert "your step=" in inv.why and "sample_weight" in inv.fix
    assert "m(**b)" not in inv.fix  # Keras words, not Hugging Face's


def test_a_dict_batch_padded_with_another_id_is_a_pad_mismatch() -> None:
    keras.utils.set_random_seed(0)
    ids = keras.Input((None,), dtype="int32", name="token_ids")
    mask = keras.Input((None,), dtype="bool", name="padding_mask")
    x = layers.Embedding(VOCAB, 8, name="tok")(ids)
    pooled = layers.GlobalAveragePooling1D()(x, mask=mask)
    model = keras.Model({"token_ids": ids, "padding_mask": mask}, layers.Dense(2)(pooled))
    x, _ = fit_batch()
    real = x != 0
    wrong = np.where(real, x, 7)  # the collator pads with 7, the model's pad id is 0
    truth = int((~real & (wrong != 0)).sum())
    assert truth == 5  # rows of 5, 2 and 3 tokens padded to 5
    report = audit(model, batch={"token_ids": wrong, "padding_mask": real}, pad_idx=0)
    (finding,) = [f for f in report.findings if f.cause == "pad_mismatch"]
    assert finding.value == truth and "hold id 7" in finding.message
    assert "keras.utils.pad_sequences" in finding.fix
    assert "invariance" not in checks(report)  # the masked mean is invariant


def test_y_at_pad_positions_is_not_a_labels_finding_in_keras() -> None:
    """Keras losses skip pads by the mask or sample_weight, not by an ignore index."""
    report = audit(tagger(mask_zero=True), batch=fit_batch(), step=compiled_step, pad_idx=0)
    assert not [f for f in report.findings if f.cause == "labels_at_pads"]


def test_an_audit_with_batch_and_step_leaves_the_model_and_optimizer_as_given() -> None:
    model = tagger(mask_zero=False)
    model.fit(*fit_batch(), epochs=1, verbose=0)  # the optimizer has state and a step count
    before = [v.numpy().copy() for v in model.variables]
    steps = int(model.optimizer.iterations.numpy())
    x, y = fit_batch()
    given = (x.copy(), y.copy())
    report = audit(model, batch=(x, y), step=compiled_step, pad_idx=0)
    assert not report.passed
    after = [v.numpy() for v in model.variables]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert int(model.optimizer.iterations.numpy()) == steps
    assert np.array_equal(x, given[0]) and np.array_equal(y, given[1])


# -- bad input ---------------------------------------------------------------------------------
def test_a_fit_batch_with_no_pad_position_is_refused() -> None:
    x = np.array([[3, 4, 5], [6, 7, 8]])
    with pytest.raises(PadAuditError, match="holds no pad position"):
        audit(tagger(True), batch=(x, x % CLASSES), step=compiled_step, pad_idx=0)


def test_a_step_returning_per_token_losses_is_refused() -> None:
    def per_token(m: Any, b: Any) -> Any:
        return keras.losses.sparse_categorical_crossentropy(b[1], m(b[0]), True)

    with pytest.raises(PadAuditError, match=r"step= returned a tensor of shape \[3, 5\]"):
        audit(tagger(True), batch=fit_batch(), step=per_token, pad_idx=0)


def test_a_dict_with_no_ids_input_names_the_names_it_knows() -> None:
    x, _ = fit_batch()
    with pytest.raises(PadAuditError, match="none holds the token ids: name the ids input"):
        audit(tagger(True), batch={"words": x, "padding_mask": x != 0}, pad_idx=0)


def test_a_model_that_refuses_the_batch_says_which_batch_and_what_to_pass() -> None:
    x, _ = fit_batch()
    with pytest.raises(PadAuditError) as raised:
        audit(tagger(True), batch={"input_ids": x, "attention_mask": x != 0}, pad_idx=0)
    text = str(raised.value)
    assert "on your batch=" in text and "step=callable(model, batch)" in text


def test_the_readme_snippet_runs_and_its_assert_could_fail() -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    part = readme.split("### Your batch and your training step", 1)[1].split("\n### ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", part, re.S)[1]
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md[batch= keras]", "exec"), namespace)
    test = namespace["test_fit_keeps_pads_out"]
    assert truth_fit_moves_row_0(tagger(mask_zero=True)) == 0.0
    test(tagger(mask_zero=True), SEQS, TAGS)
    # the same snippet fails where fit moves the pad row: no mask_zero
    assert truth_fit_moves_row_0(tagger(mask_zero=False)) > 1e-4
    with pytest.raises(AssertionError, match="no_padding_idx"):
        test(tagger(mask_zero=False), SEQS, TAGS)
