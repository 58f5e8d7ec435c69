"""Render audit reports: the plain-text table and the failure message."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .result import AuditReport, TableResult


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _verdict(report: AuditReport, row: TableResult) -> str:
    if not row.audited:
        return "skipped"
    mine = [f for f in report.findings if f.layer == row.layer]
    if any(not f.allowed for f in mine):
        return "LEAK"
    return "allowed" if mine else "clean"


def render_text(report: AuditReport) -> str:
    """Return a table: one row per table with each check's measured value and a verdict."""
    head = ("layer", "kind", "pad id", "grad max|g|", "update max|Δ|", "verdict")
    rows = [
        (
            r.layer,
            r.kind,
            "-" if r.pad_idx is None else str(r.pad_idx),
            _num(r.grad),
            _num(r.update) + (f" ({r.update_cause})" if r.update_cause else ""),
            _verdict(report, r),
        )
        for r in report.tables
    ]
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = [
        f"padaudit: {report.model} ({report.framework}), seed {report.seed}: "
        + ("passed" if report.passed else f"{len(report.leaks)} finding(s)"),
        "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    inv = report.invariance
    if inv is not None:
        if inv.skipped:
            lines.append(f"invariance: skipped ({inv.skipped})")
        else:
            where = f", first differs in {inv.first_module}" if inv.first_module else ""
            lines.append(f"invariance: rel. diff {_num(inv.value)}{where}")
    lines += [f"note: {n}" for n in report.notes]
    lines += [f"finding: [{f.check}] {f.layer}: {f.message}" for f in report.findings]
    return "\n".join(lines)


def failure_message(report: AuditReport) -> str:
    """Return the full message of a failing audit: every finding, its cause, fix and seed."""
    leaks = report.leaks
    where = f" in test {report.test}" if report.test else ""
    lines = [
        f"padaudit found {len(leaks)} pad leak{'s' if len(leaks) != 1 else ''} in "
        f"{report.model} ({report.framework}){where}",
        "",
    ]
    for f in leaks:
        pad = "" if f.pad_idx is None else f" (pad id {f.pad_idx})"
        lines += [
            f"[{f.check}] {f.layer}{pad}: {f.message}",
            f"    cause: {f.why}",
            f"    fix:   {f.fix}",
            f"    allow: allow=({f.cause!r},) reports it without failing",
            "",
        ]
    lines += [
        f"reproduce: {report.reproduce}   or   pytest --padaudit-seed={report.seed}",
        f"batch: {report.batch_text}",
    ]
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)
