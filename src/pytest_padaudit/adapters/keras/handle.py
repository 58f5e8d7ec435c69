"""Keras adapter: Embedding tables, differentiated passes, Keras optimizers, snapshots.

Keras 3 on the TensorFlow, JAX and torch backends, and ``tf_keras`` (Keras 2) by duck
typing. What differs by backend is behind :class:`~.backends.base.Backend`.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, cast

import numpy as np

from ...core.base import BaseHandle
from ...core.batch import LossPlan, PadBatch
from ...core.errors import PadAuditError
from ...core.handle import ROOT, OptimizerInfo, Table
from ...core.options import AuditOptions
from . import explain as keras_words
from . import passes
from .backends import backend_for
from .calls import floating_tensors, keras_mask, named_layers
from .feed import (
    PIPELINE_FIXES,
    BatchLayout,
    KerasBatch,
    backbone_token_table,
    batch_arrays,
    dict_inputs,
    feed,
    forward_error,
    step_loss,
)
from .hub_hints import pad_hint
from .optim import PadRowStepper, elementwise
from .snippet import snippet
from .state import build_optimizer, restore_losses, saved_losses, training_scope, unique
from .tables import (
    base_variable,
    constraint,
    effective_row,
    find_tables,
    table_variables,
)

_FLAVOURS = ("keras", "tf_keras")
#: Keras warnings the audit's own passes trigger on purpose (the findings say it better).
_QUIET = (
    r".*does not support masking.*",
    r".*[Mm]odel was constructed with shape.*",
    r".*is incompatible with the layer.*",
)


class KerasHandle(BaseHandle):
    """Audit a Keras model: every ``Embedding`` (LoRA-enabled ones by their effective row)."""

    can_reset = True
    has_head_grads = True
    has_input_table = True
    traces_perturb = True
    reads_batches = True
    records_lookups = True
    pipeline_fixes = PIPELINE_FIXES
    WORDS = keras_words.WORDS

    def __init__(self, model: Any, options: AuditOptions, keras: Any) -> None:
        self.model = model
        self.options = options
        self.keras = keras
        self.framework = keras.__name__
        self.model_class = type(model).__qualname__
        self.backend = backend_for(self.framework, keras, self.model_class)
        self.backend_name = self.backend.name
        self.named = named_layers(model)
        self._layers: dict[str, Any] = {}
        self._grads: list[tuple[Any, Any]] = []
        #: each table's pad-row gradient from the last train pass (for the pad-row stepper).
        self._pad_grads: dict[str, np.ndarray | None] = {}
        #: (variable, copy) put back when the audit ends; whole tables join when needed.
        self._saved: list[tuple[Any, Any]] = []
        self._audited: list[Table] = []
        self._stepper: PadRowStepper | None = None
        #: per table: (max|g| of the variable's pad row, max|g| through the lookup or None).
        self.grad_sources: dict[str, tuple[float, float | None]] = {}
        #: per tied table: the last train pass's pad-row gradient through the logits head.
        self._heads: dict[str, np.ndarray] = {}
        #: the ids each table was looked up with in the train passes on ``_seen_of`` (None:
        #: not known, some were traced).
        self._seen: dict[str, np.ndarray] | None = None
        self._seen_of: PadBatch | None = None
        self.last_batch: PadBatch | None = None
        #: the dict inputs a keras-hub style model takes ({name: (role, dtype)}), else None.
        self._roles = dict_inputs(model)
        #: ... which the audit feeds unless the user passes forward=.
        self._feed = self._roles if options.forward is None else None
        #: how the user's ``batch=`` is laid out (set when it is read).
        self._layout: BatchLayout | None = None

    # -- discovery -------------------------------------------------------------------
    def tables(self, pad_idx: int | Mapping[str, int] | None) -> list[Table]:
        layers = [(ROOT, self.model), *self.named]
        found = find_tables(self.model, self.model_class, layers, self.keras, pad_idx)
        self._layers.update({t.path: layer for t, layer in found})
        tables = [t for t, _ in found]
        if tables and self._roles is not None and all(t.pad_idx is None for t in tables):
            raise PadAuditError(
                f"no pad id is known for the embedding tables of {self.model_class} "
                f"({', '.join(t.path for t in tables)}), which has no preprocessor to take it "
                f"from: pass pad_idx= the id your data pads with ({pad_hint(self.model)})"
            )
        self._audited = [t for t in tables if t.pad_idx is not None]
        return tables

    def _row_tables(self) -> list[tuple[str, Any, int]]:
        """Return (path, variable, pad) of audited tables whose rows move one by one.

        Their pad rows are stepped as copies and the tables never written; LoRA tables (rows
        share their factors) and constrained ones (a constraint may rescale every row) are
        stepped for real and saved whole.
        """
        rows: list[tuple[str, Any, int]] = []
        for t in self._audited:
            layer = self._layers[t.path]
            if getattr(layer, "lora_enabled", False) or constraint(layer):
                continue
            rows.append((t.path, self.backend.raw(base_variable(layer)), cast(int, t.pad_idx)))
        return rows

    def snippet(self, smallest: Mapping[str, Any]) -> list[str]:
        """Return the plain Keras lines on this backend; the table is ``model.weights[i]``
        (its index, never its auto-generated name)."""
        layer = self._layers.get(smallest["layer"])
        table = base_variable(layer) if layer is not None else None
        index = next((i for i, w in enumerate(self.model.weights) if w is table), None)
        if index is None:
            return []
        return snippet(smallest, f"model.weights[{index}]", self.backend.name)

    def input_table(self) -> str | None:
        """Return the path of a keras-hub model's token table: the batch draws its ids there.

        Without it the largest table is guessed, and a position table longer than the
        vocabulary (max_sequence_length=512, vocabulary 100) gives ids the lookup refuses.
        """
        layer = backbone_token_table(self.model)
        return next((p for p, found in self._layers.items() if found is layer), None)

    # -- state -----------------------------------------------------------------------
    @contextmanager
    def preserve(self, seed: int) -> Iterator[None]:
        """Snapshot the variables on the device; put them back on exit, always.

        Tables whose rows move one by one are never written (see keras_optim), so no
        O(vocab) copy is made unless an optimizer that is not element-wise steps them.
        """
        backend = self.backend
        variables = unique([backend.raw(v) for v in self.model.variables])
        skip = {id(table) for _, table, _ in self._row_tables()}
        self._saved = [(v, backend.snapshot(v)) for v in variables if id(v) not in skip]
        losses = saved_losses([self.model] + [layer for _, layer in self.named])
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            with backend.rng_guard(seed, self.framework), warnings.catch_warnings():
                for pattern in _QUIET:
                    warnings.filterwarnings("ignore", message=pattern)
                yield
        finally:
            self._grads = []
            self._stepper = None
            for var, value in self._saved:
                backend.assign(var, value)
            self._saved = []
            restore_losses(losses)
            np.random.set_state(np_state)
            random.setstate(py_state)

    def read_pad_rows(self, tables: Sequence[Table]) -> dict[str, np.ndarray]:
        stepped = {t.path: self._stepper.row(t.path) for t in tables} if self._stepper else {}
        return {
            t.path: effective_row(self.backend, self._layers[t.path], cast(int, t.pad_idx))
            if stepped.get(t.path) is None
            else cast(np.ndarray, stepped[t.path])
            for t in tables
        }

    # -- passes ----------------------------------------------------------------------
    def batch_arrays(self, batch: Any) -> dict[str, np.ndarray]:
        """Return the user's batch (``x``, or ``(x, y[, sample_weight])``) as arrays by key."""
        arrays, self._layout = batch_arrays(self.backend, batch)
        return arrays

    def tensors(self, batch: PadBatch, *, training: bool) -> KerasBatch:
        """Return ``batch`` as tensors for a pass in ``training`` mode."""
        kb = self._tensors(batch, training)
        if batch.source != "synthetic" and self._layout is not None:
            inputs = batch.inputs if batch.inputs is not None else {"input_ids": batch.ids}
            return replace(kb, feed=self._layout.rebuild(self.backend, inputs))
        if self.options.step is not None:  # the model's x, as the step receives it
            x = kb.ids
            if self._feed is not None:
                x = feed(self.backend, self.model_class, self._feed, batch.ids, batch.mask)
            return replace(kb, feed=x)
        return kb

    def _tensors(self, batch: PadBatch, training: bool) -> KerasBatch:
        constant = self.backend.constant
        return KerasBatch(
            ids=constant(batch.ids.astype(np.int32), "int32"),
            mask=constant(batch.mask.astype(bool), "bool"),
            lengths=constant(np.asarray(batch.lengths, np.int32), "int32"),
            pad_idx=batch.pad_idx,
            padding_side=batch.padding_side,
            numpy=batch,
            training=training,
        )

    def forward(self, kb: KerasBatch) -> Any:
        """Run the model (``step=``, ``forward=``) on the batch; wrap its errors in advice."""
        step, forward = self.options.step, self.options.forward
        call = "step=" if step else "forward=" if forward else "model(ids)"
        if call == "model(ids)" and kb.feed is not None:
            call = "model(x, training=...)"
        return self.call_model(lambda: self._run(kb), kb.numpy, call)

    def _run(self, kb: KerasBatch) -> Any:
        forward, step = self.options.forward, self.options.step
        if step is not None:
            with training_scope(self.framework, kb.training):
                return step(self.model, kb.feed)
        if forward is None and kb.feed is not None:  # the user's batch=: the model takes x
            x = kb.feed[0] if isinstance(kb.feed, tuple) else kb.feed
            return self._declared_order(self.model(x, training=kb.training))
        if forward is None and self._feed is not None:
            numpy = kb.numpy
            inputs = feed(self.backend, self.model_class, self._feed, numpy.ids, numpy.mask)
            return self._declared_order(self.model(inputs, training=kb.training))
        if forward is None:
            return self._declared_order(self.model(kb.ids, training=kb.training))
        with training_scope(self.framework, kb.training):
            return forward(self.model, kb)

    def model_error(
        self, exc: Exception, batch: PadBatch, call: str, ids: str = "", advice: str | None = None
    ) -> str:
        """Say what went wrong in Keras words (fixed input lengths, the dict inputs fed)."""
        forward = self.options.forward
        feeding = self._feed if forward is None else None
        return forward_error(self.model, self.model_class, exc, batch, forward, feeding, call)

    def _declared_order(self, output: Any) -> Any:
        """Return a dict output in the order the model declares its outputs.

        Keras on torch returns a functional model's dict outputs in another order than on
        TensorFlow and JAX; the loss weights each output in turn, so the order must not
        depend on the backend.
        """
        if not isinstance(output, dict):
            return output
        try:
            declared = self.model.output  # a functional model's outputs, as declared
        except (AttributeError, ValueError):  # subclassed: no declared outputs
            return output
        if isinstance(declared, Mapping) and set(declared) == set(output):
            return {key: output[key] for key in declared}
        return output

    def loss(self, output: Any, kb: KerasBatch, plan: LossPlan) -> Any:
        """Return the seeded scalar loss over the outputs (``loss=``'s, or ``step=``'s)."""
        if self.options.step is not None:
            return step_loss(self.backend, output)
        return self.seeded_loss(output, kb, plan)

    def _floating(self, output: Any) -> list[Any]:
        return list(floating_tensors(output, self.backend))

    def _is_scalar(self, value: Any) -> bool:
        return self.backend.is_tensor(value) and self.backend.size(value) == 1

    def _scalar(self, value: Any) -> Any:
        return self.backend.scalar(value)

    def _weighted_sum(self, tensor: Any, weights: np.ndarray) -> Any:
        return self.backend.weighted_sum(tensor, weights)

    def _loss_weights(self, plan: LossPlan, index: int, tensor: Any, batch: Any) -> Any:
        """Weigh by the Keras mask the output carries, when it has the batch's shape."""
        mask = keras_mask(tensor)
        if mask is not None and tuple(mask.shape) == batch.numpy.shape:
            mask = self.backend.values(mask)
        else:
            mask = None
        return plan.weights(index, tuple(tensor.shape), mask=mask)

    # -- the lookups and train passes, bound from passes.py --------------------------
    _require_trainable = passes.require_trainable
    lookups = passes.lookups
    train_pass = passes.train_pass
    recorded_lookups = passes.recorded_lookups

    # -- update ----------------------------------------------------------------------
    def head_grads(self) -> dict[str, np.ndarray]:
        """Return each tied table's pad-row gradient through the logits head (last pass)."""
        return dict(self._heads)

    def make_optimizer(self, tables: Sequence[Table], spec: Any) -> OptimizerInfo:
        variables = unique([v for t in tables for v in table_variables(self._layers[t.path])])
        if not variables:  # every table frozen: nothing for an optimizer to move
            return OptimizerInfo("SGD")
        origin = None
        carried = getattr(self.model, "optimizer", None)  # a compiled model's own optimizer
        if spec is None and callable(getattr(carried, "apply_gradients", None)):
            spec, origin = carried, "model.optimizer (model.compile)"
        optimizer = build_optimizer(self.keras, spec)
        decay = float(getattr(optimizer, "weight_decay", None) or 0.0)
        uses = getattr(optimizer, "_use_weight_decay", None)
        if decay and callable(uses) and not any(uses(v) for v in variables):
            decay = 0.0
        name = type(optimizer).__name__
        wanted = {t.path for t in tables}
        light = [row for row in self._row_tables() if row[0] in wanted]
        if elementwise(self.keras, optimizer) and len(light) == len(tables):
            self._stepper = PadRowStepper(self.backend, self.keras, optimizer, light)
            return OptimizerInfo(name, decay, self._stepper, origin)
        saved = {id(v) for v, _ in self._saved}  # it steps the real tables: save them whole
        self._saved += [
            (table, self.backend.snapshot(table))
            for _, table, _ in self._row_tables()
            if id(table) not in saved
        ]
        return OptimizerInfo(name, decay, optimizer, origin)

    def step(self, optimizer: OptimizerInfo) -> None:
        if isinstance(optimizer.state, PadRowStepper):
            optimizer.state.step(self._pad_grads)
        elif optimizer.state is not None and self._grads:
            pairs = [(self.backend.for_optimizer(g), v) for g, v in self._grads]
            self.backend.apply(optimizer.state, pairs)

    def reset(self) -> None:
        """Put the variables back as preserve() found them; drop stepped rows and grads."""
        for var, value in self._saved:
            self.backend.assign(var, value)
        self._grads = []
        self._stepper = None

    # -- invariance and trace, the passes bound from passes.py -----------------------
    _invariance_run = passes.invariance_run
    trace = passes.trace
    _traced_layers = passes.traced_layers

    def _table_keys(self, table: Table) -> list[Hashable]:
        variables = table_variables(self._layers[table.path])
        return [id(var) for var in variables if var.shape[0] == table.rows]

    def _rows(self, grad: Any, table: Table, rows: np.ndarray) -> np.ndarray:
        return self.backend.select_rows(grad, rows)

    def _to_numpy(self, value: Any) -> np.ndarray:
        return self.backend.dense(value)

    # -- words -----------------------------------------------------------------------
    def takes_padding_mask(self) -> bool:
        """Say whether the audit feeds the model a padding mask input (keras-hub style)."""
        return self._roles is not None and any(r == "mask" for r, _ in self._roles.values())

    def layer(self, path: str | None) -> Any:
        """Return the layer at ``path`` (None when there is none)."""
        if path == ROOT:
            return self.model
        return dict(self.named).get(path) if path else None
