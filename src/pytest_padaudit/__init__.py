"""pytest-padaudit: fail CI when padding leaks into the gradients of embedding models.

Importing this package is cheap: NumPy, PyTorch and TensorFlow load only when an audit runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .core.errors import PadAuditError, PadLeakError
from .core.hooks import hookimpl, register, unregister

if TYPE_CHECKING:
    from .core.api import AuditKwargs, audit
    from .core.checkpoint import audit_checkpoint
    from .core.result import AuditReport, Finding

__all__ = [
    "AuditKwargs",
    "AuditReport",
    "Finding",
    "PadAuditError",
    "PadLeakError",
    "audit",
    "audit_checkpoint",
    "hookimpl",
    "register",
    "unregister",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import each public name where it is first used: the pytest plugin needs none of them."""
    if name in ("audit", "AuditKwargs"):
        from .core import api

        return getattr(api, name)
    if name == "audit_checkpoint":
        from .core.checkpoint import audit_checkpoint

        return audit_checkpoint
    if name in ("AuditReport", "Finding"):
        from .core import result

        return getattr(result, name)
    raise AttributeError(f"module 'pytest_padaudit' has no attribute {name!r}")
