"""Jitted train and invariance passes for the default Keras-on-jax audit (``model(ids)``).

A pass is ``jax.jit(jax.value_and_grad(loss))`` over ``(differentiated values, the other
variables' values, ids, loss weights, probes)``: every model variable is mapped in with
``keras.StatelessScope`` (as ``model.stateless_call`` does), so the seed generators'
states are traced arguments too, and what the pass assigns stays in the scope, as in the
eager pass. The zero probes of the tapped table outputs are traced arguments; the ids the
tables look up come back as outputs of the pass. The seeded loss weights are drawn outside
from the outputs' shapes (one ``jax.eval_shape`` per input shape, cached), and from the
Keras masks the outputs carry (one jitted forward), as the eager pass draws them.

The compiled functions are cached per model (``weakref.WeakKeyDictionary``) under the pass
kind, the mode, the audited tables and whether the lookups are recorded; ``jax.jit`` adds
the shapes. One compile serves every seed and every later audit of the model.

A ``forward=``, ``loss=`` or ``step=`` callable may have Python side effects or read
concrete values, so those audits run eagerly, as do the perturbed passes (their noise is
drawn in NumPy) and a user's ``batch=`` or dict inputs. A key whose trace fails is
remembered and runs eagerly; the eager pass then raises the model's own error.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from keras import StatelessScope, ops

from ...core.batch import LossPlan
from .calls import keras_mask, recorded_calls
from .lookups import SeenIds, TableCalls
from .state import unique

if TYPE_CHECKING:
    from .handle import KerasBatch, KerasHandle


@dataclass
class Shaped:
    """What one abstract pass found out for one input shape."""

    outputs: list[jax.ShapeDtypeStruct]
    #: per float output: it carries a Keras mask of the batch's shape.
    masked: list[bool]
    probes: list[jax.ShapeDtypeStruct]


@dataclass
class Entry:
    """One cached pass of one model."""

    run: Callable[..., Any] | None = None
    masks: Callable[..., Any] | None = None
    shapes: dict[Hashable, Shaped] = field(default_factory=dict)
    #: per input shape, from the last trace: (path, tensors kept) per tapped table call,
    #: and the path of each recorded lookup.
    calls: dict[Hashable, list[tuple[str, int]]] = field(default_factory=dict)
    seen: dict[Hashable, list[str]] = field(default_factory=dict)
    failed: bool = False
    #: (handle, differentiated variables, the other variables) while a call runs.
    now: tuple[Any, list[Any], list[Any]] | None = None


_CACHE: weakref.WeakKeyDictionary[Any, dict[Hashable, Entry]] = weakref.WeakKeyDictionary()


def entry(model: Any, key: Hashable) -> Entry:
    """Return the cached pass ``key`` of ``model`` (a new, empty one when there is none)."""
    passes = _CACHE.setdefault(model, {})
    # the variables' count: a model built since a failed trace is traced again
    return passes.setdefault((key, len(model.variables)), Entry())


def jittable(handle: KerasHandle, kb: KerasBatch) -> bool:
    """Say whether the handle's passes may be jitted: jax, the plain ``model(ids)`` call
    and the seeded loss (no ``forward=``, ``loss=`` or ``step=``, no fed inputs)."""
    opts = handle.options
    return (
        handle.backend.name == "jax"
        and opts.forward is None
        and opts.step is None
        and not callable(opts.loss)
        and kb.feed is None
        and handle._feed is None
    )


def _forward(
    found: Entry,
    values: Sequence[Any],
    ids: Any,
    training: bool,
    calls: TableCalls | None = None,
    seen: SeenIds | None = None,
) -> list[Any]:
    """Call the model statelessly on ``ids``; return its float outputs."""
    assert found.now is not None
    handle, targets, others = found.now
    mapping = list(zip([*targets, *others], values, strict=True))

    def record(path: str, layer: Any, args: tuple, kwargs: dict, out: Any) -> Any:
        if seen is not None:
            seen.record(path, layer, args, kwargs, out)
        return None if calls is None else calls.record(path, layer, args, kwargs, out)

    scope = StatelessScope(state_mapping=mapping)
    with scope, recorded_calls(list(handle._layers.items()), record):
        output = handle._declared_order(handle.model(ids, training=training))
    return list(handle._floating(output))


def _handle(found: Entry) -> Any:
    """Return the handle whose call is running the pass."""
    assert found.now is not None
    return found.now[0]


def _loss(outputs: Sequence[Any], weights: Sequence[Any]) -> Any:
    total = None
    for tensor, w in zip(outputs, weights, strict=True):
        term = ops.sum(ops.cast(tensor, "float32") * w)
        total = term if total is None else total + term
    return total


def _shape_key(ids: Any) -> Hashable:
    return (tuple(ids.shape), str(ids.dtype))


def shaped(found: Entry, values: list[Any], kb: KerasBatch, training: bool, audited: Any) -> Shaped:
    """Return the outputs' and probes' shapes for ``kb``'s ids (one abstract pass)."""
    key = _shape_key(kb.ids)
    if key not in found.shapes:
        handle = _handle(found)
        probes: list[jax.ShapeDtypeStruct] = []
        masked: list[bool] = []

        def tap(x: Any) -> Any:
            probes.append(jax.ShapeDtypeStruct(x.shape, x.dtype))
            return x

        def fn(values: list[Any], ids: Any) -> list[Any]:
            calls = TableCalls(handle.backend, tap, audited) if audited is not None else None
            outs = _forward(found, values, ids, training, calls)
            batch = kb.numpy.shape
            masked[:] = [_mask(t) is not None and tuple(_mask(t).shape) == batch for t in outs]
            return outs

        outputs = list(jax.eval_shape(fn, values, kb.ids))
        found.shapes[key] = Shaped(outputs, list(masked), list(probes))
    return found.shapes[key]


