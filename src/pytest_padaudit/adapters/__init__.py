"""Built-in framework adapters: light hook objects that import a framework only on demand.

Each framework is a subpackage with the same roles: ``__init__`` (the light hook object,
which recognises a model through ``sys.modules`` alone), ``handle``, ``tables``, ``state``,
``optim``, ``explain`` and ``checkpoint``; the third-party-style Flax adapter sits beside them.
"""

from __future__ import annotations

from .keras import KERAS_MODULES, KerasAdapter, keras_flavour
from .torch import HFAdapter, TorchAdapter, TorchLibsAdapter

__all__ = [
    "BUILTIN_ADAPTERS",
    "KERAS_MODULES",
    "HFAdapter",
    "KerasAdapter",
    "TorchAdapter",
    "TorchLibsAdapter",
    "keras_flavour",
]

#: Torch is asked last (trylast): HF and Keras models (torch backend) are nn.Modules too.
BUILTIN_ADAPTERS: list[object] = [TorchAdapter(), HFAdapter(), KerasAdapter(), TorchLibsAdapter()]
