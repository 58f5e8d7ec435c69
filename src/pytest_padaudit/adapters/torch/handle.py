"""PyTorch adapter: embedding tables, train passes, optimizer steps and bitwise snapshots."""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from ...core.base import BaseHandle
from ...core.batch import LossPlan, PadBatch
from ...core.errors import PadAuditError
from ...core.handle import ROOT, OptimizerInfo, Table, pad_for
from ...core.options import AuditOptions
from . import passes
from .explain import CONSTANT_LOSS, EXPLAIN
from .feed import PIPELINE_FIXES, batch_arrays, step_loss
from .optim import PadRowStepper, carried_optimizer, pad_row_grad
from .params import is_leaf as _is_leaf
from .params import weight as _weight
from .snippet import snippet
from .state import can_be_sparse, floating_tensors, rows_of, to_numpy
from .tables import check_usable, compiled, uncompiled

_TABLES = (nn.Embedding, nn.EmbeddingBag)
_ROOT = ROOT


def adapt(model: object, options: AuditOptions) -> TorchHandle | None:
    """Return a handle for an ``nn.Module``, else None."""
    model = uncompiled(model)
    return TorchHandle(model, options) if isinstance(model, nn.Module) else None


@dataclasses.dataclass(frozen=True)
class TorchBatch:
    """The synthetic batch as tensors, as ``forward=`` and ``loss=`` callables receive it."""

    ids: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor
    pad_idx: int
    padding_side: str
    numpy: PadBatch
    #: what the model (or ``step=``) is fed: the user's batch as tensors, the synthetic
    #: batch's keys for ``step=``, or None (the model is called with ``ids``).
    feed: Any = None


