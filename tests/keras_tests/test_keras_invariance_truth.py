"""Invariance on Keras, each verdict checked against plain TensorFlow.

The ground truth never runs padaudit: it pads a batch by hand, lays seeded weights on the
outputs at real positions (the test knows each output's sequence axes), takes gradients
with a GradientTape (IndexedSlices densified, duplicates summed) and compares every
variable's gradient with and without extra pad columns, or with noise in place of the
vectors the embedding emits at pad positions (the layers called one by one).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
pytest.importorskip("keras.layers")
keras = pytest.importorskip("keras")

from keras import layers, ops

from pytest_padaudit import audit

from support.keras_zoo import MaskedDense, MeanOverTime

pytestmark = pytest.mark.filterwarnings("ignore:.*does not support masking")
INV = ("invariance",)
VOCAB, T, EXTRA = 50, 16, 8  # the audit's defaults: seq_len 16, extra_pad seq_len // 2
#: runs a model on (ids, mask); returns each output with its sequence axes
Run = Callable[[object, tf.Tensor, np.ndarray], Sequence[tuple[tf.Tensor, tuple]]]


# -- ground truth (plain TensorFlow) -------------------------------------------------------
def padded(extra: int = 0) -> tuple[tf.Tensor, np.ndarray]:
    """Return right-padded ids (pad 0) and their mask: lengths 16, 5, 9, 11 plus ``extra``."""
    rng = np.random.default_rng(0)
    ids = np.concatenate([rng.integers(1, VOCAB, (4, T)), np.zeros((4, extra), np.int64)], 1)
    mask = np.arange(T + extra)[None, :] < np.array([T, 5, 9, 11])[:, None]
    return tf.constant(np.where(mask, ids, 0), tf.int32), mask


def weighted(outputs: Sequence[tuple[tf.Tensor, tuple]], mask: np.ndarray) -> tf.Tensor:
    """Sum each output times seeded weights laid at real positions along its sequence axes."""
    total = tf.zeros(())
    for k, (out, axes) in enumerate(outputs):
        shape = tuple(out.shape)
        base = [T if i in axes else n for i, n in enumerate(shape)]
        w = np.zeros(shape, np.float32)
        w[tuple(slice(0, T) if i in axes else slice(None) for i in range(len(shape)))] = (
            np.random.default_rng(100 + k).random(base) + 0.5
        )
        for s in axes:
            at = [1] * len(shape)
            at[0], at[s] = mask.shape
            w = w * mask.reshape(at)
        total += tf.reduce_sum(tf.cast(out, tf.float32) * w)
    return total


def pooled(model: object, ids: tf.Tensor, mask: np.ndarray) -> list:
    return [(model(ids, training=False), ())]


def grads(model: object, run: Run, extra: int = 0) -> dict:
    """Every trainable variable's dense gradient (token tables without their pad row 0)."""
    ids, mask = padded(extra)
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        total = weighted(run(model, ids, mask), mask)
    found = {}
    for var, grad in zip(variables, tape.gradient(total, variables), strict=True):
        if grad is not None:
            dense = tf.convert_to_tensor(grad).numpy()
            found[var.path] = dense[1:] if dense.shape[0] == VOCAB else dense
    return found


def rel(a: dict, b: dict) -> float:
    scale = max(float(np.abs(v).max()) for v in a.values())
    return max(float(np.abs(a[k] - b[k]).max()) for k in a) / scale


def truth_wider(model: object, run: Run = pooled) -> float:
    """Relative change of the gradients when 8 pad columns are appended."""
    return rel(grads(model, run), grads(model, run, extra=EXTRA))


def with_noise(ids: tf.Tensor, emb: tf.Tensor) -> tf.Tensor:
    """Replace the vectors at pad positions with seeded noise."""
    noise = tf.constant(np.random.default_rng(7).normal(size=emb.shape), emb.dtype)
    return tf.where((ids == 0)[..., None], noise, emb)


