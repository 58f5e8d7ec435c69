"""Tables whose weight is computed from other parameters (parametrizations, weight_norm).

Their weight is no leaf: the audit reads its gradient from the computed tensor, steps the
parameters it is computed from, and never makes such a table sparse.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch.nn.utils.weight_norm import WeightNorm


def is_leaf(layer: nn.Module) -> bool:
    """Say whether the table's weight is its own parameter (not computed by a
    parametrization or weight_norm from other parameters)."""
    return isinstance(layer.__dict__.get("_parameters", {}).get("weight"), nn.Parameter)


def weight(layer: nn.Module) -> torch.Tensor:
    """Return the table's weight as its next call computes it (weight_norm: fresh)."""
    for hook in layer._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm) and hook.name == "weight":
            return hook.compute_weight(layer)
    return cast(torch.Tensor, layer.weight)
