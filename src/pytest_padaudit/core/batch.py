"""Synthetic padded batches and the seeded loss weights laid over a model's outputs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import cast

import numpy as np

from .errors import PadAuditError


@dataclass(frozen=True)
class PadBatch:
    """Token ids padded to a fixed width; ``mask`` is True at real tokens."""

    ids: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray
    pad_idx: int
    padding_side: str = "right"
    seed: int = 0
    #: pad columns added on the padding side by :meth:`extended` (0 for the audit batch).
    extra: int = 0
    #: the user's batch (``batch=`` a Mapping) as arrays by key, else None (ids only).
    inputs: Mapping[str, np.ndarray] | None = field(default=None, compare=False)
    #: ``inputs`` widened by n pad columns (pipeline.widened, or the user's ``widen=``).
    widener: Callable[[int], Mapping[str, np.ndarray]] | None = field(
        default=None, compare=False, repr=False
    )
    #: "synthetic", or "batch=" for the user's own batch.
    source: str = "synthetic"

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.ids.shape[0]), int(self.ids.shape[1]))

    @property
    def base_len(self) -> int:
        """Width of the batch before :meth:`extended` appended columns."""
        return self.shape[1] - self.extra

    def extended(self, columns: int) -> PadBatch:
        """Return the same sequences with ``columns`` more pad columns on the padding side."""
        batch = self.shape[0]
        pads = np.full((batch, columns), self.pad_idx, dtype=self.ids.dtype)
        none = np.zeros((batch, columns), dtype=bool)
        if self.padding_side == "right":
            ids, mask = np.hstack([self.ids, pads]), np.hstack([self.mask, none])
        else:
            ids, mask = np.hstack([pads, self.ids]), np.hstack([none, self.mask])
        extra = self.extra + columns
        if self.widener is None:
            return replace(self, ids=ids, mask=mask, extra=extra)
        inputs = self.widener(extra)
        wide = inputs.get("input_ids")
        if wide is None or wide.shape != ids.shape or not (wide == ids).all():
            got = "no input_ids" if wide is None else f"input_ids {list(wide.shape)}"
            raise PadAuditError(
                f"widen=(batch, {extra}) returned {got}: return the batch with {extra} more "
                f"pad columns ({self.pad_idx}) on the {self.padding_side}, shape {list(ids.shape)}"
            )
        return replace(self, ids=ids, mask=mask, extra=extra, inputs=inputs)

    def real_ids(self) -> np.ndarray:
        """Return the distinct token ids at real positions, sorted."""
        return np.unique(self.ids[self.mask])

    def reachable_rows(self, rows: int, pad: int) -> np.ndarray:
        """Rows of a ``rows``-row table a real token or a position can look up, ``pad`` left out.

        The invariance check compares only these rows of a table's gradient: O(tokens).
        """
        positions = np.arange(2 * self.base_len + 2)  # the same rows for every extension
        candidates = np.unique(np.concatenate([self.ids[self.mask], positions]))
        return candidates[(candidates < rows) & (candidates != pad)]

    @property
    def origin(self) -> str:
        """Say where the batch comes from, as messages name it."""
        return "the synthetic batch" if self.source == "synthetic" else "your batch="

    def describe(self) -> str:
        """Return a one-line description for failure messages."""
        b, t = self.shape
        keys = "" if self.inputs is None else f"keys {', '.join(self.inputs)}, "
        seed = "from batch=" if self.source != "synthetic" else f"seed {self.seed}"
        return (
            f"ids {self.ids.dtype}[{b}, {t}], {keys}lengths {self.lengths.tolist()}, "
            f"pad id {self.pad_idx}, {self.padding_side} padding, {seed}"
        )

    def to_dict(self) -> dict[str, object]:
        """Return the batch as JSON primitives (enough to rebuild it)."""
        return {
            "ids": self.ids.tolist(),
            "lengths": self.lengths.tolist(),
            "pad_idx": self.pad_idx,
            "padding_side": self.padding_side,
            "seed": self.seed,
        }


def make_batch(
    *,
    batch_size: int,
    seq_len: int,
    vocab_size: int,
    pad_idx: int,
    pad_ids: Sequence[int] = (),
    seed: int = 0,
    padding_side: str = "right",
) -> PadBatch:
    """Draw ``batch_size`` sequences padded to exactly ``seq_len`` columns.

    Row 0 is full length and row 1 is padded; the other lengths are uniform in
    ``[1, seq_len]``. Real tokens are uniform over the vocabulary minus every pad id.
    """
    excluded = sorted({p for p in (pad_idx, *pad_ids) if 0 <= p < vocab_size})
    usable = vocab_size - len(excluded)
    if usable <= 0:
        raise PadAuditError(
            f"the vocabulary of {vocab_size} ids holds nothing but pad ids {excluded}: "
            "pass vocab_size= larger than the pad ids"
        )
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, seq_len + 1, size=batch_size)
    lengths[0] = seq_len
    lengths[1] = rng.integers(1, seq_len)
    tokens = rng.integers(0, usable, size=(batch_size, seq_len))
    for pad in excluded:  # shift draws past each pad id, in increasing order
        tokens[tokens >= pad] += 1
    columns = np.arange(seq_len)
    if padding_side == "right":
        mask = columns[None, :] < lengths[:, None]
    else:
        mask = columns[None, :] >= (seq_len - lengths)[:, None]
    ids = np.where(mask, tokens, pad_idx).astype(np.int64)
    return PadBatch(ids, mask, lengths.astype(np.int64), pad_idx, padding_side, seed)


class LossPlan:
    """Seeded weights in [0.5, 1.5) for each floating-point output of a model.

    ``mode`` is ``"all"`` (every element), ``"masked"`` (pad-aligned positions of outputs
    whose leading dims are the batch's shape get weight 0) or ``"real"`` (the invariance
    check: weights are drawn for the base batch's shape and laid at the real positions
    along every sequence axis, zero at pad positions, so a batch with extra pad columns
    sees exactly the same weights where tokens are real).

    In ``"real"`` mode the sequence axes of output ``index`` are ``axes[index]`` when given
    (the engine decides them by comparing two runs), else the axes that grew by
    ``batch.extra`` since ``base[index]`` (the shape in the base batch's run), else a
    guess (:func:`guess_axes`);
    :attr:`shapes` and :attr:`used` record what each output looked like and was given.
    """

    def __init__(
        self,
        batch: PadBatch,
        mode: str,
        seed: int,
        only: frozenset[int] | None = None,
        axes: dict[int, tuple[int, ...]] | None = None,
        base: dict[int, tuple[int, ...]] | None = None,
    ) -> None:
        self.batch = batch
        self.mode = mode
        self.seed = seed
        #: outputs allowed to count as per-token (None: any whose shape fits).
        self.only = only
        #: the outputs :meth:`weights` treated as per-token.
        self.per_token: set[int] = set()
        #: ``"real"`` mode: the sequence axes of each output, decided by the engine.
        self.axes = axes
        #: ``"real"`` mode, an extended batch: each output's shape in the base batch's run
        #: (the axes that grew by ``batch.extra`` since are the sequence axes).
        self.base = base
        #: ``"real"`` mode: each output's shape and the sequence axes its weights used.
        self.shapes: dict[int, tuple[int, ...]] = {}
        self.used: dict[int, tuple[int, ...]] = {}

    def aligned(self, shape: Sequence[int], index: int | None = None) -> bool:
        """Say whether output ``index`` of ``shape`` has one entry per token position."""
        fits = len(shape) >= 2 and tuple(shape[:2]) == self.batch.shape
        return fits and (self.only is None or index is None or index in self.only)

    def weights(
        self, index: int, shape: Sequence[int], mask: np.ndarray | None = None
    ) -> np.ndarray:
        """Return float32 weights for output number ``index`` of ``shape``.

        ``mask`` (batch, seq) is an extra mask the framework attached to the output.
        """
        shape = tuple(int(s) for s in shape)
        rng = np.random.default_rng([self.seed, 7919, index])
        if self.mode == "real":
            return self._real_weights(index, shape, mask, rng)
        if not self.aligned(shape, index) or self.mode == "all":
            return rng.random(shape, dtype=np.float32) + np.float32(0.5)
        self.per_token.add(index)
        keep = self.batch.mask if mask is None else (self.batch.mask & mask.astype(bool))
        base = rng.random(shape, dtype=np.float32) + np.float32(0.5)
        return base * keep.reshape(keep.shape + (1,) * (len(shape) - 2))

    def _real_weights(
        self,
        index: int,
        shape: tuple[int, ...],
        mask: np.ndarray | None,
        rng: np.random.Generator,
    ) -> np.ndarray:
        b = self.batch
        given = (self.axes or {}).get(index)
        before = (self.base or {}).get(index)
        if given is None and before is not None:
            given = grown(before, shape, b.extra)
        if given is None or any(s >= len(shape) or shape[s] < b.extra for s in given):
            given = guess_axes(b, shape)
        axes = tuple(given)
        self.shapes[index], self.used[index] = shape, axes
        if axes:
            self.per_token.add(index)
        base_shape = tuple(n - b.extra if i in axes else n for i, n in enumerate(shape))
        base = rng.random(base_shape, dtype=np.float32) + np.float32(0.5)
        full = np.zeros(shape, dtype=np.float32)
        full[base_region(b, len(shape), axes)] = base
        keep = real_positions(b, shape, axes)
        if mask is not None and axes[:1] == (1,) and tuple(mask.shape) == b.shape:
            keep = keep & mask.astype(bool).reshape(b.shape + (1,) * (len(shape) - 2))
        return full * keep


def grown(before: Sequence[int], after: Sequence[int], extra: int) -> tuple[int, ...] | None:
    """Return the axes that grew by exactly ``extra`` (the sequence axes), or None when
    the shapes are not comparable (other rank, or an axis changed by anything else)."""
    if len(before) != len(after):
        return None
    grow = [int(n) - int(m) for m, n in zip(before, after, strict=True)]
    if any(d not in (0, extra) for d in grow):
        return None
    return tuple(i for i, d in enumerate(grow) if d and d == extra)


def guess_axes(batch: PadBatch, shape: Sequence[int]) -> tuple[int, ...]:
    """Guess the sequence axes of an output: the axes as long as the batch is wide.

    Only a first guess: the engine decides by comparing two widths (an axis that grows
    by the extra pad columns is a sequence axis). Axis 0 counts only when the batch size
    differs from the width. Where no second width exists, a wrong guess only leaves
    positions out of the comparison (never adds pad positions to it).
    """
    rows, width = batch.shape
    return tuple(i for i, n in enumerate(shape) if n == width and not (i == 0 and n == rows))


def batch_axis(batch: PadBatch, shape: Sequence[int], axes: Sequence[int]) -> int | None:
    """Return the axis holding the batch rows: 0, else the first other one of that size."""
    rows = batch.shape[0]
    for i, n in enumerate(shape):
        if i not in axes and n == rows:
            return i
    return None


def base_region(batch: PadBatch, ndim: int, axes: Sequence[int]) -> tuple[slice, ...]:
    """Return the slices that pick the base batch's columns along each sequence axis."""
    if batch.padding_side == "right":
        cut = slice(0, -batch.extra or None)
    else:
        cut = slice(batch.extra, None)
    return tuple(cut if i in axes else slice(None) for i in range(ndim))


def real_positions(batch: PadBatch, shape: Sequence[int], axes: Sequence[int]) -> np.ndarray:
    """Return a boolean array (broadcastable to ``shape``): True where every sequence
    axis sits at a real token of its batch row (the row along :func:`batch_axis`; without
    one, a column real in some row).

    A sequence axis longer or shorter than the batch (a prepended [CLS] slot) has no
    token to line up with: only the extra columns of an extension are left out on it.
    """
    ndim, width = len(shape), batch.shape[1]
    keep = np.ones((1,) * ndim, dtype=bool)
    rows = batch_axis(batch, shape, axes)
    for s in axes:
        if shape[s] != width:
            m: np.ndarray = np.zeros(shape[s], dtype=bool)
            m[base_region(batch, 1, (0,))[0]] = True
            dims: tuple[int, ...] = (s,)
        elif rows is None:
            m, dims = cast(np.ndarray, batch.mask.any(0)), (s,)
        else:
            m, dims = (batch.mask, (rows, s)) if rows < s else (batch.mask.T, (s, rows))
        at = [1] * ndim
        for d in dims:
            at[d] = shape[d]
        keep = keep & m.reshape(at)
    return keep
