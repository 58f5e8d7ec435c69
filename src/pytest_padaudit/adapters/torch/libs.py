"""sentence-transformers and PEFT (LoRA) models, audited as they are.

Both are recognised from ``sys.modules`` alone: this module never imports either library.

- A ``SentenceTransformer`` is fed its features dict (``input_ids``, ``attention_mask`` and
  ``token_type_ids`` where its tokenizer has them); the pad id and padding side come from
  ``model.tokenizer`` and are checked against the underlying transformer's config.
- A PEFT ``PeftModel`` is audited through the transformers path. A LoRA embedding
  (``lora_embedding_A``/``lora_embedding_B``) is audited by its effective row
  ``W[pad] + scaling * B @ A[:, pad]``: that row is what the model emits and what trains.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from ...core.batch import PadBatch
from ...core.handle import OptimizerInfo, Table, Trace
from ...core.options import AuditOptions
from .handle import TorchBatch, TorchHandle
from .hf import HFHandle, is_hf_model
from .optim import build_optimizer, pad_row_grad, step_eagerly
from .state import floating_tensors, to_numpy
from .tables import uncompiled


def is_sentence_transformer(model: object) -> bool:
    """Say whether ``model`` is a sentence-transformers model fed a features dict.

    ``SentenceTransformer``, ``CrossEncoder`` and ``SparseEncoder`` are siblings under
    ``sentence_transformers.base.model.BaseModel``: a Sequential of modules whose first one
    wraps the transformers model.
    """
    module = sys.modules.get("sentence_transformers")
    classes = [getattr(module, "SentenceTransformer", None)]
    classes.append(getattr(sys.modules.get("sentence_transformers.base.model"), "BaseModel", None))
    return any(isinstance(cls, type) and isinstance(model, cls) for cls in classes)


def is_peft_model(model: object) -> bool:
    """Say whether ``model`` is a ``peft.PeftModel``."""
    module = sys.modules.get("peft.peft_model")
    cls = getattr(module, "PeftModel", None)
    return isinstance(cls, type) and isinstance(model, cls)


def lora_embeddings(model: nn.Module) -> dict[int, nn.Module]:
    """Map id(base weight) of each LoRA embedding's base table to the LoRA module."""
    found = {}
    for module in model.modules():
        base = getattr(module, "base_layer", None)
        if isinstance(getattr(module, "lora_embedding_A", None), nn.ParameterDict) and isinstance(
            base, nn.Embedding
        ):
            found[id(base.weight)] = module
    return found


def adapt(model: object, options: AuditOptions) -> TorchHandle | None:
    """Return a handle for a SentenceTransformer, a PeftModel or a model with LoRA tables."""
    model = uncompiled(model)
    if not isinstance(model, nn.Module):
        return None
    if is_sentence_transformer(model) and _inner_transformer(model) is not None:
        return SentenceTransformerHandle(model, options)
    if is_peft_model(model) and is_hf_model(_peft_base(model)):
        return PeftHFHandle(model, options)
    if "peft" in sys.modules and lora_embeddings(model):
        return (
            LoraHFHandle(model, options) if is_hf_model(model) else LoraTorchHandle(model, options)
        )
    return None


def _peft_base(model: nn.Module) -> object:
    try:
        return cast(Any, model).get_base_model()
    except Exception:  # an adapter type without a base model
        return None


def _inner_transformer(model: nn.Module) -> nn.Module | None:
    """Return the transformers model inside a SentenceTransformer's first module."""
    for module in model.children():
        for name in ("model", "auto_model"):
            inner = getattr(module, name, None)
            if is_hf_model(inner):
                return inner
        return None
    return None


if TYPE_CHECKING:  # what the mixin is mixed into, for its super() calls
    _LoraBase = TorchHandle
else:
    _LoraBase = object


