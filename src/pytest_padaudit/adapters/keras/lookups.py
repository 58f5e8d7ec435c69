"""What the embedding tables do in one pass: the ids they look up, the logits they project.

A tied table (keras-hub's ``ReversibleEmbedding``, ``tie_weights=True``) is both the
lookup and, called with ``reverse=True``, the output projection. Its pad-row gradient is
split in two, each part computed directly from the gradient w.r.t. a call's output:
the lookup part sums that gradient over the pad positions; the head part is
``sum over positions of dL/dlogits[..., pad] * hidden`` (see :func:`head_row`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from .calls import to_numpy
from .tables import head_row, is_reverse_call, lookup_ids


class TableCalls:
    """Record the lookups and the tied-head calls of tables during one pass."""

    def __init__(self) -> None:
        #: (path, ids, output) per lookup call.
        self.lookups: list[tuple[str, Any, Any]] = []
        #: (path, layer, hidden states, logits) per reverse call of a tied table.
        self.heads: list[tuple[str, Any, Any, Any]] = []

    def record(self, path: str, layer: Any, args: tuple, kwargs: dict, out: Any) -> None:
        """Keep one table call (a ``keras_calls.Recorder``)."""
        if not tf.is_tensor(out):
            return
        if is_reverse_call(args, kwargs):
            if getattr(layer, "tie_weights", False) and args:
                self.heads.append((path, layer, args[0], out))
            return
        ids = lookup_ids(layer, args, kwargs)
        if ids is not None:
            self.lookups.append((path, ids, out))

    def outputs(self) -> list[Any]:
        """Return the call outputs whose gradients :meth:`pad_rows` needs, in order."""
        return [out for _, _, out in self.lookups] + [out for *_, out in self.heads]

    def pad_rows(
        self, grads: list[Any], pads: dict[str, int]
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Return (lookup part, head part) of each table's pad-row gradient.

        ``grads`` are the gradients w.r.t. :meth:`outputs`.
        """
        split = len(self.lookups)
        through: dict[str, np.ndarray] = {}
        for (path, ids, _), grad in zip(self.lookups, grads[:split], strict=True):
            if grad is not None:
                hit = tf.equal(tf.cast(ids, tf.int64), pads[path])
                _add(through, path, to_numpy(tf.reduce_sum(tf.boolean_mask(grad, hit), axis=0)))
        heads: dict[str, np.ndarray] = {}
        for (path, layer, hidden, logits), grad in zip(self.heads, grads[split:], strict=True):
            if grad is not None:
                _add(heads, path, head_row(layer, hidden, logits, grad, pads[path]))
        return through, heads


class SeenIds:
    """Record the distinct ids each table looks up (a ``keras_calls.Recorder``)."""

    def __init__(self, paths: list[str]) -> None:
        self.seen: dict[str, list[np.ndarray]] = {path: [] for path in paths}

    def record(self, path: str, layer: Any, args: tuple, kwargs: dict, out: Any) -> None:
        ids = lookup_ids(layer, args, kwargs)
        if ids is not None:
            self.seen[path].append(np.unique(np.asarray(tf.cast(ids, tf.int64)).ravel()))

    def result(self) -> dict[str, np.ndarray]:
        """Return {path: sorted distinct ids} (empty for a table never looked up)."""
        return {
            path: np.unique(np.concatenate(ids)) if ids else np.empty(0, np.int64)
            for path, ids in self.seen.items()
        }


def _add(rows: dict[str, np.ndarray], path: str, row: np.ndarray) -> None:
    rows[path] = rows[path] + row if path in rows else row
