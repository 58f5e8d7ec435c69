"""Render audits: the per-audit text, the failure message, and the session report.

The session report (terminal table, JSON, Markdown, JUnit properties, reproduction) works
on audits as JSON primitives (:func:`primitives` of ``AuditReport.to_dict()``), the form
in which they travel from pytest-xdist workers; each table's cells are ``cells.py``'s.
This module knows no pytest.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..core.result import use_renderer
from .cells import (
    HEAD,
    Audit,
    framework_label,
    grad_cell,
    num,
    pad_cell,
    table_rows,
    table_verdicts,
    update_cell,
)
from .layout import GAP, align, fit_widths, heading, span, wrap

if TYPE_CHECKING:
    from ..core.result import AuditReport

#: the ``version`` of the JSON report; bump it when a field changes meaning or goes away.
JSON_VERSION = 1
#: the columns under a per-audit heading, when the test id cannot have a column.
NARROW_HEAD = ("layer", "pad", "max|g|", "max|Δ| (cause)", "inv.diff", "verdict")


def primitives(value: Any) -> Any:
    """Return ``value`` as strict JSON primitives (non-finite floats as "nan", "inf")."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): primitives(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [primitives(v) for v in value]
    if hasattr(value, "item"):  # a NumPy scalar from a third-party adapter
        return primitives(value.item())
    return str(value)


def render_text(report: AuditReport) -> str:
    """Return a table: one row per table with each check's measured value and a verdict."""
    data = primitives(report.to_dict())
    head = ("layer", "kind", "pad id", "grad max|g|", "update max|Δ|", "verdict")
    saved = report.kind == "checkpoint"
    if saved:  # no model ran: the saved pad row's norm and its change against the baseline
        head = ("key", "shape", "pad id", "pad-row norm", "max|Δ| vs baseline", "verdict")
    rows = [
        (
            t["layer"],
            str(t["kind"]),
            pad_cell(t),
            num(t.get("pad_norm")) if saved else grad_cell(t),
            update_cell(t),
            verdict,
        )
        for t, _, verdict in table_verdicts(data)
    ]
    widths = fit_widths(head, rows, (), None)
    lines = [
        f"padaudit{' checkpoint' if saved else ''}: {report.model} "
        f"({framework_label(report.framework, report.backend)})"
        f"{_seed(report.seed)}: "
        + ("passed" if report.passed else f"{len(report.leaks)} finding(s)"),
        *heading(head, widths),
        *align(rows, widths),
    ]
    inv = report.invariance
    if inv is not None:
        if inv.skipped:
            lines.append(f"invariance: skipped ({inv.skipped})")
        else:
            where = f", first differs in {inv.first_module}" if inv.first_module else ""
            lines.append(f"invariance: rel. diff {num(inv.value)}{where}")
    lines += [f"note: {n}" for n in report.notes]
    lines += [
        f"finding: [{f.check}] {f.layer}: {f.message}" + (" (allowed)" if f.allowed else "")
        for f in report.findings
    ]
    return "\n".join(lines)


def _seed(seed: int | None) -> str:
    return "" if seed is None else f", seed {seed}"


def reproduce_lines(audit: Audit) -> list[str]:
    """Return what repeats an audit where it ran: the call, and inside pytest the rerun."""
    from .repro import rerun_line

    lines = [f"reproduce: {audit['reproduce']}"]
    if audit.get("test"):
        lines.append(f"rerun:     {rerun_line(str(audit['test']), audit.get('seed'))}")
    return lines


def smallest_lines(audit: Audit) -> list[str]:
    """Return the shrunk batch and the plain reproduction (none: nothing shrunk)."""
    small = audit.get("smallest")
    if not small:
        return []
    lines = [
        f"smallest failing batch ({_plural(small['sequences'], 'sequence')}, "
        f"{_plural(small['real_tokens'], 'real token')}, {_plural(small['pads'], 'pad')}; "
        f"found in {small['runs']} re-runs of the {small['check']} check"
        f"{', stepping ' + small['optimizer'] if small.get('optimizer') else ''}): "
        f"ids = {small['ids']}",
    ]
    framework, backend = str(audit["framework"]), audit.get("backend")
    code = small.get("snippet") or []  # the adapter's lines (BaseHandle.snippet)
    if code:
        lines.append(f"plain {framework_label(framework, backend)} reproduction:")
        lines += [f"    {line}" for line in code]
    return lines


