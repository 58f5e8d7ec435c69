"""Jitted train and invariance passes for the default Flax audit (``model(ids)``, seeded loss).

NNX modules are pure once split, so a pass is ``jax.jit(jax.value_and_grad(loss))`` with
the parameters, the other Variables, the ids and the loss weights as traced arguments. The
compiled function is cached under what the trace closes over (the model's ``GraphDef``, the
mode, the table sites, the probed tables), and ``jax.jit`` keys its own cache by the
arguments' shapes: one compile per model structure and batch shape serves every seed,
every later audit, and every model object of the same structure.

A user's ``forward=`` or ``loss=`` callable may have Python side effects or read concrete
values, so those audits run eagerly, as do the perturbed passes (their noise is drawn in
NumPy during the call). A model whose trace fails (Python control flow on values, host
reads) is remembered and runs eagerly; the eager pass then raises the model's own error.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ...core.batch import LossPlan
from .state import Snapshot, copy_of
from .tables import Recorder, Site, instrument, recording

if TYPE_CHECKING:
    from .handle import FlaxBatch, FlaxHandle

#: compiled passes kept per process (least recently used dropped first).
LIMIT = 32


@dataclass
class Entry:
    """One cached pass: the jitted function and what its traces found out."""

    run: Callable[..., Any] | None = None
    #: input shapes -> the float output leaves' shapes and dtypes (from ``jax.eval_shape``).
    outputs: dict[Hashable, list[jax.ShapeDtypeStruct]] = field(default_factory=dict)
    #: tables whose ``attend`` ran in the trace (a tied head).
    attended: set[str] = field(default_factory=set)
    #: some lookups ran inside an NNX transform, so the recorded ids may be incomplete.
    traced: bool = False
    failed: bool = False


_CACHE: OrderedDict[Hashable, Entry] = OrderedDict()


def entry(key: Hashable) -> Entry:
    """Return the cached pass for ``key`` (a new, empty one when there is none)."""
    found = _CACHE.get(key)
    if found is None:
        found = _CACHE[key] = Entry()
        while len(_CACHE) > LIMIT:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return found


def _float_leaves(output: Any) -> list[Any]:
    from ...core.handle import output_leaves

    leaves = output_leaves(output, lambda x: isinstance(x, jax.Array))
    return [x for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)]


def _forward(
    snap: Snapshot,
    params: Any,
    rest: Any,
    ids: jax.Array,
    training: bool,
    sites: Mapping[str, Site],
    rec: Recorder,
) -> tuple[Any, Any]:
    copy = copy_of(snap, params, rest, training=training)
    if sites:
        instrument(copy, sites)
    with recording(rec):
        output = copy(ids)
    return copy, output


def output_shapes(
    found: Entry, snap: Snapshot, params: Any, rest: Any, ids: jax.Array, training: bool
) -> list[jax.ShapeDtypeStruct] | None:
    """Return the float output leaves' shapes for ``ids``' shape (None: not traceable)."""
    shape = (tuple(ids.shape), str(ids.dtype))
    if shape not in found.outputs:

        def fn(params: Any, rest: Any, ids: jax.Array) -> list[Any]:
            return _float_leaves(_forward(snap, params, rest, ids, training, {}, Recorder())[1])

        try:
            found.outputs[shape] = list(jax.eval_shape(fn, params, rest, ids))
        except Exception:  # the eager pass raises the model's own error
            found.failed = True
            return None
    return found.outputs[shape]


def _loss(outputs: Sequence[Any], weights: Sequence[Any]) -> jax.Array:
    total = None
    for tensor, w in zip(outputs, weights, strict=True):
        term = jnp.sum(tensor.astype(jnp.float32) * w)
        total = term if total is None else total + term
    return total  # type: ignore[return-value]


def train_fn(
    found: Entry, snap: Snapshot, sites: Mapping[str, Site], record: bool
) -> Callable[..., Any]:
    """Return the jitted train pass: ``(params, rest, probes, ids, weights) ->
    ((loss, (params after, rest after, looked-up ids)), (param grads, probe grads))``."""

    def run(params: Any, rest: Any, probes: dict, ids: jax.Array, weights: list) -> Any:
        def fn(params: Any, rest: Any, probes: dict) -> tuple[jax.Array, Any]:
            rec = Recorder(probes=probes, record_ids=record)
            rec.collect, rec.top = ({}, ids) if record else (None, None)
            copy, output = _forward(snap, params, rest, ids, True, sites, rec)
            found.attended |= rec.attended
            found.traced = found.traced or rec.traced
            after = nnx.state(copy, nnx.Param, ...)
            seen = {p: jnp.concatenate(v) for p, v in (rec.collect or {}).items()}
            loss = _loss(_float_leaves(output), weights)
            return loss, (tuple(map(nnx.as_pure, after)), seen)

        return jax.value_and_grad(fn, argnums=(0, 2), has_aux=True)(params, rest, probes)

    return jax.jit(run)


def invariance_fn(found: Entry, snap: Snapshot) -> Callable[..., Any]:
    """Return the jitted invariance pass: ``(params, rest, ids, weights) ->
    ((loss, float outputs), param grads)``, train-only randomness off."""

    def run(params: Any, rest: Any, ids: jax.Array, weights: list) -> Any:
        def fn(params: Any, rest: Any) -> tuple[jax.Array, list]:
            _, output = _forward(snap, params, rest, ids, False, {}, Recorder())
            outputs = _float_leaves(output)
            return _loss(outputs, weights), outputs

        return jax.value_and_grad(fn, argnums=0, has_aux=True)(params, rest)

    return jax.jit(run)


def ids_of(seen: Mapping[str, Any], sites: Mapping[str, Site]) -> dict[str, np.ndarray]:
    """Return the distinct ids per table from a jitted pass's looked-up ids."""
    return {
        path: np.unique(np.asarray(seen[path]).ravel()) if path in seen else np.array([], np.int64)
        for path in sites
    }


