"""Keras verdicts against a plain TensorFlow ground truth: the zoo, pad ids, tied heads.

Every expected answer is computed here with tf.GradientTape on the audit's own batch
(rebuilt from the report), never by padaudit.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
pytest.importorskip("keras.layers")
keras = pytest.importorskip("keras")

from keras import layers

from pytest_padaudit import PadAuditError, audit

from support.keras_backend_truth import batch_of
from support.keras_truth import dense_row, pad_row_grad, tied_split, weights_for
from support.keras_zoo import (
    DIM,
    VOCAB,
    MaskedDense,
    MeanOverTime,
    OneHotEmbedding,
    TiedLM,
    built,
    functional,
    seed_model,
)

# the zoo builds mask-dropping models on purpose (Flatten, MeanOverTime after mask_zero)
pytestmark = pytest.mark.filterwarnings("ignore:.*does not support masking")

TRAIN = ("grad", "update")

ZOO = {
    "seed_masked": (lambda: seed_model(masked=True), {}),
    "seed_plain_dense": (lambda: seed_model(masked=False), {}),
    "seed_plain_dense_masked_loss": (lambda: seed_model(masked=False), {"loss": "masked"}),
    "lstm": (lambda: functional(lambda x: layers.LSTM(4)(x)), {}),
    "gru_sequences": (lambda: functional(lambda x: layers.GRU(4, return_sequences=True)(x)), {}),
    "global_average_pooling": (
        lambda: functional(lambda x: layers.Dense(2)(layers.GlobalAveragePooling1D()(x))),
        {},
    ),
    "mean_over_time": (lambda: functional(lambda x: MeanOverTime()(x)), {}),
    "flatten": (
        lambda: functional(
            lambda x: layers.Dense(1)(layers.Flatten(name="truth_flat")(x)), seq_len=16
        ),
        {},
    ),
    "no_mask_zero": (lambda: functional(lambda x: MaskedDense(1)(x), mask_zero=False), {}),
    "one_hot_lookup": (
        lambda: functional(lambda x: MaskedDense(1)(x), embedding=OneHotEmbedding),
        {"loss": "masked"},
    ),
    "tied_lm_matmul": (lambda: built(TiedLM()), {"loss": "masked"}),
}


def _table(model, path="tok"):
    for layer in [model, *model._flatten_layers(include_self=False)]:
        if layer.name == path and isinstance(layer, layers.Embedding):
            return layer
    raise AssertionError(f"no table {path}")


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_grad_verdict_matches_plain_tensorflow(name):
    build, options = ZOO[name]
    model = build()
    report = audit(model, pad_idx=0, checks=TRAIN, **options)
    ids, mask = batch_of(report)
    masked = mask if options.get("loss") == "masked" else None
    truth = pad_row_grad(lambda: model(ids, training=True), _table(model).embeddings, 0, masked)
    grads = [f for f in report.findings if f.check == "grad"]
    assert bool(grads) == (truth > 0), (name, truth, str(report))
    (table,) = [t for t in report.tables if t.layer == "tok"]
    assert (table.grad > 0) == (truth > 0)


# -- pad ids: the user's id is the data's ------------------------------------------
def test_pad_idx_that_disagrees_with_mask_zero_pads_the_batch_and_is_a_finding():
    model = seed_model(masked=True)
    report = audit(model, pad_idx=3, checks=TRAIN)
    ids, mask = batch_of(report)
    assert report.batch["pad_idx"] == 3 and (ids[~mask] == 3).all()
    # the mismatch is a cause under grad (the README's checks), stated once beside the measure
    assert {f.check for f in report.findings} <= {"grad", "update", "invariance"}
    found = [f for f in report.findings if "own pad id is" in f.message]
    (mismatch,) = found
    assert (mismatch.check, mismatch.cause) == ("grad", "pad_mismatch")
    assert "3" in mismatch.message and "0" in mismatch.message
    # ground truth: mask_zero masks id 0 only, so the pad positions (id 3) reach the loss
    truth = pad_row_grad(lambda: model(ids, training=True), _table(model).embeddings, 3, None)
    assert truth > 0
    grad = next(f for f in report.findings if f.check == "grad" and f is not mismatch)
    assert grad.cause == "pad_mismatch" and grad.value > 0
    assert "masks id 0 only" in grad.why and "pad with 0" in grad.fix
    assert not audit(model, pad_idx=3, checks=TRAIN, allow=("pad_mismatch",)).leaks


def test_pad_idx_mapping_names_tables_by_path():
    model = functional(lambda x: MaskedDense(1)(x), mask_zero=False)
    by_int = audit(model, pad_idx=2, checks=("grad",))
    by_map = audit(model, pad_idx={"tok": 2}, checks=("grad",))
    assert by_map.tables[0].pad_idx == 2 and by_map.tables[0].grad == by_int.tables[0].grad
    with pytest.raises(PadAuditError, match=r"pad_idx names 'embed'.*paths from 'tok'"):
        audit(model, pad_idx={"embed": 2})


@pytest.mark.parametrize(
    ("pad_idx", "quoted"),
    [(-100, "pad_idx=-100"), (VOCAB, f"pad_idx={VOCAB}"), ({"tok": 99}, "pad_idx={'tok': 99}")],
)
def test_out_of_range_pad_idx_is_quoted_as_written(pad_idx, quoted):
    model = functional(lambda x: MaskedDense(1)(x), mask_zero=False)
    with pytest.raises(PadAuditError) as info:
        audit(model, pad_idx=pad_idx)
    text = str(info.value)
    assert text.startswith(quoted + " is out of range") and f"{VOCAB} rows" in text
    assert f"between 0 and {VOCAB - 1}" in text


def test_negative_pad_idx_in_range_counts_from_the_last_row():
    model = functional(lambda x: MaskedDense(1)(x), mask_zero=False)
    report = audit(model, pad_idx=-1, checks=("grad",))
    assert report.tables[0].pad_idx == VOCAB - 1 and report.batch["pad_idx"] == VOCAB - 1


# -- a tied head: ReversibleEmbedding(reverse=True) -----------------------------------
class ReversibleLM(keras.Model):
    """Embedding(mask_zero) -> body -> the same table as the logits head.

    The body is the masked Dense (pad positions zeroed) unless ``leaky``.
    """

    def __init__(self, leaky: bool = False) -> None:
        super().__init__()
        self.embed = layers.ReversibleEmbedding(VOCAB, DIM, mask_zero=True, name="tok")
        self.body = (layers.Dense if leaky else MaskedDense)(DIM, name="body")

    def hidden(self, ids):
        return self.body(self.embed(ids))

    def call(self, ids):
        return self.embed(self.hidden(ids), reverse=True)


def _fixed_loss(masked):
    def loss(output, batch):
        mask = batch.mask.numpy() if masked else None
        return tf.reduce_sum(output * weights_for(output, mask)[0])

    return loss


@pytest.mark.parametrize("masked", [True, False])
def test_tied_split_of_a_reversible_embedding_matches_plain_tensorflow(masked):
    model = built(ReversibleLM())
    report = audit(model, loss=_fixed_loss(masked), checks=TRAIN)
    ids, mask = batch_of(report)
    lookup, head = tied_split(
        lambda: model.hidden(ids),
        model.embed,
        0,
        mask if masked else None,
        check=lambda: model(ids),
    )
    (table,) = report.tables
    assert head > 0 and table.head_grad == pytest.approx(head, rel=1e-4)
    assert table.grad == pytest.approx(lookup, rel=1e-4, abs=1e-7)
    causes = sorted(f.cause for f in report.findings if f.check == "grad")
    # the masked body keeps pad positions out of the loss either way: the lookup part is 0
    assert lookup == 0.0 and causes == ["tied"]
    assert "reverse=True" in next(f for f in report.findings if f.cause == "tied").why
    assert audit(model, loss=_fixed_loss(masked), checks=TRAIN, allow=("tied",)).passed


def test_allow_tied_does_not_cover_what_the_lookup_puts_on_the_pad_row():
    model = built(ReversibleLM(leaky=True))  # a plain Dense: pad positions reach the logits
    report = audit(model, loss=_fixed_loss(False), checks=TRAIN, allow=("tied",))
    ids, _ = batch_of(report)
    lookup, head = tied_split(lambda: model.hidden(ids), model.embed, 0, None)
    assert lookup > 0 and head > 0
    (table,) = report.tables
    assert table.grad == pytest.approx(lookup, rel=1e-4)
    assert table.head_grad == pytest.approx(head, rel=1e-4)
    assert not report.passed
    assert [f.cause for f in report.leaks if f.check == "grad"] == ["unmasked"]


def test_step_uses_the_full_gradient_of_a_tied_table():
    model = built(ReversibleLM())
    report = audit(model, loss=_fixed_loss(True), checks=TRAIN, allow=("tied",))
    ids, mask = batch_of(report)
    with tf.GradientTape() as tape:
        out = model(ids)
        loss = tf.reduce_sum(out * weights_for(out, mask)[0])
    grad = tape.gradient(loss, model.embed.embeddings)
    full = dense_row(grad, VOCAB, 0)  # IndexedSlices (lookup) + dense (head), densified
    (table,) = report.tables
    # SGD(learning_rate=1): the row moves by the whole gradient, head part included
    assert table.update == pytest.approx(float(np.abs(full).max()), rel=1e-4)
    assert next(f for f in report.findings if f.check == "update").cause == "tied"
