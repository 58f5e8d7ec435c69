"""Shrink a failing batch, as hypothesis shrinks a failing example.

After an audit fails, re-run the check that failed on smaller batches cut from the audit's
own batch: fewest sequences first, then fewest real tokens and pads. Only batches the
engine confirms still leak are kept; the search stops after :data:`BUDGET` re-runs. The
result lands in ``AuditReport.smallest`` as literal ids, ready for a plain reproduction.

Framework-free: it talks to the model only through the ``rerun`` it is given, the
engine's ``run_audit`` (the result hook sees only the audit, never a re-run). Re-runs
step the audit's own optimizer (``optimizer=`` as given, or what the model carries).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import capabilities
from .batch import PadBatch

if TYPE_CHECKING:
    from .handle import ModelHandle
    from .options import AuditOptions
    from .result import AuditReport, Finding

#: how the search re-runs an audit: ``engine.run_audit(handle, opts, test=, batch=)``.
Rerun = Callable[..., "AuditReport"]
#: re-runs of the failing check the search may spend.
BUDGET = 12


def attach_smallest(
    handle: ModelHandle, opts: AuditOptions, report: AuditReport, rerun: Rerun
) -> None:
    """Set ``report.smallest`` to the smallest batch that still fails (None: none smaller)."""
    targets = [f for f in report.leaks if _depends_on_batch(f)]
    if not targets or not report.batch.get("ids"):
        return
    if not capabilities(handle).shrinkable:  # e.g. a model sharded over a process group
        report.notes.append(
            f"the failing batch was not shrunk: {handle.model_class} runs collectives, and "
            "re-runs that differ between ranks would not line up"
        )
        return
    shrinker = Shrinker(handle, opts, targets[0], report.test, rerun)
    try:
        report.smallest = shrinker.run(_batch_of(report))
    except Exception as exc:  # the search is a bonus: it never hides the audit's verdict
        report.notes.append(f"the failing batch was not shrunk: {type(exc).__name__}: {exc}")


#: update causes that do not depend on the batch (the optimizer moves a non-zero pad row).
_BATCH_FREE = ("weight_decay", "optimizer")


def _depends_on_batch(finding: Finding) -> bool:
    """Say whether a smaller batch can show ``finding`` (not one the optimizer alone makes)."""
    if finding.check in ("grad", "invariance"):
        return True
    return finding.check == "update" and finding.cause not in _BATCH_FREE


def _batch_of(report: AuditReport) -> PadBatch:
    data = report.batch
    ids = np.asarray(data["ids"], dtype=np.int64)
    lengths = np.asarray(data["lengths"], dtype=np.int64)
    side = data.get("padding_side", "right")
    return PadBatch(
        ids, _mask(lengths, ids.shape[1], side), lengths, int(data["pad_idx"]), side,
        int(data.get("seed", 0)),
    )  # fmt: skip


def _mask(lengths: np.ndarray, width: int, side: str) -> np.ndarray:
    columns = np.arange(width)[None, :]
    if side == "right":
        return columns < lengths[:, None]
    return columns >= (width - lengths)[:, None]


def cut(batch: PadBatch, rows: list[int], lengths: list[int], width: int) -> PadBatch:
    """Return rows ``rows`` of ``batch``, each keeping its first ``lengths`` real tokens."""
    real = [batch.ids[r][batch.mask[r]][:n] for r, n in zip(rows, lengths, strict=True)]
    ids = np.full((len(rows), width), batch.pad_idx, dtype=batch.ids.dtype)
    for i, tokens in enumerate(real):
        if batch.padding_side == "right":
            ids[i, : len(tokens)] = tokens
        else:
            ids[i, width - len(tokens) :] = tokens
    lens = np.asarray([len(t) for t in real], dtype=np.int64)
    mask = _mask(lens, width, batch.padding_side)
    return dataclasses.replace(batch, ids=ids, mask=mask, lengths=lens, extra=0)


class Shrinker:
    """Search smaller batches on which ``target`` (a finding of the audit) still fails."""

    def __init__(
        self,
        handle: ModelHandle,
        opts: AuditOptions,
        target: Finding,
        test: str | None,
        rerun: Rerun,
    ) -> None:
        self.handle = handle
        self.rerun = rerun
        self.test = test
        self.target = target
        # the audit's own optimizer: each re-run builds a fresh copy of it, as the audit did
        self.opts = dataclasses.replace(opts, checks=(target.check,))
        self.runs = 0
        #: the optimizer the re-runs stepped (the update check's), for the report.
        self.stepped: str | None = None

    def fails(self, batch: PadBatch) -> bool:
        """Re-run the failing check on ``batch``; True when the same leak shows again."""
        self.runs += 1
        try:
            report = self.rerun(self.handle, self.opts, test=self.test, batch=batch)
        except Exception:  # e.g. a model that needs its own batch size: not a smaller failure
            return False
        self.stepped = report.optimizer or self.stepped
        same_layer = self.target.check == "invariance"
        return any(
            f.check == self.target.check and (same_layer or f.layer == self.target.layer)
            for f in report.leaks
        )

    def run(self, batch: PadBatch) -> dict[str, Any] | None:
        """Return the smallest failing batch as JSON primitives (None: nothing smaller)."""
        best = batch
        for candidate in self._candidates(batch):
            if self.runs >= BUDGET:
                break
            smaller = candidate(best)
            if _size(smaller) < _size(best) and self.fails(smaller):
                best = smaller
        if best is batch:
            return None
        real = int(best.lengths.sum())
        found = {
            "check": self.target.check,
            "layer": self.target.layer,
            "ids": best.ids.tolist(),
            "pad_idx": int(best.pad_idx),
            "padding_side": best.padding_side,
            "sequences": int(best.shape[0]),
            "real_tokens": real,
            "pads": int(best.ids.size) - real,
            "runs": self.runs,
            "optimizer": self.stepped,
            "from_shape": list(batch.shape),
        }
        snippet = getattr(self.handle, "snippet", None)  # the adapter's plain-framework lines
        found["snippet"] = snippet(found) if callable(snippet) else []
        return found

    def _candidates(self, batch: PadBatch) -> Iterator[Any]:
        """Yield functions best -> smaller batch, in the order hypothesis would try them."""
        lengths = batch.lengths.tolist()
        width = batch.shape[1]
        padded = sorted((n, r) for r, n in enumerate(lengths) if n < width)
        # fewest sequences: one padded row alone (shortest first), then the full row
        for r in [r for _, r in padded[:3]] + [0]:
            yield lambda b, r=r: cut(batch, [r], [lengths[r]], width) if b is batch else b
        if padded:  # a full row with the shortest padded one
            rows = [0, padded[0][1]]
            yield lambda b: cut(batch, rows, [lengths[r] for r in rows], width) if b is batch else b
        # fewest pads: the width of the longest kept row plus one pad column
        yield lambda b: cut(b, list(range(b.shape[0])), b.lengths.tolist(), _tight(b))
        # fewest real tokens: halve, then one token per row
        for _ in range(3):
            yield lambda b: _shorter(b, lambda n: max(1, n // 2))
        yield lambda b: _shorter(b, lambda n: 1)


def _tight(b: PadBatch) -> int:
    return int(b.lengths.max()) + 1


def _shorter(b: PadBatch, rule: Any) -> PadBatch:
    lengths = [rule(int(n)) for n in b.lengths]
    return cut(b, list(range(b.shape[0])), lengths, max(lengths) + 1)


def _size(b: PadBatch) -> tuple[int, int, int]:
    """Order batches as the search does: sequences, then real tokens, then pads."""
    real = int(b.lengths.sum())
    return (int(b.shape[0]), real, int(b.ids.size) - real)


def wider(smallest: Mapping[str, Any]) -> list[list[int]]:
    """Return a shrunk batch's ids with 4 more pad columns on its padding side."""
    pads = [smallest["pad_idx"]] * 4
    if smallest["padding_side"] == "right":
        return [row + pads for row in smallest["ids"]]
    return [pads + row for row in smallest["ids"]]
