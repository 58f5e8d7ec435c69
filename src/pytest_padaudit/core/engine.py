"""Decide an audit: build the batch, drive a model handle through the checks, judge.

The engine knows neither pytest nor any framework: it talks to a :class:`ModelHandle`
through NumPy arrays and turns the measurements into findings.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from ..render import report as _text  # noqa: F401 -- installs the reports' text renderer
from .base import capabilities
from .batch import LossPlan, PadBatch, make_batch
from .errors import PadAuditError
from .handle import ModelHandle, OptimizerInfo, Table
from .hooks import plugin_manager
from .invariance import check_invariance
from .options import AuditOptions, framework_seed
from .pipeline import GENERIC_FIXES, blame_the_step, data_findings, user_pad_batch
from .result import AuditReport, Finding, TableResult
from .shrink import attach_smallest
from .tables import (
    NO_PAD,
    candidates,
    check_range,
    in_range,
    likely_token_table,
    mismatch,
    mismatch_words,
    token_tables,
)

#: audits seed process-wide generators (torch, TF, Keras): one audit at a time.
_ONE_AT_A_TIME = threading.RLock()


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
    return audit_handle(adapt(model, opts), opts)


def audit_handle(handle: ModelHandle, opts: AuditOptions, test: str | None = None) -> AuditReport:
    """Audit through ``handle``; on a failure, attach the smallest batch that still fails.

    The result hook ``padaudit_audit_finished`` sees the finished report once, after the
    shrink re-runs (which it never sees).
    """
    report = run_audit(handle, opts, test=test)
    if not report.passed and opts.batch is None:  # the user's own batch is kept as given
        attach_smallest(handle, opts, report, run_audit)
    plugin_manager().hook.padaudit_audit_finished(report=report)
    return report


def find_handle(model: object, options: AuditOptions | None = None) -> ModelHandle | None:
    """Return a handle when a registered adapter knows ``model``, else None."""
    return plugin_manager().hook.padaudit_adapt(model=model, options=options or AuditOptions())


def adapt(model: object, options: AuditOptions) -> ModelHandle:
    """Return the handle for ``model`` or raise a :class:`PadAuditError` saying what fits."""
    handle = find_handle(model, options)
    if handle is None:
        kinds: list[Any] = [getattr(p, "accepts", None) for p in plugin_manager().get_plugins()]
        kinds = sorted({k for k in kinds if isinstance(k, str)})
        what = ", ".join(kinds[:-1]) + f" or {kinds[-1]}" if len(kinds) > 1 else "".join(kinds)
        raise PadAuditError(
            f"padaudit cannot audit a {type(model).__module__}.{type(model).__qualname__}: "
            f"pass {what or 'a model'} holding an embedding table "
            "(or register an adapter for its framework with pytest_padaudit.register)"
        )
    return handle


def run_audit(
    handle: ModelHandle,
    opts: AuditOptions,
    test: str | None = None,
    batch: PadBatch | None = None,
) -> AuditReport:
    """Run the selected checks on ``handle`` inside its preserve() block (no result hook).

    ``test`` names the test the audit runs for (the result hook sees it); ``batch``
    replaces the synthetic batch (shrink.py re-runs the checks on smaller ones).
    """
    tables = handle.tables(opts.pad_idx)
    found = candidates(handle, tables, opts)
    primary = likely_token_table(handle, found)
    if batch is None:
        batch = _batch_for(handle, opts, primary, found)
    report = AuditReport(
        framework=handle.framework,
        backend=capabilities(handle).backend_name,
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
    with _ONE_AT_A_TIME, handle.preserve(framework_seed(opts.seed)):
        audited = token_tables(handle, batch, tables, opts, report)
        if primary.path not in {t.path for t in audited}:  # the guess was no token table
            batch = _batch_for(handle, opts, audited[0], audited)
            report.batch, report.batch_text = batch.to_dict(), batch.describe()
        if batch.inputs is not None:
            fixes = capabilities(handle).pipeline_fixes or GENERIC_FIXES
            report.findings += data_findings(batch.inputs, batch.pad_idx, audited[0].path, fixes)
        if {"grad", "update"} & set(opts.checks):
            _train_checks(handle, batch, audited, opts, report)
        if "invariance" in opts.checks:
            if {"grad", "update"} & set(opts.checks) and capabilities(handle).reset:
                handle.reset()  # every check measures the model as the user handed it over
            report.invariance = check_invariance(handle, batch, audited, opts, report)
            if opts.step is not None:
                blame_the_step(handle, batch, audited, opts, report)
    for finding in report.findings:
        finding.allowed = finding.cause in opts.allow
    return report


def _batch_for(
    handle: ModelHandle, opts: AuditOptions, primary: Table, found: Sequence[Table]
) -> PadBatch:
    """Build the batch from ``primary``'s pad id and rows; keep every pad id out of it.

    With ``batch=``, read the user's batch instead (padded with ``primary``'s pad id).
    """
    check_range(primary, opts)
    if opts.batch is not None:
        return user_pad_batch(handle, opts, cast(int, primary.pad_idx))
    vocab = opts.vocab_size or handle.default_vocab_size() or primary.rows
    if vocab > primary.rows:
        raise PadAuditError(
            f"vocab_size={vocab} exceeds the {primary.rows} rows of {primary.path}: "
            f"pass vocab_size= at most {primary.rows}"
        )
    pads = tuple(cast(int, t.pad_idx) for t in found if in_range(t))
    return _make_batch(opts, vocab, cast(int, primary.pad_idx), pads)


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
    skipped = None if t.pad_idx is not None else NO_PAD
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
    """Run ``steps`` train passes (and optimizer steps); judge grad and update.

    A tied table's pad-row gradient comes in two parts, judged apart: through its lookups
    (``train_pass``) and through the output projection it is tied to (``head_grads``).
    """
    plan = LossPlan(batch, "masked" if opts.loss == "masked" else "all", opts.seed)
    optimizer = handle.make_optimizer(tables, opts.optimizer) if "update" in opts.checks else None
    head_grads = handle.head_grads if capabilities(handle).head_grads else None
    start = handle.read_pad_rows(tables)
    _optimizer_notes(tables, start, optimizer, opts, report)
    report.optimizer = optimizer.name if optimizer else None
    rows = start
    first: dict[str, Grads] = {}
    peak = {t.path: Grads() for t in tables}
    forward_peak = {t.path: 0.0 for t in tables}
    for _ in range(opts.steps if optimizer else 1):
        grads = handle.train_pass(batch, plan, tables)
        heads = head_grads() if head_grads is not None else {}
        after_forward = handle.read_pad_rows(tables)
        for t in tables:
            g = Grads(_maxabs(grads.get(t.path)), _maxabs(heads.get(t.path)), t.path in heads)
            first.setdefault(t.path, g)
            peak[t.path] = peak[t.path].worst(g)
            moved = _maxabs(after_forward[t.path] - rows[t.path])
            forward_peak[t.path] = max(forward_peak[t.path], moved)
        if optimizer:
            handle.step(optimizer)
        rows = handle.read_pad_rows(tables)
    results = {r.layer: r for r in report.tables}
    for t in tables:
        result = results[t.path]
        if "grad" in opts.checks:
            _judge_grad(handle, t, first[t.path], opts, report, result)
        if optimizer:
            change = _maxabs(rows[t.path] - start[t.path])
            _judge_update(
                handle,
                t,
                change,
                forward_peak[t.path],
                peak[t.path],
                optimizer,
                opts,
                report,
                result,
            )


@dataclass(frozen=True)
class Grads:
    """max|g| of a pad row's gradient: through the lookups, and through a tied head."""

    lookup: float = 0.0
    head: float = 0.0
    split: bool = False  # the handle reported a head part

    def worst(self, other: Grads) -> Grads:
        def top(a: float, b: float) -> float:
            return a if a != a else b if b != b else max(a, b)

        split = self.split or other.split
        return Grads(top(self.lookup, other.lookup), top(self.head, other.head), split)