class LoraMixin(_LoraBase):
    """Audit a LoRA embedding by its effective row ``W[pad] + scaling * B @ A[:, pad]``."""

    def _lora(self, t: Table) -> nn.Module | None:
        if not hasattr(self, "_lora_of"):
            self._lora_of = lora_embeddings(self.model)
        return self._lora_of.get(id(self._layers[t.path].weight))

    def _adapters(self, t: Table) -> list[tuple[nn.Parameter, nn.Parameter, float]]:
        lora: Any = self._lora(t)  # a PEFT LoRA Embedding
        if lora is None or getattr(lora, "disable_adapters", False) or lora.merged:
            return []
        active = [a for a in lora.active_adapters if a in lora.lora_embedding_A]
        return [
            (lora.lora_embedding_A[a], lora.lora_embedding_B[a], float(lora.scaling[a]))
            for a in active
        ]

    def tables(self, pad_idx: int | Mapping[str, int] | None) -> list[Table]:
        found = []
        for t in super().tables(pad_idx):
            parts = self._adapters(t)
            if parts:
                trainable = t.trainable or any(p.requires_grad for a, b, _ in parts for p in (a, b))
                rank = ", ".join(str(a.shape[0]) for a, _, _ in parts)
                t = dataclasses.replace(
                    t,
                    kind=t.kind + "(lora)",
                    trainable=trainable,
                    notes=(*t.notes, f"LoRA r={rank}: audited by its effective row"),
                )
            found.append(t)
        return self._remember(found)

    @contextmanager
    def _preserve(self, seed: int) -> Iterator[None]:
        with super()._preserve(seed):
            lora = lora_embeddings(self.model)
            for layer, flag in self._sparse:  # LoRA looks A up through A.T: dense only
                if id(layer.weight) in lora:
                    layer.sparse = flag
            yield

    def read_pad_rows(self, tables: Sequence[Table]) -> dict[str, np.ndarray]:
        rows = super().read_pad_rows(tables)
        with torch.no_grad():
            for t in tables:
                for a, b, scale in self._adapters(t):
                    rows[t.path] = rows[t.path] + to_numpy(scale * (b @ a[:, t.pad_idx]))
        return rows

    def _pad_grad(self, table: Table) -> np.ndarray | None:
        """The effective row's first-order change direction under a gradient step:
        ``gW[pad] + scaling * (gB @ A[:, pad] + B @ gA[:, pad])``."""
        own = super()._pad_grad(table)
        parts = self._adapters(table)
        if not parts:
            return own
        total = None if own is None else torch.from_numpy(own)
        with torch.no_grad():
            for a, b, scale in parts:
                ga, gb = _dense(a.grad), _dense(b.grad)
                pad = table.pad_idx
                term = torch.zeros(b.shape[0], dtype=torch.float32, device=b.device)
                if gb is not None:
                    term = term + (gb @ a[:, pad]).float()
                if ga is not None:
                    term = term + (b @ ga[:, pad]).float()
                term = (scale * term).cpu()
                total = term if total is None else total + term
        return None if total is None else total.numpy()

    def make_optimizer(self, tables: Sequence[Table], spec: Any) -> OptimizerInfo:
        lora = [t for t in tables if self._adapters(t)]
        plain = super().make_optimizer([t for t in tables if t not in lora], spec)
        if not lora:
            return plain
        params: dict[int, nn.Parameter] = {}
        for t in lora:
            weight = self._layers[t.path].weight
            if weight.requires_grad:  # stepped whole: saved whole
                if all(p is not weight for p, _ in self._saved):
                    self._saved.append((weight, weight.detach().clone()))
                params[id(weight)] = cast(nn.Parameter, weight)  # the base table's own
            for a, b, _ in self._adapters(t):  # A and B are saved whole by preserve()
                for p in (a, b):
                    if p.requires_grad:
                        params[id(p)] = p
        optimizer = build_optimizer(list(params.values()), None, spec)
        decay = max(float(g.get("weight_decay", 0.0) or 0.0) for g in optimizer.param_groups)
        return OptimizerInfo(type(optimizer).__name__, decay, _Steps(plain, optimizer))

    def invariance_pass(
        self, batch: Any, plan: Any, tables: Sequence[Table], *args: Any, **kw: Any
    ):
        grads, outputs = super().invariance_pass(batch, plan, tables, *args, **kw)
        names = {id(p): name for name, p in self.model.named_parameters()}
        for t in tables:
            rows = torch.from_numpy(batch.reachable_rows(t.rows, t.pad_idx))
            for a, _, _ in self._adapters(t):  # A's pad column is the pad row's: left out
                if a.grad is not None and id(a) in names:
                    dense = cast(torch.Tensor, _dense(a.grad))  # a.grad is not None
                    grads[names[id(a)]] = to_numpy(dense[:, rows.to(a.device)])
        return grads, outputs

    def explain(self, cause: str, table: Table | None, options: AuditOptions, info: Any = None):
        if table is not None and self._adapters(table) and cause in ("grad", "optimizer"):
            words = self._lora_words(table)
            if words is not None:
                return words
        return super().explain(cause, table, options, info)

    def _lora_words(self, t: Table) -> tuple[str, str, str] | None:
        with torch.no_grad():
            column = max(float(a[:, t.pad_idx].abs().max()) for a, _, _ in self._adapters(t))
        if column == 0.0 and self._layers[t.path].padding_idx is None:
            return None  # the table's own no_padding_idx words
        return (
            "weight_reuse",
            f"LoRA: the effective pad row is {t.path}.weight[{t.pad_idx}] + scaling * "
            f"lora_embedding_B @ lora_embedding_A[:, {t.pad_idx}], and lora_embedding_B is "
            f"shared by every row: with lora_embedding_A[:, {t.pad_idx}] non-zero (max|a| = "
            f"{column:.3g}) the real tokens' gradients move the pad row",
            f"zero the pad column once: with torch.no_grad(): for a in "
            f"<lora module>.lora_embedding_A.values(): a[:, {t.pad_idx}] = 0 (padding_idx then "
            "keeps it zero; PEFT's default init_lora_weights=True starts A at zero), or accept "
            "it knowingly with allow=('weight_reuse',)",
        )


