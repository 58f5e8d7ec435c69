"""What the embedding tables do in one pass: the ids they look up, the logits they project.

A tied table (keras-hub's ``ReversibleEmbedding``, ``tie_weights=True``) is both the
lookup and, called with ``reverse=True``, the output projection. Its pad-row gradient is
split in two, each part computed directly from the gradient w.r.t. a call's output:
the lookup part sums that gradient over the pad positions; the head part is
``sum over positions of dL/dlogits[..., pad] * hidden`` (see :func:`head_row`).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np

from .backends.base import Backend, Tap
from .tables import head_row, is_reverse_call, lookup_ids


class TableCalls:
    """Record the lookups and the tied-head calls of tables during one differentiated pass.

    Each recorded output goes through ``tap``, so that the pass returns its gradient.
    Only the tables at ``paths`` are recorded.
    """

    def __init__(self, backend: Backend, tap: Tap, paths: Collection[str]) -> None:
        self.backend = backend
        self.tap = tap
        self.paths = paths
        #: (path, layer, tensors) per call in tap order: a lookup keeps (ids,), a tied
        #: head (hidden states, logits).
        self.calls: list[tuple[str, Any, tuple[Any, ...]]] = []

    def record(self, path: str, layer: Any, args: tuple, kwargs: dict, out: Any) -> Any:
        """Keep one table call and return its tapped output (a ``calls.Recorder``)."""
        if path not in self.paths or not self.backend.is_floating(out):
            return None
        if is_reverse_call(args, kwargs):
            if not (getattr(layer, "tie_weights", False) and args):
                return None
            out = self.tap(out)
            self.calls.append((path, layer, (args[0], out)))
            return out
        ids = lookup_ids(self.backend, layer, args, kwargs)
        if ids is None:
            return None
        out = self.tap(out)
        self.calls.append((path, layer, (ids,)))
        return out

    def tensors(self) -> list[Any]:
        """Return the tensors :meth:`pad_rows` reads, to come back from the pass as values."""
        return [t for _, _, kept in self.calls for t in kept]

    def pad_rows(
        self, grads: list[Any], values: list[Any], pads: dict[str, int]
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Return (lookup part, head part) of each table's pad-row gradient.

        ``grads`` are the gradients w.r.t. the tapped outputs, ``values`` the
        :meth:`tensors` as the pass returned them.
        """
        to_numpy = self.backend.to_numpy
        it = iter(values)
        through: dict[str, np.ndarray] = {}
        heads: dict[str, np.ndarray] = {}
        for (path, layer, kept), grad in zip(self.calls, grads, strict=True):
            found = [next(it) for _ in kept]
            if grad is None:
                continue
            if len(kept) == 1:
                hit = self.backend.ints(found[0]) == pads[path]
                _add(through, path, to_numpy(grad)[hit].sum(0))
            else:
                hidden, logits = (to_numpy(t) for t in found)
                _add(heads, path, head_row(layer, hidden, logits, to_numpy(grad), pads[path]))
        return through, heads


class SeenIds:
    """Record the distinct ids each table looks up (a ``calls.Recorder``).

    ``keep``: keep each call's id tensor in :attr:`kept` instead (a jitted pass returns
    them as outputs, then :meth:`add` takes their values).
    """

    def __init__(self, backend: Backend, paths: list[str], *, keep: bool = False) -> None:
        self.backend = backend
        self.seen: dict[str, list[np.ndarray]] = {path: [] for path in paths}
        #: False once a call's ids were not known (traced): the record is incomplete.
        self.complete = True
        self.keep = keep
        #: (path, id tensor) per lookup, when ``keep``.
        self.kept: list[tuple[str, Any]] = []

    def record(self, path: str, layer: Any, args: tuple, kwargs: dict, out: Any) -> None:
        ids = lookup_ids(self.backend, layer, args, kwargs)
        if ids is None:
            return
        if self.keep:
            self.kept.append((path, ids))
            return
        self.add(path, self.backend.values(ids))

    def add(self, path: str, values: np.ndarray | None) -> None:
        """Add one lookup's ids (None: not known, so the record is incomplete)."""
        if values is None:
            self.complete = False
            return
        self.seen[path].append(np.unique(values.astype(np.int64).ravel()))

    def result(self) -> dict[str, np.ndarray]:
        """Return {path: sorted distinct ids} (empty for a table never looked up)."""
        return {
            path: np.unique(np.concatenate(ids)) if ids else np.empty(0, np.int64)
            for path, ids in self.seen.items()
        }


def _add(rows: dict[str, np.ndarray], path: str, row: np.ndarray) -> None:
    rows[path] = rows[path] + row if path in rows else row
