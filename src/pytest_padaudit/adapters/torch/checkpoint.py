"""Read PyTorch checkpoints for ``audit_checkpoint``: torch loads only when a file needs it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...core.errors import PadAuditError
from ...core.handle import CheckpointWords

#: what audit_checkpoint says about a PyTorch checkpoint's pad rows.
WORDS = CheckpointWords(
    default_expect=("zero",),
    zero_fix="zero the row before release (state_dict[{key!r}][{pad}] = 0)",
    nonzero_why=(
        "the row trained or was initialised non-zero: a table without padding_idx, "
        "tied input/output embeddings, weight decay or max_norm on the embedding, or "
        "an init that overwrote the zero row"
    ),
    nonzero_fix=(
        "audit the training model (audit(model)) to find which; {zero} when the model never "
        "reads it; expect='unchanged' with baseline= when a non-zero row is by design"
    ),
    changed_why=(
        "training moved the pad row: it received gradient (no padding_idx, tied LM "
        "head) or the optimizer moved it (weight decay, momentum)"
    ),
    changed_fix=(
        "run audit(model, optimizer=...) on the training model: its findings name "
        "the layer, the cause and the fix"
    ),
)


def torch_installed() -> bool:
    """Say whether torch can be imported (safetensors reads bf16 tensors through it)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def torch_load(path: Path) -> Mapping[str, Any]:
    """Load a ``state_dict`` file with ``weights_only=True`` (never a full unpickle)."""
    try:
        import torch
    except ImportError:
        raise PadAuditError(
            f"reading {path} needs PyTorch: install torch, or save the weights as "
            ".safetensors or .weights.h5"
        ) from None
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PadAuditError(
            f"torch.load({str(path)!r}, weights_only=True) refused the file ({first}): padaudit "
            "never unpickles arbitrary objects. Save the weights alone: "
            "torch.save(model.state_dict(), path), or save_file() from safetensors"
        ) from None
    if not isinstance(state, Mapping):
        raise PadAuditError(
            f"{path} holds a {type(state).__name__}, not a state_dict: save "
            "model.state_dict(), or pass the mapping of names to tensors"
        )
    return state
