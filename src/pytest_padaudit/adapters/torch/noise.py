"""Noise at the pad positions of PyTorch embedding lookups, for the invariance check.

A model that cannot take a wider batch is measured by replacing the vectors its token
tables emit at pad positions with seeded noise and comparing with the plain pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from ...core.errors import PadAuditError
from ...core.handle import Table


@contextmanager
def noise_at_pads(
    layers: Mapping[str, nn.Module], tables: Sequence[Table], seed: int | None
) -> Iterator[None]:
    """Replace each token table's vectors at its pad id with seeded noise of its scale.

    The scale is the standard deviation of the vectors it emits at the other ids.
    Raise :class:`PadAuditError` when no table emitted a vector at a pad position.
    """
    if seed is None:
        yield
        return
    replaced = [0]

    def hook_for(number: int, pad: int) -> Callable[..., Any]:
        calls = [0]

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            ids = args[0] if args else None
            if not (
                isinstance(ids, torch.Tensor)
                and isinstance(output, torch.Tensor)
                and output.dim() == ids.dim() + 1
                and output.shape[:-1] == ids.shape
            ):
                return None
            at = (ids == pad).unsqueeze(-1)
            if not bool(at.any()):
                return None
            calls[0] += 1
            replaced[0] += 1
            others = output.detach()[~at.squeeze(-1)].float()
            scale = float(others.std()) if others.numel() > 1 else 1.0
            scale = scale if scale > 0 and np.isfinite(scale) else 1.0
            rng = np.random.default_rng([seed, 104729, number, calls[0]])
            noise = torch.from_numpy(rng.normal(0.0, scale, tuple(output.shape)))
            return torch.where(at, noise.to(output.device, output.dtype), output)

        return hook

    tables = [t for t in tables if getattr(t, "token", None) is not False]
    hooks = [
        layers[t.path].register_forward_hook(hook_for(k, t.pad_idx))
        for k, t in enumerate(tables)
        if isinstance(layers[t.path], nn.Embedding)
    ]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
    if not replaced[0]:
        names = ", ".join(t.path for t in tables) or "none"
        raise PadAuditError(
            f"no token table ({names}) emitted a vector at a pad position: only "
            "nn.Embedding lookups of the pad id can be replaced"
        )
