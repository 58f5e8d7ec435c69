"""Keras examples: a text classifier whose padding is masked, and a leaky one that FAILS.

Run with ``pytest examples``; TensorFlow is needed (``pip install -e ".[torch,tensorflow]"``).
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from keras import layers


def classifier(pooling: layers.Layer) -> keras.Model:
    """Embedding (pad id 0 masked) -> BiLSTM -> pooling -> 3 classes."""
    keras.utils.set_random_seed(0)  # the same weights on every run
    ids = keras.Input((None,), dtype="int32")
    x = layers.Embedding(100, 16, mask_zero=True)(ids)
    x = layers.Bidirectional(layers.LSTM(8, return_sequences=True))(x)
    return keras.Model(ids, layers.Dense(3)(pooling(x)))


@pytest.fixture
def masked_classifier() -> keras.Model:
    return classifier(layers.GlobalAveragePooling1D())


@pytest.fixture
def leaky_classifier() -> keras.Model:
    # a plain mean over the sequence: pad positions count as data
    return classifier(layers.Lambda(lambda x: keras.ops.mean(x, axis=1)))


@pytest.mark.padaudit(optimizer=keras.optimizers.Adam(1e-3))
def test_masked_classifier(masked_classifier: keras.Model) -> None:
    assert masked_classifier.output_shape == (None, 3)


@pytest.mark.filterwarnings("ignore:.*does not support masking")
def test_leaky_classifier(padaudit, leaky_classifier: keras.Model) -> None:
    """The mean pools pad positions: this test FAILS and the message names the layer."""
    padaudit(leaky_classifier)
