"""Decide an audit: build the batch, drive a model handle through the checks, judge.

The engine knows neither pytest nor any framework: it talks to a :class:`ModelHandle`
through NumPy arrays and turns the measurements into findings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .batch import LossPlan, PadBatch, make_batch
from .errors import PadAuditError
from .handle import ModelHandle, OptimizerInfo, Table
from .hooks import plugin_manager
from .invariance import check_invariance
from .options import AuditOptions
from .result import AuditReport, Finding, TableResult


def audit(model: object, **options: Any) -> AuditReport:
    """Audit ``model``'s embedding tables for padding leaks; never raise for a leak.

    Options: ``pad_idx`` (for tables without a pad id of their own), ``seed`` (0),
    ``batch_size`` (4), ``seq_len`` (16), ``vocab_size``, ``forward=callable(model,
    batch)``, ``loss`` ("all", "masked" or ``callable(output, batch)``), ``checks``
    (grad, update, invariance), ``steps`` (1), ``optimizer``, ``atol`` (0.0),
    ``rtol`` (1e-4), ``extra_pad``, ``padding_side`` ("right"), ``allow`` (causes to
    report as allowed instead of failing). Raise :class:`PadAuditError` on bad input.
    """
    opts = AuditOptions.from_kwargs(**options)
    return run_audit(adapt(model, opts), opts)


def find_handle(model: object, options: AuditOptions | None = None) -> ModelHandle | None:
    """Return a handle when a registered adapter knows ``model``, else None."""
    return plugin_manager().hook.padaudit_adapt(model=model, options=options or AuditOptions())


def adapt(model: object, options: AuditOptions) -> ModelHandle:
    """Return the handle for ``model`` or raise a :class:`PadAuditError` saying what fits."""
    handle = find_handle(model, options)
    if handle is None:
        raise PadAuditError(
            f"padaudit cannot audit a {type(model).__module__}.{type(model).__qualname__}: "
            "pass a torch.nn.Module or a keras.Model holding an embedding layer "
            "(or register an adapter with pytest_padaudit.register)"
        )
    return handle


def run_audit(handle: ModelHandle, opts: AuditOptions, test: str | None = None) -> AuditReport:
    """Run the selected checks on ``handle`` inside its preserve() block.

    ``test`` names the test the audit runs for (the result hook sees it).
    """
    tables = handle.tables(opts.pad_idx)
    audited = _audited_tables(handle, tables)
    primary = audited[0]
    vocab = opts.vocab_size or handle.default_vocab_size() or primary.rows
    if vocab > primary.rows:
        raise PadAuditError(
            f"vocab_size={vocab} exceeds the {primary.rows} rows of {primary.path}: "
            f"pass vocab_size= at most {primary.rows}"
        )
    batch = _make_batch(opts, vocab, primary.pad_idx, tuple(t.pad_idx for t in audited))
    report = AuditReport(
        framework=handle.framework,
        model=handle.model_class,
        options=opts.to_dict(),
        seed=opts.seed,
        reproduce=opts.reproduce(),
        batch=batch.to_dict(),
        batch_text=batch.describe(),
        tables=[_table_result(t) for t in tables],
        invariance=None,
        test=test,
    )
    with handle.preserve(opts.seed):
        if {"grad", "update"} & set(opts.checks):
            _train_checks(handle, batch, audited, opts, report)
        if "invariance" in opts.checks:
            if {"grad", "update"} & set(opts.checks) and callable(getattr(handle, "reset", None)):
                handle.reset()  # every check measures the model as the user handed it over
            report.invariance = check_invariance(handle, batch, audited, opts, report)
    for finding in report.findings:
        finding.allowed = finding.cause in opts.allow
    plugin_manager().hook.padaudit_audit_finished(report=report)
    return report


def _audited_tables(handle: ModelHandle, tables: Sequence[Table]) -> list[Table]:
    if not tables:
        raise PadAuditError(
            f"{handle.model_class} holds no embedding table for padaudit to check: "
            "pass a model with an embedding layer (or the sub-model that has one)"
        )
    audited = [t for t in tables if t.pad_idx is not None]
    if not audited:
        names = ", ".join(f"{t.path} ({t.kind})" for t in tables)
        raise PadAuditError(
            f"no pad id is known for the embedding tables of {handle.model_class}: {names}. "
            "Pass pad_idx= (the id your tokenizer pads with), or give the layer its own "
            "(padding_idx= in PyTorch, mask_zero=True in Keras)"
        )
    for t in audited:
        if not 0 <= t.pad_idx < t.rows:
            raise PadAuditError(
                f"pad id {t.pad_idx} is out of range for {t.path}, which has {t.rows} rows: "
                f"pass pad_idx= between 0 and {t.rows - 1}"
            )
    return audited


def _make_batch(opts: AuditOptions, vocab: int, pad: int, pads: tuple[int, ...]) -> PadBatch:
    batch = plugin_manager().hook.padaudit_make_batch(
        options=opts, vocab_size=vocab, pad_idx=pad, pad_ids=pads
    )
    if batch is not None:
        return batch
    return make_batch(
        batch_size=opts.batch_size,
        seq_len=opts.seq_len,
        vocab_size=vocab,
        pad_idx=pad,
        pad_ids=pads,
        seed=opts.seed,
        padding_side=opts.padding_side,
    )


def _table_result(t: Table) -> TableResult:
    skipped = None if t.pad_idx is not None else "no pad id (pass pad_idx= if it holds tokens)"
    return TableResult(t.path, t.kind, t.pad_idx, t.rows, skipped, tied_with=list(t.tied_with))


def _maxabs(a: np.ndarray | None) -> float:
    """Return max |a| (0 for None or empty; nan when a value is not finite)."""
    if a is None or a.size == 0:
        return 0.0
    if not np.isfinite(a).all():
        return float("nan")
    return float(np.abs(a).max())


def _train_checks(
    handle: ModelHandle,
    batch: PadBatch,
    tables: list[Table],
    opts: AuditOptions,
    report: AuditReport,
) -> None:
    """Run ``steps`` train passes (and optimizer steps); judge grad and update."""
    plan = LossPlan(batch, "masked" if opts.loss == "masked" else "all", opts.seed)
    optimizer = handle.make_optimizer(tables, opts.optimizer) if "update" in opts.checks else None
    start = handle.read_pad_rows(tables)
    rows = start
    first_grad: dict[str, float] = {}
    grad_peak = {t.path: 0.0 for t in tables}
    forward_peak = {t.path: 0.0 for t in tables}
    for _ in range(opts.steps if optimizer else 1):
        grads = handle.train_pass(batch, plan, tables)
        after_forward = handle.read_pad_rows(tables)
        for t in tables:
            g = _maxabs(grads.get(t.path))
            first_grad.setdefault(t.path, g)
            grad_peak[t.path] = max(grad_peak[t.path], g) if g == g else g
            moved = _maxabs(after_forward[t.path] - rows[t.path])
            forward_peak[t.path] = max(forward_peak[t.path], moved)
        if optimizer:
            handle.step(optimizer)
        rows = handle.read_pad_rows(tables)
    results = {r.layer: r for r in report.tables}
    for t in tables:
        result = results[t.path]
        if "grad" in opts.checks:
            _judge_grad(handle, t, first_grad[t.path], opts, report, result)
        if optimizer:
            change = _maxabs(rows[t.path] - start[t.path])
            _judge_update(
                handle,
                t,
                change,
                forward_peak[t.path],
                grad_peak[t.path],
                optimizer,
                opts,
                report,
                result,
            )


def _judge_grad(
    handle: ModelHandle,
    t: Table,
    g: float,
    opts: AuditOptions,
    report: AuditReport,
    result: TableResult,
) -> None:
    if not t.trainable:
        report.notes.append(f"{t.path}: grad check skipped, the table is frozen (not trainable)")
        return
    result.grad = g
    if g == g and g <= opts.atol:
        return
    event = "nonfinite" if g != g else "grad"
    cause, why, fix = handle.explain(event, t, opts, None)
    if event == "nonfinite":
        message = "the pad row's gradient is not finite (nan/inf) on the synthetic batch"
    else:
        message = f"pad-row gradient max|g| = {g:.3g} (atol {opts.atol:g})"
    report.findings.append(Finding("grad", t.path, t.pad_idx, g, cause, message, why, fix))


def _judge_update(
    handle: ModelHandle,
    t: Table,
    change: float,
    forward: float,
    grad: float,
    optimizer: OptimizerInfo,
    opts: AuditOptions,
    report: AuditReport,
    result: TableResult,
) -> None:
    result.update = change
    if change == change and change <= opts.atol:
        return
    if forward > opts.atol:
        cause, why, fix = handle.explain("forward", t, opts, forward)
    elif grad != grad or grad > opts.atol:  # the grad finding's cause, so allow= covers both
        cause, why, fix = handle.explain("nonfinite" if grad != grad else "grad", t, opts, None)
        why = f"its own non-zero gradient (max|g| = {grad:.3g}) moved it: {why}"
    else:
        cause, why, fix = handle.explain("optimizer", t, opts, optimizer)
    result.update_cause = cause
    steps = f"{opts.steps} {optimizer.name} step" + ("s" if opts.steps > 1 else "")
    report.findings.append(
        Finding(
            "update",
            t.path,
            t.pad_idx,
            change,
            cause,
            f"the pad row changed by max|Δ| = {change:.3g} over {steps} (atol {opts.atol:g})",
            why,
            fix,
        )
    )
