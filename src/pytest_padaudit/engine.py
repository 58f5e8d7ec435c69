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
from .handle import ModelHandle, OptimizerInfo, Table, Trace
from .hooks import plugin_manager
from .options import AuditOptions
from .result import AuditReport, Finding, InvarianceResult, TableResult


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
    handle = adapt(model, opts)
    report = run_audit(handle, opts)
    if not report.passed:
        from .shrink import attach_smallest

        attach_smallest(handle, opts, report)
    return report


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


def run_audit(
    handle: ModelHandle,
    opts: AuditOptions,
    test: str | None = None,
    batch: PadBatch | None = None,
) -> AuditReport:
    """Run the selected checks on ``handle`` inside its preserve() block.

    ``test`` names the test the audit runs for (the result hook sees it); ``batch``
    replaces the synthetic batch (shrink.py re-runs the checks on smaller ones).
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
    if batch is None:
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
            report.invariance = _invariance(handle, batch, audited, opts, report)
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


def _invariance(
    handle: ModelHandle,
    batch: PadBatch,
    tables: list[Table],
    opts: AuditOptions,
    report: AuditReport,
) -> InvarianceResult:
    """Compare gradients and real-position outputs with and without extra pad columns."""
    longer = batch.extended(opts.extra_columns)
    only = None
    for _ in range(2):  # twice only when the two runs disagree on which outputs are per-token
        plan_a = LossPlan(batch, "real", opts.seed, only)
        plan_b = LossPlan(longer, "real", opts.seed, only)
        grads_a, outs_a = handle.invariance_pass(batch, plan_a, tables)
        try:
            grads_b, outs_b = handle.invariance_pass(longer, plan_b, tables)
        except PadAuditError as exc:
            reason = str(exc).splitlines()[0]
            report.notes.append(
                f"invariance skipped: the model cannot take {longer.shape}: {reason}"
            )
            return InvarianceResult(skipped=f"model cannot take a batch {longer.shape[1]} wide")
        # a (batch, hidden) output with hidden == seq_len looks per-token in one run only
        if plan_a.per_token == plan_b.per_token:
            break
        only = frozenset(plan_a.per_token & plan_b.per_token)
    worst, grad_rel = _worst_difference(grads_a, grads_b)
    _, out_rel = _worst_difference(dict(enumerate(outs_a)), dict(enumerate(outs_b)), each=True)
    result = InvarianceResult(value=max(grad_rel, out_rel), worst=worst, outputs=out_rel)
    if not result.value > opts.rtol:
        return result
    first, where, first_rel = _localise(handle, batch, longer, opts.rtol)
    result.first_module = first
    cause, why, fix = handle.explain("invariance", None, opts, first)
    if first:
        why = (
            f"pad positions first reach the real positions in {where} "
            f"(rel. diff {first_rel:.2g}): {why}"
        )
    else:
        why = f"no submodule's output differs, so the leak is in the model's own code: {why}"
    detail = f"worst gradient {worst} {grad_rel:.2g}, " if worst else ""
    report.findings.append(
        Finding(
            "invariance",
            first or "(model)",
            batch.pad_idx,
            result.value,
            cause,
            f"{opts.extra_columns} extra pad columns change what the real positions learn: "
            f"rel. diff {result.value:.2g} ({detail}outputs {out_rel:.2g}; rtol {opts.rtol:g})",
            why,
            fix,
        )
    )
    return result


def _worst_difference(
    a: dict[Any, np.ndarray], b: dict[Any, np.ndarray], *, each: bool = False
) -> tuple[Any, float]:
    """Return the key with the largest |a - b| and that difference, relative.

    The scale is the largest |a| over every array (``each``: each array's own), so a
    gradient that is mathematically zero does not turn float noise into a false alarm.
    """
    shared = [k for k in a if k in b and a[k].shape == b[k].shape and a[k].size]
    if not shared:
        return None, 0.0
    peaks = {k: _maxabs(a[k]) for k in shared}
    scale = max(peaks.values())
    worst, worst_rel = None, 0.0
    for k in shared:
        diff = _maxabs(a[k] - b[k])
        denom = peaks[k] if each else scale
        rel = diff / denom if denom > 0 else (0.0 if diff == 0 else float("inf"))
        if rel != rel:
            rel = float("inf")
        if rel > worst_rel:
            worst, worst_rel = k, rel
    return worst, worst_rel


def _localise(
    handle: ModelHandle, batch: PadBatch, longer: PadBatch, rtol: float
) -> tuple[str | None, str, float]:
    """Name where pad positions first reach the real positions.

    That is the first module (in the order modules finish) whose outputs at real
    positions differ between the two batches; when its inputs already differ, the leak
    is in the code that calls it, and the caller is named instead. Return (module path,
    words for the message, relative difference).
    """
    later: dict[tuple[str, int], tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for key, inputs, outputs in _numbered(handle.trace(longer)):
        later[key] = (inputs, outputs)
    trace = handle.trace(batch)
    for key, inputs, outputs in _numbered(trace):
        path = key[0]
        if not path or key not in later:
            continue
        _, rel = _worst_difference(
            dict(enumerate(outputs)), dict(enumerate(later[key][1])), each=True
        )
        if rel <= rtol:
            continue
        _, rel_in = _worst_difference(
            dict(enumerate(inputs)), dict(enumerate(later[key][0])), each=True
        )
        if rel_in > rtol:
            parent = path.rpartition(".")[0]
            return (
                parent or "(model)",
                f"the forward of {parent or trace.owner}, before {path}",
                rel_in,
            )
        return path, path, rel
    return None, "", 0.0


def _numbered(trace: Trace) -> list[tuple[tuple[str, int], list, list]]:
    """Key each trace entry by (path, call number) so repeated calls line up."""
    seen: dict[str, int] = {}
    out = []
    for path, inputs, outputs in trace.entries:
        seen[path] = seen.get(path, 0) + 1
        out.append(((path, seen[path]), inputs, outputs))
    return out
