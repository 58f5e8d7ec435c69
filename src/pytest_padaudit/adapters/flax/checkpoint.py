"""Read Flax weight files for ``audit_checkpoint``: Flax loads only when a file needs it.

A ``.msgpack`` file is what ``flax.serialization.to_bytes`` writes, e.g. of
``nnx.to_pure_dict(nnx.state(model))``: nested mappings of arrays, read as dotted keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...core.errors import PadAuditError


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
