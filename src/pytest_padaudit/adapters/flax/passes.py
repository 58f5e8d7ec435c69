"""The Flax handle's passes: train, invariance run, lookups and trace.

Each takes the handle as ``self``; :class:`~.handle.FlaxHandle` binds them under its method
names, as the torch and Keras handles bind theirs.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ...core.batch import LossPlan, PadBatch
from ...core.handle import ROOT, Table, Trace, output_leaves
from . import jitted
from .noise import noise_at_pads
from .state import copy_of, flat, unflat
from .tables import Recorder, Site, instrument, recording

if TYPE_CHECKING:
    from .handle import FlaxHandle


def train_pass(
    self: FlaxHandle, batch: PadBatch, plan: LossPlan, tables: Sequence[Table]
) -> dict[str, np.ndarray | None]:
    """One train-mode step's gradients; return each pad row's part through its lookups.

    The rest (``attend``, direct reads) is kept for :meth:`head_grads`; the full
    gradient (both parts) is what :meth:`step` applies, as training would. The first
    pass on ``batch`` records the ids every table is looked up with
    (:meth:`recorded_lookups`).
    """
    snap, params, rest = self._state()
    fb = self._batch(batch, training=True)
    sites = self._sites_for(tables)
    flat_params = flat(params)
    probes = {t.path: flat_params[sites[t.path].state_path] for t in tables}
    fresh = self._seen_of is not batch
    done = jitted.train(self, snap, params, rest, probes, fb, plan, fresh)
    if done is not None:
        return self._train_result(batch, tables, rest, done, fresh)
    rec = Recorder(record_ids=fresh)

    def fn(params: Any, rest: Any, probes: dict) -> tuple[jax.Array, Any]:
        copy = copy_of(snap, params, rest, training=True)
        instrument(copy, self._sites)
        rec.probes = probes
        with recording(rec):
            output = self._forward(copy, fb)
        after = nnx.state(copy, nnx.Param, ...)
        return self._loss(output, fb, plan), tuple(map(nnx.as_pure, after))

    (_, (p_after, r_after)), grads = self._grad(fn, (0, 2), params, rest, probes)
    self.attended |= rec.attended
    if fresh:
        jax.effects_barrier()
    seen = None if rec.traced or not fresh else distinct(rec, self._sites)
    return self._train_result(batch, tables, rest, (p_after, r_after, grads, seen), fresh)


def train_result(
    self: FlaxHandle,
    batch: PadBatch,
    tables: Sequence[Table],
    rest: Any,
    done: tuple[Any, Any, Any, dict[str, np.ndarray] | None],
    fresh: bool,
) -> dict[str, np.ndarray | None]:
    """Keep a train pass's state, gradients and recorded ids; return the lookup parts."""
    p_after, r_after, (g_params, g_lookup), seen = done
    sites = self._sites_for(tables)
    if fresh:
        self._seen, self._seen_of = seen, batch
    self._params = {**self._params, **known(flat(p_after), self._params)}
    self._rest = unflat(known(flat(r_after), flat(rest)))
    grads = flat(g_params)
    result: dict[str, np.ndarray | None] = {}
    for t in tables:
        path = sites[t.path].state_path
        lookup = g_lookup[t.path]
        result[t.path] = np.asarray(lookup[t.pad_idx], dtype=np.float32)
        other = grads.get(path)
        self._head.pop(t.path, None)
        if other is not None:
            if bool(jnp.any(other != 0)):
                self._head[t.path] = np.asarray(other[t.pad_idx], dtype=np.float32)
            grads[path] = other + lookup
    self._grads = grads
    return result


def invariance_run(
    self: FlaxHandle, batch: PadBatch, plan: LossPlan, tables: Sequence[Table], perturb: int | None
) -> tuple[Iterable[tuple[str, Hashable, Any]], list[Any]]:
    """Gradients of every Param and the outputs, train-only randomness off.

    ``deterministic=True``; batch norm keeps batch statistics. ``perturb``: the token
    tables emit seeded noise at pad ids.
    """
    snap, params, rest = self._state()
    fb = self._batch(batch, training=False)
    sites = self._sites_for(tables)
    rec = Recorder()

    def fn(params: Any, rest: Any) -> tuple[jax.Array, list]:
        copy = copy_of(snap, params, rest, training=False)
        if rec.noise is not None:
            instrument(copy, sites)
        with recording(rec):
            output = self._forward(copy, fb)
        return self._loss(output, fb, plan), float_leaves(output)

    done = None
    if perturb is None:  # seeded noise is drawn in NumPy during the call: eager
        done = jitted.invariance(self, snap, params, rest, fb, plan)
    if done is not None:
        outputs, grads = done
    else:
        with noise_at_pads(rec, tables, perturb):
            (_, outputs), grads = self._grad(fn, 0, params, rest)
    named = [(".".join(map(str, path)), path, grad) for path, grad in flat(grads).items()]
    return named, outputs


def lookups(self: FlaxHandle, batch: PadBatch) -> dict[str, np.ndarray]:
    """Record the ids each table is looked up with in one eval-mode forward pass."""
    snap, params, rest = self._state()
    copy = copy_of(snap, params, rest, training=False)
    instrument(copy, self._sites)
    rec = Recorder(record_ids=True)
    with recording(rec):
        self._forward(copy, self._batch(batch, training=False))
    jax.effects_barrier()
    self.attended |= rec.attended
    return distinct(rec, self._sites)


def recorded_lookups(self: FlaxHandle) -> dict[str, np.ndarray] | None:
    """Return the ids each table was looked up with in the first train pass on the
    last batch (None: some lookups ran inside a transform, so :meth:`lookups` runs)."""
    return self._seen


def trace(self: FlaxHandle, batch: PadBatch) -> Trace:
    """Record each submodule's float inputs and outputs (FULL arrays) in one eval pass.

    NNX has no forward hooks: the private copy's modules get recording subclasses.
    Modules run inside an NNX transform (the cell of ``nnx.RNN``, under ``nnx.scan``)
    see traced values and are left out; the module running the transform is recorded.
    """
    snap, params, rest = self._state()
    copy = copy_of(snap, params, rest, training=False)
    instrument(copy, {}, trace=True)
    rec = Recorder(tracing=True)
    with recording(rec):
        self._forward(copy, self._batch(batch, training=False))
    return Trace(owner=self.model_class, entries=[e for e in rec.trace if e[0] != ROOT])


def float_leaves(output: Any) -> list[jax.Array]:
    """Return the floating arrays among ``output``'s leaves."""
    leaves = output_leaves(output, lambda x: isinstance(x, jax.Array))
    return [x for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)]


def distinct(rec: Recorder, sites: Mapping[str, Site]) -> dict[str, np.ndarray]:
    """Return the distinct ids ``rec`` saw per table (an empty array for a table unused)."""
    return {
        path: np.unique(np.concatenate(rec.ids[path]))
        if rec.ids.get(path)
        else np.array([], np.int64)
        for path in sites
    }


def known(values: dict, like: dict) -> dict:
    """Keep the entries of ``values`` whose path ``like`` has (drops sown intermediates)."""
    return {p: v for p, v in values.items() if p in like}
