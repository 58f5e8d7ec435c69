"""The hooks of pytest-padaudit's own pluggy namespace, ``padaudit``.

Implement them in a plugin object registered with :func:`pytest_padaudit.register`, a
``padaudit`` entry point, or a ``conftest.py`` (functions named ``padaudit_*``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .batch import PadBatch
    from .handle import ModelHandle
    from .options import AuditOptions
    from .result import AuditReport

hookspec = pluggy.HookspecMarker("padaudit")


@hookspec(firstresult=True)
def padaudit_adapt(model: object, options: AuditOptions) -> ModelHandle | None:
    """Return a handle that audits ``model``, or None when this adapter does not know it.

    Adapters must not import their framework unless ``model`` can belong to it (check
    ``sys.modules`` first): the first non-None result wins.
    """


@hookspec(firstresult=True)
def padaudit_make_batch(
    options: AuditOptions, vocab_size: int, pad_idx: int, pad_ids: tuple[int, ...]
) -> PadBatch | None:
    """Return the synthetic padded batch for an audit, or None for the default one."""


@hookspec
def padaudit_audit_finished(report: AuditReport) -> None:
    """Inspect a finished audit; mark findings ``allowed`` or append findings to veto."""