def _leaks(value: float, opts: AuditOptions) -> bool:
    return value != value or value > opts.atol


def _lookup_words(
    handle: ModelHandle, t: Table, opts: AuditOptions, event: str
) -> tuple[str, str, str]:
    """Words for a gradient through the lookups: a mismatched pad id is its own cause."""
    if event == "grad" and t.own_pad and mismatch(t):
        return mismatch_words(handle, t, opts)
    return handle.explain(event, t, opts, None)


def _optimizer_notes(
    tables: list[Table],
    start: dict[str, np.ndarray],
    optimizer: OptimizerInfo | None,
    opts: AuditOptions,
    report: AuditReport,
) -> None:
    """Record each pad row's norm; say which optimizer ran and what weight decay would do."""
    results = {r.layer: r for r in report.tables}
    if optimizer is not None and optimizer.note:
        report.notes.append(optimizer.note)
    if optimizer is not None and optimizer.origin:
        report.notes.append(
            f"update check: {optimizer.name} from {optimizer.origin} (a fresh copy with its "
            "settings; the model's own optimizer and its state are not touched)"
        )
    default = opts.optimizer is None and (optimizer is None or optimizer.origin is None)
    for t in tables:
        norm = float(np.linalg.norm(start[t.path]))
        results[t.path].pad_norm = norm
        if default and norm > opts.atol and not (optimizer and optimizer.weight_decay):
            report.notes.append(
                f"{t.path}: the pad row is not zero (|row| = {norm:.3g}); an optimizer with "
                "weight decay would move this row by lr*wd*|row| per step; pass optimizer= "
                "to check"
            )


