"""Render audits: the per-audit text, the failure message, and the session report.

The session report (terminal table, JSON, Markdown, JUnit properties, reproduction) works
on audits as JSON primitives (:func:`primitives` of ``AuditReport.to_dict()``), the form
in which they travel from pytest-xdist workers. This module knows no pytest.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .result import AuditReport

Audit = Mapping[str, Any]
#: the ``version`` of the JSON report; bump it when a field changes meaning or goes away.
JSON_VERSION = 1
ELLIPSIS = "…"
HEAD = (
    "test",
    "framework",
    "model",
    "layer",
    "pad id",
    "grad max|g|",
    "update max|Δ|",
    "inv. rel. diff",
    "verdict",
)
#: columns shortened (middle ellipsis) to fit the terminal: column -> narrowest width.
FLEX = {0: 16, 3: 12, 2: 10}
#: the columns under a per-audit heading, when the test id cannot have a column.
NARROW_HEAD = ("layer", "pad", "max|g|", "max|Δ| (cause)", "inv.diff", "verdict")
_GAP = "  "


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


def _num(value: float | str | None) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else f"{value:.3g}"


def _pad(table: Audit) -> str:
    return "-" if table["pad_idx"] is None else str(table["pad_idx"])


def _update(table: Audit) -> str:
    cause = table.get("update_cause")
    return _num(table["update"]) + (f" ({cause})" if cause else "")


def _verdict(table: Audit, findings: Iterable[Audit]) -> tuple[str, str]:
    """Return (status, words) for a table given the findings that concern it."""
    if table["pad_idx"] is None or table.get("skipped"):
        return "skipped", "skipped"
    found = list(findings)
    leaks = [f["check"] for f in found if not f["allowed"]]
    if leaks:
        return "leak", "LEAK: " + ", ".join(dict.fromkeys(leaks))
    if found:
        return "allowed", "allowed: " + ", ".join(dict.fromkeys(f["cause"] for f in found))
    return "clean", "clean"


def _align(rows: Sequence[Sequence[str]], widths: Sequence[int]) -> list[str]:
    return [
        _GAP.join(_fit(c, w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def _fit(text: str, width: int) -> str:
    """Pad ``text`` to ``width``; shorten it with an ellipsis in the middle when longer."""
    if len(text) <= width:
        return text.ljust(width)
    if width < 3:
        return text[:width]
    head = (width - 1) // 2
    return text[:head] + ELLIPSIS + text[len(text) - (width - 1 - head) :]


def render_text(report: AuditReport) -> str:
    """Return a table: one row per table with each check's measured value and a verdict."""
    data = report.to_dict()
    head = ("layer", "kind", "pad id", "grad max|g|", "update max|Δ|", "verdict")
    saved = report.kind == "checkpoint"
    if saved:  # no model ran: the saved pad row's norm and its change against the baseline
        head = ("key", "shape", "pad id", "pad-row norm", "max|Δ| vs baseline", "verdict")
    rows = [
        (
            t["layer"],
            t["kind"],
            _pad(t),
            _num(t["pad_norm"] if saved else t["grad"]),
            _update(t),
            _verdict(t, [f for f in data["findings"] if f["layer"] == t["layer"]])[1],
        )
        for t in data["tables"]
    ]
    widths = _widths(head, rows, {}, None)
    lines = [
        f"padaudit{' checkpoint' if saved else ''}: {report.model} ({report.framework})"
        f"{_seed(report.seed)}: "
        + ("passed" if report.passed else f"{len(report.leaks)} finding(s)"),
        *_heading(head, widths),
        *_align(rows, widths),
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


def _seed(seed: int | None) -> str:
    return "" if seed is None else f", seed {seed}"


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
        f"reproduce: {report.reproduce}"
        + ("" if report.seed is None else f"   or   pytest --padaudit-seed={report.seed}"),
        *([f"batch: {report.batch_text}"] if report.batch_text else []),
    ]
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


# -- the session report: audits as JSON primitives ---------------------------------------


@dataclass(frozen=True)
class Row:
    """One table of one audit: the cells under :data:`HEAD` and its status."""

    cells: tuple[str, ...]
    #: "leak", "allowed", "clean" or "skipped".
    status: str


def table_rows(audit: Audit) -> list[Row]:
    """Return one row per embedding table of ``audit``.

    A finding that names no table (invariance, or one a result hook added) concerns
    every audited table of the audit.
    """
    layers = {t["layer"] for t in audit["tables"]}
    model_level = [f for f in audit["findings"] if f["layer"] not in layers]
    inv = audit.get("invariance")
    inv_cell = "-" if not inv else "skipped" if inv.get("skipped") else _num(inv.get("value"))
    rows = []
    for t in audit["tables"]:
        mine = [f for f in audit["findings"] if f["layer"] == t["layer"]]
        status, verdict = _verdict(t, mine + model_level)
        cells = (
            str(audit.get("test") or "-"),
            str(audit["framework"]),
            str(audit["model"]),
            str(t["layer"]),
            _pad(t),
            _num(t["grad"]),
            _update(t),
            inv_cell,
            verdict,
        )
        rows.append(Row(cells, status))
    return rows


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
        line += f", {summary['skipped']} skipped (no pad id)"
    return line


