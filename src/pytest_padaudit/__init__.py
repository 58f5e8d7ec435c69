"""pytest-padaudit: fail CI when padding leaks into the gradients of embedding models.

Importing this package is cheap: NumPy, PyTorch and TensorFlow load only when an audit runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import PadAuditError, PadLeakError
from .hooks import hookimpl, register, unregister

if TYPE_CHECKING:
    from .checkpoint import audit_checkpoint
    from .engine import audit
    from .result import AuditReport, Finding

__all__ = [
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
    if name == "audit":
        from .engine import audit

        return audit
    if name == "audit_checkpoint":
        from .checkpoint import audit_checkpoint

        return audit_checkpoint
    if name in ("AuditReport", "Finding"):
        from . import result

        return getattr(result, name)
    raise AttributeError(f"module 'pytest_padaudit' has no attribute {name!r}")