def _judge_grad(
    handle: ModelHandle,
    t: Table,
    g: Grads,
    opts: AuditOptions,
    report: AuditReport,
    result: TableResult,
) -> None:
    if not t.trainable:
        report.notes.append(f"{t.path}: grad check skipped, the table is frozen (not trainable)")
        return
    result.grad = g.lookup
    if g.split:
        result.head_grad = g.head
    heads = ", ".join(t.tied_with) or "the output projection"
    if _leaks(g.lookup, opts):
        event = "nonfinite" if g.lookup != g.lookup else "grad"
        cause, why, fix = _lookup_words(handle, t, opts, event)
        if event == "nonfinite":
            message = "the pad row's gradient is not finite (nan/inf) on the synthetic batch"
        else:
            through = " through its lookups" if g.split else ""
            message = f"pad-row gradient{through} max|g| = {g.lookup:.3g} (atol {opts.atol:g})"
        if g.split:
            message += f"; the tied head {heads} adds max|g| = {g.head:.3g}, judged apart"
        finding = Finding("grad", t.path, t.pad_idx, g.lookup, cause, message, why, fix)
        report.findings.append(finding)
    if g.split and _leaks(g.head, opts):
        cause, why, fix = handle.explain("tied", t, opts, g.head)
        message = (
            f"pad-row gradient through the tied head {heads} max|g| = {g.head:.3g} "
            f"(atol {opts.atol:g}); through the lookups max|g| = {g.lookup:.3g}"
        )
        finding = Finding("grad", t.path, t.pad_idx, g.head, cause, message, why, fix)
        report.findings.append(finding)


def _judge_update(
    handle: ModelHandle,
    t: Table,
    change: float,
    forward: float,
    grad: Grads,
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
    elif _leaks(grad.lookup, opts):  # the grad finding's cause, so allow= covers both
        event = "nonfinite" if grad.lookup != grad.lookup else "grad"
        cause, why, fix = _lookup_words(handle, t, opts, event)
        why = f"its own non-zero gradient (max|g| = {grad.lookup:.3g}) moved it: {why}"
    elif grad.split and _leaks(grad.head, opts):
        cause, why, fix = handle.explain("tied", t, opts, grad.head)
        why = f"the tied head's gradient (max|g| = {grad.head:.3g}) moved it: {why}"
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
