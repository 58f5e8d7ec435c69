"""Where the mask chain breaks: one recorded inference pass, classified call by call."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .calls import floating_tensors, keras_mask, recorded_calls, takes_mask

if TYPE_CHECKING:
    from .handle import KerasHandle


@dataclass
class MaskFlow:
    """How the mask travelled through one forward pass, layer call by layer call."""

    #: (path, class) of leaf layers that got a mask and take ``mask=``: they can apply it.
    applies: list[tuple[str, str]] = field(default_factory=list)
    #: ... that got a mask, take no ``mask=`` and pass it on unapplied (plain Dense).
    passes: list[tuple[str, str]] = field(default_factory=list)
    #: ... that got a mask and do not support masking: Keras destroys the mask there.
    unsupported: list[tuple[str, str]] = field(default_factory=list)
    #: ... that support masking but return no mask without reading it.
    drops: list[tuple[str, str]] = field(default_factory=list)
    output_masked: bool = False
    error: str | None = None


def mask_flow(handle: KerasHandle) -> MaskFlow:
    """Run one inference pass on the last audit batch and classify each masked call."""
    flow = MaskFlow()
    batch = handle.last_batch
    if batch is None:
        return flow
    model_type = handle.keras.Model
    calls: list[tuple[str, Any, bool, list[Any]]] = []

    def record(path: str, layer: Any, args: tuple, kwargs: dict, out: Any) -> None:
        received = any(
            v is not None for k, v in kwargs.items() if k == "mask" or k.endswith("_mask")
        ) or (bool(args) and keras_mask(args[0]) is not None)
        calls.append((path, layer, received, list(floating_tensors(out, handle.backend))))

    try:
        with handle.backend.no_grad(), recorded_calls(handle.named, record):
            output = handle.forward(handle.tensors(batch, training=False))
    except Exception as exc:  # a diagnosis must not hide the finding it explains
        flow.error = f"{type(exc).__name__}: {exc}"
        return flow
    outputs: Iterable[Any]  # each call's outputs, then the model's
    for path, layer, received, outputs in calls:
        if not received or isinstance(layer, model_type):
            continue
        entry = (path, type(layer).__name__)
        out_masked = any(keras_mask(t) is not None for t in outputs)
        if takes_mask(layer):
            flow.applies.append(entry)
        elif not getattr(layer, "supports_masking", False):
            flow.unsupported.append(entry)
        elif out_masked:
            flow.passes.append(entry)
        else:
            flow.drops.append(entry)
    outputs = floating_tensors(output, handle.backend)
    flow.output_masked = any(keras_mask(t) is not None for t in outputs)
    return flow
