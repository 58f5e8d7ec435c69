"""PyTorch adapter: embedding tables, train passes, optimizer steps and bitwise snapshots."""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from ..batch import LossPlan, PadBatch
from ..errors import PadAuditError
from ..handle import OptimizerInfo, Table, Trace, output_leaves
from ..options import AuditOptions
from .torch_optim import PadRowStepper, pad_row_grad

_TABLES = (nn.Embedding, nn.EmbeddingBag)
_ROOT = "(model)"


def adapt(model: object, options: AuditOptions) -> TorchHandle | None:
    """Return a handle for an ``nn.Module``, else None."""
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


def floating_tensors(output: Any) -> Iterator[torch.Tensor]:
    """Yield every floating-point tensor in a (nested) model output."""
    leaves = output_leaves(output, lambda x: isinstance(x, torch.Tensor))
    return (t for t in leaves if t.is_floating_point())


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float32, copy=True).numpy()


class TorchHandle:
    """Audit an ``nn.Module``: ``nn.Embedding`` and ``nn.EmbeddingBag`` tables."""

    framework = "torch"

    def __init__(self, model: nn.Module, options: AuditOptions) -> None:
        self.model = model
        self.options = options
        self.model_class = type(model).__qualname__
        self._layers: dict[str, nn.Embedding | nn.EmbeddingBag] = {}
        self._audited: list[Table] = []
        #: (tensor, copy) pairs put back when the audit ends; whole tables join when needed.
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        #: the audited layers' own ``sparse`` flags; audits run them sparse where they can.
        self._sparse: list[tuple[nn.Module, bool]] = []

    # -- discovery -------------------------------------------------------------------
    def tables(self, pad_idx: int | None) -> list[Table]:
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
            rows, dim = layer.weight.shape
            own = layer.padding_idx
            pad = own if own is not None else pad_idx
            if pad is not None and pad < 0:
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
                )
            )
        return self._remember(found)

    def _remember(self, found: list[Table]) -> list[Table]:
        """Keep the audited tables for preserve(); return ``found``."""
        self._audited = [t for t in found if t.pad_idx is not None]
        return found

    def default_vocab_size(self) -> int | None:
        return None

    @property
    def device(self) -> torch.device:
        for param in self.model.parameters():
            return param.device
        return torch.device("cpu")

    # -- state -----------------------------------------------------------------------
    @contextmanager
    def preserve(self, seed: int) -> Iterator[None]:
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
        try:
            with torch.random.fork_rng(devices=devices), torch.enable_grad():
                torch.default_generator.manual_seed(seed)
                for device in devices:
                    with torch.cuda.device(device):
                        torch.cuda.manual_seed(seed)
                for p in params:
                    p.grad = None
                for layer in layers.values():
                    layer.sparse = layer.sparse or _can_be_sparse(layer)
                yield
        finally:
            with torch.no_grad():
                for weight, pad, row in rows:
                    weight[pad] = row
                for p, value in self._saved:
                    p.copy_(value)
                for b, value in buffers:
                    b.copy_(value)
            self._saved = []
            for layer, flag in self._sparse:
                layer.sparse = flag
            for p, grad in zip(params, grads, strict=True):
                p.grad = grad
            for m, training in modes:
                m.training = training
            np.random.set_state(np_state)
            random.setstate(py_state)

    def read_pad_rows(self, tables: Sequence[Table]) -> dict[str, np.ndarray]:
        return {t.path: _to_numpy(self._layers[t.path].weight[t.pad_idx]) for t in tables}

    # -- passes ----------------------------------------------------------------------
    def _tensors(self, batch: PadBatch) -> TorchBatch:
        device = self.device
        return TorchBatch(
            ids=torch.from_numpy(batch.ids).to(device),
            mask=torch.from_numpy(batch.mask).to(device),
            lengths=torch.from_numpy(batch.lengths),
            pad_idx=batch.pad_idx,
            padding_side=batch.padding_side,
            numpy=batch,
        )

    def _forward(self, batch: TorchBatch) -> Any:
        forward = self.options.forward
        try:
            return forward(self.model, batch) if forward else self.model(batch.ids)
        except PadAuditError:
            raise
        except Exception as exc:
            call = "forward=" if forward else "model(ids)"
            raise PadAuditError(
                f"{self.model_class} raised {type(exc).__name__} on the synthetic batch "
                f"({call} with {batch.numpy.describe()}; ids {batch.ids.dtype} on "
                f"{batch.ids.device}): {exc}\n  If the model takes other inputs, pass "
                "forward=lambda model, batch: model(batch.ids, batch.mask) "
                "(batch has ids, mask, lengths, pad_idx)"
            ) from exc

    def _loss(self, output: Any, batch: TorchBatch, plan: LossPlan) -> torch.Tensor:
        custom = self.options.loss
        if callable(custom):
            value = custom(output, batch)
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise PadAuditError(
                    f"loss= returned {type(value).__name__}: pass a callable(output, batch) "
                    "that returns a scalar tensor"
                )
            return value.reshape(())
        tensors = list(floating_tensors(output))
        if not tensors:
            raise PadAuditError(
                f"the output of {self.model_class} ({type(output).__name__}) holds no "
                "floating-point tensor, so no gradient can reach the embedding (integer "
                "outputs such as argmax ids have none; a loss= over them cannot backpropagate): "
                "pass forward= that returns the float scores computed before the integer "
                "step, e.g. forward=lambda model, batch: model.scores(batch.ids) where "
                "scores() is your forward() without its final argmax"
            )
        if not any(t.requires_grad for t in tensors):
            raise PadAuditError(
                f"no output of {self.model_class} depends on a trainable parameter: "
                "unfreeze the model, or pass forward= that runs it with gradients on"
            )
        total = torch.zeros((), device=tensors[0].device)
        for index, tensor in enumerate(tensors):
            weights = torch.from_numpy(plan.weights(index, tuple(tensor.shape)))
            total = total + (tensor.float() * weights.to(tensor.device)).sum()
        return total

    def _backward(self, batch: PadBatch, plan: LossPlan) -> tuple[TorchBatch, Any]:
        for p in self.model.parameters():
            p.grad = None
        tb = self._tensors(batch)
        output = self._forward(tb)
        self._loss(output, tb, plan).backward()
        return tb, output

    def train_pass(
        self, batch: PadBatch, plan: LossPlan, tables: Sequence[Table]
    ) -> dict[str, np.ndarray | None]:
        self.model.train()
        self._backward(batch, plan)
        return {t.path: self._pad_grad(t) for t in tables}

    def _pad_grad(self, table: Table) -> np.ndarray | None:
        grad = pad_row_grad(self._layers[table.path].weight, table.pad_idx)
        return None if grad is None else _to_numpy(grad)

    def make_optimizer(self, tables: Sequence[Table], spec: Any) -> OptimizerInfo:
        pairs = {}
        for t in tables:
            weight = self._layers[t.path].weight
            if weight.requires_grad:
                pairs[(id(weight), t.pad_idx)] = (weight, t.pad_idx)
        if not pairs:  # every table frozen: nothing for an optimizer to move
            return OptimizerInfo("SGD")
        stepper = PadRowStepper(list(pairs.values()), spec)
        if stepper.full:  # it steps the real tables: save them whole, give them dense grads
            whole = {id(p) for p, _ in self._saved}
            for weight, _ in pairs.values():
                if id(weight) not in whole:
                    self._saved.append((weight, weight.detach().clone()))
                    whole.add(id(weight))
            for layer, flag in self._sparse:  # and the gradients the user's training gives
                layer.sparse = flag
        return OptimizerInfo(stepper.name, stepper.weight_decay, stepper)

    def step(self, optimizer: OptimizerInfo) -> None:
        if optimizer.state is not None:
            optimizer.state.step()

    @contextmanager
    def _quiet(self) -> Iterator[None]:
        """Turn train-only randomness off; batch norm keeps using batch statistics."""
        self.model.eval()
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train()
        yield

    def invariance_pass(
        self, batch: PadBatch, plan: LossPlan, tables: Sequence[Table]
    ) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        with self._quiet():
            tb, output = self._backward(batch, plan)
        reach = _reachable_rows(batch, tables, self._layers)
        grads = {}
        for name, param in self.model.named_parameters():
            grad = param.grad
            if grad is None:
                continue
            rows = reach.get(id(param))
            grads[name] = _to_numpy(grad if rows is None else _rows_of(grad, rows))
        outputs = [_to_numpy(_real(t, tb.mask)) for t in floating_tensors(output)]
        return grads, outputs

    def trace(self, batch: PadBatch) -> Trace:
        trace = Trace(owner=self.model_class)
        names = {module: path for path, module in self.model.named_modules()}
        tb = self._tensors(batch)

        def real(values: Any) -> list[np.ndarray]:
            return [_to_numpy(_real(t, tb.mask)) for t in floating_tensors(values)]

        def record(module: nn.Module, args: Any, output: Any) -> None:
            trace.entries.append((names.get(module, "?"), real(args), real(output)))

        hooks = [m.register_forward_hook(record) for m in self.model.modules()]
        try:
            with self._quiet(), torch.no_grad():
                self._forward(tb)
        finally:
            for hook in hooks:
                hook.remove()
        return trace

    # -- words -----------------------------------------------------------------------
    def explain(
        self, cause: str, table: Table | None, options: AuditOptions, info: Any = None
    ) -> tuple[str, str, str]:
        return _EXPLAIN[cause](self, table, info)


