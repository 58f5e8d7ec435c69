"""Read Keras weight files for ``audit_checkpoint``: h5py loads only when a file needs it."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import PadAuditError
from ...core.handle import CheckpointWords

_ROW = (
    "Keras initialises every row randomly, the pad row too, and mask_zero keeps it out of "
    "training, so a non-zero pad row is fine"
)
#: what audit_checkpoint says about a Keras weights file's pad rows.
WORDS = CheckpointWords(
    default_expect=("finite",),
    zero_fix=(
        "zero it before saving: w = layer.get_weights(); w[0][{pad}] = 0; layer.set_weights(w) "
        "(layer: the Embedding saved as {key!r})"
    ),
    nonzero_why=(
        f"the row trained or was never zeroed: {_ROW} only where every layer "
        "honours the mask; without mask_zero, or with a layer that drops the mask or "
        "tied output logits, pad tokens train it"
    ),
    nonzero_fix=(
        "audit the training model (audit(model)) to see whether the row trains; if it "
        "must be zero, {zero}; expect='unchanged' with baseline= when a non-zero row is by "
        "design"
    ),
    changed_why=(
        "training moved the pad row: it received gradient (no mask_zero, a layer "
        "that drops the mask, tied output logits) or the optimizer moved it (weight "
        "decay: Keras' AdamW decays by 0.004 by default)"
    ),
    changed_fix=(
        "audit the compiled training model with audit(model) (it steps a copy of "
        "model.optimizer): its findings name the layer, the cause and the fix"
    ),
    finite_note=(
        f"{_ROW}: without baseline= only finiteness is checked; pass baseline= "
        "the checkpoint before training to check that training did not move the pad row"
    ),
)


def h5_arrays(source: Path | io.BytesIO) -> dict[str, np.ndarray]:
    """Return every 2-D dataset of a Keras ``.weights.h5`` file (or its bytes) by name."""
    try:
        import h5py
    except ImportError:
        raise PadAuditError("reading Keras weights needs h5py: pip install h5py") from None
    data = source.read_bytes() if isinstance(source, Path) else source.getvalue()
    arrays: dict[str, np.ndarray] = {}
    with h5py.File(io.BytesIO(data), "r") as f:

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset) and obj.ndim == 2:
                arrays[name] = obj[()]

        f.visititems(visit)
    return arrays
