"""PyTorch adapters, as light hook objects: torch loads only when a model can be a Module.

Roles, as in every framework subpackage: ``handle`` (the ``nn.Module`` handle), ``tables``
(finding and untying tables), ``state`` (tensor helpers for snapshots and gradients),
``optim`` (optimizers and the pad-row stepper), ``explain`` (causes and fixes in torch
idiom), ``noise``, ``params``, ``checkpoint``, ``snippet`` (pasteable source: the shrunk
reproduction, optimizers for ``padaudit_expression``); ``hf``, ``libs`` and ``dist`` hold
the Hugging Face, sentence-transformers/PEFT and DDP/FSDP2 handles.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ...core.hookspecs import hookimpl

if TYPE_CHECKING:
    from ...core.handle import ModelHandle
    from ...core.options import AuditOptions


class TorchAdapter:
    """Audit ``torch.nn.Module`` models."""

    accepts = "a torch.nn.Module"

    @hookimpl(trylast=True)
    def padaudit_adapt(self, model: object, options: AuditOptions) -> ModelHandle | None:
        if "torch" not in sys.modules:  # no torch imported: model cannot be a Module
            return None
        from .handle import adapt

        return adapt(model, options)

    @hookimpl
    def padaudit_expression(self, value: object) -> str | None:
        if "torch" not in sys.modules:  # no torch imported: value cannot be an optimizer
            return None
        from .snippet import expression

        return expression(value)


class HFAdapter:
    """Audit Hugging Face transformers PyTorch models (asked before the plain torch one)."""

    @hookimpl
    def padaudit_adapt(self, model: object, options: AuditOptions) -> ModelHandle | None:
        if "transformers.modeling_utils" not in sys.modules or "torch" not in sys.modules:
            return None
        from .hf import adapt

        return adapt(model, options)


class TorchLibsAdapter:
    """Audit sentence-transformers, PEFT (LoRA) and distributed (DDP, FSDP2) torch models."""

    @hookimpl(tryfirst=True)
    def padaudit_adapt(self, model: object, options: AuditOptions) -> ModelHandle | None:
        if "torch" not in sys.modules:
            return None
        if "torch.distributed.fsdp" in sys.modules or _ddp(model):
            from .dist import adapt as adapt_dist

            handle = adapt_dist(model, options)
            if handle is not None:
                return handle
        if not any(name in sys.modules for name in ("sentence_transformers", "peft")):
            return None
        from .libs import adapt

        return adapt(model, options)


def _ddp(model: object) -> bool:
    parallel = sys.modules.get("torch.nn.parallel")
    cls = getattr(parallel, "DistributedDataParallel", None)
    return isinstance(cls, type) and isinstance(model, cls)