def _dense(grad: torch.Tensor | None) -> torch.Tensor | None:
    return None if grad is None else (grad.to_dense() if grad.is_sparse else grad)


@dataclasses.dataclass
class _Steps:
    """Step the plain tables' pad rows and the LoRA parameters together."""

    plain: OptimizerInfo
    optimizer: torch.optim.Optimizer

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> None:
        if self.plain.state is not None:
            self.plain.state.step(closure)
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    p.grad = p.grad.to_dense()
        step_eagerly(self.optimizer)


class LoraTorchHandle(LoraMixin, TorchHandle):
    """A plain ``nn.Module`` holding PEFT LoRA embeddings."""


class LoraHFHandle(LoraMixin, HFHandle):
    """A transformers model holding PEFT LoRA embeddings (``inject_adapter_in_model``)."""


class PeftHFHandle(LoraMixin, HFHandle):
    """A ``PeftModel`` over a transformers model: config, keyword inputs, LoRA tables."""

    def __init__(self, model: nn.Module, options: AuditOptions) -> None:
        super().__init__(model, options)
        base = _peft_base(model)
        self.model_class = f"{type(model).__qualname__}({type(base).__qualname__})"
        from .hf import _parameters

        self._params = _parameters(cast(nn.Module, base))  # adapt(): is_hf_model(base)


