"""The template every built-in adapter fills in: :class:`BaseHandle`, and how the engine
reads a handle's optional capabilities (:func:`capabilities`).

The base holds what means the same in every framework: wrapping the model's errors, the
seeded weighted-sum loss and the reachable-rows gradient loop of ``invariance_pass`` (the
pad-noise rule is ``noise.py``'s). An adapter supplies the framework
words: which tensors are floating, how to sum ``tensor * weights``, how to read rows.
A third-party handle may still implement :class:`~.handle.ModelHandle` without
subclassing; :func:`capabilities` then probes it once, the one place that does.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

import numpy as np

from .errors import PadAuditError

if TYPE_CHECKING:
    from .batch import LossPlan, PadBatch
    from .handle import InvarianceRun, OptimizerInfo, Table, Trace
    from .options import AuditOptions

__all__ = ["BaseHandle", "Capabilities", "capabilities"]
T = TypeVar("T")


@dataclass(frozen=True)
class Capabilities:
    """What a handle can do beyond the required members, as the engine asks it."""

    #: ``lookups(batch)``: which ids each table is looked up with (else: every pad table).
    lookups: bool = False
    #: ``recorded_lookups()``: the same ids, recorded by the last ``train_pass``.
    train_lookups: bool = False
    #: ``head_grads()``: the tied heads' part of the pad-row gradient.
    head_grads: bool = False
    #: ``reset()``: back to the state at ``preserve()`` entry, between checks.
    reset: bool = False
    #: ``invariance_pass(..., perturb=)``: seeded noise at the pad vectors.
    perturb: bool = False
    #: ``trace(batch, perturb=)``.
    trace_perturb: bool = False
    #: ``input_table()``: the path of the table the model's inputs go through.
    input_table: bool = False
    #: False: shrink.py leaves failed audits unshrunk (collectives over a process group).
    shrinkable: bool = True
    #: what the framework runs on where it has a choice (Keras 3: "jax"), else None.
    backend_name: str | None = None
    #: ``batch_arrays(batch)``: the handle reads a user's ``batch=``.
    user_batch: bool = False
    #: the fixes of the batch findings in the framework's idiom (None: generic words).
    pipeline_fixes: Mapping[str, str] | None = None


def capabilities(handle: Any) -> Capabilities:
    """Return what ``handle`` can do: declared on a :class:`BaseHandle`, else probed."""
    if isinstance(handle, BaseHandle):
        return Capabilities(
            lookups=True,
            train_lookups=handle.records_lookups,
            head_grads=handle.has_head_grads,
            reset=handle.can_reset,
            perturb=handle.takes_perturb,
            trace_perturb=handle.traces_perturb,
            input_table=handle.has_input_table,
            shrinkable=handle.shrinkable,
            backend_name=handle.backend_name,
            user_batch=handle.reads_batches,
            pipeline_fixes=handle.pipeline_fixes,
        )
    return Capabilities(
        lookups=callable(getattr(handle, "lookups", None)),
        train_lookups=callable(getattr(handle, "recorded_lookups", None)),
        head_grads=callable(getattr(handle, "head_grads", None)),
        reset=callable(getattr(handle, "reset", None)),
        perturb=_takes_perturb(getattr(handle, "invariance_pass", None)),
        trace_perturb=_takes_perturb(getattr(handle, "trace", None)),
        input_table=callable(getattr(handle, "input_table", None)),
        shrinkable=bool(getattr(handle, "shrinkable", True)),
        backend_name=getattr(handle, "backend_name", None),
        user_batch=callable(getattr(handle, "batch_arrays", None)),
        pipeline_fixes=getattr(handle, "pipeline_fixes", None),
    )


def _takes_perturb(method: Any) -> bool:
    if not callable(method):
        return False
    try:
        return "perturb" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


#: capability flag -> the method a handle class declaring it must define itself.
_DECLARED = {
    "can_reset": "reset",
    "has_head_grads": "head_grads",
    "has_input_table": "input_table",
    "reads_batches": "batch_arrays",
    "records_lookups": "recorded_lookups",
}


class BaseHandle(ABC):
    """One model under audit: the shared template above the framework adapters.

    Optional capabilities are declared as class attributes (checked when the class is
    built) instead of being probed at run time.
    """

    framework: str
    model_class: str
    options: AuditOptions

    #: the class defines ``reset()`` (see :meth:`~.handle.ModelHandle.reset`).
    can_reset: ClassVar[bool] = False
    #: the class defines ``head_grads()`` (tied tables' head part).
    has_head_grads: ClassVar[bool] = False
    #: the class defines ``input_table()``.
    has_input_table: ClassVar[bool] = False
    #: the class defines ``recorded_lookups()``: ``train_pass`` records what ``lookups``
    #: would, so the engine can skip that pass.
    records_lookups: ClassVar[bool] = False
    #: ``invariance_pass`` honours ``perturb=`` (the adapter installs :class:`~.noise.PadNoise`).
    takes_perturb: ClassVar[bool] = True
    #: ``trace`` honours ``perturb=``.
    traces_perturb: ClassVar[bool] = False
    #: False: failed audits are not re-run on smaller batches.
    shrinkable: ClassVar[bool] = True
    #: what the framework runs on where it has a choice; instances may set it.
    backend_name: str | None = None
    #: the class defines ``batch_arrays(batch)``: it reads a user's ``batch=``.
    reads_batches: ClassVar[bool] = False
    #: the fixes of the batch findings (``pad_mismatch``, ``labels_at_pads``), else None.
    pipeline_fixes: ClassVar[Mapping[str, str] | None] = None
    #: the ``forward=`` example a model error suggests, in the framework's words.
    forward_advice: ClassVar[str] = (
        "forward=lambda model, batch: model(batch.ids, batch.mask) "
        "(batch has ids, mask, lengths, pad_idx)"
    )
    #: what a scalar loss is called in the framework ("tensor", "jax.Array").
    array_word: ClassVar[str] = "tensor"
    #: cause -> ``words(handle, table, options, info)`` -> (code, likely cause, fix).
    WORDS: ClassVar[Mapping[str, Callable[..., tuple[str, str, str]]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse a class whose declared capabilities and methods disagree."""
        super().__init_subclass__(**kwargs)
        for flag, method in _DECLARED.items():
            declared = bool(getattr(cls, flag))
            defined = getattr(cls, method, None) is not getattr(BaseHandle, method, None)
            if declared != defined:
                raise TypeError(
                    f"{cls.__qualname__}: set {flag} = {defined} (it "
                    f"{'defines' if defined else 'does not define'} {method}())"
                )
        if cls.traces_perturb and not _takes_perturb(cls.trace):
            raise TypeError(f"{cls.__qualname__}: traces_perturb needs trace(batch, perturb=)")

    # -- the members every adapter defines -------------------------------------------
    @abstractmethod
    def tables(self, pad_idx: Any) -> list[Table]:
        """List every embedding table, resolving each one's pad id."""

    @abstractmethod
    def preserve(self, seed: int) -> AbstractContextManager[None]:
        """Snapshot all state the audit may touch; restore it bitwise on exit, always."""

    @abstractmethod
    def read_pad_rows(self, tables: Sequence[Table]) -> dict[str, np.ndarray]:
        """Return each table's pad row as it is now."""

    @abstractmethod
    def lookups(self, batch: PadBatch) -> dict[str, np.ndarray]:
        """Run one quiet forward pass; return the distinct ids each table looked up."""

    @abstractmethod
    def train_pass(
        self, batch: PadBatch, plan: LossPlan, tables: Sequence[Table]
    ) -> dict[str, np.ndarray | None]:
        """Run forward and backward in training mode; return each pad row's gradient."""

    @abstractmethod
    def make_optimizer(self, tables: Sequence[Table], spec: Any) -> OptimizerInfo:
        """Build a fresh optimizer over the tables' weights from ``optimizer=``."""

    @abstractmethod
    def step(self, optimizer: OptimizerInfo) -> None:
        """Apply one optimizer step with the gradients of the last train pass."""

    @abstractmethod
    def trace(self, batch: PadBatch) -> Trace:
        """Run a forward pass recording each module's FULL inputs and outputs."""

    def explain(
        self, cause: str, table: Table | None, options: AuditOptions, info: Any = None
    ) -> tuple[str, str, str]:
        """Return (cause code, likely cause, fix) in the framework's words (:attr:`WORDS`)."""
        say = self.WORDS.get(cause)
        if say is None:  # an event newer than this adapter: say what it was
            return cause, f"the engine saw {cause!r} on {table.path if table else 'the model'}", ""
        return say(self, table, options, info)

    def default_vocab_size(self) -> int | None:
        """Return the model's vocabulary size when it declares one (else None)."""
        return None

    def snippet(self, smallest: Mapping[str, Any]) -> list[str]:
        """Return plain-framework lines that show a shrunk leak (``smallest``: its check,
        layer, ids, pad_idx, padding_side), runnable where ``model`` is the audited model:
        imports first, the table named the same in every process. []: none to offer."""
        return []

    def reset(self) -> None:
        """Put the model back as preserve() found it (declare ``can_reset``)."""
        raise NotImplementedError

    def head_grads(self) -> dict[str, np.ndarray]:
        """Return the tied heads' part of the last pad-row gradients (``has_head_grads``)."""
        return {}

    def input_table(self) -> str | None:
        """Return the path of the table the inputs go through (``has_input_table``)."""
        return None

    # -- the model's errors ----------------------------------------------------------
    def call_model(
        self,
        run: Callable[[], T],
        batch: PadBatch,
        call: str,
        ids: str = "",
        advice: str | None = None,
    ) -> T:
        """Run ``run()``; turn the model's exception into a :class:`PadAuditError`.

        The message names the model, ``call`` (``"model(ids)"``), the batch and ``ids``
        (its dtype and device, in the framework's words), then ``advice``.
        """
        try:
            return run()
        except PadAuditError:
            raise
        except Exception as exc:
            raise PadAuditError(self.model_error(exc, batch, call, ids, advice)) from exc

    def model_error(
        self, exc: Exception, batch: PadBatch, call: str, ids: str = "", advice: str | None = None
    ) -> str:
        """Say what the model raised on which batch, and which ``forward=`` to pass."""
        shown = f"; {ids}" if ids else ""
        return (
            f"{self.model_class} raised {type(exc).__name__} on {batch.origin} ({call} "
            f"with {batch.describe()}{shown}): {exc}\n  If the model takes other inputs, "
            f"pass {advice or self.forward_advice}"
        )

    # -- the seeded loss -------------------------------------------------------------
    def seeded_loss(self, output: Any, batch: Any, plan: LossPlan) -> Any:
        """Return the scalar loss: ``loss=`` when it is a callable, else the seeded sum.

        The seeded sum is ``sum(floating output i * plan.weights(i, shape))`` over the
        output's floating tensors in :func:`~.handle.output_leaves` order.
        """
        custom = self.options.loss
        if callable(custom):
            value = custom(output, batch)
            if not self._is_scalar(value):
                raise PadAuditError(
                    f"loss= returned {type(value).__name__}: pass a callable(output, batch) "
                    f"that returns a scalar {self.array_word}"
                )
            return self._scalar(value)
        tensors = self._floating(output)
        if not tensors:
            raise PadAuditError(
                f"the output of {self.model_class} ({type(output).__name__}) holds no "
                f"floating-point {self.array_word}, so no gradient can reach the embedding "
                "(integer outputs such as argmax ids have none; a loss= over them cannot "
                "backpropagate): pass forward= that returns the float scores computed "
                "before the integer step, e.g. forward=lambda model, batch: "
                "model.scores(batch.ids) where scores() is your forward() without its "
                "final argmax"
            )
        self._check_outputs(tensors)
        total = None
        for index, tensor in enumerate(tensors):
            term = self._weighted_sum(tensor, self._loss_weights(plan, index, tensor, batch))
            total = term if total is None else total + term
        return total

    @abstractmethod
    def _floating(self, output: Any) -> list[Any]:
        """List the floating tensors of ``output`` in :func:`output_leaves` order."""

    @abstractmethod
    def _is_scalar(self, value: Any) -> bool:
        """Say whether ``loss=`` returned a one-element tensor of the framework."""

    @abstractmethod
    def _scalar(self, value: Any) -> Any:
        """Return ``loss=``'s one-element result as the scalar to differentiate."""

    @abstractmethod
    def _weighted_sum(self, tensor: Any, weights: np.ndarray) -> Any:
        """Return ``sum(tensor * weights)`` as a float32 scalar of the framework."""

    def _check_outputs(self, tensors: list[Any]) -> None:
        """Refuse outputs no gradient can flow through (a framework that can tell)."""
        return None

    def _loss_weights(self, plan: LossPlan, index: int, tensor: Any, batch: Any) -> Any:
        """Return the seeded weights of output ``index`` (NumPy, ``tensor``'s shape)."""
        return plan.weights(index, tuple(tensor.shape))

    # -- invariance ------------------------------------------------------------------
    def invariance_pass(
        self, batch: PadBatch, plan: LossPlan, tables: Sequence[Table], perturb: int | None = None
    ) -> InvarianceRun:
        """Return every parameter's gradient and the FULL floating outputs.

        A table's gradient is cut to the rows ``batch.reachable_rows`` names; the engine
        cuts the outputs. ``perturb``: the token tables emit seeded noise at pad ids.
        """
        grads, outputs = self._invariance_run(batch, plan, tables, perturb)
        reach: dict[Hashable, tuple[Table, np.ndarray]] = {}
        for t in tables:
            rows = batch.reachable_rows(t.rows, cast(int, t.pad_idx))  # audited: a pad id
            for key in self._table_keys(t):
                reach[key] = (t, rows)
        result = {}
        for name, key, grad in grads:
            if grad is None:
                continue
            hit = reach.get(key)
            result[name] = self._to_numpy(grad) if hit is None else self._rows(grad, *hit)
        return result, [self._to_numpy(o) for o in outputs]

    @abstractmethod
    def _invariance_run(
        self, batch: PadBatch, plan: LossPlan, tables: Sequence[Table], perturb: int | None
    ) -> tuple[Iterable[tuple[str, Hashable, Any]], list[Any]]:
        """Run forward and backward quietly; return ``(name, key, grad)`` per parameter
        and the floating outputs. ``key`` matches :meth:`_table_keys`."""

    @abstractmethod
    def _table_keys(self, table: Table) -> list[Hashable]:
        """Return the keys of the parameters holding ``table``'s rows."""

    @abstractmethod
    def _rows(self, grad: Any, table: Table, rows: np.ndarray) -> np.ndarray:
        """Return ``grad[rows]`` (a table's gradient) as a dense NumPy array."""

    @abstractmethod
    def _to_numpy(self, value: Any) -> np.ndarray:
        """Return a framework array (a gradient, an output) as a dense NumPy array."""
