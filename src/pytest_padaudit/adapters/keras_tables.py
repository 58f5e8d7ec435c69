"""Keras embedding tables: the variables behind a table, its rows as looked up, its notes."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from .keras_calls import tf_variable, to_numpy
from .keras_optim import row_of


def own_variables(layer: Any) -> list[Any]:
    """Return the variables a layer tracks itself (not through its sub-layers)."""
    own = [
        *(getattr(layer, "_trainable_variables", None) or []),
        *(getattr(layer, "_non_trainable_variables", None) or []),
    ]
    if not own:  # tf_keras
        own = [
            *(getattr(layer, "_trainable_weights", None) or []),
            *(getattr(layer, "_non_trainable_weights", None) or []),
        ]
    return own


def is_table(layer: Any, keras: Any) -> bool:
    """Say whether a layer holds an embedding table: an Embedding or a position table."""
    return isinstance(layer, keras.layers.Embedding) or is_position_table(layer)


def is_position_table(layer: Any) -> bool:
    """Say whether a layer is a learned position table (keras-hub ``PositionEmbedding``)."""
    return type(layer).__name__.endswith("PositionEmbedding") and hasattr(
        layer, "position_embeddings"
    )


def base_variable(layer: Any) -> Any:
    """Return the table's stored variable (an Embedding's, or a position table's)."""
    if is_position_table(layer):
        return layer.position_embeddings
    base = getattr(layer, "_embeddings", None)
    return base if base is not None else layer.embeddings


def table_shape(layer: Any) -> tuple[int, int]:
    """Return (rows, dim) of a table."""
    if is_position_table(layer):
        rows, dim = tuple(layer.position_embeddings.shape)[:2]
        return int(rows), int(dim)
    return int(layer.input_dim), int(layer.output_dim)


def is_reverse_call(args: tuple, kwargs: dict) -> bool:
    """Say whether a ``ReversibleEmbedding`` call projects hidden states to logits."""
    flag = kwargs.get("reverse", args[1] if len(args) > 1 else False)
    return isinstance(flag, bool) and flag


def lookup_ids(layer: Any, args: tuple, kwargs: dict) -> Any:
    """Return the id tensor a table call looked up (None: a reverse or position call)."""
    if is_position_table(layer) or is_reverse_call(args, kwargs):
        return None
    ids = args[0] if args else kwargs.get("inputs")
    return ids if tf.is_tensor(ids) else None


def head_row(layer: Any, hidden: Any, logits: Any, grad: Any, pad: int) -> np.ndarray:
    """Return the pad row's gradient through one reverse (logits) call of a tied table.

    ``logits = hidden @ W.T`` (then ``c * tanh(logits / c)`` with a soft cap ``c``), so
    the row ``W[pad]`` gets ``sum over positions of dL/dz[..., pad] * hidden``.
    """
    g = tf.cast(grad[..., pad], tf.float32)
    cap = getattr(layer, "logit_soft_cap", None)
    if cap:
        g = g * (1.0 - tf.square(tf.cast(logits[..., pad], tf.float32) / float(cap)))
    h = tf.cast(hidden, tf.float32)
    dim = int(h.shape[-1])
    return to_numpy(tf.reduce_sum(tf.reshape(g[..., None] * h, (-1, dim)), axis=0))


def table_variables(layer: Any) -> list[Any]:
    """Return the trainable variables that make up the table's rows."""
    if not layer.trainable:
        return []
    if getattr(layer, "lora_enabled", False):
        parts = [layer.lora_embeddings_a, layer.lora_embeddings_b]
    else:
        parts = [base_variable(layer)]
    trainable = {id(v) for v in layer.trainable_variables}
    return [v for v in parts if id(v) in trainable]


def constraint(layer: Any) -> Any:
    """Return the table's embeddings constraint, if any."""
    return getattr(layer, "embeddings_constraint", None)


def effective_row(layer: Any, pad: int) -> np.ndarray:
    """Return row ``pad`` as the layer looks it up (LoRA: base + scaled delta)."""
    row = tf.cast(row_of(tf_variable(base_variable(layer)), pad), tf.float32)
    if getattr(layer, "lora_enabled", False):
        a = row_of(tf_variable(layer.lora_embeddings_a), pad)
        delta = tf.matmul(a, tf.convert_to_tensor(tf_variable(layer.lora_embeddings_b)))
        row = row + (layer.lora_alpha / layer.lora_rank) * tf.cast(delta, tf.float32)
        row = tf.cast(tf.cast(row, layer.compute_dtype), tf.float32)
    return to_numpy(row[0])


def notes(layer: Any) -> tuple[str, ...]:
    """Return what is worth knowing about a table: mask_zero, LoRA, constraint, ..."""
    found = []
    if getattr(layer, "mask_zero", False):
        found.append("mask_zero=True")
    if getattr(layer, "lora_enabled", False):
        found.append(f"lora_rank={layer.lora_rank}")
    for name in ("embeddings_constraint", "embeddings_regularizer", "quantization_mode"):
        value = getattr(layer, name, None)
        if value:
            found.append(f"{name}={getattr(value, '__name__', type(value).__name__)}")
    return tuple(found)
