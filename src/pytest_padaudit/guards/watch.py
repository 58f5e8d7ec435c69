"""Watch pad rows during real training: the framework-free part every guard shares.

A guard records the token tables' pad rows when training starts and compares them after
every N optimizer steps. Its cost is reading the pad rows (no forward pass, no table copy).
The framework guards (transformers, keras, lightning) feed it steps, gradients and batches.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.engine import adapt
from ..core.errors import PadAuditError, PadLeakError
from ..core.handle import ModelHandle, Table
from ..core.options import AuditOptions
from ..core.pipeline import data_findings
from ..core.result import Finding
from ..core.tables import likely_token_table

ON_LEAK = ("raise", "warn")


class PadLeakWarning(UserWarning):
    """A guard saw padding leak during training and was told ``on_leak="warn"``."""

    __module__ = "pytest_padaudit.guards"


@dataclass(frozen=True)
class OptimizerSeen:
    """What a guard learnt about the optimizer that steps one table."""

    name: str
    #: the weight decay applied to the table (0.0: none, or the table is excluded).
    weight_decay: float = 0.0
    #: True when the optimizer keeps per-row state (momentum, Adam's moments).
    stateful: bool = False


#: (cause, table, optimizer or None, the pad row at training start) -> (why, fix).
Explain = Callable[[str, Table, "OptimizerSeen | None", np.ndarray], tuple[str, str]]


def check_every(value: object, guard: str, name: str) -> int:
    """Return ``value`` as a positive step count; refuse anything else, saying what fits."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise PadAuditError(
            f"{guard}({name}={value!r}): pass {name}= a positive int, the number of "
            f"optimizer steps between two checks of the pad rows (e.g. {name}=1 checks after "
            f"every step, {name}=100 every 100th)"
        )
    return int(value)


def check_on_leak(value: object, guard: str) -> str:
    if value not in ON_LEAK:
        raise PadAuditError(
            f"{guard}(on_leak={value!r}): pass on_leak='raise' (stop training with "
            "PadLeakError) or on_leak='warn' (warn with PadLeakWarning and train on)"
        )
    return str(value)


def check_pad_idx(value: object, guard: str) -> int | Mapping[str, int] | None:
    ok = value is None or (isinstance(value, int) and not isinstance(value, bool))
    if isinstance(value, Mapping):
        ok = all(isinstance(k, str) and isinstance(v, int) for k, v in value.items())
    if not ok:
        raise PadAuditError(
            f"{guard}(pad_idx={value!r}): pass pad_idx= the int your data pads with, or "
            "{table path: id} for each table, e.g. pad_idx={'embeddings.word': 0}"
        )
    return value  # type: ignore[return-value]


class PadWatch:
    """The pad rows of one model's token tables, their baseline, and the verdicts."""

    def __init__(
        self,
        guard: str,
        every: int,
        on_leak: str,
        pad_idx: int | Mapping[str, int] | None,
        explain: Explain,
        pipeline_words: Mapping[str, str],
        atol: float = 0.0,
    ) -> None:
        self.guard = guard
        self.every = every
        self.on_leak = on_leak
        self.pad_idx = pad_idx
        self.explain = explain
        self.pipeline_words = pipeline_words
        self.atol = float(atol)
        self.handle: ModelHandle | None = None
        self.tables: list[Table] = []
        self.start_rows: dict[str, np.ndarray] = {}
        self.last_checked = 0
        #: the tables already reported (a warned leak is not repeated every check).
        self.reported: set[str] = set()
        self.batch_checked = False

    # -- start -----------------------------------------------------------------------
    def start(self, model: Any) -> list[Table]:
        """Find the token tables with a pad row and record those rows; return the tables."""
        options = AuditOptions.from_kwargs(pad_idx=self.pad_idx)
        self.handle = adapt(model, options)
        tables = self.handle.tables(options.pad_idx)
        self.tables = watched(self.handle, tables, options, self.guard)
        self.start_rows = self.handle.read_pad_rows(self.tables)
        self.last_checked = 0
        self.reported = set()
        self.batch_checked = False
        return self.tables

    def due(self, step: int) -> bool:
        """Say whether optimizer step ``step`` (1-based) is one to check after."""
        return step > self.last_checked and step % self.every == 0

    # -- verdicts --------------------------------------------------------------------
    def check(
        self,
        step: int,
        grads: Mapping[str, float | None] | None = None,
        optimizers: Mapping[str, OptimizerSeen | None] | None = None,
    ) -> None:
        """Compare the pad rows with their start; raise or warn naming each moved table.

        ``grads``: per table, the largest |gradient| its pad row got since the last check
        (None: the framework does not say). ``optimizers``: per table, what steps it.
        """
        if self.handle is None:
            return
        self.last_checked = step
        now = self.handle.read_pad_rows(self.tables)
        blocks = []
        for t in self.tables:
            before, after = self.start_rows[t.path], now[t.path]
            delta = float(np.max(np.abs(after - before))) if before.size else 0.0
            if delta <= self.atol or t.path in self.reported:
                continue
            self.reported.add(t.path)
            grad = (grads or {}).get(t.path)
            optimizer = (optimizers or {}).get(t.path)
            blocks.append(self._leak_lines(t, step, delta, before, after, grad, optimizer))
        if blocks:
            self._leak("\n".join(line for block in blocks for line in block))

    def _leak_lines(
        self,
        t: Table,
        step: int,
        delta: float,
        before: np.ndarray,
        after: np.ndarray,
        grad: float | None,
        optimizer: OptimizerSeen | None,
    ) -> list[str]:
        lines = [
            f"{self.guard}: the pad row of {t.path} (pad id {t.pad_idx}) changed during "
            f"training: max|Δ| {delta:.3g} between the start of training and optimizer step "
            f"{step} (checked every {self.every} step{'s' if self.every > 1 else ''})"
        ]
        for cause in likely_causes(before, after, grad, optimizer):
            why, fix = self.explain(cause, t, optimizer, before)
            lines.append(f"likely cause for {t.path} pad id {t.pad_idx} ({cause}): {why}")
            lines.append(f"fix for {t.path} ({cause}): {fix}")
        return lines

    def check_batch(self, inputs: Mapping[str, Any]) -> list[Finding]:
        """Run the pipeline checks on the first real batch (NumPy arrays by key), once."""
        if self.batch_checked or not self.tables:
            return []
        self.batch_checked = True
        if "input_ids" not in inputs:
            return []
        table = self.tables[0]
        arrays = {k: v for k, v in inputs.items() if isinstance(v, np.ndarray)}
        found = data_findings(arrays, int(table.pad_idx or 0), table.path, self.pipeline_words)
        if found:
            lines = []
            for f in found:
                where = f"{f.cause}, first training batch, pad id {f.pad_idx} of {f.layer}"
                lines.append(f"{self.guard}: in the first training batch, {f.message} ({where})")
                lines.append(f"why ({where}): {f.why}")
                lines.append(f"fix ({where}): {f.fix}")
            self._leak("\n".join(lines))
        return found

    def _leak(self, message: str) -> None:
        if self.on_leak == "warn":
            warnings.warn(message, PadLeakWarning, stacklevel=3)
            return
        raise PadLeakError(message)


