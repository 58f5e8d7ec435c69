"""Torch tensor helpers: NumPy copies, output leaves, sparse gradients and reachable rows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from ...core.handle import output_leaves
from .params import is_leaf as _is_leaf


def floating_tensors(output: Any) -> Iterator[torch.Tensor]:
    """Yield every floating-point tensor in a (nested) model output."""
    leaves = output_leaves(output, lambda x: isinstance(x, torch.Tensor))
    return (t for t in leaves if t.is_floating_point())


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    if tensor.is_sparse:
        tensor = tensor.to_dense()
    return tensor.detach().to("cpu", torch.float32, copy=True).numpy()


def can_be_sparse(layer: nn.Module) -> bool:
    """Say whether a table can give sparse gradients (O(tokens), not O(vocab))."""
    weight = layer.weight
    return (
        _is_leaf(layer)
        and not getattr(weight, "_backward_hooks", None)  # the user's hooks expect dense grads
        and not getattr(weight, "_post_accumulate_grad_hooks", None)
        and weight.layout == torch.strided
        and weight.device.type in ("cpu", "cuda")
        and not (isinstance(layer, nn.EmbeddingBag) and layer.mode == "max")
    )


def rows_of(grad: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Return ``grad[rows]`` densely, for a dense or sparse gradient (rows sorted)."""
    if not grad.is_sparse:
        return grad.index_select(0, rows)
    grad = grad.coalesce()
    index, values = grad.indices()[0], grad.values()
    out = values.new_zeros((len(rows), *values.shape[1:]))
    if len(index):
        at = torch.searchsorted(index, rows).clamp(max=len(index) - 1)
        hit = index[at] == rows
        out[hit] = values[at[hit]]
    return out
