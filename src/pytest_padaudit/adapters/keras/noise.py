"""Noise at the pad positions of Keras Embedding calls, for the invariance check.

A model that cannot take a wider batch is measured by replacing the vectors its token
tables emit at pad positions with seeded noise and comparing with the plain pass. The
Embedding's ``call`` is wrapped (:func:`recorded_calls`), so Keras still attaches its
mask to the result. Pure TensorFlow ops: it works inside a ``tf.function`` too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import tensorflow as tf

from ...errors import PadAuditError
from ...handle import Table
from .calls import recorded_calls


@contextmanager
def noise_at_pads(
    layers: Mapping[str, Any], tables: Sequence[Table], seed: int | None
) -> Iterator[None]:
    """Replace each token table's vectors at its pad id with seeded noise of its scale.

    The scale is the standard deviation of the vectors it emits at the other ids.
    Raise :class:`PadAuditError` when no table emitted a vector at a pad position.
    """
    if seed is None:
        yield
        return
    tables = [t for t in tables if getattr(t, "token", None) is not False]
    number = {t.path: (k, t.pad_idx) for k, t in enumerate(tables)}
    calls: dict[str, int] = {}

    def noise(path: str, layer: Any, args: tuple, kwargs: dict, out: Any) -> Any:
        ids = args[0] if args else kwargs.get("inputs")
        if not (tf.is_tensor(ids) and tf.is_tensor(out)):
            return None
        if out.shape.rank != ids.shape.rank + 1 or not out.dtype.is_floating:
            return None
        at = tf.equal(tf.cast(ids, tf.int64), number[path][1])
        if tf.executing_eagerly() and not bool(tf.reduce_any(at)):
            return None
        calls[path] = calls.get(path, 0) + 1
        others = tf.cast(tf.boolean_mask(out, tf.logical_not(at)), tf.float32)
        scale = tf.math.reduce_std(others)
        scale = tf.where(tf.math.is_finite(scale) & (scale > 0), scale, 1.0)
        key = [seed % (2**31 - 1), 104729 * (number[path][0] + 1) + calls[path]]
        values = tf.random.stateless_normal(tf.shape(out), key) * scale
        return tf.where(at[..., None], tf.cast(values, out.dtype), out)

    with recorded_calls([(t.path, layers[t.path]) for t in tables], noise):
        yield
    if not calls:
        names = ", ".join(t.path for t in tables) or "none"
        raise PadAuditError(
            f"no token table ({names}) emitted a vector at a pad position: only "
            "Embedding lookups of the pad id can be replaced"
        )
