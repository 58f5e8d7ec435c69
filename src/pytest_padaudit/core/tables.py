"""Which tables have a pad row: pad ids, the likely token table, and the lookup probe.

A pad id belongs to the data: only a table looked up with the batch's token ids has a pad
row. Position, segment and relative-attention-bias tables are looked up with positions,
segments and buckets, whose row 0 is real. Framework-free, like the engine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import cast

import numpy as np

from .base import capabilities
from .batch import PadBatch
from .errors import PadAuditError
from .handle import ModelHandle, Table, pad_source
from .options import AuditOptions
from .result import AuditReport, Finding, TableResult

NOT_TOKEN = "not a token table (looked up with positions/segments, not the batch's ids)"
NO_PAD = "no pad id (pass pad_idx= if it holds tokens)"


def candidates(handle: ModelHandle, tables: Sequence[Table], opts: AuditOptions) -> list[Table]:
    """Return the tables with a pad id; refuse a model without tables or pad ids."""
    if not tables:
        raise PadAuditError(
            f"{handle.model_class} holds no embedding table for padaudit to check: "
            "pass a model with an embedding layer (or the sub-model that has one)"
        )
    if isinstance(opts.pad_idx, Mapping):
        paths = {t.path for t in tables}
        unknown = sorted(set(opts.pad_idx) - paths)
        if unknown:
            raise PadAuditError(
                f"pad_idx= names {', '.join(map(repr, unknown))}, which is not an embedding "
                f"table of {handle.model_class}: use layer paths from "
                f"{', '.join(sorted(paths))}"
            )
    found = [t for t in tables if t.pad_idx is not None]
    if not found:
        names = ", ".join(f"{t.path} ({t.kind})" for t in tables)
        raise PadAuditError(
            f"no pad id is known for the embedding tables of {handle.model_class}: {names}. "
            "Pass pad_idx= (the id your tokenizer pads with), or give the layer its own "
            "(padding_idx= in PyTorch, mask_zero=True in Keras)"
        )
    return found


def likely_token_table(handle: ModelHandle, found: Sequence[Table]) -> Table:
    """Guess the token table before the probe: the model's input table, else one with a
    pad id of its own, else the largest."""
    return guess_token_table(handle, found)[0]


def guess_token_table(handle: ModelHandle, found: Sequence[Table]) -> tuple[Table, bool]:
    """Return :func:`likely_token_table` and whether the model named it (its input table)."""
    # input_table() is optional (probed by capabilities()), so not in the ModelHandle protocol
    path = handle.input_table() if capabilities(handle).input_table else None  # type: ignore[attr-defined]
    for t in found:
        if t.path == path:
            return t, True
    own = [t for t in found if _has_own_pad(t)]
    return max(own or found, key=lambda t: t.rows), False


def in_range(t: Table) -> bool:
    return t.pad_idx is not None and 0 <= t.pad_idx < t.rows


def check_range(t: Table, opts: AuditOptions) -> None:
    """Refuse a pad id outside ``t``'s rows, quoting it as the user wrote it."""
    if in_range(t):
        return
    given = opts.pad_idx
    if isinstance(given, Mapping):
        shown = f"pad_idx={{{t.path!r}: {given.get(t.path, t.pad_idx)}}}"
    elif given is not None:
        shown = f"pad_idx={given}"
    else:
        shown = "the model's own"
    raise PadAuditError(
        f"pad id {t.pad_idx} is out of range for {t.path}, which has {t.rows} rows ({shown}): "
        f"pass pad_idx= between 0 and {t.rows - 1} (or between -{t.rows} and -1)"
    )


