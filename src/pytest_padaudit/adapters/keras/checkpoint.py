"""Read Keras weight files for ``audit_checkpoint``: h5py loads only when a file needs it."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import PadAuditError


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
