"""The passes the Keras handle runs: train, lookups, invariance and trace.

Each function takes the handle as ``self`` and is bound as a :class:`~.handle.KerasHandle`
method of the same name (``_invariance_run = passes.invariance_run``), as in the torch
adapter's ``passes.py``.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ...core.batch import LossPlan, PadBatch
from ...core.errors import PadAuditError
from ...core.handle import Table, Trace
from .backends.base import Pass
from .calls import Recorder, floating_tensors, recorded_calls, variable_names
from .lookups import SeenIds, TableCalls
from .noise import noise_at_pads
from .state import restore_losses, saved_losses, unique
from .tables import base_variable, table_variables

if TYPE_CHECKING:
    from .handle import KerasBatch, KerasHandle


def _recorded(
    self: KerasHandle, ids: SeenIds | None, calls: Recorder | None = None
) -> AbstractContextManager[None]:
    """Record each table call while the block runs: its ids into ``ids`` (None: not), and
    through ``calls``, whose result the call returns instead when it is not None."""

    def record(path: str, layer: Any, args: tuple, kwargs: dict, out: Any) -> Any:
        if ids is not None:
            ids.record(path, layer, args, kwargs, out)
        return None if calls is None else calls(path, layer, args, kwargs, out)

    return recorded_calls(list(self._layers.items()), record)


def lookups(self: KerasHandle, batch: PadBatch) -> dict[str, np.ndarray]:
    """Run one inference pass; return the distinct ids each table looked up."""
    seen = SeenIds(self.backend, list(self._layers))
    losses = saved_losses([self.model] + [layer for _, layer in self.named])
    try:
        with self.backend.no_grad(), _recorded(self, seen):
            self.forward(self.tensors(batch, training=False))
    finally:
        restore_losses(losses)
    return seen.result()


def recorded_lookups(self: KerasHandle) -> dict[str, np.ndarray] | None:
    """Return the ids each table was looked up with in the last train pass (None:
    some were traced, not known)."""
    return self._seen


def require_trainable(self: KerasHandle) -> list[Any]:
    """Return the model's trainable variables; refuse a model without any."""
    variables = unique(self.model.trainable_variables)
    if not variables:
        raise PadAuditError(
            f"{self.model_class} has no trainable variables, so no gradient can leak: "
            "unfreeze the model (model.trainable = True) for the audit"
        )
    return variables


def train_pass(
    self: KerasHandle, batch: PadBatch, plan: LossPlan, tables: Sequence[Table]
) -> dict[str, np.ndarray | None]:
    """Return the pad-row gradients through the lookups (or the variables'), tied heads'
    parts apart. The lookups are recorded until a complete record of ``batch`` exists."""
    self._require_trainable()
    self.last_batch = batch
    kb = self.tensors(batch, training=True)
    targets = unique([v for t in tables for v in table_variables(self._layers[t.path])])
    audited = {t.path for t in tables}
    fresh = self._seen_of is not batch
    recorded: list[TableCalls] = []
    seen: list[SeenIds | None] = []

    def run(tap: Any) -> tuple[Any, list[Any]]:
        calls = TableCalls(self.backend, tap, audited)
        ids = SeenIds(self.backend, list(self._layers)) if fresh else None
        recorded[:], seen[:] = [calls], [ids]
        with _recorded(self, ids, calls.record):
            output = self.forward(kb)
        return self.loss(output, kb, plan), calls.tensors()

    fast = _jit_train(self, kb, plan, targets, audited, fresh) if _jitted(self, kb) else None
    if fast:
        grads, tapped, table_calls, ids_seen, values = fast
        done = Pass(grads, tapped, values)
        recorded[:], seen[:] = [table_calls], [ids_seen]
    else:
        done = self.backend.gradients(run, targets, taps=True)
    opts = self.options
    given = "step=" if opts.step is not None else "loss=" if callable(opts.loss) else ""
    if given and not any(map(self.backend.connected, done.grads + done.taps)):
        raise PadAuditError(
            f"the {given} callable's result does not depend on the embedding tables, so no "
            f"gradient can reach a pad row: pass {given}callable that computes the loss from "
            "the model's output"
        )
    by_var = dict(zip(map(id, targets), done.grads, strict=True))
    self._grads = [(by_var[id(v)], v) for v in targets if by_var[id(v)] is not None]
    pads = {t.path: cast(int, t.pad_idx) for t in tables}
    through, self._heads = recorded[0].pad_rows(done.taps, done.aux, pads)
    ids = seen[0]
    if ids is not None:
        self._seen = ids.result() if ids.complete else None
        self._seen_of = batch if ids.complete else None
    result: dict[str, np.ndarray | None] = {}
    for t in tables:
        layer = self._layers[t.path]
        base = base_variable(layer)
        own = self.backend.pad_row(by_var.get(id(base)), cast(int, t.pad_idx))
        lookup = through.get(t.path)
        direct = getattr(layer, "lora_enabled", False) or t.path in self._heads
        if direct and lookup is None and own is not None:
            lookup = np.zeros_like(own)  # looked up nowhere that reaches the loss
        result[t.path] = lookup if direct else own
        self._pad_grads[t.path] = own
        self.grad_sources[t.path] = (
            _peak(own if own is not None else lookup),
            None if lookup is None else _peak(lookup),
        )
    return result


