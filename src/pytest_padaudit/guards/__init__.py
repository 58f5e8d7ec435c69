"""Guards that watch pad rows during real training: one callback per training library.

``TrainerPadGuard`` (transformers), ``KerasPadGuard`` (Keras 3, every backend) and
``LightningPadGuard`` (lightning.pytorch) record the token tables' pad rows when training
starts and check them every N optimizer steps. Importing this package is cheap: each guard
imports its framework on first access.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .watch import PadLeakWarning

if TYPE_CHECKING:
    from .keras import KerasPadGuard
    from .lightning import LightningPadGuard
    from .transformers import TrainerPadGuard

__all__ = ["KerasPadGuard", "LightningPadGuard", "PadLeakWarning", "TrainerPadGuard"]

#: guard -> (its module, the install that brings its framework).
_LAZY = {
    "TrainerPadGuard": ("transformers", "pip install 'pytest-padaudit[transformers]'"),
    "KerasPadGuard": ("keras", "pip install keras (and a backend: tensorflow, jax or torch)"),
    "LightningPadGuard": ("lightning", "pip install 'pytest-padaudit[lightning]'"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'pytest_padaudit.guards' has no attribute {name!r}")
    module, install = _LAZY[name]
    try:
        found = getattr(import_module(f".{module}", __name__), name)
    except ModuleNotFoundError as exc:
        raise ImportError(f"{name} needs {exc.name}, which is not installed: {install}") from exc
    globals()[name] = found
    return found
