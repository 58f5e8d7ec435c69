"""The Flax NNX model handle: passes as pure JAX functions over a split model.

Every pass merges a private copy of the model (``nnx.merge`` of the graph and pure
states) inside ``jax.value_and_grad``, jitted and cached per model structure where the
audit runs the model and loss itself (jitted.py); the user's model object is never called,
trained or stepped. Parameters live in the handle as ``{state path: array}`` between passes, so
the update check steps them with optax without writing the model, and ``preserve``
restores the model with ``nnx.update`` all the same, also on failure.

Gradients are dense in JAX. A table's pad-row gradient is split exactly into the part
through its lookups (``nnx.Embed.__call__`` reads a separate copy of the table, a second
gradient input) and the rest (``embed.attend``, the matrix read directly): no
subtraction, so no float noise.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ...core.base import BaseHandle
from ...core.batch import LossPlan, PadBatch
from ...core.errors import PadAuditError
from ...core.handle import OptimizerInfo, Table
from ...core.options import AuditOptions
from . import explain as words
from . import optim, passes
from .state import Snapshot, flat, restore, take, unflat
from .tables import Site, find_tables, path_str


@dataclass(frozen=True)
class FlaxBatch:
    """The synthetic batch as JAX arrays, as ``forward=`` and ``loss=`` callables get it.

    ``training``: the mode of the pass (the model copy's ``deterministic`` flags already
    follow it).
    """

    ids: jax.Array
    mask: jax.Array
    lengths: jax.Array
    pad_idx: int
    padding_side: str
    numpy: PadBatch
    training: bool


class FlaxHandle(BaseHandle):
    """Audit an ``nnx.Module``: every ``nnx.Embed`` weight, pad id from ``pad_idx=``."""

    framework = "flax"
    can_reset = True
    has_head_grads = True
    records_lookups = True
    array_word = "jax.Array"
    WORDS = words.WORDS
    forward_advice = (
        "forward=lambda model, batch: model(batch.ids, batch.mask) "
        "(batch has ids, mask, lengths, pad_idx, training)"
    )

    def __init__(self, model: Any, options: AuditOptions) -> None:
        self.model = model
        self.options = options
        self.model_class = type(model).__qualname__
        self._sites: dict[str, Site] = {}
        self._snap: Snapshot | None = None
        #: the parameters as the audit has them now: ``{state path: array}``.
        self._params: dict[tuple[Any, ...], Any] = {}
        self._rest: Any = None
        self._grads: dict[tuple[Any, ...], Any] = {}
        self._head: dict[str, np.ndarray] = {}
        #: tables whose ``attend`` ran in a pass (a tied output head).
        self.attended: set[str] = set()
        #: whether the last pass's outputs had one entry per token position.
        self.per_token = False
        #: the ids each table was looked up with in the train pass on ``_seen_of``.
        self._seen: dict[str, np.ndarray] | None = None
        self._seen_of: PadBatch | None = None

    # -- discovery -------------------------------------------------------------------
    def tables(self, pad_idx: int | Mapping[str, int] | None) -> list[Table]:
        found, self._sites = find_tables(self.model, pad_idx)
        tokenizer = getattr(self.options, "tokenizer", None)
        if found and tokenizer is None and all(t.pad_idx is None for t in found):
            names = ", ".join(f"{t.path} (nnx.Embed {t.rows}x{t.dim})" for t in found)
            raise PadAuditError(
                f"nnx.Embed has no padding_idx, so no pad id is known for the tables of "
                f"{self.model_class}: {names}. Pass pad_idx= (the id your tokenizer pads "
                f"with, e.g. tokenizer.pad_token_id), or a mapping {{{found[0].path!r}: 0}} "
                "per table"
            )
        return found

    def module(self, path: str) -> Any:
        """Return the user's module at ``path`` (None when there is none)."""
        for p, module in nnx.iter_modules(self.model):
            if path_str(p) == path:
                return module
        return None

    # -- state -----------------------------------------------------------------------
    @contextmanager
    def preserve(self, seed: int) -> Iterator[None]:
        """Snapshot every Variable (params, RNG keys and counts, batch stats) and the
        modes; put them back with ``nnx.update`` on exit, always. JAX has no global RNG;
        NumPy's and Python's are saved too, for ``forward=`` callables that use them."""
        snap = take(self.model)
        np_state, py_state = np.random.get_state(), random.getstate()
        self._snap = snap
        self.reset()
        try:
            yield
        finally:
            restore(self.model, snap)
            np.random.set_state(np_state)
            random.setstate(py_state)
            self._snap, self._params, self._rest = None, {}, None
            self._grads, self._head = {}, {}

    def reset(self) -> None:
        """Start again from the model as preserve() found it (params and RNG state)."""
        if self._snap is not None:
            self._params, self._rest = flat(self._snap.params), self._snap.rest
            self._grads, self._head = {}, {}

    def _state(self) -> tuple[Snapshot, Any, Any]:
        snap = self._snap if self._snap is not None else take(self.model)
        params = self._params if self._snap is not None else flat(snap.params)
        rest = self._rest if self._snap is not None else snap.rest
        return snap, unflat(params), rest

    def read_pad_rows(self, tables: Sequence[Table]) -> dict[str, np.ndarray]:
        params = self._params if self._snap is not None else flat(take(self.model).params)
        rows = {}
        for t in tables:
            site = self._sites[t.path]
            value = params.get(site.state_path)
            if value is None:  # not an nnx.Param: read the Variable itself
                value = _at(nnx.state(self.model), site.state_path)
            rows[t.path] = np.asarray(value[t.pad_idx], dtype=np.float32)
        return rows

    # -- passes ----------------------------------------------------------------------
    def _batch(self, batch: PadBatch, training: bool) -> FlaxBatch:
        return FlaxBatch(
            ids=jnp.asarray(batch.ids, jnp.int32),
            mask=jnp.asarray(batch.mask),
            lengths=jnp.asarray(batch.lengths, jnp.int32),
            pad_idx=batch.pad_idx,
            padding_side=batch.padding_side,
            numpy=batch,
            training=training,
        )

    def _forward(self, copy: Any, fb: FlaxBatch) -> Any:
        forward = self.options.forward
        return self.call_model(
            lambda: forward(copy, fb) if forward else copy(fb.ids),
            fb.numpy,
            "forward=" if forward else "model(ids)",
            "ids int32 jax.Array",
        )

    def _loss(self, output: Any, fb: FlaxBatch, plan: LossPlan) -> jax.Array:
        return self.seeded_loss(output, fb, plan)

    def _floating(self, output: Any) -> list[jax.Array]:
        return passes.float_leaves(output)

    def _is_scalar(self, value: Any) -> bool:
        return isinstance(value, jax.Array) and value.size == 1

    def _scalar(self, value: jax.Array) -> jax.Array:
        return jnp.reshape(value, ()).astype(jnp.float32)

    def _weighted_sum(self, tensor: jax.Array, weights: np.ndarray) -> jax.Array:
        return jnp.sum(tensor.astype(jnp.float32) * weights)

    def _loss_weights(self, plan: LossPlan, index: int, tensor: Any, batch: Any) -> Any:
        """Note whether some output has one entry per token (``per_token``, for words)."""
        shape = tuple(tensor.shape)
        self.per_token = (index > 0 and self.per_token) or plan.aligned(shape)
        return plan.weights(index, shape)

    def _grad(self, fn: Callable, argnums: int | tuple[int, ...], *args: Any) -> Any:
        """Return ``jax.value_and_grad(fn, argnums, has_aux=True)(*args)``, run eagerly.

        The eager way, for passes jitted.py cannot cache (``forward=`` / ``loss=``
        callables, perturbed passes, models that do not trace): a jitted closure made per
        pass would compile the whole graph again each time, while eager JAX compiles each
        op once per shape and process.
        """
        return jax.value_and_grad(fn, argnums=argnums, has_aux=True)(*args)

    def _sites_for(self, tables: Sequence[Table]) -> dict[str, Site]:
        return {t.path: self._sites[t.path] for t in tables}

    def head_grads(self) -> dict[str, np.ndarray]:
        """Pad-row gradient through uses other than the lookups (``attend``: tied head)."""
        return dict(self._head)

    def head_moved(self, t: Table) -> bool:
        """Say whether the last train pass gave ``t``'s pad row gradient outside lookups."""
        row = self._head.get(t.path)
        return row is not None and bool(np.any(row != 0))

    def make_optimizer(self, tables: Sequence[Table], spec: Any) -> OptimizerInfo:
        _, params, _ = self._state()
        stepper = optim.build(spec, self.model, flat(params))
        return OptimizerInfo(stepper.name, stepper.weight_decay, stepper)

    def step(self, optimizer: OptimizerInfo) -> None:
        if not self._grads:
            raise PadAuditError("step() without a train_pass(): no gradients to apply")
        self._params = optim.step(optimizer.state, self._params, self._grads)

    def decay_probe(self, stepper: optim.Stepper, t: Table) -> float:
        """Return how far one fresh step with zero gradients moves ``t``'s pad row."""
        snap, params, _ = self._state()
        base = flat(snap.params) if self._snap is not None else flat(params)
        return optim.moves_without_gradient(
            stepper, base, self._sites[t.path].state_path, cast(int, t.pad_idx)
        )

    train_pass = passes.train_pass
    _train_result = passes.train_result
    _invariance_run = passes.invariance_run
    lookups = passes.lookups
    recorded_lookups = passes.recorded_lookups
    trace = passes.trace

    def _table_keys(self, table: Table) -> list[Hashable]:
        return [self._sites[table.path].state_path]

    def _rows(self, grad: Any, table: Table, rows: np.ndarray) -> np.ndarray:
        return np.asarray(grad[jnp.asarray(rows)], dtype=np.float32)

    def _to_numpy(self, value: Any) -> np.ndarray:
        return np.asarray(value, dtype=np.float32)


def _at(state: Any, path: tuple[Any, ...]) -> Any:
    node = state
    for key in path:
        node = node[key]
    return node.get_value() if isinstance(node, nnx.Variable) else node
