"""Keras plumbing shared by the adapter: layer paths, call recording, tensor helpers.

Works for Keras 3 (TensorFlow backend) and ``tf_keras`` by duck typing: layers are walked
with ``_flatten_layers`` (both have it) and calls are recorded by shadowing a layer's
``call`` with an instance attribute, which both ``Layer.__call__`` implementations use.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import tensorflow as tf

from ...handle import output_leaves

_MISSING = object()
#: Signature of a call recorder: (path, layer, args, kwargs, outputs) -> None, or what the
#: call returns instead of its outputs.
Recorder = Callable[[str, Any, tuple, dict, Any], Any]


def children(layer: Any) -> list[Any]:
    """Return a layer's direct sub-layers."""
    flatten = getattr(layer, "_flatten_layers", None)
    if callable(flatten):
        return list(flatten(include_self=False, recursive=False))
    return list(getattr(layer, "layers", None) or [])


def named_layers(model: Any) -> list[tuple[str, Any]]:
    """Return ``(path, layer)`` for every sub-layer, paths joined from layer names."""
    found: list[tuple[str, Any]] = []
    seen = {id(model)}

    def walk(layer: Any, prefix: str) -> None:
        for child in children(layer):
            if id(child) in seen:
                continue
            seen.add(id(child))
            path = f"{prefix}.{child.name}" if prefix else str(child.name)
            found.append((path, child))
            walk(child, path)

    walk(model, "")
    return found


def _recording_call(path: str, layer: Any, original: Callable, record: Recorder) -> Callable:
    def call(*args: Any, **kwargs: Any) -> Any:
        outputs = original(*args, **kwargs)
        replaced = record(path, layer, args, kwargs, outputs)
        return outputs if replaced is None else replaced

    return call


@contextmanager
def recorded_calls(layers: Sequence[tuple[str, Any]], record: Recorder) -> Iterator[None]:
    """Call ``record`` after each call of ``layers``; restore every ``call`` on exit.

    When ``record`` returns something other than None, the call returns that instead.
    """
    shadowed: list[tuple[Any, Any]] = []
    try:
        for path, layer in layers:
            if type(layer).__name__ == "InputLayer":
                continue
            own = layer.__dict__.get("call", _MISSING)
            object.__setattr__(layer, "call", _recording_call(path, layer, layer.call, record))
            shadowed.append((layer, own))
        yield
    finally:
        for layer, own in reversed(shadowed):
            if own is _MISSING:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", own)


def takes_mask(layer: Any) -> bool:
    """Say whether a layer's ``call`` accepts a ``mask`` (or ``*_mask``) argument."""
    names = getattr(layer, "call_signature_parameters", None)
    if names is None:
        try:
            names = list(inspect.signature(type(layer).call).parameters)
        except (TypeError, ValueError):
            return False
    return any(n == "mask" or n.endswith("_mask") for n in names)


def keras_mask(tensor: Any) -> Any:
    """Return the mask Keras attached to a tensor, else None."""
    return getattr(tensor, "_keras_mask", None)


def floating_tensors(output: Any) -> Iterator[tf.Tensor]:
    """Yield every floating-point tensor in a (nested) model output."""
    leaves = output_leaves(output, lambda x: tf.is_tensor(x) and not isinstance(x, tf.SparseTensor))
    return (t for t in leaves if t.dtype.is_floating)


def to_numpy(tensor: Any) -> np.ndarray:
    """Copy a tensor to a float32 NumPy array."""
    return np.array(tf.cast(tensor, tf.float32).numpy(), dtype=np.float32, copy=True)


def real(tensor: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Keep the real positions of a (batch, seq, ...) or (seq, batch, ...) tensor.

    A rank-2 tensor counts as per-token only when Keras attached a mask to it: a pooled
    (batch, features) output whose width happens to equal the sequence length is not.
    """
    rank = tensor.shape.rank or 0
    shape = tuple(tensor.shape[:2])
    if rank == 2 and keras_mask(tensor) is None:
        return tensor
    if rank >= 2 and shape == tuple(mask.shape):
        return tf.boolean_mask(tensor, mask)
    if rank >= 3 and shape == tuple(mask.shape)[::-1]:
        return tf.boolean_mask(tf.transpose(tensor, [1, 0, *range(2, rank)]), mask)
    return tensor


def tf_variable(variable: Any) -> Any:
    """Return the ``tf.Variable`` behind a Keras 3 variable (tf_keras: the variable)."""
    inner = getattr(variable, "_value", None)
    return inner if isinstance(inner, tf.Variable) else variable


def pad_row(grad: Any, pad: int) -> np.ndarray | None:
    """Return row ``pad`` of a gradient; IndexedSlices: the sum of its slices at ``pad``.

    Never densifies the table: only the slices whose index is ``pad`` are touched.
    """
    if grad is None:
        return None
    if isinstance(grad, tf.IndexedSlices):
        hit = np.asarray(grad.indices) == pad
        return to_numpy(grad.values)[hit].sum(0)
    return to_numpy(tf.gather(grad, pad))


def select_rows(grad: Any, rows: np.ndarray) -> np.ndarray:
    """Return the gradient's ``rows`` (sorted), summing duplicate slices, as NumPy."""
    if isinstance(grad, tf.IndexedSlices):
        index = grad.indices.numpy().astype(np.int64)
        values = to_numpy(grad.values)
        out = np.zeros((len(rows), *values.shape[1:]), dtype=np.float32)
        keep = np.isin(index, rows)
        np.add.at(out, np.searchsorted(rows, index[keep]), values[keep])
        return out
    return to_numpy(tf.gather(grad, rows))


def dense(grad: Any) -> np.ndarray:
    """Return a gradient as a dense NumPy array."""
    return to_numpy(tf.convert_to_tensor(grad))
