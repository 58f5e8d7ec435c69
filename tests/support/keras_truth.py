"""Plain TensorFlow ground truth for the Keras verdict tests: no padaudit in the loop.

Each helper builds (or takes) a padded batch, forms a weighted sum of the model's outputs,
backpropagates with ``tf.GradientTape`` and reads the pad row of the densified gradient
(``tf.IndexedSlices`` are summed per index with ``tf.math.unsorted_segment_sum``).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf


def padded_batch(
    vocab: int, pad: int, *, batch: int = 4, width: int = 12, seed: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Return (ids int32, mask bool) with right padding; row 0 full, row 1 padded."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, width + 1, size=batch)
    lengths[0], lengths[1] = width, width // 2
    real = np.array([i for i in range(vocab) if i != pad])
    tokens = rng.choice(real, size=(batch, width))
    mask = np.arange(width)[None, :] < lengths[:, None]
    return np.where(mask, tokens, pad).astype(np.int32), mask


def dense_row(grad: Any, rows: int, pad: int) -> np.ndarray:
    """Return row ``pad`` of a gradient, IndexedSlices densified (duplicates summed)."""
    if isinstance(grad, tf.IndexedSlices):
        grad = tf.math.unsorted_segment_sum(grad.values, grad.indices, rows)
    return tf.convert_to_tensor(grad)[pad].numpy()


def weights_for(output: Any, mask: np.ndarray | None, seed: int = 3) -> list[np.ndarray]:
    """Return seeded weights in [0.5, 1.5) per floating output; zero at pads when masked."""
    rng = np.random.default_rng(seed)
    out = []
    for t in tf.nest.flatten(output):
        w = rng.random(tuple(t.shape), dtype=np.float32) + np.float32(0.5)
        if mask is not None and len(t.shape) >= 2 and tuple(t.shape[:2]) == mask.shape:
            w = w * mask.reshape(mask.shape + (1,) * (len(t.shape) - 2))
        out.append(w)
    return out


def weighted_sum(output: Any, weights: list[np.ndarray]) -> tf.Tensor:
    pairs = zip(tf.nest.flatten(output), weights, strict=True)
    return tf.add_n([tf.reduce_sum(tf.cast(t, tf.float32) * w) for t, w in pairs])


def pad_row_grad(
    call: Callable[[], Any], variable: Any, pad: int, mask: np.ndarray | None
) -> float:
    """Return max|g| of ``variable``'s row ``pad`` for the weighted sum of ``call()``."""
    with tf.GradientTape() as tape:
        output = call()
        loss = weighted_sum(output, weights_for(output, mask))
    grad = tape.gradient(loss, variable)
    if grad is None:
        return 0.0
    return float(np.abs(dense_row(grad, int(variable.shape[0]), pad)).max())


def tied_split(
    hidden_fn: Callable[[], Any],
    table: Any,
    pad: int,
    mask: np.ndarray | None,
    *,
    check: Callable[[], Any] | None = None,
) -> tuple[float, float]:
    """Return (lookup part, head part) of a tied table's pad-row gradient.

    ``hidden_fn()`` returns the hidden states the tied head projects; logits are
    ``hidden @ W.T``. Each part is computed on its own by stopping the other path. When
    ``check`` is given (the model's own logits), the logits are asserted to match.
    """
    w = table.embeddings
    rows = int(w.shape[0])
    with tf.GradientTape(persistent=True) as tape:
        hidden = tf.cast(hidden_fn(), tf.float32)
        head = tf.matmul(tf.stop_gradient(hidden), tf.cast(w, tf.float32), transpose_b=True)
        lookup = tf.matmul(hidden, tf.stop_gradient(tf.cast(w, tf.float32)), transpose_b=True)
        weights = weights_for(head, mask)
        loss_head, loss_lookup = weighted_sum(head, weights), weighted_sum(lookup, weights)
    if check is not None:
        np.testing.assert_allclose(check().numpy(), head.numpy(), rtol=1e-4, atol=1e-5)
    parts = []
    for loss in (loss_lookup, loss_head):
        grad = tape.gradient(loss, w)
        parts.append(0.0 if grad is None else float(np.abs(dense_row(grad, rows, pad)).max()))
    del tape
    return parts[0], parts[1]