def watched(
    handle: ModelHandle, tables: list[Table], options: AuditOptions, guard: str
) -> list[Table]:
    """Return the token tables to watch, without a forward pass; refuse a model with none.

    A pad id of a table's own, or a ``{path: id}`` entry, names its table. An int
    ``pad_idx=`` goes to the model's input table (transformers ``get_input_embeddings()``),
    else to the tables with a pad id of their own, else to the largest table.
    """
    given = options.pad_idx
    found = [t for t in tables if t.pad_idx is not None]
    if isinstance(given, Mapping):
        paths = {t.path for t in tables}
        unknown = sorted(set(given) - paths)
        if unknown:
            raise PadAuditError(
                f"{guard}(pad_idx=...) names {', '.join(map(repr, unknown))}, which is not an "
                f"embedding table of {handle.model_class}: use paths from "
                f"{', '.join(sorted(paths))}"
            )
        found = [t for t in found if t.path in given]
    elif given is not None and found:
        own = [t for t in found if t.own_pad_idx is not None or t.own_pad]
        hint = getattr(handle, "input_table", None)
        path = hint() if callable(hint) else None
        found = [t for t in found if t.path == path] or own or [likely_token_table(handle, found)]
    if not found:
        names = ", ".join(f"{t.path} ({t.kind}, {t.rows} rows)" for t in tables) or "none"
        raise PadAuditError(
            f"{guard} found no embedding table with a pad row in {handle.model_class} "
            f"(tables: {names}): pass pad_idx= the id your data pads with, e.g. "
            f"{guard}(pad_idx=0), or {{table path: id}}; or give the layer its own pad id "
            "(padding_idx= in PyTorch, mask_zero=True in Keras)"
        )
    for t in found:
        if not 0 <= int(t.pad_idx or 0) < t.rows:
            raise PadAuditError(
                f"{guard}: pad id {t.pad_idx} is out of range for {t.path}, which has "
                f"{t.rows} rows: pass pad_idx= between 0 and {t.rows - 1}"
            )
    return found


def likely_causes(
    before: np.ndarray, after: np.ndarray, grad: float | None, optimizer: OptimizerSeen | None
) -> list[str]:
    """Name why a pad row moved: ``lookup`` (it had gradient), ``weight_decay``, ``momentum``.

    ``grad`` None (the framework hides gradients): a pure shrink toward zero under weight
    decay is weight decay; any other move needed gradient at some step, so ``lookup``.
    """
    decays = optimizer is not None and optimizer.weight_decay > 0 and bool(np.any(before))
    if grad is not None and grad > 0:
        return ["lookup", "weight_decay"] if decays else ["lookup"]
    if decays and shrunk(before, after):
        return ["weight_decay"]
    if grad is not None:  # zero gradient all along, yet it moved
        return ["weight_decay", "momentum"] if decays else ["momentum"]
    return ["weight_decay", "lookup"] if decays else ["lookup"]


def shrunk(before: np.ndarray, after: np.ndarray) -> bool:
    """Say whether ``after`` is ``before`` scaled by one factor in (0, 1): weight decay alone."""
    norm = float(np.dot(before, before))
    if norm == 0.0:
        return False
    scale = float(np.dot(after, before)) / norm
    rest = float(np.max(np.abs(after - scale * before)))
    return 0.0 < scale < 1.0 and rest <= 1e-5 * float(np.max(np.abs(before))) + 1e-8
