"""The grad and update checks: measure pad rows through train passes, then judge them.

A tied table's pad-row gradient comes in two parts, judged apart: through its lookups
(``train_pass``) and through the output projection it is tied to (``head_grads``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import capabilities
from .batch import LossPlan, PadBatch
from .handle import ModelHandle, OptimizerInfo, Table
from .options import AuditOptions
from .result import AuditReport, Finding, TableResult
from .tables import mismatch, mismatch_words


def _maxabs(a: np.ndarray | None) -> float:
    """Return max |a| (0 for None or empty; nan when a value is not finite)."""
    if a is None or a.size == 0:
        return 0.0
    if not np.isfinite(a).all():
        return float("nan")
    return float(np.abs(a).max())


@dataclass
class Readings:
    """What the train passes measured: pad rows before, during and after, and gradients."""

    optimizer: OptimizerInfo | None
    start: dict[str, np.ndarray]
    rows: dict[str, np.ndarray]
    first: dict[str, Grads]
    peak: dict[str, Grads]
    forward_peak: dict[str, float]


def measure(
    handle: ModelHandle, batch: PadBatch, tables: list[Table], opts: AuditOptions
) -> Readings:
    """Run ``steps`` train passes (and optimizer steps) on ``tables``; report nothing.

    A tied table's pad-row gradient comes in two parts, judged apart: through its lookups
    (``train_pass``) and through the output projection it is tied to (``head_grads``).
    """
    plan = LossPlan(batch, "masked" if opts.loss == "masked" else "all", opts.seed)
    optimizer = handle.make_optimizer(tables, opts.optimizer) if "update" in opts.checks else None
    head_grads = handle.head_grads if capabilities(handle).head_grads else None
    start = rows = handle.read_pad_rows(tables)
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
    return Readings(optimizer, start, rows, first, peak, forward_peak)


def judge_train(
    handle: ModelHandle,
    tables: list[Table],
    readings: Readings,
    opts: AuditOptions,
    report: AuditReport,
) -> None:
    """Turn the train readings into the grad and update findings."""
    optimizer, start = readings.optimizer, readings.start
    _optimizer_notes(tables, start, optimizer, opts, report)
    report.optimizer = optimizer.name if optimizer else None
    results = {r.layer: r for r in report.tables}
    for t in tables:
        result = results[t.path]
        if "grad" in opts.checks:
            _judge_grad(handle, t, readings.first[t.path], opts, report, result)
        if optimizer:
            change = _maxabs(readings.rows[t.path] - start[t.path])
            _judge_update(
                handle,
                t,
                change,
                readings.forward_peak[t.path],
                readings.peak[t.path],
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
