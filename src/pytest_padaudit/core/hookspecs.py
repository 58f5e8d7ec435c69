"""The hooks of pytest-padaudit's own pluggy namespace, ``padaudit``.

Implement them in a plugin object registered with :func:`pytest_padaudit.register`, a
``padaudit`` entry point, or a ``conftest.py`` (functions named ``padaudit_*``). An entry
point names the object to register, an instance (``"my_pkg.padaudit:ADAPTER"``), not a
class: pluggy looks the hooks up on what the entry point loads. An adapter may say what it
audits in an ``accepts`` attribute ("a flax.nnx.Module"): padaudit lists it when no adapter
knows a model.
``padaudit_report_json`` also exists as the pytest hook ``pytest_padaudit_report_json``
(``newhooks.py``), which pytest plugins and conftest files implement natively.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import pytest

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
    ``sys.modules`` first): the first non-None result wins. Raise
    :class:`~pytest_padaudit.PadAuditError` for a model of the framework that cannot be
    audited (Flax Linen, Keras on a backend without gradients), saying what to pass.
    """


@hookspec(firstresult=True)
def padaudit_make_batch(
    options: AuditOptions, vocab_size: int, pad_idx: int, pad_ids: tuple[int, ...]
) -> PadBatch | None:
    """Return the synthetic padded batch for an audit, or None for the default one."""


@hookspec(firstresult=True)
def padaudit_expression(value: object) -> str | None:
    """Return Python source that rebuilds ``value``, or None when this adapter does not know it.

    ``value`` is an option of an audit (an optimizer instance, a class): the ``reproduce:``
    line writes it. Answer for your framework's own objects: a class by its public dotted
    name (``torch.optim.AdamW``), an instance as the call that builds it, which may use the
    test's names (``lambda params: ...``). Import no framework: ``value`` exists, so its
    framework is imported already (check ``sys.modules`` first).
    """


@hookspec
def padaudit_audit_finished(report: AuditReport) -> None:
    """Called once with every finished audit, before the plugin judges it: the result hook.

    :param report: the audit's outcome, its smallest failing batch attached (shrinking
        re-runs are not audits and never reach this hook); ``report.test`` is the test's
        node id (None outside pytest), ``report.options`` and ``report.seed`` say how it ran.

    Collect reports here, or veto: set ``finding.allowed = True`` to let a finding pass,
    or append a :class:`~pytest_padaudit.Finding` to ``report.findings`` to fail the
    audit. A test fails when ``report.passed`` is False after every implementation ran.
    """


@hookspec
def padaudit_report_json(config: pytest.Config, data: dict[str, Any]) -> None:
    """Adjust the ``--padaudit-report=json`` data in place before it is written.

    :param config: the pytest config of the session (the controller under pytest-xdist).
    :param data: ``{"version", "generator", "summary", "audits"}``; each audit is
        ``AuditReport.to_dict()`` as JSON primitives. Add keys (CI metadata), drop what you
        do not want kept (``audit["batch"]["ids"]``); values must stay JSON primitives.

    Called on the process that writes the report only, once per JSON file.
    """
