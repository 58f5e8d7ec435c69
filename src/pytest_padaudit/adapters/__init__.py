"""Built-in framework adapters: light hook objects that import a framework only on demand."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ..hooks import hookimpl

if TYPE_CHECKING:
    from ..handle import ModelHandle
    from ..options import AuditOptions


class TorchAdapter:
    """Audit ``torch.nn.Module`` models."""

    @hookimpl(trylast=True)
    def padaudit_adapt(self, model: object, options: AuditOptions) -> ModelHandle | None:
        if "torch" not in sys.modules:  # no torch imported: model cannot be a Module
            return None
        from .torch import adapt

        return adapt(model, options)


class HFAdapter:
    """Audit Hugging Face transformers PyTorch models (asked before the plain torch one)."""

    @hookimpl
    def padaudit_adapt(self, model: object, options: AuditOptions) -> ModelHandle | None:
        if "transformers.modeling_utils" not in sys.modules or "torch" not in sys.modules:
            return None
        from .hf import adapt

        return adapt(model, options)


BUILTIN_ADAPTERS: list[object] = [TorchAdapter(), HFAdapter()]