def _mask(tensor: Any) -> Any:
    return keras_mask(tensor)


def weights(
    found: Entry, values: list[Any], kb: KerasBatch, plan: LossPlan, training: bool, audited: Any
) -> tuple[list[np.ndarray], Shaped] | None:
    """Return the seeded loss weights of the pass's outputs (None: run eagerly)."""
    shapes = shaped(found, values, kb, training, audited)
    if not shapes.outputs:  # no float output: the eager pass says so
        return None
    masks: list[Any] = [None] * len(shapes.outputs)
    if any(shapes.masked):
        if found.masks is None:

            def fn(values: list[Any], ids: Any) -> list[Any]:
                outs = _forward(found, values, ids, training)
                return [_mask(t) for t, m in zip(outs, shapes.masked, strict=True) if m]

            found.masks = jax.jit(fn)
        got = iter(found.masks(values, kb.ids))
        masks = [np.asarray(next(got)) if m else None for m in shapes.masked]
    found_weights = [
        plan.weights(i, tuple(s.shape), mask=mask)
        for i, (s, mask) in enumerate(zip(shapes.outputs, masks, strict=True))
    ]
    return found_weights, shapes


def _call(
    handle: KerasHandle,
    key: tuple[Any, ...],
    targets: Sequence[Any],
    kb: KerasBatch,
    plan: LossPlan,
    audited: Any,
    call: Callable[[Entry, list[Any], list[Any], list[np.ndarray], Shaped], Any],
) -> tuple[Entry, Any] | None:
    """Run pass ``key`` over ``targets`` as ``call(entry, their values, the other variables'
    values, loss weights, shapes)``; None: it runs eagerly (its trace failed, now or before)."""
    found = entry(handle.model, key)
    if found.failed:
        return None
    chosen = {id(v) for v in targets}
    others = [v for v in unique(handle.model.variables) if id(v) not in chosen]
    found.now = (handle, list(targets), others)
    diff, rest = [v.value for v in targets], [v.value for v in others]
    try:
        got = weights(found, diff + rest, kb, plan, key[1], audited)  # key[1]: training
        return None if got is None else (found, call(found, diff, rest, *got))
    except Exception:  # the eager pass raises the model's own error
        found.failed = True
        return None
    finally:
        found.now = None


def train(
    handle: KerasHandle,
    kb: KerasBatch,
    plan: LossPlan,
    targets: list[Any],
    audited: set[str],
    record: bool,
) -> tuple[list[Any], list[Any], TableCalls, SeenIds | None, list[Any]] | None:
    """Run the train pass jitted: (grads, tap grads, the table calls with their tensors'
    values, the ids recorded when ``record``, the tensors' values); None: run eagerly."""

    def call(found: Entry, diff: list, rest: list, weights: list, shapes: Shaped) -> Any:
        if found.run is None:
            found.run = jax.jit(_train_fn(found, audited, record))
        probes = [jax.numpy.zeros(s.shape, s.dtype) for s in shapes.probes]
        return found.run(diff, rest, kb.ids, weights, probes)

    key = ("train", True, tuple(sorted(audited)), record)
    done = _call(handle, key, targets, kb, plan, audited, call)
    if done is None:
        return None
    found, ((_, (tensors, ids)), (grads, tapped)) = done
    key_shape = _shape_key(kb.ids)
    calls = TableCalls(handle.backend, lambda x: x, audited)
    calls.calls = [(p, handle._layers[p], (None,) * n) for p, n in found.calls[key_shape]]
    seen = None
    if record:
        seen = SeenIds(handle.backend, list(handle._layers))
        for path, value in zip(found.seen[key_shape], ids, strict=True):
            seen.add(path, np.asarray(value))
    return list(grads), list(tapped), calls, seen, list(tensors)


def _train_fn(found: Entry, audited: set[str], record: bool) -> Callable[..., Any]:
    def run(diff: list, rest: list, ids: Any, weights: list, probes: list) -> Any:
        handle = _handle(found)
        key = _shape_key(ids)

        def fn(diff: list, probes: list) -> tuple[Any, Any]:
            it = iter(probes)
            calls = TableCalls(handle.backend, lambda x: x + next(it) if probes else x, audited)
            seen = SeenIds(handle.backend, list(handle._layers), keep=True) if record else None
            outs = _forward(found, [*diff, *rest], ids, True, calls, seen)
            found.calls[key] = [(p, len(kept)) for p, _, kept in calls.calls]
            found.seen[key] = [p for p, _ in seen.kept] if seen is not None else []
            kept_ids = [t for _, t in seen.kept] if seen is not None else []
            return _loss(outs, weights), (calls.tensors(), kept_ids)

        return jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(diff, probes)

    return run


def invariance(
    handle: KerasHandle, kb: KerasBatch, plan: LossPlan, variables: list[Any]
) -> tuple[list[Any], list[Any]] | None:
    """Run the invariance pass jitted: (grads, float outputs); None: run eagerly."""

    def call(found: Entry, diff: list, rest: list, weights: list, shapes: Shaped) -> Any:
        if found.run is None:

            def run(diff: list, rest: list, ids: Any, weights: list) -> Any:
                def fn(diff: list) -> tuple[Any, list]:
                    outs = _forward(found, [*diff, *rest], ids, False)
                    return _loss(outs, weights), outs

                return jax.value_and_grad(fn, has_aux=True)(diff)

            found.run = jax.jit(run)
        return found.run(diff, rest, kb.ids, weights)

    done = _call(handle, ("invariance", False, None, False), variables, kb, plan, None, call)
    if done is None:
        return None
    (_, outputs), grads = done[1]
    return list(grads), list(outputs)