def jittable(handle: FlaxHandle) -> bool:
    """Say whether the handle's passes may be jitted: no ``forward=`` or ``loss=`` callable."""
    return handle.options.forward is None and not callable(handle.options.loss)


def weights(
    handle: FlaxHandle,
    found: Entry,
    snap: Snapshot,
    params: Any,
    rest: Any,
    fb: FlaxBatch,
    plan: LossPlan,
    training: bool,
) -> list[np.ndarray] | None:
    """Return the seeded loss weights of a jitted pass's outputs (None: run eagerly).

    The same ``plan.weights`` the eager pass draws, from the outputs' traced shapes."""
    if found.failed:
        return None
    shapes = output_shapes(found, _graph(snap), params, rest, fb.ids, training)
    if not shapes:  # no float output: the eager pass says so
        return None
    return [handle._loss_weights(plan, i, s, fb) for i, s in enumerate(shapes)]


def _graph(snap: Snapshot) -> Snapshot:
    """Return a snapshot holding only the graph (what a cached trace may keep alive)."""
    return Snapshot(snap.graphdef, None, None, [])


def train(
    handle: FlaxHandle,
    snap: Snapshot,
    params: Any,
    rest: Any,
    probes: dict[str, Any],
    fb: FlaxBatch,
    plan: LossPlan,
    fresh: bool,
) -> tuple[Any, Any, Any, dict[str, np.ndarray] | None] | None:
    """Run the train pass jitted: (params after, rest after, grads, ids looked up when
    ``fresh``); None where it runs eagerly."""
    if not jittable(handle):
        return None
    sites = handle._sites
    key = ("train", snap.graphdef, tuple(sorted(sites.items())), tuple(sorted(probes)), fresh)
    found = entry(key)
    loss_weights = weights(handle, found, snap, params, rest, fb, plan, True)
    if loss_weights is None:
        return None
    if found.run is None:
        found.run = train_fn(found, _graph(snap), sites, fresh)
    try:
        (_, (after, seen)), grads = found.run(params, rest, probes, fb.ids, loss_weights)
    except Exception:  # the eager pass raises the model's own error
        found.failed = True
        return None
    handle.attended |= found.attended
    ids = None if found.traced or not fresh else ids_of(seen, sites)
    return after[0], after[1], grads, ids


def invariance(
    handle: FlaxHandle, snap: Snapshot, params: Any, rest: Any, fb: FlaxBatch, plan: LossPlan
) -> tuple[list[Any], Any] | None:
    """Run the invariance pass jitted: (float outputs, grads); None where it runs eagerly."""
    if not jittable(handle):
        return None
    found = entry(("invariance", snap.graphdef))
    loss_weights = weights(handle, found, snap, params, rest, fb, plan, False)
    if loss_weights is None:
        return None
    if found.run is None:
        found.run = invariance_fn(found, _graph(snap))
    try:
        (_, outputs), grads = found.run(params, rest, fb.ids, loss_weights)
    except Exception:  # the eager pass raises the model's own error
        found.failed = True
        return None
    return outputs, grads