def invariance(report):
    found = [f for f in report.findings if f.check == "invariance"]
    assert len(found) == 1, report.findings
    return found[0]


def values(model: object) -> list[np.ndarray]:
    return [v.numpy() for v in model.variables]


# -- item 3: every check measures the model as the user handed it over -----------------------
def test_invariance_is_the_same_alone_and_after_the_update_step():
    keras.utils.set_random_seed(0)
    ids = keras.Input((None,), dtype="int32")
    x = layers.Embedding(VOCAB, 8, name="tok")(ids)  # no mask_zero: the pad row trains
    x = layers.BatchNormalization(name="bn")(x)  # its moving statistics move in training
    model = keras.Model(ids, layers.Dense(2, name="head")(MeanOverTime(name="pool")(x)))
    assert truth_wider(model) > 1e-2  # plain TF: the unmasked mean leaks

    def optimizer():  # clipnorm: not element-wise, so the audit steps the whole table
        return keras.optimizers.SGD(learning_rate=100.0, clipnorm=1e6)

    before = values(model)
    alone = audit(model, pad_idx=0, checks=INV, optimizer=optimizer)
    full = audit(model, pad_idx=0, optimizer=optimizer, steps=2)
    assert {f.check for f in full.findings} >= {"grad", "update", "invariance"}
    assert full.invariance.value == pytest.approx(alone.invariance.value, rel=1e-6)
    assert alone.invariance.value > 1e-2 and invariance(alone).cause == "invariance"
    assert all((a == b).all() for a, b in zip(before, values(model), strict=True))


# -- item 4: a fixed-width Input((16,)) is measured with noise at the pad vectors -------------
def fixed_width(masked: bool) -> object:
    keras.utils.set_random_seed(0)
    ids = keras.Input((T,), dtype="int32", name="ids")
    x = layers.Embedding(VOCAB, 8, mask_zero=True, name="tok")(ids)
    if masked:
        x = MaskedDense(4, name="proj")(x)
    return keras.Model(ids, layers.Dense(2, name="head")(layers.Flatten(name="flat")(x)))


def fixed_width_run(noise: bool) -> Run:
    def run(model, ids, mask):
        emb = model.get_layer("tok")(ids)
        x = with_noise(ids, emb) if noise else emb
        if "proj" in [layer.name for layer in model.layers]:
            x = model.get_layer("proj")(x, mask=tf.constant(mask))
        return [(model.get_layer("head")(model.get_layer("flat")(x)), ())]

    return run


def truth_noise(model: object) -> float:
    return rel(grads(model, fixed_width_run(False)), grads(model, fixed_width_run(True)))


def test_fixed_width_masked_model_is_measured_and_clean():
    model = fixed_width(masked=True)
    assert truth_noise(model) < 1e-6  # plain TF: the noise never reaches the head
    for checks in (INV, ("grad", "update", "invariance")):
        report = audit(model, checks=checks)
        assert "invariance" not in {f.check for f in report.findings}, report.failure_message()
        assert report.invariance.value is not None and report.invariance.value < 1e-5
        assert not report.invariance.skipped
        notes = [n for n in report.notes if "seeded noise" in n]
        assert notes and "(4, 24)" in notes[0] and "pass seq_len" not in notes[0]


def test_fixed_width_leaky_model_is_caught_with_invariance_alone():
    model = fixed_width(masked=False)
    assert truth_noise(model) > 1e-2  # plain TF: Flatten feeds the pad vectors to the head
    report = audit(model, checks=INV)
    found = invariance(report)
    assert not report.passed and found.cause == "invariance" and found.value > 1e-2
    assert found.layer == "flat" and "with noise" in found.message


