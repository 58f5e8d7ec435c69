"""Noise at the pad positions of PyTorch embedding lookups, for the invariance check.

A model that cannot take a wider batch is measured by replacing the vectors its token
tables emit at pad positions with seeded noise and comparing with the plain pass. The
rule and the draw are the core's (:class:`~pytest_padaudit.core.base.PadNoise`); this
module hooks them into ``nn.Embedding`` calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, cast

import torch
from torch import nn

from ...core.handle import Table
from ...core.noise import PadNoise, noise_scale, pad_noise


def noise_at_pads(
    layers: Mapping[str, nn.Module], tables: Sequence[Table], seed: int | None
) -> AbstractContextManager[PadNoise | None]:
    """Replace each token table's vectors at its pad id with :class:`PadNoise`.

    Raise :class:`PadAuditError` when no table emitted a vector at a pad position.
    """
    return pad_noise(tables, seed, lambda noise: _hooked(layers, noise), "nn.Embedding")


@contextmanager
def _hooked(layers: Mapping[str, nn.Module], noise: PadNoise) -> Iterator[None]:
    hooks = [
        layers[t.path].register_forward_hook(_hook(noise, t.path, cast(int, t.pad_idx)))
        for t in noise.tables
        if isinstance(layers[t.path], nn.Embedding)
    ]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def _hook(noise: PadNoise, path: str, pad: int) -> Callable[..., Any]:
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
        others = output.detach()[~at.squeeze(-1)].float()
        scale = noise_scale(float(others.std(correction=0)) if others.numel() else 0.0)
        draw = torch.from_numpy(noise.draw(path, tuple(output.shape))) * scale
        return torch.where(at, draw.to(output.device, output.dtype), output)

    return hook