def _real(tensor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Keep the real positions of a (batch, seq, ...), (seq, batch, ...) or (batch, ch, seq)
    tensor; return any other tensor whole."""
    b, t = mask.shape
    if tensor.dim() >= 2 and tuple(tensor.shape[:2]) == (b, t):
        return tensor[mask]
    if tensor.dim() >= 2 and tuple(tensor.shape[:2]) == (t, b):
        return tensor.transpose(0, 1)[mask]
    if tensor.dim() >= 3 and tensor.shape[0] == b and tensor.shape[-1] == t:
        return tensor.movedim(-1, 1)[mask]
    return tensor


def _can_be_sparse(layer: nn.Module) -> bool:
    """Say whether a table can give sparse gradients (O(tokens), not O(vocab))."""
    weight = layer.weight
    return (
        weight.layout == torch.strided
        and weight.device.type in ("cpu", "cuda")
        and not (isinstance(layer, nn.EmbeddingBag) and layer.mode == "max")
    )


def _reachable_rows(
    batch: PadBatch, tables: Sequence[Table], layers: Mapping[str, nn.Module]
) -> dict[int, torch.Tensor]:
    """Map each audited table's weight to the rows the invariance check compares."""
    reach = {}
    for t in tables:
        weight = layers[t.path].weight
        rows = batch.reachable_rows(t.rows, t.pad_idx)
        reach[id(weight)] = torch.from_numpy(rows).to(weight.device)
    return reach


def _rows_of(grad: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Return ``grad[rows]`` densely, for a dense or sparse gradient (rows sorted)."""
    if not grad.is_sparse:
        return grad.index_select(0, rows)
    grad = grad.coalesce()
    index, values = grad.indices()[0], grad.values()
    out = values.new_zeros((len(rows), *values.shape[1:]))
    if len(index):
        at = torch.searchsorted(index, rows).clamp(max=len(index) - 1)
        hit = index[at] == rows
        out[hit] = values[at[hit]]
    return out


def _grad_words(handle: TorchHandle, t: Table, info: Any) -> tuple[str, str, str]:
    cls = t.kind.split("(")[0]
    if t.tied_with:
        others = ", ".join(t.tied_with)
        return (
            "tied",
            f"the weight is shared with {others} (tied weights): its gradient reaches "
            "every row, the pad row included, whatever padding_idx says",
            f"untie the weights, zero the pad row's gradient with "
            f"weight.register_hook(lambda g: g.index_fill(0, torch.tensor([{t.pad_idx}]), 0)), "
            "or accept it knowingly with allow=('tied',)",
        )
    if not t.own_pad:
        return (
            "no_padding_idx",
            f"nn.{cls} has no padding_idx, so every pad token trains row {t.pad_idx} "
            "like a real token",
            f"construct it with padding_idx={t.pad_idx}: "
            f"nn.{cls}({t.rows}, {t.dim}, padding_idx={t.pad_idx})",
        )
    return (
        "weight_reuse",
        f"padding_idx={t.pad_idx} is set, yet the row gets gradient: the weight is read "
        "outside the layer's lookup (F.embedding without padding_idx, a matmul with .weight)",
        "pass padding_idx= wherever the weight is looked up, or zero the pad row's gradient",
    )


def _forward_words(handle: TorchHandle, t: Table, info: Any) -> tuple[str, str, str]:
    layer = handle._layers[t.path]
    if getattr(layer, "max_norm", None):
        return (
            "max_norm",
            f"max_norm={layer.max_norm} renormalised it in the forward pass: every looked-up "
            "row whose norm exceeds max_norm is rescaled in place, outside autograd, and "
            "this pad row is not zero",
            f"zero the pad row (with torch.no_grad(): {t.path}.weight[{t.pad_idx}] = 0) "
            "or drop max_norm",
        )
    return (
        "forward",
        "the forward pass wrote to the embedding weight in place",
        "do not modify the weight inside forward",
    )


def _optimizer_words(handle: TorchHandle, t: Table, info: Any) -> tuple[str, str, str]:
    if info.weight_decay:
        return (
            "weight_decay",
            f"weight decay moved a non-zero pad row: {info.name}(weight_decay="
            f"{info.weight_decay:g}) shrinks every row every step, although the pad row's "
            "gradient is zero",
            "put the embedding in a param group with weight_decay=0, or zero the pad row "
            "once (a zero row stays zero)",
        )
    return (
        "optimizer",
        f"{info.name} moved the row although its gradient is zero (momentum or a stateful update)",
        "exclude the table from that update, or zero the pad row",
    )


def _invariance_words(handle: TorchHandle, t: Table | None, info: Any) -> tuple[str, str, str]:
    module = dict(handle.model.named_modules()).get(info) if info else None
    attention = (
        nn.MultiheadAttention,
        nn.TransformerEncoderLayer,
        nn.TransformerEncoder,
        nn.TransformerDecoderLayer,
        nn.TransformerDecoder,
        nn.Transformer,
    )
    if isinstance(module, attention):
        why = "attention attends to the pad keys: no key padding mask was passed"
        fix = (
            "pass src_key_padding_mask=~mask (key_padding_mask=~mask for "
            "nn.MultiheadAttention), True at pad positions"
        )
    elif isinstance(module, nn.RNNBase):
        name = type(module).__name__
        why = f"{name} runs over the pad positions, so its final state depends on them"
        fix = (
            "pack the batch: nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, "
            "enforce_sorted=False)"
        )
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        why = "its batch statistics include the pad positions"
        fix = "normalise over real positions only, or use LayerNorm"
    else:
        why = (
            "a pooling or mixing step treats pad positions as data (an unmasked mean or sum "
            "over the sequence, attention without a mask)"
        )
        fix = "mask it: (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)"
    return "invariance", why, fix


_EXPLAIN: dict[str, Callable[[TorchHandle, Any, Any], tuple[str, str, str]]] = {
    "grad": _grad_words,
    "nonfinite": lambda h, t, i: (
        "nonfinite",
        "the model produced nan/inf on the padded batch (a division by a zero pad count, "
        "log(0) at pad positions)",
        "guard the pad positions (clamp denominators, mask before log) and rerun with the seed",
    ),
    "forward": _forward_words,
    "optimizer": _optimizer_words,
    "invariance": _invariance_words,
}
