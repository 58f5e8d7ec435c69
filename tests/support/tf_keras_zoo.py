"""The Keras zoo rebuilt with ``tf_keras`` (Keras 2) layers: plain ``tf`` ops, no ``keras.ops``."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from collections.abc import Callable
from typing import Any

import tensorflow as tf
import tf_keras

tk = tf_keras.layers
VOCAB, DIM = 50, 8


class MaskedDense(tk.Dense):
    """A Dense that zeroes its inputs at masked positions (tf.cast(mask, x.dtype))."""

    def call(self, inputs: Any, mask: Any = None) -> Any:
        if mask is not None:
            inputs = inputs * tf.cast(mask[..., None], inputs.dtype)
        return super().call(inputs)


class MeanOverTime(tk.Layer):
    """A plain reduce_mean over the sequence: pad positions count as data."""

    def call(self, x: Any) -> Any:
        return tf.reduce_mean(x, axis=1)


class OneHotEmbedding(tk.Embedding):
    """An Embedding whose lookup is a one-hot matmul: its gradient is dense."""

    def call(self, inputs: Any) -> Any:
        onehot = tf.one_hot(tf.cast(inputs, tf.int32), self.input_dim)
        return tf.matmul(onehot, self.embeddings)


class TiedLM(tf_keras.Model):
    """A subclassed LM whose logits reuse the embedding table outside the lookup."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = tk.Embedding(VOCAB, DIM, mask_zero=True, name="tok")
        self.body = MaskedDense(DIM, name="body")

    def call(self, ids: Any) -> Any:
        return tf.matmul(self.body(self.embed(ids)), self.embed.embeddings, transpose_b=True)


def functional(
    body: Callable[[Any], Any],
    *,
    mask_zero: bool = True,
    seq_len: int | None = None,
    embedding: type = tk.Embedding,
    **kwargs: Any,
) -> tf_keras.Model:
    """Return ``Input -> Embedding -> body`` as a tf_keras functional model."""
    tf_keras.utils.set_random_seed(0)
    ids = tf_keras.Input((seq_len,), dtype="int32", name="ids")
    x = embedding(VOCAB, DIM, mask_zero=mask_zero, name="tok", **kwargs)(ids)
    return tf_keras.Model(ids, body(x))


def seed_model(masked: bool = True) -> tf_keras.Model:
    """Embedding(mask_zero) -> MaskedDense (or plain Dense) -> one unit per token."""
    dense = MaskedDense if masked else tk.Dense
    return functional(lambda x: dense(1, use_bias=False, name="dense")(x))


def built(model: tf_keras.Model) -> tf_keras.Model:
    """Call a subclassed model once so its weights exist."""
    model(tf.ones((1, 3), tf.int32))
    return model


#: name -> (builder, audit options); the same models as test_keras_tables_truth's ZOO
ZOO: dict[str, tuple[Callable[[], Any], dict]] = {
    "seed_masked": (lambda: seed_model(masked=True), {}),
    "seed_plain_dense": (lambda: seed_model(masked=False), {}),
    "seed_plain_dense_masked_loss": (lambda: seed_model(masked=False), {"loss": "masked"}),
    "lstm": (lambda: functional(lambda x: tk.LSTM(4, name="lstm")(x)), {}),
    "gru_sequences": (lambda: functional(lambda x: tk.GRU(4, return_sequences=True)(x)), {}),
    "global_average_pooling": (
        lambda: functional(lambda x: tk.Dense(2)(tk.GlobalAveragePooling1D()(x))),
        {},
    ),
    "mean_over_time": (lambda: functional(lambda x: MeanOverTime(name="pool")(x)), {}),
    "flatten": (
        lambda: functional(lambda x: tk.Dense(1)(tk.Flatten(name="flat")(x)), seq_len=16),
        {},
    ),
    "no_mask_zero": (lambda: functional(lambda x: MaskedDense(1)(x), mask_zero=False), {}),
    "one_hot_lookup": (
        lambda: functional(lambda x: MaskedDense(1)(x), embedding=OneHotEmbedding),
        {"loss": "masked"},
    ),
    "tied_lm_matmul": (lambda: built(TiedLM()), {"loss": "masked"}),
    "max_norm": (
        lambda: functional(
            lambda x: MaskedDense(1)(x),
            embeddings_constraint=tf_keras.constraints.MaxNorm(0.01),
        ),
        {},
    ),
}


def table(model: Any, path: str = "tok") -> Any:
    """Return the Embedding layer called ``path`` inside ``model``."""
    for layer in [model, *model._flatten_layers(include_self=False)]:
        if layer.name == path and isinstance(layer, tk.Embedding):
            return layer
    raise AssertionError(f"no table {path}")