def token_tables(
    handle: ModelHandle,
    batch: PadBatch,
    tables: Sequence[Table],
    opts: AuditOptions,
    report: AuditReport,
    seen: Mapping[str, np.ndarray] | None = None,
) -> list[Table]:
    """Probe which tables the batch's ids are looked up in; return the tables to audit.

    ``seen``: the lookups a train pass already recorded (else a lookups pass runs). Mark
    the others skipped in ``report``; report each ``pad_mismatch``.
    """
    results = {r.layer: r for r in report.tables}
    if seen is not None:
        audited = _classify(seen, batch, tables, results, report)
    elif not capabilities(handle).lookups:  # a handle that cannot tell: every pad table
        audited = [t for t in tables if t.pad_idx is not None]
    else:
        audited = _classify(handle.lookups(batch), batch, tables, results, report)
    if not audited:
        names = ", ".join(t.path for t in tables if results[t.path].skipped != NOT_TOKEN)
        raise PadAuditError(
            f"no pad id is known for the token tables of {handle.model_class} ({names}): "
            "pass pad_idx= (the id your data pads with)"
        )
    for t in audited:
        check_range(t, opts)
        result = results[t.path]
        result.skipped = None
        if mismatch(t):
            report.findings.append(_mismatch_finding(handle, t, opts))
    return audited


def _classify(
    seen: Mapping[str, np.ndarray],
    batch: PadBatch,
    tables: Sequence[Table],
    results: dict[str, TableResult],
    report: AuditReport,
) -> list[Table]:
    real = batch.real_ids()
    marked = []
    for t in tables:
        ids = np.asarray(seen.get(t.path, ()))
        hits = int(np.isin(real, ids).sum()) if ids.size else 0
        marked.append(dataclasses.replace(t, token=bool(real.size) and 2 * hits >= real.size))
    for t in marked:
        if not t.token:
            results[t.path].skipped = NOT_TOKEN
    tokens = [t for t in marked if t.token]
    if tokens:
        return [t for t in tokens if t.pad_idx is not None]
    keep = [t for t in marked if t.pad_idx is not None and _has_own_pad(t)]
    keep = keep or [t for t in marked if t.pad_idx is not None]
    report.notes.append(
        "no embedding table was seen looking up the batch's ids (the model reads them "
        "another way): auditing "
        + ", ".join(t.path for t in keep)
        + " at the pad id "
        + ("of its own" if all(_has_own_pad(t) for t in keep) else "given")
    )
    return keep


def _has_own_pad(t: Table) -> bool:
    return t.own_pad_idx is not None or t.own_pad


def mismatch(t: Table) -> bool:
    """Say whether the data's pad id differs from the table's own."""
    return t.own_pad_idx is not None and t.pad_idx is not None and t.own_pad_idx != t.pad_idx


def mismatch_words(handle: ModelHandle, t: Table, opts: AuditOptions) -> tuple[str, str, str]:
    """Return (cause, why, fix) for a pad id that disagrees with the table's own."""
    try:
        return handle.explain("pad_mismatch", t, opts, None)
    except (KeyError, ValueError, NotImplementedError):
        pass
    source = pad_source(opts, t.pad_idx)
    return (
        "pad_mismatch",
        f"your data pads with {t.pad_idx} ({source}) but the model's own pad id for "
        f"{t.path} is {t.own_pad_idx}: row {t.pad_idx} is looked up at every pad position "
        f"and trains like a real token, while the model keeps row {t.own_pad_idx} aside",
        f"pad your data with {t.own_pad_idx} (pad_idx={t.own_pad_idx}), or give the model "
        f"pad id {t.pad_idx}",
    )


def _mismatch_finding(handle: ModelHandle, t: Table, opts: AuditOptions) -> Finding:
    cause, why, fix = mismatch_words(handle, t, opts)
    source = pad_source(opts, t.pad_idx)
    return Finding(  # a cause under grad: the row the data pads with is the one that trains
        "grad",
        t.path,
        t.pad_idx,
        float(cast(int, t.pad_idx)),  # mismatch(t): the pad id is known
        cause,
        f"the batch pads with {t.pad_idx} ({source}), the table's own pad id is {t.own_pad_idx}",
        why,
        fix,
    )
