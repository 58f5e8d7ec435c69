"""The user's own padded batch: read it, check it, and widen it with pad columns.

A batch reaches the core as NumPy arrays, one per key (the adapters convert tensors).
Pad positions are where ``attention_mask`` is 0, else where ``input_ids`` equal the pad id.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import capabilities
from .batch import PadBatch
from .errors import PadAuditError
from .invariance import check_invariance
from .result import Finding

if TYPE_CHECKING:
    from .handle import ModelHandle
    from .options import AuditOptions

IDS = "input_ids"
MASK = "attention_mask"
#: the label value a loss skips (torch's CrossEntropyLoss ignore_index, Hugging Face's collators).
IGNORE_INDEX = -100
#: what a per-position key holds at a pad position (None: the pad id).
PAD_VALUES: dict[str, int | None] = {
    IDS: None,
    MASK: 0,
    "labels": IGNORE_INDEX,
    "token_type_ids": 0,
    "special_tokens_mask": 1,
    # Keras fit's (x, y, sample_weight): a pad column gets class 0 and weight 0
    "y": 0,
    "sample_weight": 0,
}
#: a callable(inputs, n) -> inputs that widens a batch by n pad columns (``widen=``).
Widen = Callable[[Mapping[str, np.ndarray], int], Mapping[str, np.ndarray]]
#: how many positions a finding lists.
_SHOWN = 6


@dataclass(frozen=True)
class UserBatch:
    """The arrays of the user's batch, its pad positions and its padding side."""

    inputs: Mapping[str, np.ndarray]
    #: True at real tokens.
    mask: np.ndarray
    padding_side: str

    @property
    def ids(self) -> np.ndarray:
        return self.inputs[IDS]


def user_pad_batch(handle: ModelHandle, opts: AuditOptions, pad: int) -> PadBatch:
    """Build the audit's batch from ``batch=``, checked before any pass."""
    if not capabilities(handle).user_batch:
        raise PadAuditError(
            f"batch= is not supported for {handle.framework} models yet: drop batch= to "
            "audit with a synthetic batch"
        )
    read: Callable[[Any], dict[str, np.ndarray]] = handle.batch_arrays  # type: ignore[attr-defined]
    arrays = read(opts.batch)
    keyed = isinstance(opts.batch, Mapping) or set(arrays) != {IDS}  # more than bare ids
    user = read_batch(arrays, pad, opts.widen if keyed else None)
    if not keyed:
        widener = None
    elif opts.widen is not None:
        widen = opts.widen
        widener = lambda n: read(widen(opts.batch, n))  # noqa: E731
    else:
        widener = lambda n: widened(user, n, pad)  # noqa: E731
    return PadBatch(
        user.ids,
        user.mask,
        user.mask.sum(axis=1).astype(np.int64),
        pad,
        user.padding_side,
        opts.seed,
        inputs=user.inputs if keyed else None,
        widener=widener,
        source="batch=",
    )


def read_batch(inputs: Mapping[str, np.ndarray], pad_idx: int, widen: Widen | None) -> UserBatch:
    """Check the user's batch once, before any pass; return it with its pad positions."""
    if IDS not in inputs:
        raise PadAuditError(
            f"batch= has keys {sorted(inputs)} but no {IDS!r}: pass the dict the model "
            "takes with input_ids (and attention_mask), e.g. tokenizer(texts, padding=True, "
            "return_tensors='pt'), or a tensor of ids"
        )
    ids = inputs[IDS]
    if ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise PadAuditError(
            f"batch= input_ids are {ids.dtype}{list(ids.shape)}: pass integer ids of shape "
            "(batch, sequence)"
        )
    mask = _mask(inputs, pad_idx)
    if mask.all():
        raise PadAuditError(
            f"batch= holds no pad position (no attention_mask 0 and no id {pad_idx} in "
            f"input_ids {list(ids.shape)}), so it cannot show padding reaching the weights: "
            "pass a batch of texts of different lengths padded to one width, e.g. "
            "tokenizer(texts, padding='longest')"
        )
    if not mask.any(axis=1).all():
        raise PadAuditError(
            "batch= has a row with no real token (attention_mask all 0): pass rows that "
            "each hold at least one token"
        )
    if widen is None:
        unknown = [k for k in per_position(inputs) if k not in PAD_VALUES]
        if unknown:
            raise PadAuditError(
                f"batch= key {unknown[0]!r} has one value per position, and padaudit does not "
                "know its pad value, so it cannot widen the batch for the invariance check: "
                "pass widen=callable(batch, n) that returns the batch with n more pad columns"
            )
    return UserBatch(inputs, mask, _side(mask))


def per_position(inputs: Mapping[str, np.ndarray]) -> list[str]:
    """Return the keys holding one value per position of ``input_ids`` (its first 2 dims)."""
    shape = inputs[IDS].shape
    return [k for k, v in inputs.items() if v.ndim >= 2 and v.shape[:2] == shape]


