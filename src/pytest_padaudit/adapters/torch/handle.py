"""PyTorch adapter: embedding tables, train passes, optimizer steps and bitwise snapshots."""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ...core.base import BaseHandle
from ...core.batch import LossPlan, PadBatch
from ...core.errors import PadAuditError
from ...core.handle import ROOT, OptimizerInfo, Table, Trace, pad_for
from ...core.options import AuditOptions
from .explain import CONSTANT_LOSS, EXPLAIN
from .feed import PIPELINE_FIXES, batch_arrays, step_loss
from .noise import noise_at_pads
from .optim import PadRowStepper, carried_optimizer, pad_row_grad
from .params import is_leaf as _is_leaf
from .params import weight as _weight
from .snippet import snippet
from .state import can_be_sparse, floating_tensors, rows_of, to_numpy
from .tables import Lookups, check_usable, compiled, uncompiled, untied

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
        #: the ids each table was looked up with in the last train pass.
        self._seen: dict[str, np.ndarray] = {}
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

    def _backward(self, batch: PadBatch, plan: LossPlan) -> tuple[TorchBatch, Any]:
        for p in self.model.parameters():
            p.grad = None
        tb = self._tensors(batch)
        output = self._forward(tb)
        loss = self._loss(output, tb, plan)
        loss.backward()
        if not any(p.grad is not None for p in self.model.parameters()):
            raise PadAuditError(CONSTANT_LOSS)
        self._last = (batch, plan, loss.detach())
        return tb, output

    def lookups(self, batch: PadBatch) -> dict[str, np.ndarray]:
        """Record the ids each table's weight is looked up with (F.embedding/embedding_bag,
        through the layer or called directly) in one quiet forward pass."""
        recorder = Lookups(self._path_of)
        tb = self._tensors(batch)
        moved = [  # what a forward pass can change: buffers, max_norm tables
            *self.model.buffers(),
            *(layer.weight for layer in self._layers.values() if layer.max_norm is not None),
        ]
        saved = [(t, t.detach().clone()) for t in dict.fromkeys(moved)]
        try:
            with self._quiet(), torch.no_grad(), recorder:
                self._forward(tb)
        finally:
            with torch.no_grad():
                for t, value in saved:
                    t.copy_(value)
        return recorder.unique()

    def _closure(self) -> torch.Tensor:
        """Re-run the last train pass and return its loss (LBFGS-style ``step(closure)``)."""
        assert self._last is not None
        batch, plan, _ = self._last
        with torch.enable_grad():
            self._backward(batch, plan)
        return self._last[2]

    def train_pass(
        self, batch: PadBatch, plan: LossPlan, tables: Sequence[Table]
    ) -> dict[str, np.ndarray | None]:
        """Return the pad-row gradients through the lookups; keep tied heads' parts apart.

        During the pass each tied head holds a separate leaf sharing the weight's storage,
        so autograd gives the head's part to the leaf and the lookups' part to the table;
        the table then gets their sum, the gradient training would step with.
        """
        self.model.train()
        self._heads = {}
        self._computed = {}
        hooks = [
            layer.register_forward_pre_hook(self._keep_weight(t.path))
            for t in tables
            if not _is_leaf(layer := self._layers[t.path])
        ]
        recorder = Lookups(self._path_of)
        try:
            with untied(self.model, self._layers, tables) as leaves, parametrize.cached(), recorder:
                self._backward(batch, plan)
        finally:
            for hook in hooks:
                hook.remove()
        self._seen = recorder.unique()
        grads = {t.path: self._pad_grad(t) for t in tables}
        for t in tables:
            parts = [leaf.grad for leaf in leaves.get(t.path, ()) if leaf.grad is not None]
            if t.path not in leaves:
                continue
            weight = self._layers[t.path].weight
            head = sum(parts[1:], parts[0]) if parts else torch.zeros_like(weight)
            self._heads[t.path] = to_numpy(head[t.pad_idx])
            if parts:  # the full gradient, as training would step with
                own = weight.grad
                weight.grad = head if own is None else own.to_dense() + head
        return grads

    def recorded_lookups(self) -> dict[str, np.ndarray]:
        """Return the ids each table was looked up with in the last train pass."""
        return dict(self._seen)

    def head_grads(self) -> dict[str, np.ndarray]:
        return dict(self._heads)

    def _keep_weight(self, path: str) -> Callable[[nn.Module, Any], None]:
        """Keep the computed weight a call uses, so its gradient can be read."""

        def keep(module: nn.Module, args: Any) -> None:
            weight = cast(torch.Tensor, module.weight)
            if weight.requires_grad:
                weight.retain_grad()
                self._computed.setdefault(path, []).append(weight)

        return keep

    def _pad_grad(self, table: Table) -> np.ndarray | None:
        if table.path in self._computed:  # a parametrized table: its computed weight's grad
            rows = [w.grad[table.pad_idx] for w in self._computed[table.path] if w.grad is not None]
            return to_numpy(sum(rows[1:], rows[0])) if rows else None
        grad = pad_row_grad(self._layers[table.path].weight, cast(int, table.pad_idx))
        return None if grad is None else to_numpy(grad)

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

    def step(self, optimizer: OptimizerInfo) -> None:
        if optimizer.state is not None:
            optimizer.state.step(self._closure)

    @contextmanager
    def _quiet(self) -> Iterator[None]:
        """Turn train-only randomness off; batch norm keeps using batch statistics."""
        self.model.eval()
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train()
        yield

    def _invariance_run(
        self, batch: PadBatch, plan: LossPlan, tables: Sequence[Table], perturb: int | None
    ) -> tuple[Iterable[tuple[str, Hashable, Any]], list[torch.Tensor]]:
        """One quiet backward pass (``perturb``: seeded noise at the pad vectors)."""
        with self._quiet(), noise_at_pads(self._layers, tables, perturb):
            _, output = self._backward(batch, plan)
        grads = [(name, id(p), p.grad) for name, p in self.model.named_parameters()]
        return grads, list(floating_tensors(output))

    def _table_keys(self, table: Table) -> list[Hashable]:
        """Return the table's weights (a parametrized table: its originals)."""
        params = self._layers[table.path].parameters()
        return [id(w) for w in params if w.dim() and w.shape[0] == table.rows]

    def _rows(self, grad: torch.Tensor, table: Table, rows: np.ndarray) -> np.ndarray:
        return to_numpy(rows_of(grad, torch.from_numpy(rows).to(grad.device)))

    def _to_numpy(self, value: torch.Tensor) -> np.ndarray:
        return to_numpy(value)

    def trace(self, batch: PadBatch, perturb: int | None = None) -> Trace:
        """Record each module's full floating inputs and outputs (``perturb``: as above)."""
        trace = Trace(owner=self.model_class)
        names = {module: path for path, module in self.model.named_modules()}
        modules = list(names)
        tb = self._tensors(batch)

        def full(values: Any) -> list[np.ndarray]:
            return [to_numpy(t) for t in floating_tensors(values)]

        def record(module: nn.Module, args: Any, output: Any) -> None:
            trace.entries.append((names.get(module, "?"), full(args), full(output)))

        self._hooked_forward(tb, perturb, [m.register_forward_hook(record) for m in modules])
        return trace

    def _hooked_forward(self, tb: TorchBatch, perturb: int | None, hooks: list[Any]) -> None:
        """Run one quiet forward pass (``perturb``: pad noise), then remove ``hooks``."""
        try:
            noise = noise_at_pads(self._layers, self._audited, perturb)
            with self._quiet(), torch.no_grad(), noise:
                self._forward(tb)
        finally:
            for hook in hooks:
                hook.remove()

    # -- words -----------------------------------------------------------------------
    def explain(
        self, cause: str, table: Table | None, options: AuditOptions, info: Any = None
    ) -> tuple[str, str, str]:
        return EXPLAIN[cause](self, table, info)
