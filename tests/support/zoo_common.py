"""The real-library zoo's shared parts: zoo entries, the audit's verdicts, rows of the table.

A zoo entry builds one tiny model offline and knows how a user calls it. Its ground truth is
computed by the framework module (zoo_hf.py for PyTorch, zoo_keras_hub.py for TensorFlow)
with plain autograd; this module only compares verdicts and times the audit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pytest_padaudit import PadAuditError, audit
from pytest_padaudit.core.batch import make_batch

#: The audit's defaults, which the ground truth repeats: batch 4 x 16, 8 extra pad columns.
BATCH, SEQ, EXTRA, SEED = 4, 16, 8, 0
#: The invariance ground truth calls a relative change above this a leak (the audit's rtol).
RTOL = 1e-4
#: The checks each row compares: which tables are audited, which token tables' pad rows get
#: gradient through their lookups, which through a tied head, and the invariance verdict.
CHECKS = ("tables", "grad", "tied", "invariance")


@dataclass
class Entry:
    """One zoo model: how to build it, how a user calls it, what the audit is told today."""

    id: str
    library: str
    build: Callable[[Path], Any]
    #: the forward a user runs: ``call(model, ids, mask)`` in PyTorch (tensors),
    #: ``call(model, ids, mask, training)`` in Keras (NumPy arrays).
    call: Callable[..., Any]
    #: the token tables of a built model (PyTorch: their weights; Keras: their layers).
    token: Callable[[Any], list[Any]]
    pad: int
    pad_source: str
    #: audit() options today; ``forward`` among them marks a model issue 13 wants zero-config.
    options: dict[str, Any] = field(default_factory=dict)
    #: options a zero-config audit still takes (a pad id the model cannot know).
    zero_config: dict[str, Any] = field(default_factory=dict)
    #: True when ``forward=`` is the user's own (buggy) calling code under test, not glue.
    own_forward: bool = False

    @property
    def needs_forward(self) -> bool:
        """Say whether the audit is given forward= only because it cannot call the model."""
        return "forward" in self.options and not self.own_forward


@dataclass
class Row:
    """Ground truth and the audit's verdict for one model, with the numbers behind them."""

    entry: Entry
    model: str
    truth: dict[str, Any]
    verdict: dict[str, Any]
    numbers: dict[str, Any]
    ms: float
    error: str | None = None


def audit_batch(vocab: int, pad: int, width_extra: int = 0) -> Any:
    """Return the audit's batch (ids and mask only), widened by ``width_extra`` pad columns."""
    batch = make_batch(batch_size=BATCH, seq_len=SEQ, vocab_size=vocab, pad_idx=pad, seed=SEED)
    return batch.extended(width_extra) if width_extra else batch


def weights(index: int, shape: tuple[int, ...], salt: int) -> np.ndarray:
    """Return seeded loss weights in [0.5, 1.5) for output leaf ``index``."""
    rng = np.random.default_rng([SEED, salt, index])
    return (rng.random(shape) + 0.5).astype(np.float32)


def seq_axes(short: tuple[int, ...], long: tuple[int, ...]) -> list[int]:
    """Return the axes that grew by EXTRA between the two runs (the sequence axes)."""
    if len(short) != len(long):
        raise ValueError(f"output ranks differ between the runs: {short} vs {long}")
    axes = [i for i, (a, b) in enumerate(zip(short, long, strict=True)) if a != b]
    for i in axes:
        if (short[i], long[i]) != (SEQ, SEQ + EXTRA):
            raise ValueError(f"output axis {i} changed oddly: {short} vs {long}")
    if axes and short[0] != BATCH:
        raise ValueError(f"a sequence-shaped output without the batch first: {short}")
    return axes


