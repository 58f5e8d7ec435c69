"""Plain-Keras ground truth on any backend: no padaudit in the loop.

The loss is the audit's documented one, a weighted sum of the model's float outputs with
seeded weights in [0.5, 1.5) (``loss="masked"``: zero at pad positions). The weights are
drawn from the stream the audit draws from, ``default_rng([seed, 7919, output index])``,
restated here so that the values, not only the verdicts, can be compared. The gradient
comes from the backend's own autodiff: ``tf.GradientTape`` (``IndexedSlices`` densified
with ``unsorted_segment_sum``), ``jax.grad`` of ``model.stateless_call``, or
``torch.autograd.grad``.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

#: the second entry of the audit's loss-weight seed (its train-pass stream).
LOSS_SALT = 7919


RTOL, ATOL = 1e-4, 1e-6


def close(audited: float | None, truth: float) -> bool:
    """Say whether an audited value matches the truth (rtol 1e-4, atol 1e-6)."""
    return audited is not None and bool(np.isclose(audited, truth, rtol=RTOL, atol=ATOL))


def batch_of(report: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return (ids int32, mask bool) of the batch an audit used, rebuilt from its report."""
    b = report.batch
    ids = np.array(b["ids"], dtype=np.int32)
    lengths = np.array(b["lengths"])
    cols = np.arange(ids.shape[1])
    if b["padding_side"] == "right":
        mask = cols[None, :] < lengths[:, None]
    else:
        mask = cols[None, :] >= (ids.shape[1] - lengths)[:, None]
    return ids, mask


def loss_weights(
    index: int, shape: tuple[int, ...], seed: int, mask: np.ndarray | None
) -> np.ndarray:
    """Return float32 weights in [0.5, 1.5) for output ``index``; zero at pads when masked."""
    w = np.random.default_rng([seed, LOSS_SALT, index]).random(shape, dtype=np.float32)
    w = w + np.float32(0.5)
    if mask is not None and len(shape) >= 2 and tuple(shape[:2]) == mask.shape:
        w = w * mask.reshape(mask.shape + (1,) * (len(shape) - 2))
    return w


def weighted_sum(output: Any, seed: int, mask: np.ndarray | None) -> Any:
    """Return the scalar loss over the float outputs, in ``keras.ops`` (any backend)."""
    floats = [t for t in keras.tree.flatten(output) if "float" in str(t.dtype)]
    total = ops.zeros((), "float32")
    for index, t in enumerate(floats):
        w = loss_weights(index, tuple(int(n) for n in t.shape), seed, mask)
        total = total + ops.sum(ops.cast(t, "float32") * ops.convert_to_tensor(w))
    return total


def gradients(
    model: keras.Model, ids: np.ndarray, seed: int, mask: np.ndarray | None
) -> list[np.ndarray]:
    """Return the dense gradient of the loss for each of ``model.trainable_variables``."""
    backend = keras.config.backend()
    variables = model.trainable_variables
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = weighted_sum(model(ids, training=True), seed, mask)
        grads = tape.gradient(loss, variables)
        out = []
        for v, g in zip(variables, grads, strict=True):
            if isinstance(g, tf.IndexedSlices):  # the lookup's gradient: sum duplicates
                g = tf.math.unsorted_segment_sum(g.values, g.indices, int(v.shape[0]))
            out.append(np.zeros(v.shape, np.float32) if g is None else np.asarray(g))
        return out
    if backend == "jax":
        import jax

        def loss_of(trainable: list[Any], non_trainable: list[Any]) -> Any:
            output, _ = model.stateless_call(trainable, non_trainable, ids, training=True)
            return weighted_sum(output, seed, mask)

        trainable = [v.value for v in variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        return [np.asarray(g) for g in jax.grad(loss_of)(trainable, non_trainable)]
    if backend == "torch":
        import torch

        loss = weighted_sum(model(ids, training=True), seed, mask)
        values = [v.value for v in variables]
        grads = torch.autograd.grad(loss, values, allow_unused=True)
        return [
            np.zeros(tuple(v.shape), np.float32) if g is None else g.detach().cpu().numpy()
            for v, g in zip(values, grads, strict=True)
        ]
    raise NotImplementedError(f"no ground truth for the {backend!r} backend")


def table_grad(
    model: keras.Model, table: Any, ids: np.ndarray, seed: int, mask: np.ndarray | None
) -> np.ndarray:
    """Return the dense gradient of the table variable ``table`` (zeros if it gets none)."""
    for v, g in zip(model.trainable_variables, gradients(model, ids, seed, mask), strict=True):
        if v is table:
            return g
    raise AssertionError(f"{table.path} is not a trainable variable of {model.name}")


def stepped_change(optimizer: Any, table: Any, grad: np.ndarray, pad: int) -> float:
    """Return max|Δ| of row ``pad`` after one step of a fresh copy of ``optimizer``.

    The step is applied to a copy of the whole table, with its whole dense gradient.
    """
    fresh = type(optimizer).from_config(optimizer.get_config())
    start = np.array(ops.convert_to_numpy(table.value))
    copy = keras.Variable(start, name="table_copy")
    fresh.apply_gradients([(ops.convert_to_tensor(grad), copy)])
    moved = np.array(ops.convert_to_numpy(copy.value))
    return float(np.abs(moved[pad] - start[pad]).max())


def snapshot(model: keras.Model) -> list[np.ndarray]:
    """Return a copy of every variable of ``model`` (trainable or not)."""
    return [np.array(ops.convert_to_numpy(v.value)) for v in model.variables]
