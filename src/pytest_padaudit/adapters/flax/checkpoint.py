"""Read Flax weight files for ``audit_checkpoint``: Flax loads only when a file needs it.

A ``.msgpack`` file is what ``flax.serialization.to_bytes`` writes, e.g. of
``nnx.to_pure_dict(nnx.state(model))``: nested mappings of arrays, read as dotted keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...core.errors import PadAuditError
from ...core.handle import CheckpointWords

#: what audit_checkpoint says about a Flax msgpack file's pad rows.
WORDS = CheckpointWords(
    default_expect=("zero",),
    zero_fix=(
        "zero the row before saving (state = nnx.to_pure_dict(nnx.state(model)), then set "
        "the array saved as {key!r} to array.at[{pad}].set(0))"
    ),
    nonzero_why=(
        "the row trained or was initialised non-zero: Flax's nnx.Embed has no padding_idx "
        "and initialises every row randomly, so only a model that zeroes the row and keeps "
        "pad positions out of the loss keeps it zero"
    ),
    nonzero_fix=(
        "audit the training model (audit(model)) to see whether the row trains; {zero} "
        "when the model never reads it; expect='unchanged' with baseline= when a non-zero "
        "row is by design"
    ),
    changed_why=(
        "training moved the pad row: it received gradient (no mask at pad positions, tied "
        "output logits) or the optimizer moved it (optax.adamw's weight decay, momentum)"
    ),
    changed_fix=(
        "run audit(model, optimizer=...) with the optax transformation you train with: its "
        "findings name the layer, the cause and the fix"
    ),
)


def msgpack_state(path: Path) -> dict[str, Any]:
    """Return the nested state a ``flax.serialization.to_bytes`` file holds."""
    try:
        from flax import serialization
    except ImportError:
        raise PadAuditError(f"reading {path} needs Flax: pip install flax") from None
    try:
        state = serialization.msgpack_restore(path.read_bytes())
    except Exception as exc:
        raise PadAuditError(
            f"{path} is not a Flax msgpack file ({type(exc).__name__}: {exc}): save it with "
            "flax.serialization.to_bytes(nnx.to_pure_dict(nnx.state(model)))"
        ) from None
    if not isinstance(state, dict):
        raise PadAuditError(f"{path} holds a {type(state).__name__}, not a mapping of arrays")
    return state