def render_table(audits: Sequence[Audit], width: int | None = None) -> list[tuple[str, str]]:
    """Return the session table as (line, status) pairs, fitted to ``width`` columns.

    One row per table with the test id in its first column; when that cannot fit, each
    audit gets a heading line (test id, model, framework) over its rows instead. Status is
    "header", "audit" (a heading of a passing audit) or a row's status.
    """
    groups = [(audit, table_rows(audit)) for audit in audits]
    rows = [row for _, group in groups for row in group]
    if not rows:
        return []
    widths = _widths(HEAD, [r.cells for r in rows], FLEX, width)
    if not width or _span(widths) <= width:
        lines = [(line, "header") for line in _heading(HEAD, widths)]
        cells = _align([r.cells for r in rows], widths)
        return lines + list(zip(cells, _statuses(rows), strict=True))
    indent = " " * len(_GAP)
    widths = _widths(NARROW_HEAD, [r.cells[3:] for r in rows], {0: 12}, width - len(indent))
    lines = [(indent + line, "header") for line in _heading(NARROW_HEAD, widths)]
    for audit, group in groups:
        model = f" · {audit['model']} ({audit['framework']})"
        title = _fit(str(audit.get("test")), max(FLEX[0], width - len(model))).rstrip() + model
        lines.append((_fit(title, width).rstrip(), "audit" if audit["passed"] else "leak"))
        cells = _align([r.cells[3:] for r in group], widths)
        statuses = _statuses(group)
        lines += [(indent + line, status) for line, status in zip(cells, statuses, strict=True)]
    return lines


def _statuses(rows: Sequence[Row]) -> list[str]:
    return [r.status for r in rows]


def _heading(head: Sequence[str], widths: Sequence[int]) -> list[str]:
    return [*_align([head], widths), _GAP.join("-" * w for w in widths)]


def _span(widths: Sequence[int]) -> int:
    return sum(widths) + len(_GAP) * (len(widths) - 1)


def _widths(
    head: Sequence[str], table: Sequence[Sequence[str]], flex: Mapping[int, int], width: int | None
) -> list[int]:
    """Return column widths, the ``flex`` columns narrowed until the table fits ``width``.

    ``flex`` maps a column to its narrowest width. Each step takes one character from the
    column where that shortens the fewest cells (then the one with most room), so one
    long test id does not shorten every other.
    """
    widths = [max(len(row[i]) for row in [head, *table]) for i in range(len(head))]
    lengths = {i: sorted(len(row[i]) for row in table) for i in flex}
    over = _span(widths) - (width or _span(widths))
    while over > 0:
        room = [i for i in flex if widths[i] > flex[i]]
        if not room:
            break
        column = min(
            room,
            key=lambda i: (
                len(lengths[i]) - bisect.bisect_right(lengths[i], widths[i] - 1),
                flex[i] - widths[i],
            ),
        )
        widths[column] -= 1
        over -= 1
    return widths


def build_json(audits: Sequence[Audit], generator: str) -> dict[str, Any]:
    """Return the JSON report: version, summary, and every audit with options and seed."""
    return {
        "version": JSON_VERSION,
        "generator": generator,
        "summary": summarize(audits),
        "audits": [dict(a) for a in audits],
    }


def dump_json(data: Mapping[str, Any]) -> str:
    """Return ``data`` as strict, indented JSON text."""
    return json.dumps(primitives(data), indent=2, allow_nan=False, ensure_ascii=False) + "\n"


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
                f"  - cause: {_md(f['why'])}",
                f"  - fix: {_md(f['fix'])}",
                f"  - reproduce: `{audit['reproduce']}`" + _md_rerun(audit["seed"]),
            ]
        lines += ["", "</details>"]
    return "\n".join([*lines, ""])


def _md_rerun(seed: int | None) -> str:
    return "" if seed is None else f" or `pytest --padaudit-seed={seed}`"


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
    """Return what repeats a failed audit: seed, call, options and the batch's ids."""
    batch = audit["batch"]
    test = audit.get("test")
    seeded = audit["seed"] is not None
    rerun = f"pytest '{test}'" + (f" --padaudit-seed={audit['seed']}" if seeded else "")
    lines = [
        f"model:     {audit['model']} ({audit['framework']}){_seed(audit['seed'])}",
        f"reproduce: {audit['reproduce']}",
        *([f"rerun:     {rerun}"] if test else []),
        f"options:   {json.dumps(primitives(audit['options']), sort_keys=True)}",
    ]
    if batch:  # a checkpoint audit has no batch
        lines += [
            f"batch:     pad id {batch['pad_idx']}, {batch['padding_side']} padding, "
            f"lengths {batch['lengths']}, seed {batch['seed']}; ids:",
            *(f"  {ids}" for ids in batch["ids"]),
        ]
    return "\n".join(lines)
