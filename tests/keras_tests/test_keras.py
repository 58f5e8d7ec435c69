"""The Keras pad audit: grad, update, mask-chain diagnosis, tables, batches and restores."""

from __future__ import annotations

import os
from typing import ClassVar

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
pytest.importorskip("keras.layers")
keras = pytest.importorskip("keras")

from keras import layers

from pytest_padaudit import audit, hookimpl, register, unregister
from pytest_padaudit.core.batch import PadBatch

from support.keras_zoo import (
    DIM,
    VOCAB,
    MaskedDense,
    OneHotEmbedding,
    TiedLM,
    built,
    functional,
    seed_model,
)

TRAIN = ("grad", "update")


def finding(report, check):
    found = [f for f in report.findings if f.check == check]
    assert found, f"no {check} finding in:\n{report}"
    return found[0]


# -- the seed ------------------------------------------------------------------------
def test_seed_masked_dense_gives_the_pad_row_no_gradient():
    report = audit(seed_model(masked=True))
    assert report.framework == "keras"
    assert report.passed, report.failure_message()
    (table,) = report.tables
    assert (table.layer, table.kind, table.pad_idx, table.rows) == ("tok", "Embedding", 0, VOCAB)
    assert table.grad == 0.0 and table.update == 0.0


def test_seed_plain_dense_leaks_with_loss_all_and_names_the_mask_chain():
    report = audit(seed_model(masked=False), checks=TRAIN)
    grad = finding(report, "grad")
    assert grad.cause == "unmasked" and grad.value > 0
    assert "Dense 'dense' receives the mask without applying it" in grad.why
    assert "the output still carries the mask" in grad.why
    assert 'loss="masked"' in grad.fix
    assert finding(report, "update").cause == "unmasked"
    message = report.failure_message()
    assert "[grad] tok (pad id 0)" in message and "seed=0" in message


def test_seed_plain_dense_is_clean_with_loss_masked_as_fit_would():
    report = audit(seed_model(masked=False), loss="masked")
    assert report.passed, report.failure_message()
    assert report.tables[0].grad == 0.0


# -- masking-aware models ------------------------------------------------------------
@pytest.mark.parametrize("rnn", [layers.LSTM, layers.GRU])
def test_masked_recurrent_models_are_clean(rnn):
    model = functional(lambda x: layers.Dense(1)(rnn(4)(x)))
    report = audit(model)
    assert report.passed, report.failure_message()
    assert report.invariance.value <= 1e-4


def test_masked_global_average_pooling_is_clean():
    model = functional(lambda x: layers.Dense(2)(layers.GlobalAveragePooling1D()(x)))
    report = audit(model)
    assert report.passed, report.failure_message()


@pytest.mark.filterwarnings("ignore:.*does not support masking")
def test_flatten_drops_the_mask():
    model = functional(lambda x: layers.Dense(1)(layers.Flatten(name="flatten")(x)), seq_len=16)
    report = audit(model)
    grad = finding(report, "grad")
    assert grad.cause == "unmasked"
    assert "Flatten 'flatten' does not support masking and drops the mask" in grad.why
    assert "the output carries no mask" in grad.why
    assert "replace Flatten 'flatten'" in grad.fix
    # a fixed-width model cannot take the wider invariance batch: the pad vectors are
    # replaced with noise instead, and the pads flattened into the head are caught
    assert not report.invariance.skipped and report.invariance.first_module == "flatten"
    assert finding(report, "invariance").layer == "flatten"
    assert not any("pass seq_len" in note for note in report.notes)
    assert any("replacing the vectors" in note and "(4, 24)" in note for note in report.notes)


def test_table_without_mask_zero_is_named_in_keras_words():
    model = functional(lambda x: MaskedDense(1)(x), mask_zero=False)
    report = audit(model, pad_idx=0, checks=TRAIN)
    grad = finding(report, "grad")
    assert grad.cause == "no_padding_idx"
    assert "has no mask_zero" in grad.why and "mask_zero=True" in grad.fix


