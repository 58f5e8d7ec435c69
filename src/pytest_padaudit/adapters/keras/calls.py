"""Keras plumbing shared by the adapter: layer paths, call recording, tensor helpers.

Works for Keras 3 (every backend) and ``tf_keras`` by duck typing: layers are walked with
``_flatten_layers`` (both have it) and calls are recorded by shadowing a layer's ``call``
with an instance attribute, which both ``Layer.__call__`` implementations use.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ...core.handle import output_leaves
from .backends.base import Backend

_MISSING = object()
#: Signature of a call recorder: (path, layer, args, kwargs, outputs) -> None, or what the
#: call returns instead of its outputs.
Recorder = Callable[[str, Any, tuple, dict, Any], Any]


def children(layer: Any) -> list[Any]:
    """Return a layer's direct sub-layers."""
    flatten = getattr(layer, "_flatten_layers", None)
    if callable(flatten):
        return list(flatten(include_self=False, recursive=False))
    return list(getattr(layer, "layers", None) or [])


def named_layers(model: Any) -> list[tuple[str, Any]]:
    """Return ``(path, layer)`` for every sub-layer, paths joined from layer names."""
    found: list[tuple[str, Any]] = []
    seen = {id(model)}

    def walk(layer: Any, prefix: str) -> None:
        for child in children(layer):
            if id(child) in seen:
                continue
            seen.add(id(child))
            path = f"{prefix}.{child.name}" if prefix else str(child.name)
            found.append((path, child))
            walk(child, path)

    walk(model, "")
    return found


def _recording_call(path: str, layer: Any, original: Callable, record: Recorder) -> Callable:
    def call(*args: Any, **kwargs: Any) -> Any:
        outputs = original(*args, **kwargs)
        replaced = record(path, layer, args, kwargs, outputs)
        return outputs if replaced is None else replaced

    return call


@contextmanager
def recorded_calls(layers: Sequence[tuple[str, Any]], record: Recorder) -> Iterator[None]:
    """Call ``record`` after each call of ``layers``; restore every ``call`` on exit.

    When ``record`` returns something other than None, the call returns that instead.
    """
    shadowed: list[tuple[Any, Any]] = []
    try:
        for path, layer in layers:
            if type(layer).__name__ == "InputLayer":
                continue
            own = layer.__dict__.get("call", _MISSING)
            object.__setattr__(layer, "call", _recording_call(path, layer, layer.call, record))
            shadowed.append((layer, own))
        yield
    finally:
        for layer, own in reversed(shadowed):
            if own is _MISSING:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", own)


def takes_mask(layer: Any) -> bool:
    """Say whether a layer's ``call`` accepts a ``mask`` (or ``*_mask``) argument."""
    names = getattr(layer, "call_signature_parameters", None)
    if names is None:
        try:
            names = list(inspect.signature(type(layer).call).parameters)
        except (TypeError, ValueError):
            return False
    return any(n == "mask" or n.endswith("_mask") for n in names)


def keras_mask(tensor: Any) -> Any:
    """Return the mask Keras attached to a tensor, else None.

    Keras 3 keeps it beside tensors that take no attributes (JAX arrays).
    """
    mask = getattr(tensor, "_keras_mask", None)
    if mask is None and "keras" in sys.modules and not isinstance(tensor, (list, tuple, dict)):
        try:
            from keras.src.backend.common.masking import get_keras_mask
        except ImportError:
            return None
        mask = get_keras_mask(tensor)
    return mask


def floating_tensors(output: Any, backend: Backend) -> Iterator[Any]:
    """Yield every floating-point tensor in a (nested) model output."""
    return (t for t in output_leaves(output, backend.is_tensor) if backend.is_floating(t))


def variable_names(variables: Sequence[Any]) -> list[str]:
    """Return a unique, stable name for each variable (Keras 3 ``path``, else ``name``)."""
    names: list[str] = []
    for var in variables:
        name = str(getattr(var, "path", None) or var.name)
        names.append(name if name not in names else f"{name}#{len(names)}")
    return names
