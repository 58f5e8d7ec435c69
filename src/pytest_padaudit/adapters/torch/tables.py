"""PyTorch tables as users run them: lookup probe, tied-head split, compiled/meta models."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...core.errors import PadAuditError
from ...core.handle import ROOT, Table

#: the path ``tables()`` gives the model itself.


def uncompiled(model: object) -> object:
    """Return the module under ``torch.compile(module)``; any other object as it is.

    The audit runs the original module eagerly: its hooks and the wider invariance
    batch would otherwise make dynamo recompile or fail inside the audit's own code.
    """
    inner = getattr(model, "_orig_mod", None)
    if type(model).__name__ == "OptimizedModule" and isinstance(inner, nn.Module):
        return inner
    return model


def check_usable(model: nn.Module) -> None:
    """Refuse a model whose weights hold no values (meta) or cannot take gradients."""
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.is_meta for t in tensors):
        raise PadAuditError(
            f"{type(model).__qualname__} is on the meta device: its weights have shapes but "
            "no values, so nothing can be measured. Materialise it first, e.g. "
            "model.to_empty(device='cpu') then load or initialise the weights "
            "(model.load_state_dict(...), or from_pretrained without device_map='meta')"
        )
    if any(t.is_inference() for t in tensors):
        raise PadAuditError(
            f"{type(model).__qualname__} was built or loaded under torch.inference_mode(): "
            "its weights are inference tensors, which autograd cannot use. Build or load "
            "the model outside torch.inference_mode() (an audit itself may run inside it)"
        )


def compiled(module: nn.Module) -> bool:
    """Say whether ``module.compile()`` was called on it (in place)."""
    return getattr(module, "_compiled_call_impl", None) is not None


def leaf_like(weight: nn.Parameter) -> nn.Parameter:
    """Return a separate autograd leaf sharing ``weight``'s storage and its grad hooks."""
    leaf = nn.Parameter(weight.detach(), requires_grad=True)
    for hook in (getattr(weight, "_backward_hooks", None) or {}).values():
        leaf.register_hook(hook)
    for hook in (getattr(weight, "_post_accumulate_grad_hooks", None) or {}).values():
        leaf.register_post_accumulate_grad_hook(hook)
    return leaf


class Lookups(torch.overrides.TorchFunctionMode):
    """Record the indices each known weight is looked up with (F.embedding, embedding_bag)."""

    def __init__(self, path_of: Mapping[int, str]) -> None:
        super().__init__()
        self.path_of = path_of
        self.seen: dict[str, list[np.ndarray]] = {path: [] for path in path_of.values()}

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
        kwargs = kwargs or {}
        if func in (F.embedding, F.embedding_bag):
            ids = args[0] if args else kwargs.get("input")
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            path = self.path_of.get(id(weight))
            if path is not None and isinstance(ids, torch.Tensor):
                self.seen[path].append(np.unique(ids.detach().cpu().numpy()))
        return func(*args, **kwargs)

    def unique(self) -> dict[str, np.ndarray]:
        return {
            path: np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)
            for path, found in self.seen.items()
        }


@contextmanager
def untied(
    model: nn.Module,
    layers: Mapping[str, nn.Embedding | nn.EmbeddingBag],
    tables: Sequence[Table],
) -> Iterator[dict[str, list[nn.Parameter]]]:
    """Give each tied head a leaf of its own sharing the weight; put the weight back."""
    modules = {path or ROOT: module for path, module in model.named_modules()}
    swaps: list[tuple[nn.Module, str, nn.Parameter]] = []
    leaves: dict[str, list[nn.Parameter]] = defaultdict(list)
    try:
        for t in tables:
            weight = layers[t.path].weight
            if not weight.requires_grad:
                continue
            for path in t.tied_with:
                module = modules[path]
                for name, param in list(module._parameters.items()):
                    if param is weight:
                        leaf = leaf_like(weight)
                        module._parameters[name] = leaf
                        swaps.append((module, name, cast(nn.Parameter, param)))  # it is the weight
                        leaves[t.path].append(leaf)
        yield leaves
    finally:
        for module, name, param in reversed(swaps):
            module._parameters[name] = param
