"""Keras state the audit guards or builds: call context, loss lists, optimizer.

The optimizer is the fresh one an update check steps with, never the user's. Global RNGs
differ by backend (:meth:`Backend.rng_guard`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ...core.errors import PadAuditError


def unique(variables: Sequence[Any]) -> list[Any]:
    """Return ``variables`` without repeats (by identity), in order."""
    return list({id(v): v for v in variables}.values())


def saved_losses(layers: Sequence[Any]) -> list[tuple[Any, Any]]:
    """Snapshot the loss lists a forward pass refills (activity regularizers, add_loss)."""
    saved = []
    for layer in layers:
        for name in ("_losses", "_loss_ids", "_eager_losses"):
            holder = layer.__dict__.get(name)
            if isinstance(holder, (list, set)):
                saved.append((holder, copy.copy(holder)))
    return saved


def restore_losses(losses: list[tuple[Any, Any]]) -> None:
    """Put back the loss lists :func:`saved_losses` snapshotted."""
    for holder, value in losses:
        if isinstance(holder, list):
            holder[:] = value
        else:
            holder.clear()
            holder.update(value)


@contextmanager
def training_scope(flavour: str, training: bool) -> Iterator[None]:
    """Make layers called by a ``forward=`` callable default to ``training``."""
    state = _keras_state() if flavour == "keras" else None
    if state is None or state.get_global_attribute("current_call_ctx") is not None:
        yield
        return
    from keras.src.layers.layer import CallContext

    scope = CallContext(entry_layer=None)
    scope.training = training
    state.set_global_attribute("current_call_ctx", scope)
    try:
        yield
    finally:
        state.set_global_attribute("current_call_ctx", None)


def _keras_state() -> Any:
    try:
        from keras.src.backend.common import global_state
    except ImportError:
        return None
    return global_state


def _is_optimizer(value: Any) -> bool:
    return (
        not isinstance(value, type)
        and callable(getattr(value, "apply_gradients", None))
        and callable(getattr(value, "get_config", None))
    )


def _fresh_copy(optimizer: Any) -> Any:
    """Rebuild an optimizer from its class and config, with its weight-decay exclusions."""
    fresh = type(optimizer).from_config(optimizer.get_config())
    for name in (
        "_exclude_from_weight_decay",
        "_exclude_from_weight_decay_pattern",
        "_exclude_from_weight_decay_names",
    ):
        if name in optimizer.__dict__:
            setattr(fresh, name, copy.copy(optimizer.__dict__[name]))
    if "_exclude_from_weight_decay_cache" in fresh.__dict__:
        fresh._exclude_from_weight_decay_cache = {}
    return fresh


def build_optimizer(keras: Any, spec: Any) -> Any:
    hint = (
        "pass optimizer= a Keras optimizer instance (its class and config are copied, never "
        f"its state), a factory such as lambda: {keras.__name__}.optimizers.AdamW(1e-3), an "
        "optimizer class, or a name such as 'adamw'"
    )
    try:
        if spec is None:
            return keras.optimizers.SGD(learning_rate=1.0)
        if isinstance(spec, str):
            return keras.optimizers.get(spec)
        if _is_optimizer(spec):
            return _fresh_copy(spec)
        if callable(spec):
            built = spec()
            if not _is_optimizer(built):
                raise PadAuditError(f"optimizer= returned {type(built).__name__}: {hint}")
            return _fresh_copy(built) if getattr(built, "built", False) else built
    except PadAuditError:
        raise
    except Exception as exc:
        raise PadAuditError(f"could not build the optimizer from {spec!r} ({exc}): {hint}") from exc
    raise PadAuditError(f"optimizer={spec!r} is not usable: {hint}")