def invariance_run(
    self: KerasHandle, batch: PadBatch, plan: LossPlan, tables: Sequence[Table], perturb: int | None
) -> tuple[Iterable[tuple[str, Hashable, Any]], list[Any]]:
    """One quiet differentiated pass (``perturb``: seeded noise at the pad vectors)."""
    variables = self._require_trainable()
    kb = self.tensors(batch, training=False)
    backend = self.backend

    def run(tap: Any) -> tuple[Any, list[Any]]:
        with noise_at_pads(backend, self._layers, tables, perturb):
            output = self.forward(kb)
        return self.loss(output, kb, plan), list(floating_tensors(output, backend))

    jit = perturb is None and _jitted(self, kb)
    fast = _jit_invariance(self, kb, plan, variables) if jit else None
    done = Pass(fast[0], [], fast[1]) if fast else backend.gradients(run, variables)
    names = variable_names(variables)
    return zip(names, map(id, variables), done.grads, strict=True), list(done.aux)


def _jitted(self: KerasHandle, kb: KerasBatch) -> bool:
    """Say whether this audit's passes run jitted (Keras on jax, the default call)."""
    if self.backend.name != "jax":
        return False
    from . import jitted

    return jitted.jittable(self, kb)


def _jit_train(self: KerasHandle, *args: Any) -> Any:
    from . import jitted

    return jitted.train(self, *args)


def _jit_invariance(self: KerasHandle, *args: Any) -> Any:
    from . import jitted

    return jitted.invariance(self, *args)


def trace(self: KerasHandle, batch: PadBatch, perturb: int | None = None) -> Trace:
    """Record each layer's full floating inputs and outputs (``perturb``: as above)."""
    trace = Trace(owner=self.model_class)
    kb = self.tensors(batch, training=False)
    backend = self.backend

    def record(path: str, layer: Any, args: tuple, kwargs: dict, out: Any) -> None:
        inputs = [backend.to_numpy(t) for t in floating_tensors([args, kwargs], backend)]
        outputs = [backend.to_numpy(t) for t in floating_tensors(out, backend)]
        trace.entries.append((path, inputs, outputs))

    noise = noise_at_pads(backend, self._layers, self._audited, perturb)
    with backend.no_grad(), noise, recorded_calls(self._traced_layers(), record):
        self.forward(kb)
    return trace


def traced_layers(self: KerasHandle) -> list[tuple[str, Any]]:
    """Return the layers whose calls line up between two batch widths.

    Left out: the cells inside an RNN (called once per time step, so step k is a
    different position in each batch) and ``go_backwards`` layers (their sequence
    output runs backwards; the Bidirectional around one is traced instead), and the
    inner layers of a MultiHeadAttention (its softmax over the pad keys is the
    attention's fault, and the attention is named).
    """
    units = (self.keras.layers.RNN, self.keras.layers.MultiHeadAttention)
    skipped: list[str] = []
    traced = []
    for path, layer in self.named:
        if any(path.startswith(prefix + ".") for prefix in skipped):
            continue
        if isinstance(layer, units):
            skipped.append(path)
        if getattr(layer, "go_backwards", False):
            skipped.append(path)
            continue
        traced.append((path, layer))
    return traced


def _peak(row: np.ndarray | None) -> float:
    return 0.0 if row is None or row.size == 0 else float(np.abs(row).max())