def _mask(inputs: Mapping[str, np.ndarray], pad_idx: int) -> np.ndarray:
    ids = inputs[IDS]
    if MASK not in inputs:
        return ids != pad_idx
    mask = inputs[MASK]
    if mask.shape != ids.shape:
        raise PadAuditError(
            f"batch= attention_mask has shape {list(mask.shape)} but input_ids "
            f"{list(ids.shape)}: pass a mask with one 0/1 entry per id"
        )
    return mask.astype(bool)


def _side(mask: np.ndarray) -> str:
    """Say which side holds the pad columns: left when a row starts with a pad, else right."""
    left = (~mask[:, 0]) & mask[:, -1]
    return "left" if left.any() else "right"


def widened(batch: UserBatch, columns: int, pad_idx: int) -> dict[str, np.ndarray]:
    """Return the batch's arrays with ``columns`` pad columns more on its padding side."""
    out = dict(batch.inputs)
    for key in per_position(batch.inputs):
        value = batch.inputs[key]
        fill = PAD_VALUES[key]
        pads = np.full(
            (value.shape[0], columns, *value.shape[2:]),
            pad_idx if fill is None else fill,
            dtype=value.dtype,
        )
        parts = [value, pads] if batch.padding_side == "right" else [pads, value]
        out[key] = np.concatenate(parts, axis=1)
    return out


def data_findings(
    inputs: Mapping[str, np.ndarray], pad_idx: int, layer: str, words: Mapping[str, str]
) -> list[Finding]:
    """Check the batch's data: pad ids that are not the model's, labels that train on pads.

    ``words`` holds each cause's fix in the user's framework (keys ``pad_mismatch`` and
    ``labels_at_pads``).
    """
    pads = ~_mask(inputs, pad_idx)
    found = []
    if MASK in inputs:  # without a mask, pad positions are where the ids equal the pad id
        wrong = pads & (inputs[IDS] != pad_idx)
        what = f"(attention_mask 0) hold id {_values(inputs[IDS], wrong)}, not the model's pad id"
        why = (
            "the tokenizer or collator pads with another id than the model's, so the row it "
            "pads with trains and the model's pad row never shows up"
        )
        found += _found("pad_mismatch", wrong, f"{what} {pad_idx}", why, layer, pad_idx, words)
    labels = inputs.get("labels")
    if labels is not None and labels.shape == inputs[IDS].shape:
        trained = pads & (labels != IGNORE_INDEX)
        what = f"have labels {_values(labels, trained)}, not the ignore index {IGNORE_INDEX}"
        why = "the labels are padded with a real class id, so the loss trains on pad positions"
        found += _found("labels_at_pads", trained, what, why, layer, pad_idx, words)
    return found


def _found(
    cause: str,
    where: np.ndarray,
    what: str,
    why: str,
    layer: str,
    pad_idx: int,
    words: Mapping[str, str],
) -> list[Finding]:
    """Return the batch finding ``cause`` when ``where`` holds a position, else nothing."""
    count = int(where.sum())
    if not count:
        return []
    message = f"{count} pad positions {what}, at (row, column) {_positions(where)}"
    return [Finding("pipeline", layer, pad_idx, float(count), cause, message, why, words[cause])]


def _values(array: np.ndarray, where: np.ndarray) -> str:
    """Return the distinct values of ``array`` at ``where``, the first few."""
    return ", ".join(map(str, sorted({int(v) for v in array[where]})[:_SHOWN]))


def _positions(where: np.ndarray) -> str:
    rows, cols = np.nonzero(where)
    shown = ", ".join(f"({r}, {c})" for r, c in list(zip(rows, cols, strict=True))[:_SHOWN])
    more = len(rows) - _SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


#: fixes for handles that name none in their framework's idiom.
GENERIC_FIXES = {
    "pad_mismatch": "pad input_ids with the model's pad id (the tokenizer's pad token)",
    "labels_at_pads": f"set the labels at pad positions to the ignore index {IGNORE_INDEX}",
    "step": "make the step= loss skip pad positions, and pass it every key of the batch",
}


def blame_the_step(
    handle: ModelHandle, batch: PadBatch, tables: list[Any], opts: AuditOptions, report: Any
) -> None:
    """When invariance fails under ``step=``, rerun it with the model's own call.

    If the model, fed the whole batch (its mask too), is invariant, the step is where pads
    reach the real positions: the finding says so.
    """
    found = [f for f in report.findings if f.check == "invariance" and f.cause == "invariance"]
    if not found or not hasattr(handle, "options"):
        return
    scratch = replace(report, findings=[], notes=[])
    own = handle.options
    handle.options = replace(own, step=None)
    try:
        check_invariance(handle, batch, tables, handle.options, scratch)
    except PadAuditError:
        return
    finally:
        handle.options = own
    if any(f.check == "invariance" and not f.allowed for f in scratch.findings):
        return
    fix = (capabilities(handle).pipeline_fixes or GENERIC_FIXES).get("step")
    for finding in found:
        finding.why = (
            "your step= lets pad positions reach the real ones: the model itself, called "
            "with the whole batch (its mask too), is invariant on the same batch; the step "
            "drops what masks the pads, or its loss counts them"
        )
        finding.fix = fix or GENERIC_FIXES["step"]
