"""Decide an audit: build the batch, drive a model handle through the checks, judge.

The engine knows neither pytest nor any framework: it talks to a :class:`ModelHandle`
through NumPy arrays and turns the measurements into findings.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, cast

from ..render import report as _text  # noqa: F401 -- installs the reports' text renderer
from .base import capabilities
from .batch import PadBatch, make_batch
from .errors import PadAuditError
from .handle import ModelHandle, Table
from .hooks import plugin_manager
from .invariance import check_invariance
from .options import AuditOptions, framework_seed
from .pipeline import GENERIC_FIXES, blame_the_step, data_findings, user_pad_batch
from .result import AuditReport, TableResult
from .shrink import attach_smallest
from .tables import (
    NO_PAD,
    candidates,
    check_range,
    guess_token_table,
    in_range,
    token_tables,
)
from .train import Readings, judge_train, measure

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
    *,
    ahead: bool = True,
) -> AuditReport:
    """Run the selected checks on ``handle`` inside its preserve() block (no result hook).

    ``test`` names the test the audit runs for (the result hook sees it); ``batch``
    replaces the synthetic batch (shrink.py re-runs the checks on smaller ones). A handle
    that records lookups in its train pass runs that pass first, on the tables it will
    most likely audit (``ahead``); when the lookups then name other tables, the audit
    starts again the plain way: a lookups pass, then the train pass on the right tables.
    """
    tables = handle.tables(opts.pad_idx)
    found = candidates(handle, tables, opts)
    primary, named = guess_token_table(handle, found)
    given = batch
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
    train = bool({"grad", "update"} & set(opts.checks))
    guess = _guess(handle, found, primary, named) if ahead and train else []
    with _ONE_AT_A_TIME, handle.preserve(framework_seed(opts.seed)):
        first = measure(handle, batch, guess, opts) if guess else None
        seen = handle.recorded_lookups() if first else None  # type: ignore[attr-defined]
        audited = token_tables(handle, batch, tables, opts, report, seen)
        wrong = first is not None and [t.path for t in audited] != [t.path for t in guess]
        if not wrong:
            if primary.path not in {t.path for t in audited}:  # the guess was no token table
                batch = _batch_for(handle, opts, audited[0], audited)
                report.batch, report.batch_text = batch.to_dict(), batch.describe()
            readings = first or (measure(handle, batch, audited, opts) if train else None)
            _checks(handle, batch, audited, opts, report, readings)
    if wrong:
        return run_audit(handle, opts, test, given, ahead=False)
    for finding in report.findings:
        finding.allowed = finding.cause in opts.allow
    return report


def _guess(handle: ModelHandle, found: list[Table], primary: Table, named: bool) -> list[Table]:
    """Return the tables the lookups will most likely keep, when the train pass can record
    them (else none): ``primary`` where the model named it its input table, else every pad
    table."""
    if not capabilities(handle).train_lookups:
        return []
    guess = [primary] if named else found
    return guess if all(in_range(t) for t in guess) else []


def _checks(
    handle: ModelHandle,
    batch: PadBatch,
    audited: list[Table],
    opts: AuditOptions,
    report: AuditReport,
    readings: Readings | None,
) -> None:
    """Run the data checks, judge the train ``readings`` (None: no grad or update check)
    and run the invariance check on the audited tables."""
    if batch.inputs is not None:
        fixes = capabilities(handle).pipeline_fixes or GENERIC_FIXES
        report.findings += data_findings(batch.inputs, batch.pad_idx, audited[0].path, fixes)
    if readings is not None:
        judge_train(handle, audited, readings, opts, report)
    if "invariance" in opts.checks:
        if readings is not None and capabilities(handle).reset:
            handle.reset()  # every check measures the model as the user handed it over
        report.invariance = check_invariance(handle, batch, audited, opts, report)
        if opts.step is not None:
            blame_the_step(handle, batch, audited, opts, report)


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
