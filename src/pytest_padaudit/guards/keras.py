"""KerasPadGuard: a ``keras.callbacks.Callback`` that watches pad rows in ``fit``.

Works on every Keras 3 backend. On JAX, ``fit`` keeps the weights outside the model between
syncs; the guard asks for a sync (``self.model``) only on the batches it checks.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from ..adapters.keras.calls import named_layers
from ..adapters.keras.feed import PIPELINE_FIXES, batch_arrays
from ..adapters.keras.tables import base_variable
from ..core.errors import PadAuditError
from ..core.handle import ROOT, Table
from .watch import OptimizerSeen, PadWatch, check_every, check_on_leak, check_pad_idx


def _words(
    cause: str, t: Table, optimizer: OptimizerSeen | None, before: np.ndarray
) -> tuple[str, str]:
    pad, name = t.pad_idx, t.path.rsplit(".", 1)[-1]
    layer = f"model.get_layer({name!r})" if t.path != ROOT else "model"
    if cause == "weight_decay":
        wd = optimizer.weight_decay if optimizer else 0.0
        opt = optimizer.name if optimizer else "the optimizer"
        return (
            f"{opt}(weight_decay={wd:g}) shrinks every row of {t.path} toward zero at each "
            f"step, row {pad} too: Keras initialises row {pad} randomly, so it is not zero "
            f"(max|row| {float(np.max(np.abs(before))):.3g} at the start of training)",
            f"exclude the table from weight decay before fit: optimizer."
            f"exclude_from_weight_decay(var_list=[{layer}.embeddings]), and initialise row "
            f"{pad} to zeros: {layer}.embeddings.assign(keras.ops.slice_update("
            f"{layer}.embeddings, ({pad}, 0), keras.ops.zeros((1, {t.dim}))))",
        )
    if t.own_pad:
        return (
            f"{t.path} has mask_zero=True, which only builds a mask: a layer after it that "
            f"ignores the mask (Dense or Flatten over the sequence, a loss over pad "
            f"positions) gives row {pad} gradient, and the optimizer (momentum, Adam's "
            "moments) keeps moving it",
            "keep the mask flowing to the output: mask-honouring layers after the Embedding "
            "(GlobalAveragePooling1D, LSTM, MultiHeadAttention), or sample_weight 0 at pad "
            "positions in the loss",
        )
    return (
        f"{t.path} has no mask_zero, so every pad token gives row {pad} gradient and the "
        "optimizer trains it like a real token",
        f"build it with keras.layers.Embedding({t.rows}, {t.dim}, mask_zero=True) "
        "(pad id 0) and mask-honouring layers after it",
    )


def _optimizer(model: Any, layer: Any) -> OptimizerSeen | None:
    optimizer = getattr(model, "optimizer", None)
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    if optimizer is None:
        return None
    wd = float(getattr(optimizer, "weight_decay", None) or 0.0)
    use = getattr(optimizer, "_use_weight_decay", None)
    if wd and layer is not None and callable(use) and not use(base_variable(layer)):
        wd = 0.0
    return OptimizerSeen(type(optimizer).__name__, wd, True)


class KerasPadGuard(keras.callbacks.Callback):
    """Stop ``model.fit`` when a pad row changes (any Keras 3 backend).

    Records the token tables' pad rows at ``on_train_begin`` and compares them after every
    ``every_n_batches`` training batches (and when training ends). On a change: raise
    :class:`~pytest_padaudit.PadLeakError` naming the table, pad id, step, max|Δ| and the
    likely cause, or, with ``on_leak="warn"``, warn with ``PadLeakWarning`` and train on.
    The first batch ``fit`` trains on is checked for pad ids (``pad_mismatch``) when its ``x``
    carries a mask (``padding_mask`` or ``attention_mask``), after that batch's step: Keras
    hands callbacks no batch, so the guard reads it in the first call of
    ``model.train_function`` and puts that function back. Keras hands callbacks no gradient
    either, so the guard tells weight decay from a gradient leak by how the row moved.
    """

    def __init__(
        self,
        every_n_batches: int = 1,
        on_leak: str = "raise",
        pad_idx: int | Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.watch = PadWatch(
            name,
            check_every(every_n_batches, name, "every_n_batches"),
            check_on_leak(on_leak, name),
            check_pad_idx(pad_idx, name),
            _words,
            PIPELINE_FIXES,
        )
        self._batches = 0
        self._layers: dict[str, Any] = {}
        self._peeked: tuple[Any, Any] | None = None
        self._first: dict[str, np.ndarray] | None = None

    def on_train_begin(self, logs: Any = None) -> None:
        """Record the pad rows of the model's token tables."""
        model = self.model
        self.watch.start(model)
        self._layers = dict([(ROOT, model), *named_layers(model)])
        self._batches = 0
        self._first = None
        self._peek_first_batch(model)

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self._batches += 1
        if self._first is not None:  # after the step: on JAX, raising inside it loses the weights
            first, self._first = self._first, None
            self.model  # noqa: B018 (on JAX this syncs the weights back into the model)
            self.watch.check_batch(first)
        if self.watch.due(self._batches):
            self._check()

    def on_train_end(self, logs: Any = None) -> None:
        self._unpeek()
        if self.watch.handle is not None and self._batches > self.watch.last_checked:
            self._check()

    def _check(self) -> None:
        model = self.model  # on JAX this syncs the weights back into the model
        seen = {t.path: _optimizer(model, self._layers.get(t.path)) for t in self.watch.tables}
        self.watch.check(self._batches, None, seen)

    # -- the first batch -------------------------------------------------------------
    def _peek_first_batch(self, model: Any) -> None:
        """Wrap ``model.train_function`` so that its first call shows the guard its batch."""
        original = getattr(model, "train_function", None)
        if not callable(original) or not self.watch.tables:
            return

        def first_call(*args: Any) -> Any:
            self._unpeek()
            *head, source = args
            first, source = _take_first(source, int(getattr(model, "steps_per_execution", 1)))
            if first is not None:
                self._first = self._arrays(first)
            return original(*head, source)

        self._peeked = (model, original)
        model.train_function = first_call

    def _unpeek(self) -> None:
        """Put ``model.train_function`` back (never through ``self.model``: on JAX it syncs)."""
        if self._peeked is not None:
            model, original = self._peeked
            self._peeked = None
            model.train_function = original

    def _arrays(self, batch: Any) -> dict[str, np.ndarray] | None:
        """Return the batch as NumPy arrays by role, or None when it holds no ids to check."""
        try:
            return batch_arrays(self.watch.handle.backend, batch)[0]  # type: ignore[union-attr]
        except PadAuditError:
            return None


def _take_first(source: Any, steps: int) -> tuple[Any, Any]:
    """Return the first batch of what ``fit`` hands its train function, and a stand-in.

    torch hands a list of batches; jax an iterator it calls ``next`` on; tensorflow a
    ``tf.data`` iterator, whose batches are taken here (one call's worth) and handed on as
    the list its train function also takes.
    """
    if isinstance(source, list):
        return (source[0] if source else None), source
    if hasattr(source, "get_next_as_optional"):
        taken = []
        for _ in range(max(steps, 1)):
            optional = source.get_next_as_optional()
            if not optional.has_value():
                break
            taken.append(optional.get_value())
        return (taken[0], taken) if taken else (None, source)
    try:
        first = next(source)
    except StopIteration:
        return None, iter(())
    return first, itertools.chain([first], source)
