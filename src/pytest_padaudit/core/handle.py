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
    from typing import TypeAlias

    import numpy as np

    from .batch import LossPlan, PadBatch
    from .options import AuditOptions

    #: what ``invariance_pass`` returns: every parameter's gradient (tables: the reachable
    #: rows) and every floating output, FULL.
    InvarianceRun: TypeAlias = tuple[dict[str, np.ndarray], list[np.ndarray]]


#: the path that names the model itself (its root module/layer), in every framework.
ROOT = "(model)"


@dataclass(frozen=True)
class Table:
    """An embedding table found in the model."""

    path: str
    rows: int
    dim: int
    kind: str
    #: the id the batch pads with for this table: ``pad_idx=`` (an int, or this path's entry
    #: of a mapping) when given, else :attr:`own_pad_idx`; None: no pad id known. A negative
    #: ``pad_idx=`` is normalised (+ rows) only when that lands in range; else kept as written.
    pad_idx: int | None
    #: True when the layer itself keeps the pad row out of training (``padding_idx``,
    #: ``mask_zero``).
    own_pad: bool
    trainable: bool = True
    #: modules other than embedding tables sharing the weight (an LM head: tied weights).
    tied_with: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    #: the model's own pad id for this table: torch ``padding_idx`` normalised >= 0 (else,
    #: for a transformers input embedding, ``config.pad_token_id``); Keras ``mask_zero`` -> 0.
    #: When not None and different from :attr:`pad_idx`, the engine reports ``pad_mismatch``
    #: naming both ids: the data pads with ``pad_idx``, so that row trains.
    own_pad_idx: int | None = None
    #: set by the engine after :meth:`ModelHandle.lookups`: True when the table is looked up
    #: with the batch's token ids (only such a table has a pad row); None: not known.
    token: bool | None = None


@dataclass(frozen=True)
class OptimizerInfo:
    """The optimizer an update check steps with, described for failure messages."""

    name: str
    weight_decay: float = 0.0
    state: Any = None
    #: where it came from when ``optimizer=`` was not given and the model carries one
    #: (e.g. "model.optimizer"); None: the user's ``optimizer=`` or the audit's default.
    origin: str | None = None
    #: a line for the report's notes (e.g. why the model's own optimizer was not used).
    note: str | None = None


@dataclass(frozen=True)
class CheckpointWords:
    """What ``audit_checkpoint`` says about a framework's saved pad rows, in its idiom.

    ``zero_fix`` is formatted with ``key`` (the saved name) and ``pad`` (the pad id).
    """

    #: the expectations without ``expect=`` or ``baseline=``.
    default_expect: tuple[str, ...]
    zero_fix: str
    nonzero_why: str
    #: the fix of a non-zero pad row, formatted with ``zero`` (``zero_fix`` formatted).
    nonzero_fix: str
    changed_why: str
    changed_fix: str
    #: a note added when only finiteness is checked, else None.
    finite_note: str | None = None


@dataclass
class Trace:
    """Module inputs and outputs, in the order the modules finished.

    Each entry is ``(path, inputs, outputs)`` with every floating array FULL (pad positions
    included); the engine finds the sequence axes by comparing two traces and cuts the
    real positions itself. ``owner`` names the model for messages.
    """

    owner: str = "model"
    entries: list[tuple[str, list[np.ndarray], list[np.ndarray]]] = field(default_factory=list)


def pad_for(pad_idx: int | Mapping[str, int] | None, path: str) -> int | None:
    """Return the ``pad_idx=`` that applies to table ``path``: the int, or its mapping entry."""
    if isinstance(pad_idx, Mapping):
        return pad_idx.get(path)
    return pad_idx


