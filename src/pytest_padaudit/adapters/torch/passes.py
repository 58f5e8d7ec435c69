"""The passes the torch handle runs: train, lookups, invariance, trace, and their backward.

Each function takes the handle as ``self`` and is bound as a :class:`~.handle.TorchHandle`
method of the same name (``_invariance_run = passes.invariance_run``), so subclasses
override them as methods.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ...core.batch import LossPlan, PadBatch
from ...core.errors import PadAuditError
from ...core.handle import Table, Trace
from .explain import CONSTANT_LOSS
from .noise import noise_at_pads
from .params import is_leaf
from .state import floating_tensors, to_numpy
from .tables import Lookups, untied

if TYPE_CHECKING:
    from .handle import TorchBatch, TorchHandle


@contextmanager
def quiet(self: TorchHandle) -> Iterator[None]:
    """Turn train-only randomness off; batch norm keeps using batch statistics."""
    self.model.eval()
    for module in self.model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train()
    yield


def backward(self: TorchHandle, batch: PadBatch, plan: LossPlan) -> tuple[TorchBatch, Any]:
    """Run one forward and backward pass from cleared gradients; keep it for ``closure``."""
    for p in self.model.parameters():
        p.grad = None
    tb = self._tensors(batch)
    output = self._forward(tb)
    loss = self._loss(output, tb, plan)
    loss.backward()
    if not any(p.grad is not None for p in self.model.parameters()):
        raise PadAuditError(CONSTANT_LOSS)
    self._last = (batch, plan, loss.detach())
    return tb, output


def closure(self: TorchHandle) -> torch.Tensor:
    """Re-run the last train pass and return its loss (LBFGS-style ``step(closure)``)."""
    assert self._last is not None
    batch, plan, _ = self._last
    with torch.enable_grad():
        self._backward(batch, plan)
    return self._last[2]


def lookups(self: TorchHandle, batch: PadBatch) -> dict[str, np.ndarray]:
    """Record the ids each table's weight is looked up with (F.embedding/embedding_bag,
    through the layer or called directly) in one quiet forward pass."""
    recorder = Lookups(self._path_of)
    tb = self._tensors(batch)
    moved = [  # what a forward pass can change: buffers, max_norm tables
        *self.model.buffers(),
        *(layer.weight for layer in self._layers.values() if layer.max_norm is not None),
    ]
    saved = [(t, t.detach().clone()) for t in dict.fromkeys(moved)]
    try:
        with self._quiet(), torch.no_grad(), recorder:
            self._forward(tb)
    finally:
        with torch.no_grad():
            for t, value in saved:
                t.copy_(value)
    return recorder.unique()


def train_pass(
    self: TorchHandle, batch: PadBatch, plan: LossPlan, tables: Sequence[Table]
) -> dict[str, np.ndarray | None]:
    """Return the pad-row gradients through the lookups; keep tied heads' parts apart.

    During the pass each tied head holds a separate leaf sharing the weight's storage,
    so autograd gives the head's part to the leaf and the lookups' part to the table;
    the table then gets their sum, the gradient training would step with. The lookups
    are recorded in the first pass on ``batch`` only (the later ones look up the same).
    """
    self.model.train()
    self._heads = {}
    self._computed = {}
    hooks = [
        layer.register_forward_pre_hook(self._keep_weight(t.path))
        for t in tables
        if not is_leaf(layer := self._layers[t.path])
    ]
    recorder = Lookups(self._path_of) if self._seen_of is not batch else None
    try:
        with (
            untied(self.model, self._layers, tables) as leaves,
            parametrize.cached(),
            recorder or nullcontext(),
        ):
            self._backward(batch, plan)
    finally:
        for hook in hooks:
            hook.remove()
    if recorder is not None:
        self._seen, self._seen_of = recorder.unique(), batch
    grads = {t.path: self._pad_grad(t) for t in tables}
    for t in tables:
        parts = [leaf.grad for leaf in leaves.get(t.path, ()) if leaf.grad is not None]
        if t.path not in leaves:
            continue
        weight = self._layers[t.path].weight
        head = sum(parts[1:], parts[0]) if parts else torch.zeros_like(weight)
        self._heads[t.path] = to_numpy(head[t.pad_idx])
        if parts:  # the full gradient, as training would step with
            own = weight.grad
            weight.grad = head if own is None else own.to_dense() + head
    return grads


def recorded_lookups(self: TorchHandle) -> dict[str, np.ndarray]:
    """Return the ids each table was looked up with in the last train pass."""
    return dict(self._seen)


def keep_weight(self: TorchHandle, path: str) -> Callable[[nn.Module, Any], None]:
    """Keep the computed weight a call uses, so its gradient can be read."""

    def keep(module: nn.Module, args: Any) -> None:
        weight = cast(torch.Tensor, module.weight)
        if weight.requires_grad:
            weight.retain_grad()
            self._computed.setdefault(path, []).append(weight)

    return keep


def invariance_run(
    self: TorchHandle, batch: PadBatch, plan: LossPlan, tables: Sequence[Table], perturb: int | None
) -> tuple[Iterable[tuple[str, Hashable, Any]], list[torch.Tensor]]:
    """One quiet backward pass (``perturb``: seeded noise at the pad vectors)."""
    with self._quiet(), noise_at_pads(self._layers, tables, perturb):
        _, output = self._backward(batch, plan)
    grads = [(name, id(p), p.grad) for name, p in self.model.named_parameters()]
    return grads, list(floating_tensors(output))


def trace(self: TorchHandle, batch: PadBatch, perturb: int | None = None) -> Trace:
    """Record each module's full floating inputs and outputs (``perturb``: as above)."""
    trace = Trace(owner=self.model_class)
    names = {module: path for path, module in self.model.named_modules()}
    modules = list(names)
    tb = self._tensors(batch)

    def full(values: Any) -> list[np.ndarray]:
        return [to_numpy(t) for t in floating_tensors(values)]

    def record(module: nn.Module, args: Any, output: Any) -> None:
        trace.entries.append((names.get(module, "?"), full(args), full(output)))

    self._hooked_forward(tb, perturb, [m.register_forward_hook(record) for m in modules])
    return trace


def hooked_forward(
    self: TorchHandle, tb: TorchBatch, perturb: int | None, hooks: list[Any]
) -> None:
    """Run one quiet forward pass (``perturb``: pad noise), then remove ``hooks``."""
    try:
        noise = noise_at_pads(self._layers, self._audited, perturb)
        with self._quiet(), torch.no_grad(), noise:
            self._forward(tb)
    finally:
        for hook in hooks:
            hook.remove()
