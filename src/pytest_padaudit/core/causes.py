"""The one list of finding causes: each code, what it means, and which check reports it.

A finding's ``cause`` is one of these codes; ``allow=`` takes them. Adapters, the engine and
checkpoint audits emit no other code (a test reads their source to make sure).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cause:
    """One finding cause: its code, a one-line meaning, and the checks that report it."""

    code: str
    meaning: str
    checks: tuple[str, ...]


#: every cause, in the order the README lists them.
ALL: tuple[Cause, ...] = (
    Cause(
        "no_padding_idx",
        "the table has no pad setting (padding_idx / mask_zero), so pad tokens train the pad row",
        ("grad", "update"),
    ),
    Cause(
        "pad_mismatch",
        "pad_idx= (or the batch's pad ids) differs from the table's own pad id, so the row the "
        "data pads with trains",
        ("grad", "update", "pipeline"),
    ),
    Cause(
        "weight_reuse",
        "the weight is read outside the lookup (a matmul with .weight, LoRA factors)",
        ("grad", "update"),
    ),
    Cause(
        "tied",
        "the part of the pad row's gradient that comes through a tied output projection",
        ("grad", "update"),
    ),
    Cause(
        "unmasked",
        "Keras: mask_zero is set but a layer drops or ignores the mask before the loss",
        ("grad", "update"),
    ),
    Cause(
        "nonfinite",
        "nan/inf in the pad row's gradient, the outputs, or a saved pad row",
        ("grad", "update", "invariance", "finite"),
    ),
    Cause(
        "labels_at_pads",
        "the batch's labels at pad positions are not the ignore index (-100), so the loss "
        "trains on pads",
        ("pipeline",),
    ),
    Cause("max_norm", "max_norm (or a constraint) rescaled a non-zero pad row", ("update",)),
    Cause("forward", "the forward pass wrote to the embedding weight in place", ("update",)),
    Cause("weight_decay", "weight decay moved a non-zero pad row", ("update",)),
    Cause(
        "optimizer",
        "the optimizer moved a pad row with zero gradient (momentum, a stateful update)",
        ("update",),
    ),
    Cause(
        "invariance",
        "extra pad positions change what the real positions compute or learn",
        ("invariance",),
    ),
    Cause(
        "not_checked",
        "a check could not run on this model; it is reported, never counted as a pass",
        ("grad", "update", "invariance"),
    ),
    Cause(
        "pad_row_nonzero",
        "checkpoint: the pad row of a saved table is not zero",
        ("zero",),
    ),
    Cause(
        "pad_row_changed",
        "checkpoint: the pad row changed against the baseline checkpoint",
        ("unchanged",),
    ),
)

#: the codes ``allow=`` accepts.
CODES: tuple[str, ...] = tuple(c.code for c in ALL)
BY_CODE: dict[str, Cause] = {c.code: c for c in ALL}


def markdown_table() -> str:
    """Return the causes as the Markdown table the README shows."""
    lines = ["| cause | meaning | reported by |", "|---|---|---|"]
    lines += [f"| `{c.code}` | {c.meaning} | {', '.join(c.checks)} |" for c in ALL]
    return "\n".join(lines)
