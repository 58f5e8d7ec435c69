"""Built-in framework adapters: light hook objects that import a framework only on demand."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ..errors import PadAuditError
from ..hooks import hookimpl

if TYPE_CHECKING:
    from ..handle import ModelHandle
    from ..options import AuditOptions

#: Modules one of which is imported whenever a Keras model exists.
KERAS_MODULES = ("keras", "tf_keras", "tensorflow")


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


class TorchLibsAdapter:
    """Audit sentence-transformers, PEFT (LoRA) and distributed (DDP, FSDP2) torch models."""

    @hookimpl(tryfirst=True)
    def padaudit_adapt(self, model: object, options: AuditOptions) -> ModelHandle | None:
        if "torch" not in sys.modules:
            return None
        if "torch.distributed.fsdp" in sys.modules or _ddp(model):
            from .torch_dist import adapt as adapt_dist

            handle = adapt_dist(model, options)
            if handle is not None:
                return handle
        if not any(name in sys.modules for name in ("sentence_transformers", "peft")):
            return None
        from .torch_libs import adapt

        return adapt(model, options)


def _ddp(model: object) -> bool:
    parallel = sys.modules.get("torch.nn.parallel")
    cls = getattr(parallel, "DistributedDataParallel", None)
    return isinstance(cls, type) and isinstance(model, cls)


class KerasAdapter:
    """Audit Keras 3 (TensorFlow backend) and ``tf_keras`` models and layers."""

    @hookimpl
    def padaudit_adapt(self, model: object, options: AuditOptions) -> ModelHandle | None:
        if not any(name in sys.modules for name in KERAS_MODULES):
            return None  # nothing Keras imported: model cannot be a Keras layer
        flavour = keras_flavour(model)
        if flavour is None:
            return None
        if flavour == "keras":
            backend = sys.modules["keras"].config.backend()
            if backend != "tensorflow":
                raise PadAuditError(
                    f"{type(model).__qualname__} is a Keras model on the {backend!r} backend: "
                    "padaudit audits Keras on TensorFlow only: set KERAS_BACKEND=tensorflow "
                    "(with tensorflow installed) before keras is imported, e.g. in conftest.py"
                )
        from .keras import adapt

        return adapt(model, options)


def keras_flavour(model: object) -> str | None:
    """Return "keras" or "tf_keras" when ``model`` is a layer of that imported package."""
    for name in ("keras", "tf_keras"):
        module = sys.modules.get(name)
        layer = getattr(getattr(module, "layers", None), "Layer", None)
        if isinstance(layer, type) and isinstance(model, layer):
            return name
    return None


#: Torch is asked last (trylast): HF and Keras models (torch backend) are nn.Modules too.
BUILTIN_ADAPTERS: list[object] = [TorchAdapter(), HFAdapter(), KerasAdapter(), TorchLibsAdapter()]
