"""Tiny Keras models written with ``keras.ops`` only, so they build on every Keras backend.

Vocab 50, dim 8; the token table is an ``Embedding`` named "tok". Every weight is drawn from
a seeded NumPy generator (Keras' own initialisers draw differently on each backend), so the
same model on tensorflow, jax and torch has the same weights and the same gradients.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import layers, ops

VOCAB, DIM = 50, 8


class MaskedDense(layers.Dense):
    """The seed's Dense that zeroes its inputs at masked positions."""

    def call(self, inputs: Any, mask: Any = None) -> Any:
        if mask is not None:
            inputs = inputs * ops.cast(ops.expand_dims(mask, -1), inputs.dtype)
        return super().call(inputs)


def seeded(model: keras.Model, seed: int = 0) -> keras.Model:
    """Set every weight of ``model`` from a seeded NumPy generator; return the model."""
    rng = np.random.default_rng(seed)
    model.set_weights(
        [rng.uniform(-0.5, 0.5, w.shape).astype(w.dtype) for w in model.get_weights()]
    )
    return model


def functional(
    body: Callable[[Any], Any], *, mask_zero: bool = True, seq_len: int | None = None
) -> keras.Model:
    """Return ``Input -> Embedding("tok") -> body`` as a functional model, seeded."""
    ids = keras.Input((seq_len,), dtype="int32", name="ids")
    x = layers.Embedding(VOCAB, DIM, mask_zero=mask_zero, name="tok")(ids)
    return seeded(keras.Model(ids, body(x)))


def seed_model(masked: bool = True) -> keras.Model:
    """The seed: Embedding(mask_zero) -> MaskedDense (or plain Dense) -> one unit per token."""
    dense = MaskedDense if masked else layers.Dense
    return functional(lambda x: dense(1, use_bias=False, name="dense")(x))


def lstm() -> keras.Model:
    """Embedding(mask_zero) -> LSTM(4) (last state, masked steps skipped) -> Dense(1)."""
    return functional(lambda x: layers.Dense(1)(layers.LSTM(4)(x)))


def global_average_pooling() -> keras.Model:
    """Embedding(mask_zero) -> GlobalAveragePooling1D (masked mean) -> Dense(2)."""
    return functional(lambda x: layers.Dense(2)(layers.GlobalAveragePooling1D()(x)))


def flatten() -> keras.Model:
    """Embedding(mask_zero) over 16 fixed positions -> Flatten (drops the mask) -> Dense(1)."""
    return functional(lambda x: layers.Dense(1)(layers.Flatten()(x)), seq_len=16)


def attention(mask_zero: bool = True) -> keras.Model:
    """Embedding -> MultiHeadAttention(2 heads, key_dim 4) over itself -> mean -> Dense(1).

    With ``mask_zero`` Keras turns the embedding's mask into the attention mask.
    """

    def body(x: Any) -> Any:
        attended = layers.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")(x, x)
        return layers.Dense(1)(layers.GlobalAveragePooling1D()(attended))

    return functional(body, mask_zero=mask_zero)


class TiedLogits(layers.Layer):
    """Logits ``hidden @ E.T`` from the Embedding's own table, read outside its lookup."""

    def __init__(self, embedding: layers.Embedding, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embedding = embedding

    def call(self, hidden: Any) -> Any:
        return ops.matmul(hidden, ops.transpose(self.embedding.embeddings))


def tied_logits() -> keras.Model:
    """Embedding -> MaskedDense(DIM) -> logits over the vocabulary from the same table."""
    ids = keras.Input((None,), dtype="int32", name="ids")
    table = layers.Embedding(VOCAB, DIM, mask_zero=True, name="tok")
    hidden = MaskedDense(DIM, name="body")(table(ids))
    return seeded(keras.Model(ids, TiedLogits(table, name="logits")(hidden)))
