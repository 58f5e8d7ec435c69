"""The contract between the engine and a framework adapter.

An adapter turns a model into a :class:`ModelHandle`; the engine drives the handle and
decides the verdict. Handles speak NumPy at this boundary (pad rows, reduced gradients),
never framework tensors, so the engine stays framework-free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from .batch import LossPlan, PadBatch
    from .options import AuditOptions


@dataclass(frozen=True)
class Table:
    """An embedding table found in the model."""

    path: str
    rows: int
    dim: int
    kind: str
    #: the pad id audited (the layer's own, else ``pad_idx=``); None: not audited.
    pad_idx: int | None
    #: True when the pad id comes from the layer (``padding_idx``, ``mask_zero``).
    own_pad: bool
    trainable: bool = True
    tied_with: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class OptimizerInfo:
    """The optimizer an update check steps with, described for failure messages."""

    name: str
    weight_decay: float = 0.0
    state: Any = None


@dataclass
class Trace:
    """Module inputs and outputs, in the order the modules finished.

    Each entry is ``(path, inputs, outputs)`` with every floating array FULL (pad positions
    included); the engine finds the sequence axes by comparing two traces and cuts the
    real positions itself. ``owner`` names the model for messages.
    """

    owner: str = "model"
    entries: list[tuple[str, list[np.ndarray], list[np.ndarray]]] = field(default_factory=list)


def output_leaves(output: Any, is_leaf: Callable[[Any], bool], depth: int = 0) -> Iterator[Any]:
    """Yield the leaves of a (nested) model output: mappings, tuples, lists, dataclasses."""
    if depth > 8:
        return
    if is_leaf(output):
        yield output
    elif isinstance(output, Mapping):
        for value in output.values():
            yield from output_leaves(value, is_leaf, depth + 1)
    elif isinstance(output, (tuple, list)):
        for value in output:
            yield from output_leaves(value, is_leaf, depth + 1)
    elif dataclasses.is_dataclass(output) and not isinstance(output, type):
        for f in dataclasses.fields(output):
            yield from output_leaves(getattr(output, f.name), is_leaf, depth + 1)


@runtime_checkable
class ModelHandle(Protocol):
    """One model under audit, as a framework adapter sees it."""

    framework: str
    model_class: str

    def tables(self, pad_idx: int | None) -> list[Table]:
        """List every embedding table, resolving each one's pad id."""

    def default_vocab_size(self) -> int | None:
        """Return the model's vocabulary size when it declares one (else None)."""

    def preserve(self, seed: int) -> AbstractContextManager[None]:
        """Snapshot all state the audit may touch; restore it bitwise on exit, always."""

    def read_pad_rows(self, tables: Sequence[Table]) -> dict[str, np.ndarray]:
        """Return each table's pad row as it is now."""

    def train_pass(
        self, batch: PadBatch, plan: LossPlan, tables: Sequence[Table]
    ) -> dict[str, np.ndarray | None]:
        """Run forward and backward in training mode; return each pad row's gradient."""

    def make_optimizer(self, tables: Sequence[Table], spec: Any) -> OptimizerInfo:
        """Build a fresh optimizer over the tables' weights from ``optimizer=``."""

    def step(self, optimizer: OptimizerInfo) -> None:
        """Apply one optimizer step with the gradients of the last :meth:`train_pass`."""

    def invariance_pass(
        self,
        batch: PadBatch,
        plan: LossPlan,
        tables: Sequence[Table],
        perturb: int | None = None,
    ) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        """Run forward and backward without train-only randomness.

        The loss is the sum of each floating output times ``plan.weights(index, shape)``
        (the plan lays the weights at real positions along the sequence axes). Return
        every parameter's gradient (tables: the rows ``batch.reachable_rows`` names) and
        every floating output FULL, in ``output_leaves`` order: the engine cuts the real
        positions. ``perturb``: replace the vectors the token tables emit at pad positions
        with seeded noise (seed ``perturb``) of the table's scale; raise PadAuditError
        when no table emitted one. Adapters without ``perturb`` still work: a model that
        cannot take the wider batch then gets a ``not_checked`` finding.
        """

    def trace(self, batch: PadBatch, perturb: int | None = None) -> Trace:
        """Run a forward pass recording each module's FULL inputs and outputs.

        ``perturb`` as in :meth:`invariance_pass` (optional for adapters: without it a
        perturbation-measured leak is reported without a module name).
        """

    def reset(self) -> None:
        """Inside preserve(), put parameters, buffers and tables back as preserve() found
        them (what its exit restores, minus RNG and modes), so every check measures the
        user's model; the engine calls it between the train checks and invariance.
        Optional for third-party adapters."""

    def explain(
        self, cause: str, table: Table | None, options: AuditOptions, info: Any = None
    ) -> tuple[str, str, str]:
        """Return (cause code, likely cause, fix) in the framework's words.

        ``cause`` is the event the engine saw: ``grad`` (the pad row has gradient),
        ``nonfinite``, ``forward`` (the forward pass moved the pad row; ``info`` the
        change), ``optimizer`` (it moved a row whose gradient is zero; ``info`` the
        :class:`OptimizerInfo`) or ``invariance`` (``info`` the first module whose outputs
        differ, or None).
        """
