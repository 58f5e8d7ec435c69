"""Optimizers for the Keras update check.

Keras' built-in element-wise optimizers (SGD, Adam, AdamW, ...) update each element from its
own gradient and state alone, so stepping a one-row copy of the pad row is what stepping the
whole table would do to that row: O(dim), not O(vocab), and the table is never written. Any
other optimizer (Lamb, Adafactor, norm clipping, a subclass) steps the real tables, with dense
gradients. Rows are read through the backend (:meth:`Backend.row_of`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .backends.base import Backend

#: optimizer classes (by name, in keras.optimizers) that update element by element; an
#: exact class match: a subclass may step differently.
ELEMENTWISE = (
    "SGD",
    "Adam",
    "AdamW",
    "Adamax",
    "Nadam",
    "RMSprop",
    "Adagrad",
    "Adadelta",
    "Ftrl",
    "Lion",
)


def elementwise(keras: Any, optimizer: Any) -> bool:
    """Say whether ``optimizer`` updates each element from its own gradient and state."""
    classes = tuple(
        c for name in ELEMENTWISE if isinstance(c := getattr(keras.optimizers, name, None), type)
    )
    clipped = any(getattr(optimizer, a, None) for a in ("clipnorm", "global_clipnorm"))
    return type(optimizer) in classes and not clipped


class PadRowStepper:
    """Step copies of the tables' pad rows with ``optimizer``; the tables stay untouched.

    Between steps the model keeps its original pad rows; ``row(path)`` is the stepped one.
    Follows :class:`pytest_padaudit.stepping.PadRowStepper` (always on one-row copies).
    """

    full = False

    def __init__(
        self,
        backend: Backend,
        keras: Any,
        optimizer: Any,
        rows: Sequence[tuple[str, Any, int]],
    ) -> None:
        self.backend = backend
        self.optimizer = optimizer
        self.rows = list(rows)  # (path, the table's variable, pad id)
        self.proxies = []
        decays = getattr(optimizer, "_use_weight_decay", None)
        for path, table, pad in self.rows:
            name = f"padaudit_{path.replace('.', '_')}"
            proxy = backend.variable(keras, backend.row_of(table, pad), name)
            if callable(decays) and not decays(table):  # keep the user's exclusions
                optimizer.exclude_from_weight_decay(var_list=[proxy])
            self.proxies.append(proxy)

    def step(self, pad_grads: dict[str, np.ndarray | None]) -> None:
        """Apply one step to each pad row with its gradient (zero when it had none)."""
        pairs = []
        for (path, _, _), proxy in zip(self.rows, self.proxies, strict=True):
            grad = pad_grads.get(path)
            row = np.zeros(proxy.shape, np.float32) if grad is None else grad[None]
            pairs.append((self.backend.constant(row, proxy.dtype), proxy))
        self.backend.apply(self.optimizer, pairs)

    def row(self, path: str) -> np.ndarray | None:
        """Return the stepped pad row of table ``path`` (None: not stepped here)."""
        for (name, _, _), proxy in zip(self.rows, self.proxies, strict=True):
            if name == path:
                return self.backend.read(proxy)[0]
        return None