def test_weight_reuse_outside_the_lookup_in_a_subclassed_model():
    report = audit(built(TiedLM()), loss="masked", checks=TRAIN)
    grad = finding(report, "grad")
    assert report.model == "TiedLM" and grad.layer == "tok"
    assert grad.cause == "weight_reuse"
    assert "read outside the layer's lookup" in grad.why


def test_nested_model_tables_are_named_by_path():
    inner = functional(lambda x: MaskedDense(4, name="proj")(x))
    inner.name = "encoder"
    ids = keras.Input((None,), dtype="int32")
    outer = keras.Model(ids, layers.Dense(1)(layers.GlobalAveragePooling1D()(inner(ids))))
    report = audit(outer)
    assert [t.layer for t in report.tables] == ["encoder.tok"]
    assert report.passed, report.failure_message()


# -- gradients: IndexedSlices, duplicates, dense, LoRA -------------------------------
class TwoPads:
    """A batch where the pad id occurs exactly twice."""

    @hookimpl
    def padaudit_make_batch(self, options, vocab_size, pad_idx, pad_ids):
        ids = np.array([[3, 4, 5, 6], [7, 8, pad_idx, pad_idx]], dtype=np.int64)
        return PadBatch(ids, ids != pad_idx, np.array([4, 2]), pad_idx)


def test_duplicate_pad_indices_are_summed():
    # every slice of the IndexedSlices gradient is exactly 1.0; only their sum (2.0)
    # exceeds atol=1.5, so taking one slice per index would miss the leak
    model = functional(lambda x: x, mask_zero=False)
    plugin = TwoPads()
    register(plugin)
    try:
        report = audit(
            model,
            pad_idx=0,
            checks=("grad",),
            atol=1.5,
            loss=lambda output, batch: tf.reduce_sum(output[..., 0]),
        )
    finally:
        unregister(plugin)
    assert report.batch["ids"] == [[3, 4, 5, 6], [7, 8, 0, 0]]
    grad = finding(report, "grad")
    assert grad.value == 2.0


def test_dense_gradients_of_a_one_hot_lookup_are_read_too():
    sparse = seed_model(masked=False)
    onehot = functional(
        lambda x: layers.Dense(1, use_bias=False, name="dense")(x), embedding=OneHotEmbedding
    )
    onehot.set_weights(sparse.get_weights())
    a = audit(sparse, checks=("grad",)).tables[0].grad
    b = audit(onehot, checks=("grad",)).tables[0].grad
    assert a > 0 and b == pytest.approx(a, rel=1e-5)


def test_lora_embedding_is_audited_by_its_effective_row():
    plain = seed_model(masked=False)
    lora = seed_model(masked=False)
    lora.set_weights(plain.get_weights())
    lora.get_layer("tok").enable_lora(2)  # lora_b starts at zero: same effective table
    a = audit(plain, checks=("grad",)).tables[0]
    b = audit(lora, checks=("grad",)).tables[0]
    assert b.kind == "Embedding(lora)"
    assert a.grad > 0 and b.grad == pytest.approx(a.grad, rel=1e-5)


def test_lora_shared_factor_moves_the_pad_row():
    model = seed_model(masked=True)
    model.get_layer("tok").enable_lora(2)
    report = audit(model, checks=TRAIN)
    assert report.tables[0].grad == 0.0
    update = finding(report, "update")
    assert update.cause == "weight_reuse" and "lora_embeddings_b is shared" in update.why


# -- the update check ----------------------------------------------------------------
def test_adamw_default_weight_decay_moves_the_pad_row_adam_does_not():
    user = keras.optimizers.AdamW(1e-3)
    report = audit(seed_model(), optimizer=user, checks=TRAIN)
    update = finding(report, "update")
    assert update.cause == "weight_decay" and update.value > 0
    assert "AdamW(weight_decay=0.004)" in update.why and "gradient is zero" in update.why
    assert report.tables[0].grad == 0.0
    assert not user.built and int(user.iterations.numpy()) == 0  # the user's copy untouched

    assert audit(seed_model(), optimizer=keras.optimizers.Adam(1e-3), checks=TRAIN).passed
    assert audit(seed_model(), optimizer=lambda: keras.optimizers.Adam(1e-3)).passed
    assert not audit(seed_model(), optimizer="adamw", checks=TRAIN).passed


