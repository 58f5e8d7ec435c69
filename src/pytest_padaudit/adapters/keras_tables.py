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


def base_variable(layer: Any) -> Any:
    """Return the Embedding's stored table variable."""
    base = getattr(layer, "_embeddings", None)
    return base if base is not None else layer.embeddings


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
