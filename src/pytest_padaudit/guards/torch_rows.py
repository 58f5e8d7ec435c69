"""What the PyTorch guards (transformers, Lightning) share: pad-row gradients, optimizers,
batches and the words for a leak in PyTorch idiom."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from ..adapters.torch.feed import PIPELINE_FIXES
from ..core.handle import ROOT, Table
from .watch import OptimizerSeen, PadWatch, check_every, check_on_leak, check_pad_idx


def weights(model: nn.Module, tables: list[Table]) -> dict[str, torch.Tensor]:
    """Return each watched table's weight parameter (the one the optimizer steps)."""
    found = {}
    for t in tables:
        module = model if t.path == ROOT else model.get_submodule(t.path)
        found[t.path] = cast(torch.Tensor, module.weight)
    return found


class PadGrads:
    """The largest |gradient| of each pad row since the last check, kept on the device.

    :meth:`add` reads one row per table and never syncs with the device; :meth:`take`
    syncs once, at a check.
    """

    def __init__(self, params: Mapping[str, torch.Tensor], tables: list[Table]) -> None:
        self.params = dict(params)
        self.pads = {t.path: int(t.pad_idx or 0) for t in tables}
        self.seen: dict[str, torch.Tensor] = {}

    def add(self) -> None:
        for path, weight in self.params.items():
            grad = weight.grad
            if grad is None:
                continue
            pad = self.pads[path]
            if grad.is_sparse:
                row = grad.index_select(0, torch.tensor([pad], device=grad.device)).to_dense()
            else:
                row = grad[pad]
            value = row.detach().abs().max().float()
            old = self.seen.get(path)
            self.seen[path] = value if old is None else torch.maximum(old, value)

    def take(self) -> dict[str, float]:
        out = {path: float(self.seen[path]) if path in self.seen else 0.0 for path in self.params}
        self.seen = {}
        return out


def optimizer_seen(optimizer: Any, weight: torch.Tensor) -> OptimizerSeen | None:
    """Describe the optimizer (possibly wrapped) that steps ``weight``; None if none does."""
    inner = optimizer
    while isinstance(getattr(inner, "optimizer", None), torch.optim.Optimizer):
        inner = inner.optimizer  # accelerate's AcceleratedOptimizer, ...
    groups = getattr(inner, "param_groups", None) or []
    for group in groups:
        if any(p is weight for p in group.get("params", ())):
            state = getattr(inner, "state", {}).get(weight, {})
            stateful = any(torch.is_tensor(v) and v.dim() > 0 for v in state.values())
            return OptimizerSeen(
                type(inner).__name__, float(group.get("weight_decay", 0.0) or 0.0), stateful
            )
    return None


def batch_arrays(batch: Any) -> dict[str, np.ndarray]:
    """Return a batch's integer tensors by key as NumPy (a dict batch; else nothing)."""
    if not isinstance(batch, Mapping):
        return {}
    out = {}
    for key, value in batch.items():
        if torch.is_tensor(value) and not value.is_floating_point() and value.dim() >= 1:
            out[str(key)] = value.detach().cpu().numpy()
    return out


def explain(where: str, hf: bool):
    """Return the guard's words for a leak in PyTorch idiom (``where``: how the optimizer
    is handed over, e.g. "Trainer(optimizers=(optimizer, None))")."""

    def words(
        cause: str, t: Table, optimizer: OptimizerSeen | None, before: np.ndarray
    ) -> tuple[str, str]:
        pad, weight = t.pad_idx, f"model.{t.path}.weight" if t.path != ROOT else "model.weight"
        name = optimizer.name if optimizer else "the optimizer"
        if cause == "weight_decay":
            wd = optimizer.weight_decay if optimizer else 0.0
            return (
                f"{name}(weight_decay={wd:g}) shrinks every row of {t.path} toward zero at "
                f"each step, pad row {pad} too, although padding_idx gives it no gradient: "
                f"the row is not zero (max|row| {float(np.max(np.abs(before))):.3g} at the "
                "start of training)",
                f"zero the pad row before training (with torch.no_grad(): "
                f"{weight}[{pad}] = 0), as a zero row stays zero under decay; or train "
                f"{t.path} in an AdamW param group with weight_decay=0.0: torch.optim.AdamW("
                f"[{{'params': [{weight}], 'weight_decay': 0.0}}, {{'params': others}}]) "
                f"handed over as {where}",
            )
        if cause == "momentum":
            return (
                f"{name} moved pad row {pad} of {t.path} although its gradient was zero "
                "at every step since the last check: the optimizer's state (momentum, "
                "Adam's moments) still carries gradient the row got earlier (before "
                "padding_idx was set, or from a loaded optimizer checkpoint)",
                f"zero the row in the optimizer's state once (for buf in "
                f"optimizer.state[{weight}].values(): buf[{pad}] = 0 where buf has the "
                f"table's shape) and keep padding_idx={pad} set from the first step",
            )
        if t.tied_with:
            return (
                f"{t.path} is tied with {', '.join(t.tied_with)}: the output head gives "
                f"every row gradient, pad row {pad} too, whatever padding_idx says",
                "untie the weights"
                + (" (config.tie_word_embeddings=False)" if hf else "")
                + f", or zero the pad row's gradient: {weight}.register_hook(lambda g: "
                f"g.index_fill(0, torch.tensor([{pad}]), 0))",
            )
        if not t.own_pad:
            own = (
                f"set config.pad_token_id={pad} before building the model (its embeddings "
                "take padding_idx from it), or build "
                if hf
                else "build "
            )
            return (
                f"{t.path} ({t.kind}) has no padding_idx, so every pad token gives row {pad} "
                "gradient and the optimizer trains it like a real token",
                f"{own}the table as nn.Embedding({t.rows}, {t.dim}, padding_idx={pad})",
            )
        return (
            f"{t.path} has padding_idx={pad}, yet row {pad} got gradient: the weight is "
            "read outside the layer's lookup (F.embedding without padding_idx, a matmul "
            "with .weight)",
            f"pass padding_idx={pad} wherever the weight is looked up, or zero the pad row's "
            f"gradient: {weight}.register_hook(lambda g: g.index_fill(0, "
            f"torch.tensor([{pad}]), 0))",
        )

    return words


def torch_watch(
    name: str,
    every_n_steps: Any,
    on_leak: Any,
    pad_idx: Any,
    where: str,
    hf: bool,
) -> PadWatch:
    """Return the watch a torch guard keeps: its inputs checked, its words in torch idiom."""
    return PadWatch(
        name,
        check_every(every_n_steps, name, "every_n_steps"),
        check_on_leak(on_leak, name),
        check_pad_idx(pad_idx, name),
        explain(where, hf=hf),
        PIPELINE_FIXES,
    )


class TorchGuard:
    """The inputs every torch guard takes, checked once; ``where`` and ``hf`` pick words."""

    where: str = ""
    hf: bool = False

    def __init__(
        self,
        every_n_steps: int = 1,
        on_leak: str = "raise",
        pad_idx: int | Mapping[str, int] | None = None,
    ) -> None:
        self.watch = torch_watch(
            type(self).__name__, every_n_steps, on_leak, pad_idx, self.where, self.hf
        )
        self._grads: PadGrads | None = None
        self._params: dict[str, Any] = {}
