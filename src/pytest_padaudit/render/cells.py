"""The cells of a table's row: its values and verdict, as every report shows them.

``print(report)``, the failure message and the session report (terminal table, Markdown)
read their cells here, so they always agree. Audits come as JSON primitives.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Audit = Mapping[str, Any]
#: the session report's columns, one row per table.
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


def num(value: float | str | None) -> str:
    """Return a measured value in three digits ("-": not measured; text as it is)."""
    if value is None:
        return "-"
    return value if isinstance(value, str) else f"{value:.3g}"


def pad_cell(table: Audit) -> str:
    """Return the table's pad id ("-": none)."""
    return "-" if table["pad_idx"] is None else str(table["pad_idx"])


def grad_cell(table: Audit) -> str:
    """Return the pad row's gradient, a tied table's part through the output head after it."""
    head = table.get("head_grad")
    return num(table.get("grad")) + (f" (+head {num(head)})" if head else "")


def update_cell(table: Audit) -> str:
    """Return the pad row's update, with the cause the engine named for it."""
    cause = table.get("update_cause")
    return num(table.get("update")) + (f" ({cause})" if cause else "")


def _verdict(table: Audit, findings: Iterable[Audit]) -> tuple[str, str]:
    """Return (status, words) for a table given the findings that concern it."""
    if table.get("pad_idx") is None or table.get("skipped"):
        reason = str(table.get("skipped") or "no pad id").split(" (")[0].split(":")[0]
        return "skipped", f"skipped: {reason}"
    found = list(findings)
    leaks = [f["check"] for f in found if not f.get("allowed")]
    if leaks:
        return "leak", "LEAK: " + ", ".join(dict.fromkeys(leaks))
    if found:
        return "allowed", "allowed: " + ", ".join(dict.fromkeys(str(f["cause"]) for f in found))
    return "clean", "clean"


def table_verdicts(audit: Audit) -> list[tuple[Audit, str, str]]:
    """Return (table, status, verdict) for every table of ``audit``.

    A finding that names no table (invariance, or one a result hook added) concerns
    every audited table of the audit. ``print(report)`` and the session report both
    read their verdicts here, so they always agree.
    """
    layers = {t["layer"] for t in audit["tables"]}
    model_level = [f for f in audit["findings"] if f["layer"] not in layers]
    out = []
    for t in audit["tables"]:
        mine = [f for f in audit["findings"] if f["layer"] == t["layer"]]
        out.append((t, *_verdict(t, mine + model_level)))
    return out


def framework_label(framework: str, backend: str | None) -> str:
    """Return "keras", or "keras on jax" where the backend is not the default one."""
    return framework if backend in (None, framework, "tensorflow") else f"{framework} on {backend}"


@dataclass(frozen=True)
class Row:
    """One table of one audit: the cells under :data:`HEAD` and its status."""

    cells: tuple[str, ...]
    #: "leak", "allowed", "clean" or "skipped".
    status: str


def table_rows(audit: Audit) -> list[Row]:
    """Return one row per embedding table of ``audit`` (verdicts as :func:`table_verdicts`)."""
    inv = audit.get("invariance")
    inv_cell = "-" if not inv else "skipped" if inv.get("skipped") else num(inv.get("value"))
    rows = []
    for t, status, verdict in table_verdicts(audit):
        cells = (
            str(audit.get("test") or "-"),
            framework_label(str(audit["framework"]), audit.get("backend")),
            str(audit["model"]),
            str(t["layer"]),
            pad_cell(t),
            grad_cell(t),
            update_cell(t),
            inv_cell,
            verdict,
        )
        rows.append(Row(cells, status))
    return rows