class SentenceTransformerHandle(LoraMixin, HFHandle):
    """Audit a ``SentenceTransformer`` (or ``CrossEncoder``): features dict in and out."""

    def __init__(self, model: nn.Module, options: AuditOptions) -> None:
        TorchHandle.__init__(self, model, options)
        self.inner = cast(nn.Module, _inner_transformer(model))  # adapt(): not None
        self.config = self.inner.config
        self._params = frozenset()
        self.tokenizer = getattr(model, "tokenizer", None)
        tok_pad = getattr(self.tokenizer, "pad_token_id", None)
        self.tok_pad = tok_pad if isinstance(tok_pad, int) and tok_pad >= 0 else None
        side = getattr(self.tokenizer, "padding_side", None)
        if options.tokenizer is None and options.pad_idx is None and side in ("left", "right"):
            # the model's own tokenizer pads the data: its side is the audit's (the options
            # record is the one the engine runs with, built for this audit alone)
            object.__setattr__(options, "padding_side", side)

    def _input_weight(self) -> nn.Parameter | None:
        try:
            return cast(Any, self.inner).get_input_embeddings().weight
        except (NotImplementedError, AttributeError):
            return None

    def decoder_start(self) -> int | None:
        return None

    def tables(self, pad_idx: int | Mapping[str, int] | None) -> list[Table]:
        if pad_idx is None and self.tok_pad is not None:
            path = self.input_table()
            pad_idx = self.tok_pad if path is None else {path: self.tok_pad}
        return super().tables(pad_idx)

    def inputs(self, batch: TorchBatch) -> dict[str, Any]:
        mask = batch.mask.long()
        features: dict[str, Any] = {"input_ids": batch.ids, "attention_mask": mask}
        names = getattr(self.tokenizer, "model_input_names", None) or ()
        if "token_type_ids" in names:
            features["token_type_ids"] = torch.zeros_like(batch.ids)
        return features

    def _forward(self, batch: TorchBatch) -> Any:
        if self.options.forward is not None:
            return TorchHandle._forward(self, batch)
        return _call(self, self.inputs(batch), batch)

    def explain(self, cause: str, table: Table | None, options: AuditOptions, info: Any = None):
        if cause == "pad_mismatch" and table is not None and self._from_tokenizer():
            return (
                "pad_mismatch",
                f"model.tokenizer pads with {table.pad_idx} (model.tokenizer.pad_token_id="
                f"{table.pad_idx}) but the transformer's {table.path} treats "
                f"{table.own_pad_idx} as the pad (padding_idx / config.pad_token_id="
                f"{table.own_pad_idx}): row {table.pad_idx} is looked up at every pad "
                "position and trains like a real token",
                f"make them agree: model.tokenizer.pad_token = model.tokenizer.convert_ids_to_"
                f"tokens({table.own_pad_idx}), or set the transformer's config.pad_token_id "
                f"and the embedding's padding_idx to {table.pad_idx} before training",
            )
        if cause == "invariance" and info:
            words = self._pooling_words(str(info))
            if words is not None:
                return words
        return super().explain(cause, table, options, info)

    def trace(self, batch: PadBatch, perturb: int | None = None) -> Trace:
        """Record each module's FULL inputs before it runs (sentence-transformers modules
        update the features dict they are given in place) and its outputs after."""
        trace = Trace(owner=self.model_class)
        names = {module: path for path, module in self.model.named_modules()}
        tb = self._tensors(batch)
        before: dict[int, list[list[np.ndarray]]] = {}

        def full(values: Any) -> list[np.ndarray]:
            return [to_numpy(t) for t in floating_tensors(values)]

        def enter(module: nn.Module, args: Any) -> None:
            before.setdefault(id(module), []).append(full(args))

        def leave(module: nn.Module, args: Any, output: Any) -> None:
            inputs = before[id(module)].pop()
            trace.entries.append((names.get(module, "?"), inputs, full(output)))

        hooks = [m.register_forward_pre_hook(enter) for m in self.model.modules()]
        hooks += [m.register_forward_hook(leave) for m in self.model.modules()]
        self._hooked_forward(tb, perturb, hooks)
        return trace

    def _from_tokenizer(self) -> bool:
        return self.options.pad_idx is None or (
            self.tok_pad is not None and self.options.tokenizer is None
        )

    def _pooling_words(self, path: str) -> tuple[str, str, str] | None:
        top = path.split(".")[0]
        modules = dict(self.model.named_children())
        module = modules.get(top)
        if module is None or _inner_transformer(nn.ModuleList([module])) is not None:
            return None
        cls = type(module).__qualname__
        return (
            "invariance",
            f"module {top} of the SentenceTransformer ({cls}) ignores features"
            "['attention_mask']: it pools token_embeddings over every position, pads "
            "included, so the sentence embedding changes with the amount of padding",
            "pool over real tokens only: mask = features['attention_mask'].unsqueeze(-1)"
            ".to(x.dtype); features['sentence_embedding'] = (x * mask).sum(1) / "
            "mask.sum(1).clamp(min=1e-9) with x = features['token_embeddings'], or use "
            "sentence_transformers' own Pooling(dim, pooling_mode='mean') (its modes honour "
            "the mask)",
        )


def _call(handle: HFHandle, features: dict[str, Any], batch: TorchBatch) -> Any:
    return handle.call_model(
        lambda: handle.model(features),
        batch.numpy,
        f"model({{{', '.join(features)}}})",
        advice="forward=lambda model, batch: model({'input_ids': batch.ids, "
        "'attention_mask': batch.mask.long(), ...})",
    )


__all__ = ["adapt", "is_peft_model", "is_sentence_transformer", "lora_embeddings", "pad_row_grad"]