def pad_source(options: AuditOptions, pad: int | None) -> str:
    """Say where the data's pad id came from, for messages: ``pad_idx=3`` or the tokenizer."""
    if getattr(options, "tokenizer", None) is not None:
        return f"tokenizer.pad_token_id={pad}"
    return f"pad_idx={pad}"


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
    """One model under audit, as a framework adapter sees it.

    The built-in adapters subclass :class:`~.base.BaseHandle`, which implements this
    protocol and declares the optional members below as class attributes; a third-party
    handle may implement the protocol directly, and :func:`~.base.capabilities` probes it.
    Optional: ``input_table() -> str | None``, the path of the table the model's inputs
    go through when the model says so (transformers ``get_input_embeddings()``); the
    engine takes the batch's vocabulary and pad id from it before :meth:`lookups`. A
    third-party handle without ``lookups``, ``head_grads`` or ``reset`` still works: all
    its tables with a pad id count as token tables, and ``grad`` is the whole gradient.
    Optional too: ``shrinkable = False`` keeps shrink.py from re-running a failed audit on
    smaller batches (a model whose passes run collectives over a process group).
    Optional: ``backend_name``, what the framework runs on where it has a choice (Keras 3:
    "tensorflow", "jax" or "torch"); reports show it and reproduction snippets follow it.
    """

    framework: str
    model_class: str

    def tables(self, pad_idx: int | Mapping[str, int] | None) -> list[Table]:
        """List every embedding table, resolving each one's pad id.

        ``pad_idx`` is ``pad_idx=`` as given: an int, a mapping ``{layer path: id}`` (see
        :func:`pad_for`) or None. It is the id the data pads with: every table gets it as
        :attr:`Table.pad_idx` (the engine audits only token tables, see :meth:`lookups`),
        and :attr:`Table.own_pad_idx` the model's own.
        """

    def default_vocab_size(self) -> int | None:
        """Return the model's vocabulary size when it declares one (else None)."""

    def preserve(self, seed: int) -> AbstractContextManager[None]:
        """Snapshot all state the audit may touch; restore it bitwise on exit, always."""

    def read_pad_rows(self, tables: Sequence[Table]) -> dict[str, np.ndarray]:
        """Return each table's pad row as it is now."""

    def lookups(self, batch: PadBatch) -> dict[str, np.ndarray]:
        """Run ONE forward pass recording the ids each table is looked up with.

        No gradients, train-only randomness off. Return ``{table path: np.unique(ids)}``
        for every table; a table never called maps to an empty array. The engine calls a
        table a token table when its ids contain at least half of ``batch.real_ids()``;
        the others (positions, segments, relative-attention buckets) are listed as "not a
        token table" and not audited. If none is a token table, the engine keeps the
        tables with a pad id of their own (else every table with a pad id) and adds a note.
        """

    def train_pass(
        self, batch: PadBatch, plan: LossPlan, tables: Sequence[Table]
    ) -> dict[str, np.ndarray | None]:
        """Run forward and backward in training mode; return each pad row's gradient.

        For a table tied to an output projection (an LM head) this is ONLY the part that
        came through the table's lookups, computed directly (not total minus head: that
        leaves float noise); :meth:`head_grads` gives the rest. The gradients a following
        :meth:`step` applies are the full ones (lookups + head), as training would.
        """

    def head_grads(self) -> dict[str, np.ndarray]:
        """Return, for each tied table of the last :meth:`train_pass`, the part of its pad
        row's gradient that came through the output projection it is tied to.

        The engine judges it as a separate ``grad`` finding with cause ``tied`` (``explain``
        event ``"tied"``); the lookup part is judged like an untied table's.
        """

    def reset(self) -> None:
        """Put parameters, buffers and tables back to their state at preserve() entry.

        Called inside :meth:`preserve` (between the grad/update passes and the invariance
        passes) so every check measures the model as the user handed it over: what the
        exit restore does, minus RNG and train/eval modes. Optional for third-party
        adapters.
        """

    def make_optimizer(self, tables: Sequence[Table], spec: Any) -> OptimizerInfo:
        """Build a fresh optimizer over the tables' weights from ``optimizer=``."""

    def step(self, optimizer: OptimizerInfo) -> None:
        """Apply one optimizer step with the gradients of the last :meth:`train_pass`."""

    def invariance_pass(
        self, batch: PadBatch, plan: LossPlan, tables: Sequence[Table], perturb: int | None = None
    ) -> InvarianceRun:
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

    def trace(self, batch: PadBatch) -> Trace:
        """Run a forward pass recording each module's FULL inputs and outputs.

        Optional: a ``perturb=`` keyword as in :meth:`invariance_pass` (adapters without
        it still work: a perturbation-measured leak is then reported without a module name).
        """

    def explain(
        self, cause: str, table: Table | None, options: AuditOptions, info: Any = None
    ) -> tuple[str, str, str]:
        """Return (cause code, likely cause, fix) in the framework's words.

        ``cause`` is the event the engine saw: ``grad`` (the pad row has gradient through
        the table's lookups; for a tied table whose head part :meth:`head_grads` reports,
        the table's own cause, never ``tied``), ``tied`` (the head part; ``info`` its
        max|g|), ``nonfinite``, ``forward`` (the forward pass moved the pad row; ``info`` the
        change), ``optimizer`` (it moved a row whose gradient is zero; ``info`` the
        :class:`OptimizerInfo`) or ``invariance`` (``info`` the first module whose outputs
        differ, or None).
        """