def test_adamw_with_the_table_excluded_from_decay_is_clean():
    optimizer = keras.optimizers.AdamW(1e-3)
    optimizer.exclude_from_weight_decay(var_names=["embeddings"])
    report = audit(seed_model(), optimizer=optimizer, steps=2, checks=TRAIN)
    assert report.passed, report.failure_message()


def test_embeddings_constraint_renormalises_the_pad_row():
    ids = keras.Input((None,), dtype="int32")
    unit = keras.constraints.UnitNorm(axis=1)
    x = layers.Embedding(VOCAB, DIM, mask_zero=True, embeddings_constraint=unit, name="tok")(ids)
    report = audit(keras.Model(ids, MaskedDense(1)(x)), checks=TRAIN)
    update = finding(report, "update")
    assert update.cause == "max_norm" and "UnitNorm" in update.why
    assert report.tables[0].grad == 0.0


def test_frozen_table_is_reported_not_checked():
    model = seed_model(masked=False)
    model.get_layer("tok").trainable = False
    report = audit(model, checks=TRAIN)
    assert report.passed and report.tables[0].grad is None
    assert any("frozen" in note for note in report.notes)


# -- forward= and the batch object ---------------------------------------------------
def test_forward_receives_tensors_and_the_training_mode():
    seen = []

    def forward(model, batch):
        seen.append((batch.ids.dtype, batch.mask.dtype, tuple(batch.lengths.shape), batch.training))
        return model(batch.ids)

    report = audit(seed_model(), forward=forward)
    assert report.passed
    # the train pass (which also records the ids each table gets), then the invariance
    # passes, without training
    assert seen[0] == (tf.int32, tf.bool, (4,), True)
    assert seen[1:] == [(tf.int32, tf.bool, (4,), False)] * 2


def test_forward_without_training_argument_still_trains_dropout():
    class Probe(layers.Layer):
        modes: ClassVar[list] = []

        def call(self, x, training=None):
            Probe.modes.append(training)
            return x

        def compute_mask(self, x, mask=None):
            return mask

    model = functional(lambda x: MaskedDense(1)(Probe()(x)))
    Probe.modes.clear()  # building the model called it symbolically
    audit(model, forward=lambda m, b: m(b.ids), checks=("grad",))
    assert Probe.modes == [True]  # the train pass, which also records the lookups


# -- tf_keras (Keras 2) ----------------------------------------------------------------
def test_tf_keras_seed_model():
    tf_keras = pytest.importorskip("tf_keras")
    tk = tf_keras.layers

    class LegacyMaskedDense(tk.Dense):
        def call(self, inputs, mask=None):
            if mask is not None:
                inputs = inputs * tf.cast(mask[..., None], inputs.dtype)
            return super().call(inputs)

    def build(dense):
        ids = tf_keras.Input((None,), dtype="int32")
        x = tk.Embedding(VOCAB, DIM, mask_zero=True, name="tok")(ids)
        return tf_keras.Model(ids, dense(1, use_bias=False, name="dense")(x))

    clean = audit(build(LegacyMaskedDense))
    assert clean.framework == "tf_keras" and clean.passed, clean.failure_message()
    leaky = build(tk.Dense)
    before = [w.copy() for w in leaky.get_weights()]
    report = audit(leaky, checks=TRAIN)
    assert finding(report, "grad").cause == "unmasked"
    assert audit(leaky, loss="masked").passed
    assert all((a == b).all() for a, b in zip(before, leaky.get_weights(), strict=True))
    update = finding(audit(build(LegacyMaskedDense), optimizer="adamw", checks=TRAIN), "update")
    assert update.cause == "weight_decay"