def test_a_check_that_cannot_run_is_not_checked_never_a_pass():
    class Gather(keras.Model):  # fixed width, and the table is read without calling it
        def __init__(self):
            super().__init__()
            self.tok = layers.Embedding(VOCAB, 8, mask_zero=True, name="tok")
            self.head = layers.Dense(2, name="head")

        def call(self, ids):
            if ids.shape[1] != T:
                raise ValueError(f"Gather takes {T} tokens")
            x = ops.take(self.tok.embeddings, ids, axis=0)
            return self.head(ops.reshape(x, (-1, T * 8)))

    model = Gather()
    model.tok.build((None, T))
    model(tf.ones((1, T), tf.int32))
    report = audit(model, checks=INV)
    found = invariance(report)
    assert not report.passed and found.cause == "not_checked" and report.invariance.skipped
    assert "seq_len=16" not in found.why + found.fix + found.message
    assert "Gather takes 16 tokens" in found.why and "could not be replaced" in found.why
    assert audit(model, checks=INV, allow=("not_checked",)).passed


# -- item 5: attention maps and pooled outputs as wide as the batch -------------------------
def attention(width: int, masked: bool) -> object:
    keras.utils.set_random_seed(0)
    ids = keras.Input((None,), dtype="int32")
    x = layers.Embedding(VOCAB, 8, mask_zero=masked, name="tok")(ids)
    y, scores = layers.MultiHeadAttention(2, 4, name="attn")(x, x, return_attention_scores=True)
    pooled = layers.Dense(width, name="pooled")(layers.GlobalAveragePooling1D()(y))
    return keras.Model(ids, [MaskedDense(width, name="tokens")(y), scores, pooled])


def attention_run(model, ids, mask):
    tokens, scores, pooled = model(ids, training=False)
    return [(tokens, (1,)), (scores, (2, 3)), (pooled, ())]


@pytest.mark.parametrize("width", [T, T + EXTRA])  # == seq_len, == seq_len + extra_pad
def test_attention_scores_and_pooled_outputs_are_no_false_alarm(width):
    model = attention(width, masked=True)
    assert truth_wider(model, attention_run) < 1e-5
    report = audit(model, checks=INV)
    assert report.passed, report.failure_message()
    assert report.invariance.value < 1e-4 and report.invariance.outputs < 1e-5


def test_attention_without_a_mask_leaks_in_the_attention():
    model = attention(T, masked=False)
    assert truth_wider(model, attention_run) > 1e-2
    report = audit(model, pad_idx=0, checks=INV)
    found = invariance(report)
    assert found.layer == "attn" and "attends to the pad keys" in found.why


def test_nonfinite_values_are_their_own_finding_not_a_leak():
    class LogProbs(keras.Model):  # log of a masked softmax: -inf at the pad positions
        def __init__(self):
            super().__init__()
            self.tok = layers.Embedding(VOCAB, 8, mask_zero=True)
            self.score = layers.Dense(1)

        def call(self, ids):
            s = ops.squeeze(self.score(self.tok(ids)), -1)
            s = ops.where(ids == 0, -np.inf, s)
            return ops.log(ops.softmax(s, axis=-1))

    model = LogProbs()
    model(tf.ones((1, 3), tf.int32))
    assert not np.isfinite(model(padded()[0]).numpy()).all()  # plain TF: -inf at the pads
    report = audit(model, checks=INV)
    found = invariance(report)
    assert not report.passed and found.cause == "nonfinite"


# -- issue 15: localisation when a hidden size equals seq_len ----------------------------------
@pytest.mark.parametrize("dim", [T, T + EXTRA])
def test_unmasked_mean_is_localised_at_the_mean(dim):
    keras.utils.set_random_seed(0)
    ids = keras.Input((None,), dtype="int32")
    x = layers.Embedding(VOCAB, dim, mask_zero=True, name="tok")(ids)
    model = keras.Model(ids, layers.Dense(3, name="head")(MeanOverTime(name="pool")(x)))
    assert truth_wider(model) > 1e-2
    report = audit(model, checks=INV)
    assert report.invariance.first_module == "pool" and invariance(report).layer == "pool"