def failure_message(report: AuditReport) -> str:
    """Return the full message of a failing audit: every finding, why, fix, cause and seed."""
    leaks = report.leaks
    where = f" in test {report.test}" if report.test else ""
    lines = [
        f"padaudit found {len(leaks)} pad leak{'s' if len(leaks) != 1 else ''} in "
        f"{report.model} ({framework_label(report.framework, report.backend)}){where}",
        "",
    ]
    for f in leaks:
        pad = "" if f.pad_idx is None else f" (pad id {f.pad_idx})"
        lines += [
            f"[{f.check}] {f.layer}{pad}: {f.message}",
            f"    why:   {f.why}",
            f"    fix:   {f.fix}",
            f"    cause: {f.cause} (allow=({f.cause!r},) reports it without failing)",
            "",
        ]
    data = primitives(report.to_dict())
    lines += reproduce_lines(data)
    if report.batch_text:  # a checkpoint audit ran no batch
        lines.append(f"batch: {report.batch_text}")
    lines += smallest_lines(data)
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


# -- the session report: audits as JSON primitives ---------------------------------------


def summarize(audits: Sequence[Audit]) -> dict[str, Any]:
    """Count tests, audits and tables by status."""
    statuses = [row.status for audit in audits for row in table_rows(audit)]
    return {
        "tests": len({a.get("test") for a in audits}),
        "audits": len(audits),
        "tables": sum(s != "skipped" for s in statuses),
        "leaking": statuses.count("leak"),
        "allowed": statuses.count("allowed"),
        "skipped": statuses.count("skipped"),
        "failed_audits": sum(not a["passed"] for a in audits),
    }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def total_line(summary: Mapping[str, int]) -> str:
    """Return e.g. ``12 tables audited in 7 tests: 2 leaking``."""
    line = (
        f"{_plural(summary['tables'], 'table')} audited in {_plural(summary['tests'], 'test')}: "
        f"{summary['leaking']} leaking"
    )
    if summary["allowed"]:
        line += f", {summary['allowed']} allowed"
    if summary["skipped"]:
        line += f", {summary['skipped']} skipped"
    return line


def render_table(audits: Sequence[Audit], width: int | None = None) -> list[tuple[str, str]]:
    """Return the session table as (line, status) pairs, fitted to ``width`` columns.

    One row per table with the test id in its first column when every cell fits whole;
    otherwise each audit gets a heading line (test id, model, framework) over its rows,
    and long cells (test ids, layer paths, verdicts) wrap onto more lines: nothing is cut.
    Status is "header", "audit" (a heading of a passing audit) or a row's status.
    """
    groups = [(audit, table_rows(audit)) for audit in audits]
    rows = [row for _, group in groups for row in group]
    if not rows:
        return []
    widths = fit_widths(HEAD, [r.cells for r in rows], (), None)
    if not width or span(widths) <= width:
        lines = [(line, "header") for line in heading(HEAD, widths)]
        return lines + [(line, r.status) for r in rows for line in align([r.cells], widths)]
    indent = " " * len(GAP)
    widths = fit_widths(NARROW_HEAD, [r.cells[3:] for r in rows], WRAP, width - len(indent))
    lines = [(indent + line, "header") for line in heading(NARROW_HEAD, widths)]
    for audit, group in groups:
        title = f"{audit.get('test')} · {audit['model']} ({audit['framework']})"
        status = "audit" if audit["passed"] else "leak"
        for i, part in enumerate(wrap(title, width - (4 if width > 20 else 0))):
            lines.append((("    " if i else "") + part, status))
        for r in group:
            lines += [(indent + line, r.status) for line in align([r.cells[3:]], widths)]
    return lines


#: narrow-table columns that may wrap (layer, grad, update, verdict).
WRAP = (0, 2, 3, 5)


def build_json(audits: Sequence[Audit], generator: str) -> dict[str, Any]:
    """Return the JSON report: version, summary, and every audit with options and seed."""
    return {
        "version": JSON_VERSION,
        "generator": generator,
        "summary": summarize(audits),
        "audits": [dict(a) for a in audits],
    }


