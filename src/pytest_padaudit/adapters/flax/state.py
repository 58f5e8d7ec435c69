"""Snapshots of a Flax NNX model: ``nnx.split`` / ``nnx.state`` in, ``nnx.update`` out.

JAX arrays are immutable, so a snapshot holds references, not copies: O(1) memory, and
putting them back is bitwise by construction. There is no global RNG in JAX; the random
state of an NNX model (``nnx.Rngs`` keys and counts) is part of its state and restored with
it, and so are batch statistics and every other ``nnx.Variable``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from flax import nnx

#: Module attributes ``model.train()`` / ``model.eval()`` set (static, not in the state).
MODE_ATTRIBUTES = ("deterministic", "use_running_average")


@dataclass
class Snapshot:
    """Everything an audit could change on the user's model."""

    graphdef: Any
    params: Any
    rest: Any
    modes: list[tuple[Any, str, Any]]


def take(model: Any) -> Snapshot:
    """Split ``model`` into its graph, its ``nnx.Param`` arrays and every other Variable."""
    # two filters: exactly two states (flax types the rest as variadic)
    graphdef, params, rest = cast("tuple[Any, Any, Any]", nnx.split(model, nnx.Param, ...))
    modes = [
        (module, name, vars(module)[name])
        for _, module in nnx.iter_modules(model)
        for name in MODE_ATTRIBUTES
        if name in vars(module)
    ]
    return Snapshot(graphdef, nnx.as_pure(params), nnx.as_pure(rest), modes)


def restore(model: Any, snapshot: Snapshot) -> None:
    """Put every Variable's value and every mode attribute back as ``take`` saw them."""
    nnx.update(model, snapshot.params, snapshot.rest)
    for module, name, value in snapshot.modes:
        if vars(module).get(name, value) is not value:
            setattr(module, name, value)


def copy_of(snapshot: Snapshot, params: Any, rest: Any, *, training: bool) -> Any:
    """Return a private model built from ``params`` and ``rest`` (pure states).

    ``training``: dropout on (``model.train()``); else train-only randomness off
    (``deterministic=True``) while batch norm keeps using batch statistics, so pad
    positions that reach them still show.
    """
    copy = nnx.merge(snapshot.graphdef, params, rest)
    if training:
        copy.set_attributes(
            deterministic=False, use_running_average=False, raise_if_not_found=False
        )
    else:
        copy.set_attributes(deterministic=True, use_running_average=False, raise_if_not_found=False)
    return copy


def flat(state: Any) -> dict[tuple[Any, ...], Any]:
    """Return a pure state as ``{path: array}``."""
    return dict(nnx.to_flat_state(state))


def unflat(values: dict[tuple[Any, ...], Any]) -> Any:
    """Return ``{path: array}`` as a state again."""
    return nnx.from_flat_state(values)
