"""The invariance check on Keras models: leaks localised, masked twins quiet."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
pytest.importorskip("keras.layers")
keras = pytest.importorskip("keras")

from keras import layers

from pytest_padaudit import audit

from support.keras_zoo import MaskedDense, MeanOverTime, functional

pytestmark = pytest.mark.filterwarnings("ignore:.*does not support masking")
INV = ("invariance",)


def invariance_finding(report):
    (found,) = [f for f in report.findings if f.check == "invariance"]
    return found


def test_plain_reduce_mean_leaks_and_is_localised():
    model = functional(lambda x: layers.Dense(1, name="head")(MeanOverTime(name="pool")(x)))
    report = audit(model, checks=INV)
    found = invariance_finding(report)
    assert report.invariance.first_module == "pool" and found.layer == "pool"
    assert found.cause == "invariance" and found.value > 1e-2
    assert "pad positions first reach the real positions in pool" in found.why
    assert "unmasked ops.mean" in found.why and "GlobalAveragePooling1D" in found.fix


def test_masked_twin_global_average_pooling_is_quiet():
    model = functional(lambda x: layers.Dense(1)(layers.GlobalAveragePooling1D()(x)))
    report = audit(model, checks=INV)
    assert report.passed, report.failure_message()
    assert report.invariance.value <= 1e-4


def test_gru_without_a_mask_leaks_and_lstm_with_one_is_quiet():
    leaky = functional(lambda x: layers.Dense(1)(layers.GRU(4, name="rnn")(x)), mask_zero=False)
    report = audit(leaky, pad_idx=0, checks=INV)
    found = invariance_finding(report)
    assert found.layer == "rnn" and "GRU runs over the pad positions" in found.why
    quiet = functional(lambda x: layers.Dense(1)(layers.LSTM(4)(x)))
    assert audit(quiet, checks=INV).passed


def test_self_attention_fed_by_a_mask_zero_embedding_is_quiet():
    def body(x):
        y = layers.MultiHeadAttention(num_heads=2, key_dim=4, name="attn")(x, x)
        return MaskedDense(3)(y)

    report = audit(functional(body))
    assert report.passed, report.failure_message()
    assert report.invariance.value <= 1e-4  # the key bias' ~1e-10 noise is no alarm


def test_self_attention_without_a_mask_leaks_in_the_attention():
    def body(x):
        return layers.Dense(3)(layers.MultiHeadAttention(2, 4, name="attn")(x, x))

    report = audit(functional(body, mask_zero=False), pad_idx=0, checks=INV)
    found = invariance_finding(report)
    assert found.layer == "attn" and "attends to the pad keys" in found.why


def test_per_token_tagger_with_dropout_is_quiet():
    model = functional(lambda x: MaskedDense(5)(layers.Dropout(0.5)(x)))
    report = audit(model, checks=("grad", "update", "invariance"))
    assert report.passed, report.failure_message()
    assert report.invariance.value == 0.0


def test_left_padding_keeps_masked_models_quiet():
    model = functional(lambda x: layers.Dense(1)(layers.GlobalAveragePooling1D()(x)))
    report = audit(model, checks=INV, padding_side="left")
    assert report.passed, report.failure_message()
    assert report.batch["padding_side"] == "left"


def test_bidirectional_lstm_then_plain_mean_is_localised_at_the_mean():
    # the pooled width (2 x 8) equals seq_len (16), and the backward LSTM runs reversed:
    # neither may move the blame away from the mean
    def body(x):
        x = layers.Bidirectional(layers.LSTM(8, return_sequences=True), name="bilstm")(x)
        return layers.Dense(3)(MeanOverTime(name="pool")(x))

    report = audit(functional(body), checks=INV, seq_len=16)
    assert invariance_finding(report).layer == "pool"