def real_weights(
    index: int, short: tuple[int, ...], long: tuple[int, ...], mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return the invariance weights of one output leaf for the short and the long run.

    Positions that are pads along any sequence axis weigh 0; real positions weigh the same
    in both runs (the long run's extra columns come after them: right padding).
    """
    axes = seq_axes(short, long)
    base = weights(index, short, 2)
    for axis in axes:
        shape = [1] * len(short)
        shape[0], shape[axis] = BATCH, SEQ
        base = base * mask.reshape(shape)
    full = np.zeros(long, np.float32)
    full[tuple(slice(0, SEQ) if i in axes else slice(None) for i in range(len(long)))] = base
    return base, full


def cut_real(
    short: np.ndarray, long: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return both runs' outputs at real positions (pads along a sequence axis zeroed)."""
    axes = seq_axes(short.shape, long.shape)
    long = long[tuple(slice(0, SEQ) if i in axes else slice(None) for i in range(long.ndim))]
    for axis in axes:
        shape = [1] * short.ndim
        shape[0], shape[axis] = BATCH, SEQ
        m = mask.reshape(shape)
        short, long = short * m, long * m
    return short, long


def relative(a: list[np.ndarray], b: list[np.ndarray], *, each: bool) -> float:
    """Return max |a - b| relative to max |a| (each pair its own scale when ``each``)."""
    if not a:
        return 0.0
    scale = max(float(np.abs(x).max()) if x.size else 0.0 for x in a)
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        denom = (float(np.abs(x).max()) if x.size else 0.0) if each else scale
        diff = float(np.abs(x - y).max()) if x.size else 0.0
        worst = max(worst, diff / denom if denom > 0 else (0.0 if diff == 0 else np.inf))
    return worst


def verdict(report: Any, name: Callable[[str], str]) -> dict[str, Any]:
    """Return the audit's verdict per check, table paths normalised by ``name``."""
    grads = [f for f in report.findings if f.check == "grad"]
    inv = [f for f in report.findings if f.check == "invariance"]
    if inv:
        causes = sorted({f.cause for f in inv})
        invariance = "leak" if causes == ["invariance"] else "/".join(causes)
    elif report.invariance is not None and report.invariance.skipped:
        invariance = f"skipped ({report.invariance.skipped})"
    else:
        invariance = "clean"
    return {
        "tables": sorted({name(t.layer) for t in report.tables if t.audited}),
        "grad": sorted({name(f.layer) for f in grads if f.cause != "tied"}),
        "tied": sorted({name(f.layer) for f in grads if f.cause == "tied"}),
        "invariance": invariance,
    }


def audit_numbers(report: Any, name: Callable[[str], str]) -> dict[str, Any]:
    """Return what the audit measured: pad-row gradients (lookup, head) and invariance."""
    grads = {
        name(t.layer): (t.grad, getattr(t, "head_grad", None)) for t in report.tables if t.audited
    }
    inv = report.invariance.value if report.invariance is not None else None
    return {"grads": grads, "invariance": inv}


def run_row(
    entry: Entry,
    tmp: Path,
    truth_fn: Callable[[Entry, Any], tuple[dict[str, Any], dict[str, Any]]],
    name: Callable[[str], str],
) -> Row:
    """Audit a fresh build of ``entry`` and compute the ground truth on another fresh build."""
    model = entry.build(tmp)
    start = time.perf_counter()
    error = None
    try:
        report = audit(model, **entry.options)
    except Exception as exc:  # today's raw errors are rows of the table, not crashes
        report = None
        kind = "PadAuditError" if isinstance(exc, PadAuditError) else type(exc).__name__
        error = f"{kind}: {str(exc).splitlines()[0][:160]}"
    ms = (time.perf_counter() - start) * 1e3
    if report is None:
        audit_verdict = dict.fromkeys(CHECKS, f"error ({error})")
        numbers: dict[str, Any] = {}
    else:
        audit_verdict = verdict(report, name)
        numbers = {"audit": audit_numbers(report, name)}
    truth, truth_numbers = truth_fn(entry, entry.build(tmp))
    numbers["truth"] = truth_numbers
    return Row(entry, type(model).__name__, truth, audit_verdict, numbers, ms, error)


def format_table(rows: list[Row]) -> str:
    """Return the closing table: library, model, pad id source, each check's truth/verdict."""
    head = ["library", "id", "model", "pad id source", *CHECKS, "forward=", "audit ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(value: Any) -> str:
        if isinstance(value, list):
            return ", ".join(value) or "-"
        return str(value)

    for r in rows:
        checks = []
        for c in CHECKS:
            t, a = cell(r.truth[c]), cell(r.verdict[c])
            checks.append(t if t == a else f"**{t} / audit: {a}**")
        lines.append(
            "| "
            + " | ".join(
                [
                    r.entry.library,
                    r.entry.id,
                    r.model,
                    r.entry.pad_source,
                    *checks,
                    "not needed (zero-config test)"
                    if r.entry.needs_forward
                    else ("user's own" if r.entry.own_forward else "no"),
                    f"{r.ms:.0f}",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def format_numbers(rows: list[Row]) -> str:
    """Return the measured values behind each row (truth vs audit)."""
    out = []
    for r in rows:
        out.append(f"{r.entry.id}: truth {r.numbers.get('truth')}; audit {r.numbers.get('audit')}")
        if r.error:
            out.append(f"    audit error: {r.error}")
    return "\n".join(out)


def params(
    models: list[str], checks: tuple[str, ...], known: dict[tuple[str, str], str]
) -> list[Any]:
    """Return pytest params (model, check), strict xfail where ``known`` lists a disagreement."""
    return [
        pytest.param(
            model,
            check,
            id=f"{model}-{check}",
            marks=[pytest.mark.xfail(strict=True, reason=known[model, check])]
            if (model, check) in known
            else [],
        )
        for model in models
        for check in checks
    ]


def mismatch(r: Row, check: str) -> str:
    """Return the assertion message of a disagreement, with the numbers behind it."""
    return (
        f"{r.entry.id} {check}: ground truth {r.truth[check]!r}, audit {r.verdict[check]!r} "
        f"(truth numbers {r.numbers['truth']}; audit {r.numbers.get('audit')}; "
        f"error {r.error})"
    )