class TorchHandle(BaseHandle):
    """Audit an ``nn.Module``: ``nn.Embedding`` and ``nn.EmbeddingBag`` tables."""

    framework = "torch"
    pipeline_fixes = PIPELINE_FIXES
    reads_batches = True
    can_reset = True
    has_head_grads = True
    traces_perturb = True
    records_lookups = True

    def __init__(self, model: nn.Module, options: AuditOptions) -> None:
        check_usable(model)
        self.model = model
        self.options = options
        self.model_class = type(model).__qualname__
        self._layers: dict[str, nn.Embedding | nn.EmbeddingBag] = {}
        #: id(weight) -> the path of the table listed for it (one per weight).
        self._path_of: dict[int, str] = {}
        #: the pad-row gradient through tied heads, from the last train_pass.
        self._heads: dict[str, np.ndarray] = {}
        #: the ids each table was looked up with in the train passes on ``_seen_of``.
        self._seen: dict[str, np.ndarray] = {}
        self._seen_of: PadBatch | None = None
        self._audited: list[Table] = []
        #: (tensor, copy) pairs put back when the audit ends; whole tables join when needed.
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        #: the audited layers' own ``sparse`` flags; audits run them sparse where they can.
        self._sparse: list[tuple[nn.Embedding | nn.EmbeddingBag, bool]] = []
        #: the last train pass (batch, plan, loss), re-run by closure optimizers (LBFGS).
        self._last: tuple[PadBatch, LossPlan, torch.Tensor] | None = None
        #: per computed table (parametrization, weight_norm): the weights its calls used.
        self._computed: dict[str, list[torch.Tensor]] = {}
        #: puts the state preserve() saved back, while preserve() is active (reset()).
        self._restore: Callable[[], None] | None = None

    # -- discovery -------------------------------------------------------------------
    def tables(self, pad_idx: int | Mapping[str, int] | None) -> list[Table]:
        """List each table once per weight; a weight shared with a non-table is tied."""
        modules = {path or _ROOT: module for path, module in self.model.named_modules()}
        owners: dict[int, list[str]] = defaultdict(list)
        for path, module in modules.items():
            for param in module._parameters.values():
                if param is not None:
                    owners[id(param)].append(path)
        found, seen = [], set()
        for path, layer in modules.items():
            if not isinstance(layer, _TABLES) or id(layer.weight) in seen:
                continue
            seen.add(id(layer.weight))
            self._path_of[id(layer.weight)] = path
            rows, dim = layer.weight.shape
            own = layer.padding_idx
            user = pad_for(pad_idx, path)
            pad = user if user is not None else own
            if pad is not None and -rows <= pad < 0:  # else kept as written, for the error
                pad += rows
            kind = type(layer).__name__
            if isinstance(layer, nn.EmbeddingBag):
                kind += f"(mode={layer.mode})"
            others = [o for o in owners[id(layer.weight)] if o != path]
            tied = tuple(o for o in others if not isinstance(modules[o], _TABLES))
            notes = tuple(
                f"{name}={getattr(layer, name)}"
                for name in ("max_norm", "sparse", "scale_grad_by_freq")
                if getattr(layer, name, None)
            ) + tuple(f"shared with {o}" for o in others if isinstance(modules[o], _TABLES))
            self._layers[path] = layer
            found.append(
                Table(
                    path,
                    int(rows),
                    int(dim),
                    kind,
                    pad,
                    own is not None,
                    layer.weight.requires_grad,
                    tied,
                    notes,
                    own_pad_idx=own,
                )
            )
        return self._remember(found)

    def _remember(self, found: list[Table]) -> list[Table]:
        """Keep the tables that may be audited for preserve(); return ``found``."""
        self._audited = [t for t in found if t.pad_idx is not None and 0 <= t.pad_idx < t.rows]
        return found

    @property
    def device(self) -> torch.device:
        for param in self.model.parameters():
            return param.device
        return torch.device("cpu")

    def snippet(self, smallest: Mapping[str, Any]) -> list[str]:
        """Return the plain PyTorch lines; the table is ``model.get_submodule(path).weight``."""
        path = smallest["layer"]
        weights = "model.weight" if path == _ROOT else f"model.get_submodule({path!r}).weight"
        return snippet(smallest, weights)

    # -- state -----------------------------------------------------------------------
    @contextmanager
    def preserve(self, seed: int) -> Iterator[None]:
        """Snapshot what the audit can change; put it back bitwise on exit.

        Runs outside ``torch.inference_mode()`` (an audit called under it needs autograd).
        """
        with torch.inference_mode(False), self._preserve(seed):
            yield

    @contextmanager
    def _preserve(self, seed: int) -> Iterator[None]:
        """Snapshot what the audit can change; put it back bitwise on exit.

        An audited table is saved whole only when something may move more than its pad row
        (max_norm in the forward pass; a non-element-wise optimizer, see make_optimizer):
        otherwise saving its pad row is enough, and no O(vocab) copy is made.
        """
        model = self.model
        params = list(model.parameters())
        layers = {id(self._layers[t.path].weight): self._layers[t.path] for t in self._audited}
        self._saved = [
            (p, p.detach().clone())
            for p in params
            if id(p) not in layers or getattr(layers[id(p)], "max_norm", None)
        ]
        rows = [
            (layer.weight, t.pad_idx, layer.weight.detach()[t.pad_idx].clone())
            for t in self._audited
            for layer in [self._layers[t.path]]
        ]
        grads = [p.grad for p in params]
        buffers = [(b, b.detach().clone()) for b in model.buffers()]
        modes = [(m, m.training) for m in model.modules()]
        self._sparse = [(layer, layer.sparse) for layer in layers.values()]
        devices = [d for d in {p.device for p in params} if d.type == "cuda"]
        np_state, py_state = np.random.get_state(), random.getstate()
        calls = [(m, m._compiled_call_impl) for m in model.modules() if compiled(m)]

        def restore() -> None:
            with torch.no_grad():
                for weight, pad, row in rows:
                    weight[pad] = row
                for p, value in self._saved:
                    p.copy_(value)
                for b, value in buffers:
                    b.copy_(value)

        self._restore = restore
        try:
            for m, _ in calls:  # Module.compile(): run the audit eagerly
                m._compiled_call_impl = None
            with torch.random.fork_rng(devices=devices), torch.enable_grad():
                torch.default_generator.manual_seed(seed)
                for device in devices:
                    with torch.cuda.device(device):
                        torch.cuda.manual_seed(seed)
                for p in params:
                    p.grad = None
                for layer in layers.values():
                    layer.sparse = layer.sparse or can_be_sparse(layer)
                yield
        finally:
            for m, impl in calls:
                m._compiled_call_impl = impl
            restore()
            self._restore = None
            self._saved = []
            for layer, flag in self._sparse:
                layer.sparse = flag
            for p, grad in zip(params, grads, strict=True):
                p.grad = grad
            for m, training in modes:
                m.training = training
            np.random.set_state(np_state)
            random.setstate(py_state)

    def reset(self) -> None:
        """Put parameters, buffers and tables back as preserve() found them (grads None)."""
        if self._restore is not None:
            self._restore()
        for p in self.model.parameters():
            p.grad = None

    def read_pad_rows(self, tables: Sequence[Table]) -> dict[str, np.ndarray]:
        return {t.path: to_numpy(_weight(self._layers[t.path])[t.pad_idx]) for t in tables}

    # -- passes ----------------------------------------------------------------------
    def batch_arrays(self, batch: Any) -> dict[str, np.ndarray]:
        """Return the user's batch as arrays by key (a tensor of ids is ``input_ids``)."""
        return batch_arrays(batch)

    def step_inputs(self, tb: TorchBatch) -> dict[str, torch.Tensor]:
        """Return the synthetic batch by key, as ``step=`` receives it."""
        return {"input_ids": tb.ids, "attention_mask": tb.mask.long()}

    def _tensors(self, batch: PadBatch) -> TorchBatch:
        device = self.device
        tb = TorchBatch(
            ids=torch.from_numpy(batch.ids).to(device),
            mask=torch.from_numpy(batch.mask).to(device),
            lengths=torch.from_numpy(batch.lengths),
            pad_idx=batch.pad_idx,
            padding_side=batch.padding_side,
            numpy=batch,
        )
        if batch.inputs is not None:
            feed = {
                k: torch.from_numpy(np.ascontiguousarray(v)).to(device)
                for k, v in batch.inputs.items()
            }
            return dataclasses.replace(tb, feed=feed)
        if self.options.step is not None and batch.source == "synthetic":
            return dataclasses.replace(tb, feed=self.step_inputs(tb))
        return tb

    def _forward(self, batch: TorchBatch) -> Any:
        step, forward, feed, model = self.options.step, self.options.forward, batch.feed, self.model
        advice = None
        if step is not None:
            run, call = (lambda: step(model, batch.ids if feed is None else feed)), "step="
            takes = "your batch= as given" if batch.numpy.source != "synthetic" else "a dict"
            advice = f"a step=callable(model, batch) that takes {takes} ({', '.join(feed or ())})"
        elif forward is not None:
            run, call = (lambda: forward(model, batch)), "forward="
        elif feed is None:
            run, call = (lambda: model(batch.ids)), "model(ids)"
        else:
            run, call = (lambda: model(**feed)), "model(**batch)"
            advice = "step=lambda model, batch: model(**batch).loss (it runs the model your way)"
        ids = f"ids {batch.ids.dtype} on {batch.ids.device}"
        return self.call_model(run, batch.numpy, call, ids, advice)

    def _loss(self, output: Any, batch: TorchBatch, plan: LossPlan) -> torch.Tensor:
        if self.options.step is not None:
            return step_loss(output)
        return self.seeded_loss(output, batch, plan)

    def _floating(self, output: Any) -> list[torch.Tensor]:
        return list(floating_tensors(output))

    def _is_scalar(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor) and value.numel() == 1

    def _scalar(self, value: torch.Tensor) -> torch.Tensor:
        if not value.requires_grad:
            raise PadAuditError(CONSTANT_LOSS)
        return value.reshape(())

    def _check_outputs(self, tensors: list[torch.Tensor]) -> None:
        if not any(t.requires_grad for t in tensors):
            raise PadAuditError(
                f"no output of {self.model_class} depends on a trainable parameter: "
                "unfreeze the model, or pass forward= that runs it with gradients on"
            )

    def _weighted_sum(self, tensor: torch.Tensor, weights: np.ndarray) -> torch.Tensor:
        on_device = torch.from_numpy(np.asarray(weights)).to(tensor.device)
        return (tensor.float() * on_device).sum()

    # -- the lookups and train passes, bound from passes.py --------------------------
    _backward = passes.backward
    lookups = passes.lookups
    train_pass = passes.train_pass
    _keep_weight = passes.keep_weight
    recorded_lookups = passes.recorded_lookups

    # -- gradients and update --------------------------------------------------------
    def _pad_grad(self, table: Table) -> np.ndarray | None:
        if table.path in self._computed:  # a parametrized table: its computed weight's grad
            rows = [w.grad[table.pad_idx] for w in self._computed[table.path] if w.grad is not None]
            return to_numpy(sum(rows[1:], rows[0])) if rows else None
        grad = pad_row_grad(self._layers[table.path].weight, cast(int, table.pad_idx))
        return None if grad is None else to_numpy(grad)

    def head_grads(self) -> dict[str, np.ndarray]:
        return dict(self._heads)

    def make_optimizer(self, tables: Sequence[Table], spec: Any) -> OptimizerInfo:
        pairs: dict[tuple[int, int], tuple[nn.Parameter, int]] = {}
        for t in tables:
            layer, pad = self._layers[t.path], cast(int, t.pad_idx)  # audited: a pad id
            for weight in (
                [cast(nn.Parameter, layer.weight)] if _is_leaf(layer) else layer.parameters()
            ):
                if weight.requires_grad:
                    pairs[(id(weight), pad)] = (weight, pad)
        if not pairs:  # every table frozen: nothing for an optimizer to move
            return OptimizerInfo("SGD")
        computed = not all(_is_leaf(self._layers[t.path]) for t in tables)
        origin = note = None
        if spec is None:  # the model's own optimizer when it carries one (Lightning)
            spec, note = carried_optimizer(self.model, [w for w, _ in pairs.values()])
            origin = None if spec is None else f"{self.model_class}.configure_optimizers()"
        stepper = PadRowStepper(list(pairs.values()), spec, full=computed)
        if stepper.full:  # it steps the real tables: save them whole, give them dense grads
            whole = {id(p) for p, _ in self._saved}
            for weight, _ in pairs.values():
                if id(weight) not in whole:
                    self._saved.append((weight, weight.detach().clone()))
                    whole.add(id(weight))
            for layer, flag in self._sparse:  # and the gradients the user's training gives
                layer.sparse = flag
        return OptimizerInfo(stepper.name, stepper.weight_decay, stepper, origin, note)

    _closure = passes.closure

    def step(self, optimizer: OptimizerInfo) -> None:
        if optimizer.state is not None:
            optimizer.state.step(self._closure)

    # -- invariance and trace, the passes bound from passes.py -----------------------
    _quiet = passes.quiet
    _invariance_run = passes.invariance_run
    trace = passes.trace
    _hooked_forward = passes.hooked_forward

    def _table_keys(self, table: Table) -> list[Hashable]:
        """Return the table's weights (a parametrized table: its originals)."""
        params = self._layers[table.path].parameters()
        return [id(w) for w in params if w.dim() and w.shape[0] == table.rows]

    def _rows(self, grad: torch.Tensor, table: Table, rows: np.ndarray) -> np.ndarray:
        return to_numpy(rows_of(grad, torch.from_numpy(rows).to(grad.device)))

    def _to_numpy(self, value: torch.Tensor) -> np.ndarray:
        return to_numpy(value)

    # -- words -----------------------------------------------------------------------
    def explain(
        self, cause: str, table: Table | None, options: AuditOptions, info: Any = None
    ) -> tuple[str, str, str]:
        return EXPLAIN[cause](self, table, info)
