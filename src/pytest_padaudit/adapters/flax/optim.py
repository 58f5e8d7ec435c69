"""Optimizers for the Flax update check: optax transformations, as users hold them.

``optimizer=`` takes an optax ``GradientTransformation`` (``optax.adamw(1e-3,
weight_decay=1e-2)``) or an ``nnx.Optimizer`` (its ``tx`` and ``wrt`` are used, never its
state); the default is ``optax.sgd(1.0)``. The audit always starts a fresh optimizer
state and steps it on a private copy of the parameters, so the user's optimizer and
model are never touched.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from flax import nnx

from ...core.errors import PadAuditError
from .state import flat, unflat

HINT = (
    "pass optimizer= an optax GradientTransformation (e.g. optax.adamw(1e-3, "
    "weight_decay=1e-2)) or an nnx.Optimizer (its tx is used, its state never)"
)
#: optax building blocks that only thread transformations together (not named).
_PLUMBING = {"chain", "init_empty_state", "with_extra_args_support", "identity", "named_chain"}
#: the names padaudit gives common chains of optax blocks.
_KNOWN = {
    ("scale",): "optax.sgd",
    ("trace", "scale"): "optax.sgd(momentum)",
    ("scale_by_adam", "scale"): "optax.adam",
    ("scale_by_adam", "add_decayed_weights", "scale"): "optax.adamw",
    ("scale_by_lion", "add_decayed_weights", "scale"): "optax.lion",
    ("scale_by_rms", "scale"): "optax.rmsprop",
}


@dataclass
class Stepper:
    """A fresh optax state over the parameters ``wrt`` selects."""

    tx: Any
    name: str
    weight_decay: float
    #: state paths of the parameters the transformation steps.
    paths: frozenset[tuple[Any, ...]]
    opt_state: Any = None


def build(spec: Any, model: Any, params: dict[tuple[Any, ...], Any]) -> Stepper:
    """Return a :class:`Stepper` for ``optimizer=`` over ``params`` (``{path: array}``)."""
    try:
        import optax
    except ImportError as exc:  # pragma: no cover - flax depends on optax
        raise PadAuditError(
            f"the Flax update check needs optax: pip install optax ({exc})"
        ) from exc
    wrt: Any = nnx.Param
    if spec is None:
        tx = optax.sgd(1.0)
    elif isinstance(spec, nnx.Optimizer):
        tx, wrt = spec.tx, spec.wrt
    elif callable(getattr(spec, "init", None)) and callable(getattr(spec, "update", None)):
        tx = spec
    else:
        raise PadAuditError(f"optimizer={spec!r} is not an optax transformation: {HINT}")
    selected = {p for p, _ in nnx.to_flat_state(nnx.state(model, wrt))}
    paths = frozenset(p for p in params if p in selected)
    name, decay = describe(tx)
    stepper = Stepper(tx, name, decay, paths)
    try:
        stepper.opt_state = tx.init(_pick(params, paths))
    except Exception as exc:
        raise PadAuditError(
            f"{name}.init failed on the model's parameters ({type(exc).__name__}: {exc}): {HINT}"
        ) from exc
    return stepper


def step(stepper: Stepper, params: dict, grads: dict) -> dict:
    """Apply one update to ``params`` (``{path: array}``); return the new parameters."""
    import optax

    picked = _pick(params, stepper.paths)
    try:
        updates, stepper.opt_state = stepper.tx.update(
            _pick(grads, stepper.paths), stepper.opt_state, picked
        )
    except Exception as exc:
        raise PadAuditError(
            f"{stepper.name}.update failed ({type(exc).__name__}: {exc}); a transformation "
            f"that needs extra arguments (a line search) cannot be audited: {HINT}"
        ) from exc
    return {**params, **flat(optax.apply_updates(picked, updates))}


def moves_without_gradient(stepper: Stepper, params: dict, path: tuple, pad: int) -> float:
    """Return max|Δ| one fresh step with zero gradients makes to the row ``pad`` of ``path``.

    Non-zero means the transformation moves a parameter whose gradient is zero in
    proportion to its value: weight decay.
    """
    import jax
    import jax.numpy as jnp

    if path not in stepper.paths:
        return 0.0
    picked = _pick(params, stepper.paths)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, picked)
    updates, _ = stepper.tx.update(zeros, stepper.tx.init(picked), picked)
    return float(jnp.abs(flat(updates)[path][pad]).max())


def _pick(values: dict, paths: frozenset) -> Any:
    """Return the entries at ``paths`` as a nested pure state, as ``nnx.Optimizer`` gives
    optax (``optax.masked`` and ``mask=`` callables see the structure they expect)."""
    return unflat({p: v for p, v in values.items() if p in paths})


def describe(tx: Any) -> tuple[str, float]:
    """Return a name for ``tx`` and its ``add_decayed_weights`` decay (0.0 if none seen).

    optax transformations are closures; the names of the blocks they chain are read from
    the closures of their ``update`` functions (best effort: only for messages).
    """
    blocks: list[str] = []
    decay: list[float] = []
    _walk(getattr(tx, "update", None), blocks, decay, set(), 0)
    names = tuple(dict.fromkeys(b for b in blocks if b not in _PLUMBING))
    if names in _KNOWN:
        name = _KNOWN[names]
    elif names:
        name = f"optax chain({', '.join(names)})"
    else:
        name = "optax transformation"
    return name, max(decay, default=0.0)


def _walk(obj: Any, blocks: list[str], decay: list[float], seen: set[int], depth: int) -> None:
    if depth > 8 or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, (tuple, list)):
        for item in obj:
            _walk(item, blocks, decay, seen, depth + 1)
        return
    if not inspect.isfunction(obj):
        update = getattr(obj, "update", None)
        if inspect.isfunction(update):
            _walk(update, blocks, decay, seen, depth + 1)
        return
    block = obj.__qualname__.split(".<locals>")[0]
    cells = dict(
        zip(obj.__code__.co_freevars, (c.cell_contents for c in obj.__closure__ or ()), strict=True)
    )
    blocks.append(block)
    value = cells.get("weight_decay")
    if block == "add_decayed_weights" and isinstance(value, (int, float)):
        decay.append(float(value))
    for value in cells.values():
        if inspect.isfunction(value) or isinstance(value, (tuple, list)):
            _walk(value, blocks, decay, seen, depth + 1)
