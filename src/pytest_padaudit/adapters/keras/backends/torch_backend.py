"""PyTorch: Keras 3 on its ``torch`` backend.

A Keras variable's value is a ``torch.nn.Parameter``; a pass is differentiated with
``torch.autograd.grad``, which leaves every ``.grad`` as the user had it. Keras' dropout
draws from torch's global generator when a layer has no seed, so that is seeded and restored.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch

from .base import Backend, Pass, Run


class TorchBackend(Backend):
    """Keras on PyTorch."""

    name = "torch"

    def is_tensor(self, x: Any) -> bool:
        return isinstance(x, torch.Tensor)

    def snapshot(self, variable: Any) -> Any:
        return variable.value.detach().clone()

    def gradients(self, run: Run, variables: Sequence[Any], *, taps: bool = False) -> Pass:
        tapped: list[Any] = []

        def tap(x: Any) -> Any:
            tapped.append(x)
            return x

        with torch.enable_grad():
            loss, aux = run(tap)
        sources = [v.value for v in variables] + tapped
        live = [i for i, s in enumerate(sources) if s.requires_grad]
        grads: list[Any] = [None] * len(sources)
        if loss.requires_grad and live:
            found = torch.autograd.grad(loss, [sources[i] for i in live], allow_unused=True)
            for i, grad in zip(live, found, strict=True):
                grads[i] = grad
        aux = [a.detach() if isinstance(a, torch.Tensor) else a for a in aux]
        return Pass(grads[: len(variables)], grads[len(variables) :], aux)

    def no_grad(self) -> AbstractContextManager[Any]:
        return torch.no_grad()

    @contextmanager
    def framework_rng(self, seed: int) -> Iterator[None]:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            yield