def dump_json(data: Mapping[str, Any], *, pretty: bool = False) -> str:
    """Return ``data`` as strict JSON text: compact, or indented when ``pretty``."""
    layout: dict[str, Any] = {"indent": 2} if pretty else {"separators": (",", ":")}
    return json.dumps(primitives(data), allow_nan=False, ensure_ascii=False, **layout) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


_MD_VERDICT = {"leak": "❌ **{}**", "allowed": "⚠️ {}", "clean": "✅ {}", "skipped": "{}"}


def render_markdown(audits: Sequence[Audit]) -> str:
    """Return the report as GitHub-flavoured Markdown: a total, a table, the findings."""
    lines = ["### padaudit report", ""]
    rows = [row for audit in audits for row in table_rows(audit)]
    if not rows:
        return "\n".join([*lines, "No test ran a padaudit audit.", ""])
    lines += [f"**{total_line(summarize(audits))}**", ""]
    lines.append("| " + " | ".join(_md(h) for h in HEAD) + " |")
    lines.append("|" + "|".join(["---"] * 4 + ["---:"] * 4 + ["---"]) + "|")
    for row in rows:
        test, *middle, verdict = row.cells
        cells = [f"`{_md(test)}`", *(_md(c) for c in middle)]
        cells[3] = f"`{cells[3]}`"
        cells.append(_MD_VERDICT[row.status].format(_md(verdict)))
        lines.append("| " + " | ".join(cells) + " |")
    found = [(a, f) for a in audits for f in a["findings"]]
    if found:
        lines += ["", f"<details><summary>{_plural(len(found), 'finding')}</summary>", ""]
        for audit, f in found:
            state = " (allowed)" if f["allowed"] else ""
            lines += [
                f"- `{_md(str(audit.get('test')))}` · `{f['layer']}` [{f['check']}]{state}: "
                f"{_md(f['message'])}",
                f"  - why: {_md(f['why'])}",
                f"  - fix: {_md(f['fix'])}",
                f"  - cause: `{f['cause']}` (`allow=({f['cause']!r},)` reports it without failing)",
                *(
                    f"  - {_md(line.split(':', 1)[0])}: `{line.split(':', 1)[1].strip()}`"
                    for line in reproduce_lines(audit)
                ),
            ]
        lines += ["", "</details>"]
    return "\n".join([*lines, ""])


def audit_line(audit: Audit) -> str:
    """Return one line that sums up an audit: model, seed, verdict and each leak."""
    head = f"{audit['model']} ({audit['framework']}){_seed(audit['seed'])}"
    leaks = [f for f in audit["findings"] if not f["allowed"]]
    if not leaks:
        return f"{head}: passed ({_plural(len(audit['tables']), 'table')})"
    return f"{head}: LEAK: " + "; ".join(
        f"[{f['check']}] {f['layer']}: {f['message']}" for f in leaks
    )


def junit_properties(audit: Audit) -> list[tuple[str, str]]:
    """Return the JUnit XML properties of an audit: a summary line and the audit as JSON."""
    data = json.dumps(primitives(audit), separators=(",", ":"), allow_nan=False)
    return [("padaudit", audit_line(audit)), ("padaudit_json", data)]


def reproduction(audit: Audit) -> str:
    """Return what the failure message lacks to repeat a failed audit: options, batch ids.

    The reproduce and rerun lines and the shrunk batch are in the failure message, shown
    just above this section: each line is printed once.
    """
    batch = audit["batch"]
    lines = [
        f"model:     {audit['model']} ({audit['framework']}){_seed(audit['seed'])}",
        f"options:   {json.dumps(primitives(audit['options']), sort_keys=True)}",
    ]
    if batch:  # a checkpoint audit has no batch
        lines += [
            f"batch:     pad id {batch['pad_idx']}, {batch['padding_side']} padding, "
            f"lengths {batch['lengths']}, seed {batch['seed']}; ids:",
            *(f"  {ids}" for ids in batch["ids"]),
        ]
    return "\n".join(lines)


use_renderer(sys.modules[__name__])  # AuditReport.__str__ and failure_message print with us
