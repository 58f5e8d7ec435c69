"""Tiny Keras models for the Keras tests (vocab 50, dim 8): leaky ones and their masked twins."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf
from keras import layers, ops

VOCAB, DIM = 50, 8


class MaskedDense(layers.Dense):
    """The seed's Dense that zeroes its inputs at masked positions."""

    def call(self, inputs: Any, mask: Any = None) -> Any:
        if mask is not None:
            return super().call(inputs * tf.cast(mask[..., None], inputs.dtype))
        return super().call(inputs)


class MeanOverTime(layers.Layer):
    """A plain reduce_mean over the sequence: pad positions count as data."""

    def call(self, x: Any) -> Any:
        return ops.mean(x, axis=1)


class OneHotEmbedding(layers.Embedding):
    """An Embedding whose lookup is a one-hot matmul: its gradient is dense."""

    def call(self, inputs: Any) -> Any:
        onehot = ops.one_hot(ops.cast(inputs, "int32"), self.input_dim)
        return ops.matmul(onehot, self.embeddings)


class TiedLM(keras.Model):
    """A subclassed LM whose logits reuse the embedding table outside the lookup."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = layers.Embedding(VOCAB, DIM, mask_zero=True, name="tok")
        self.body = MaskedDense(DIM, name="body")

    def call(self, ids: Any) -> Any:
        return ops.matmul(self.body(self.embed(ids)), ops.transpose(self.embed.embeddings))


def functional(
    body: Callable[[Any], Any],
    *,
    mask_zero: bool = True,
    seq_len: int | None = None,
    embedding: type = layers.Embedding,
) -> keras.Model:
    """Return ``Input -> Embedding -> body`` as a functional model."""
    ids = keras.Input((seq_len,), dtype="int32", name="ids")
    x = embedding(VOCAB, DIM, mask_zero=mask_zero, name="tok")(ids)
    return keras.Model(ids, body(x))


def seed_model(masked: bool = True) -> keras.Model:
    """The seed: Embedding(mask_zero) -> MaskedDense (or plain Dense) -> one unit per token."""
    dense = MaskedDense if masked else layers.Dense
    return functional(lambda x: dense(1, use_bias=False, name="dense")(x))


def built(model: keras.Model) -> keras.Model:
    """Call a subclassed model once so its weights exist."""
    model(tf.ones((1, 3), tf.int32))
    return model
