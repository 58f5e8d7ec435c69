"""The hooks of pytest-padaudit's own pluggy namespace, ``padaudit``.

Implement them in a plugin object registered with :func:`pytest_padaudit.register`, a
``padaudit`` entry point, or a ``conftest.py`` (functions named ``padaudit_*``).
The pytest-facing ``padaudit_report_json`` is a pytest hook: see ``newhooks.py``.
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
#: Mark a method or function as an implementation of one of the hooks below.
hookimpl = pluggy.HookimplMarker("padaudit")


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
    """Called with every finished audit, before the plugin judges it: the result hook.

    :param report: the audit's outcome; ``report.test`` is None here (the plugin sets it
        after the hook), ``report.options`` and ``report.seed`` say how it ran.

    Collect reports here, or veto: set ``finding.allowed = True`` to let a finding pass,
    or append a :class:`~pytest_padaudit.Finding` to ``report.findings`` to fail the
    audit. A test fails when ``report.passed`` is False after every implementation ran.
    """
