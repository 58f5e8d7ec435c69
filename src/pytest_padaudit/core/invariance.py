"""The invariance check: do pad positions change what the real positions learn?

Two measurements, both framework-free (handles return full NumPy arrays):

- **Wider batch**: the same sequences with ``extra_pad`` more pad columns. The sequence
  axes of every output and traced array are the axes that grow by exactly ``extra_pad``
  between the two runs (never decided by a size alone); loss weights sit at real
  positions only (:class:`LossPlan` ``"real"``), and only real positions are compared.
- **Perturbed pad vectors**: for a model that cannot take the wider batch (a fixed width,
  or any other error, quoted in a note), the vectors the token tables emit at pad
  positions are replaced by seeded noise (``invariance_pass(..., perturb=seed)``) and the
  two same-width runs compared.

A check that can run neither way is a ``not_checked`` finding, never a pass; non-finite
values are a ``nonfinite`` finding, never an invariance leak.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .base import capabilities
from .batch import LossPlan, PadBatch, base_region, grown, guess_axes, real_positions
from .errors import PadAuditError
from .handle import ROOT, ModelHandle, Table, Trace
from .options import AuditOptions
from .result import AuditReport, Finding, InvarianceResult

Run = tuple[dict[str, np.ndarray], list[np.ndarray]]
Axes = dict[int, tuple[int, ...]]


def check_invariance(
    handle: ModelHandle,
    batch: PadBatch,
    tables: list[Table],
    opts: AuditOptions,
    report: AuditReport,
) -> InvarianceResult:
    """Measure invariance with a wider batch, else with perturbed pad vectors; judge it."""
    wide = batch.extended(opts.extra_columns)
    plan_a = LossPlan(batch, "real", opts.seed)
    run_a = handle.invariance_pass(batch, plan_a, tables)
    plan_b = LossPlan(wide, "real", opts.seed, base=dict(plan_a.shapes))
    try:
        run_b = handle.invariance_pass(wide, plan_b, tables)
    except PadAuditError as exc:
        if not refuses_width(exc):  # a real fault: never measured away by a substitute
            return _faulted(batch, wide, report, exc)
        why = f"the model cannot take the wider batch {wide.shape}: {_first_line(exc)}"
        return _perturbed(handle, batch, tables, opts, report, plan_a, run_a, why)
    truth = grown_axes(plan_a.shapes, plan_b.shapes, wide.extra)
    shapes_a = {i: a.shape for i, a in enumerate(run_a[1])}
    out_axes = grown_axes(shapes_a, {i: b.shape for i, b in enumerate(run_b[1])}, wide.extra)
    if truth is None or out_axes is None:
        why = (
            f"its outputs change shape between widths {batch.shape[1]} and "
            f"{wide.shape[1]} other than by {wide.extra} positions along an axis"
        )
        return _perturbed(handle, batch, tables, opts, report, plan_a, run_a, why)
    # the base run could only guess its outputs' sequence axes (a (batch, hidden) output
    # with hidden == seq_len looks per-token): rerun it when the guess was wrong
    if plan_a.used != truth:
        plan_a = LossPlan(batch, "real", opts.seed, axes=truth)
        run_a = handle.invariance_pass(batch, plan_a, tables)
    if plan_b.used != truth:
        plan_b = LossPlan(wide, "real", opts.seed, axes=truth)
        run_b = handle.invariance_pass(wide, plan_b, tables)

    def localise() -> tuple[str | None, str, float]:
        return _localise(handle.trace(batch), handle.trace(wide), batch, wide, opts.rtol)

    words = f"{wide.extra} extra pad columns change what the real positions learn"
    return _judge(handle, batch, wide, run_a, run_b, out_axes, opts, report, words, localise)


def grown_axes(
    a: Mapping[int, Sequence[int]], b: Mapping[int, Sequence[int]], extra: int
) -> Axes | None:
    """Return, per array, the axes that grow by exactly ``extra`` from ``a`` to ``b``.

    None when the two runs are not comparable: other arrays, or one not comparable by
    :func:`~pytest_padaudit.batch.grown`.
    """
    if set(a) != set(b):
        return None
    found: Axes = {}
    for key, shape in a.items():
        axes = grown(shape, b[key], extra)
        if axes is None:
            return None
        found[key] = axes
    return found


def _perturbed(
    handle: ModelHandle,
    batch: PadBatch,
    tables: list[Table],
    opts: AuditOptions,
    report: AuditReport,
    plan_a: LossPlan,
    run_a: Run,
    why: str,
) -> InvarianceResult:
    """Measure with noise at the pad vectors (same width); not_checked when impossible."""
    if not capabilities(handle).perturb:
        return _not_checked(batch, report, why, f"the {handle.framework} adapter cannot do it")
    plan_p = LossPlan(batch, "real", opts.seed, axes=dict(plan_a.used))
    try:
        run_p = handle.invariance_pass(batch, plan_p, tables, perturb=opts.seed)
    except PadAuditError as exc:
        return _not_checked(batch, report, why, _first_line(exc))
    report.notes.append(
        "invariance measured by replacing the vectors the token tables emit at pad "
        f"positions with seeded noise (same width), because {why}"
    )
    axes = {
        i: plan_a.used[i] if plan_a.shapes.get(i) == a.shape else guess_axes(batch, a.shape)
        for i, a in enumerate(run_a[1])
    }

    def localise() -> tuple[str | None, str, float]:
        if not capabilities(handle).trace_perturb:
            return None, "", 0.0
        # perturb= is optional for trace() (probed above), so not in the ModelHandle protocol
        noisy = handle.trace(batch, perturb=opts.seed)  # type: ignore[call-arg]
        return _localise(handle.trace(batch), noisy, batch, batch, opts.rtol)

    words = "replacing the vectors at pad positions with noise changes what real positions learn"
    return _judge(handle, batch, batch, run_a, run_p, axes, opts, report, words, localise)


def _judge(
    handle: ModelHandle,
    batch: PadBatch,
    wide: PadBatch,
    run_a: Run,
    run_b: Run,
    axes: Axes,
    opts: AuditOptions,
    report: AuditReport,
    words: str,
    localise: Callable[[], tuple[str | None, str, float]],
) -> InvarianceResult:
    """Compare two runs; add a nonfinite or an invariance finding when they call for one."""
    (grads_a, outs_a), (grads_b, outs_b) = run_a, run_b
    arrays = [*grads_a.values(), *grads_b.values(), *outs_a, *outs_b]
    if any(not np.isfinite(x).all() for x in arrays if x.size):
        cause, why, fix = handle.explain("nonfinite", None, opts, None)
        message = (
            "the invariance passes produced nan/inf in outputs or gradients, so "
            "invariance cannot be measured"
        )
        report.findings.append(_unmeasured(batch, cause, message, why, fix))
        return InvarianceResult(value=float("nan"))
    worst, grad_rel = _grad_difference(grads_a, grads_b)
    out_rel = max(
        (
            _difference(a, b, axes.get(i, ()), batch, wide)
            for i, (a, b) in enumerate(zip(outs_a, outs_b, strict=False))
        ),
        default=0.0,
    )
    value = max(grad_rel, out_rel)
    result = InvarianceResult(value=value, worst=worst, outputs=out_rel)
    if not value > opts.rtol:
        return result
    first, where, first_rel = localise()
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
            first or ROOT,
            batch.pad_idx,
            value,
            cause,
            f"{words}: rel. diff {result.value:.2g} ({detail}outputs {out_rel:.2g}; "
            f"rtol {opts.rtol:g})",
            why,
            fix,
        )
    )
    return result


#: what a model says when it refuses a batch for its width (shapes, lengths, positions).
_WIDTH = re.compile(
    r"shape|size|dimension|\bdims?\b|length|incompatible|mismatch|broadcast|out of range|"
    r"out of bounds|position|expect|exactly|must match|must be compatible|tokens",
    re.I,
)
#: what a real fault says: memory, a device, a resource, whatever the width.
_FAULT = re.compile(r"out of memory|\boom\b|resource ?exhausted|memoryerror", re.I)


def refuses_width(exc: BaseException) -> bool:
    """Say whether ``exc`` (a wrapped model error) refuses the batch for its shape alone.

    Only such a refusal may switch to noise at the pad vectors; any other fault (memory,
    a device, a bug that shows at one width) is reported, never measured around.
    """
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    text = f"{type(cause).__name__}: {cause}"
    if isinstance(cause, MemoryError) or _FAULT.search(text):
        return False
    if exc.__cause__ is None:  # padaudit's own words (a fixed input length, ...)
        return True
    return isinstance(cause, IndexError) or bool(_WIDTH.search(text))


def _faulted(
    batch: PadBatch, wide: PadBatch, report: AuditReport, exc: Exception
) -> InvarianceResult:
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    reason = (
        f"the model raised {type(cause).__name__} on the wider batch {wide.shape}, which is "
        f"not a refusal of its shape: {_first_line(cause)}"
    )
    message = "invariance was not checked: the model failed on the wider batch"
    fix = (
        "fix what the model raised (run it on a batch of that shape), or accept the unchecked "
        "invariance with allow=('not_checked',)"
    )
    report.findings.append(_unmeasured(batch, "not_checked", message, reason, fix))
    return InvarianceResult(skipped=reason)


def _not_checked(batch: PadBatch, report: AuditReport, why: str, because: str) -> InvarianceResult:
    reason = f"{why}; and the vectors at its pad positions could not be replaced: {because}"
    message = (
        "invariance was not checked: neither a wider batch nor noise at the pad "
        "positions could be measured"
    )
    fix = (
        "make the model accept a batch with more pad columns (or let its embedding "
        "lookups run through the framework's embedding layer), or accept the unchecked "
        "invariance with allow=('not_checked',)"
    )
    report.findings.append(_unmeasured(batch, "not_checked", message, reason, fix))
    return InvarianceResult(skipped=reason)


def _unmeasured(batch: PadBatch, cause: str, message: str, why: str, fix: str) -> Finding:
    """Return the model-wide invariance finding for a measure that could not be taken."""
    return Finding("invariance", ROOT, batch.pad_idx, float("nan"), cause, message, why, fix)


def _maxabs(a: np.ndarray) -> float:
    if a.size == 0:
        return 0.0
    if not np.isfinite(a).all():
        return float("nan")
    return float(np.abs(a).max())


def _relative(diff: float, scale: float) -> float:
    rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
    return float("inf") if rel != rel else rel


def _grad_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[Any, float]:
    """Return the parameter whose gradients differ most, and by how much, relative.

    The scale is the largest |gradient| of all parameters, so a gradient that is
    mathematically zero does not turn float noise into a false alarm.
    """
    shared = [k for k in a if k in b and a[k].shape == b[k].shape and a[k].size]
    if not shared:
        return None, 0.0
    scale = max(_maxabs(a[k]) for k in shared)
    worst, worst_rel = None, 0.0
    for k in shared:
        rel = _relative(_maxabs(a[k] - b[k]), scale)
        if rel > worst_rel:
            worst, worst_rel = k, rel
    return worst, worst_rel


def _difference(
    a: np.ndarray, b: np.ndarray, axes: Sequence[int], batch: PadBatch, wide: PadBatch
) -> float:
    """Return max |a - b| at real positions relative to max |a| there.

    ``b`` comes from ``wide`` (``batch`` with extra columns, or ``batch`` itself): its
    extra columns along ``axes`` are cut before comparing.
    """
    if b.shape != a.shape:
        b = b[base_region(wide, b.ndim, axes)]
    if b.shape != a.shape or not a.size:
        return 0.0
    keep = real_positions(batch, a.shape, axes)
    a, b = np.where(keep, a, 0.0), np.where(keep, b, 0.0)
    return _relative(_maxabs(a - b), _maxabs(a))


def _arrays_difference(
    a: list[np.ndarray], b: list[np.ndarray], batch: PadBatch, wide: PadBatch
) -> float:
    """Return the largest relative difference of traced arrays at real positions."""
    worst = 0.0
    for x, y in zip(a, b, strict=False):
        if wide.extra:
            grown = grown_axes({0: x.shape}, {0: y.shape}, wide.extra)
            if grown is None:
                continue
            axes = grown[0]
        elif x.shape == y.shape:
            axes = guess_axes(batch, x.shape)
        else:
            continue
        worst = max(worst, _difference(x, y, axes, batch, wide))
    return worst


def _localise(
    trace: Trace, later: Trace, batch: PadBatch, wide: PadBatch, rtol: float
) -> tuple[str | None, str, float]:
    """Name where pad positions first reach the real positions.

    That is the first module (in the order modules finish) whose outputs at real
    positions differ between the two traces; when its inputs already differ, the leak
    is in the code that calls it, and the caller is named instead. Return (module path,
    words for the message, relative difference).
    """
    others = {key: (inputs, outputs) for key, inputs, outputs in _numbered(later)}
    for key, inputs, outputs in _numbered(trace):
        path = key[0]
        if not path or key not in others:
            continue
        rel = _arrays_difference(outputs, others[key][1], batch, wide)
        if rel <= rtol:
            continue
        rel_in = _arrays_difference(inputs, others[key][0], batch, wide)
        if rel_in > rtol:
            parent = path.rpartition(".")[0]
            return (
                parent or ROOT,
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


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]
