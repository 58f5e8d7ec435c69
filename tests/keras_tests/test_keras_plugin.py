"""The padaudit marker and fixture on Keras models, run through pytester."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
pytest.importorskip("tensorflow")
pytest.importorskip("keras.layers")

TESTS = """
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
import pytest
import tensorflow as tf
from keras import layers


class MaskedDense(layers.Dense):
    def call(self, inputs, mask=None):
        if mask is not None:
            inputs = inputs * tf.cast(mask[..., None], inputs.dtype)
        return super().call(inputs)


def build(dense):
    ids = keras.Input((None,), dtype="int32")
    x = layers.Embedding(50, 8, mask_zero=True, name="tok")(ids)
    return keras.Model(ids, dense(1, use_bias=False, name="dense")(x))


@pytest.fixture
def masked_model():
    return build(MaskedDense)


@pytest.fixture
def leaky_model():
    return build(layers.Dense)


@pytest.mark.padaudit
def test_masked(masked_model):
    assert masked_model.count_params() > 0


@pytest.mark.padaudit(checks=("grad",))
def test_leaky(leaky_model):
    assert leaky_model.count_params() > 0


@pytest.mark.padaudit(loss="masked")
def test_leaky_with_fit_loss(leaky_model):
    pass


@pytest.mark.padaudit(optimizer=keras.optimizers.AdamW(1e-3), checks=("update",))
def test_adamw(masked_model):
    pass


def test_fixture(padaudit, leaky_model):
    report = padaudit(leaky_model, loss="masked")
    assert report.framework == "keras" and report.tables[0].layer == "tok"
    with pytest.raises(AssertionError, match="unmasked"):
        padaudit(leaky_model)
"""


def test_marker_and_fixture_on_keras_models(pytester):
    pytester.makepyfile(test_models=TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-W", "ignore::UserWarning")
    result.assert_outcomes(passed=3, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*FAILED test_models.py::test_leaky*",
            "*FAILED test_models.py::test_adamw*",
        ]
    )
    out = result.stdout.str()
    assert "[grad] tok (pad id 0): pad-row gradient" in out
    assert "Dense 'dense' receives the mask without applying it" in out
    assert "allow=('unmasked',)" in out
    assert "[update] tok (pad id 0)" in out and "AdamW(weight_decay=0.004)" in out
    assert "rerun:     pytest 'test_models.py::test_leaky' --padaudit-seed=0" in out
