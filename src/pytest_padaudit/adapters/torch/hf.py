"""Hugging Face transformers (PyTorch) models: pad id, vocabulary, inputs and words.

A ``PreTrainedModel`` is recognised from ``sys.modules`` alone: this module never imports
transformers. The handle is the PyTorch one with four differences: the pad id of the input
embedding comes from ``config.pad_token_id``, the vocabulary from ``config.vocab_size``,
the batch is passed as ``input_ids=`` and ``attention_mask=`` (plus decoder inputs for
encoder-decoder models), and findings name the LM head when the weights are tied.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from collections.abc import Mapping
from typing import Any, TypeGuard, cast

import torch
from torch import nn

from ...core.errors import PadAuditError
from ...core.handle import ROOT, Table, pad_source
from ...core.options import AuditOptions
from .handle import _TABLES, TorchBatch, TorchHandle
from .tables import uncompiled


def is_hf_model(model: object) -> TypeGuard[nn.Module]:
    """Say whether ``model`` is a transformers ``PreTrainedModel`` (PyTorch)."""
    utils = sys.modules.get("transformers.modeling_utils")
    base = getattr(utils, "PreTrainedModel", None)
    return base is not None and isinstance(model, base)


def adapt(model: object, options: AuditOptions) -> HFHandle | None:
    """Return a handle for a transformers PyTorch model (or its torch.compile), else None."""
    model = uncompiled(model)
    return HFHandle(model, options) if is_hf_model(model) else None


def shift_right(ids: torch.Tensor, mask: torch.Tensor, start: int, pad: int) -> torch.Tensor:
    """Return decoder inputs: each sequence shifted right behind ``start``, pads kept.

    Works for either padding side: the first real column of each row gets ``start``.
    """
    shifted = torch.roll(ids, 1, dims=1)
    before = torch.roll(mask, 1, dims=1)
    before[:, 0] = False
    shifted = torch.where(mask & ~before, torch.full_like(ids, start), shifted)
    return torch.where(mask, shifted, torch.full_like(ids, pad))


class HFHandle(TorchHandle):
    """Audit a transformers ``PreTrainedModel`` through its config and keyword inputs."""

    has_input_table = True

    def __init__(self, model: nn.Module, options: AuditOptions) -> None:
        super().__init__(model, options)
        self.config = model.config
        self._params = _parameters(model)

    # -- discovery -------------------------------------------------------------------
    def _input_weight(self) -> nn.Parameter | None:
        try:
            layer = cast(Any, self.model).get_input_embeddings()
        except (NotImplementedError, AttributeError):
            return None
        return getattr(layer, "weight", None)

    def config_pad(self) -> int | None:
        """Return ``config.pad_token_id`` (None when unset)."""
        pad = getattr(self.config, "pad_token_id", None)
        return pad if isinstance(pad, int) and not isinstance(pad, bool) else None

    def decoder_start(self) -> int | None:
        """Return the decoder's start id (config, generation config, else the pad id)."""
        if not getattr(self.config, "is_encoder_decoder", False):
            return None
        for source in (self.config, getattr(self.model, "generation_config", None)):
            start = getattr(source, "decoder_start_token_id", None)
            if isinstance(start, int):
                return start
        return self.config_pad()

    def input_table(self) -> str | None:
        """Return the path of the input embedding (``get_input_embeddings()``)."""
        weight = self._input_weight()
        return None if weight is None else self._path_of.get(id(weight))

    def tables(self, pad_idx: int | Mapping[str, int] | None) -> list[Table]:
        """List the tables once per weight; the input embedding's own pad id is its
        ``padding_idx``, else ``config.pad_token_id``."""
        token_weight = self._input_weight()
        config = self.config_pad()
        found = []
        for t in super().tables(pad_idx):  # one table per weight (T5's shared embed_tokens)
            weight = self._layers[t.path].weight
            if weight is token_weight and t.own_pad_idx is None and config is not None:
                own = config + t.rows if config < 0 else config
                pad = t.pad_idx if t.pad_idx is not None else own
                t = dataclasses.replace(t, pad_idx=pad, own_pad_idx=own)
            found.append(t)
        token = [t for t in found if self._layers[t.path].weight is token_weight]
        if token and token[0].pad_idx is None:
            raise PadAuditError(
                f"{self.model_class} has no pad token: config.pad_token_id is None and its "
                f"input embedding {token[0].path} has no padding_idx. Pass pad_idx= the id "
                "your tokenizer pads with (e.g. pad_idx=tokenizer.pad_token_id after "
                "tokenizer.pad_token = tokenizer.eos_token), or set config.pad_token_id"
            )
        return self._remember(found)

    def default_vocab_size(self) -> int | None:
        vocab = getattr(self.config, "vocab_size", None)
        return vocab if isinstance(vocab, int) and vocab > 1 else None

    # -- passes ----------------------------------------------------------------------
    def inputs(self, batch: TorchBatch) -> dict[str, Any]:
        """Return the keyword inputs of the default forward pass."""
        kwargs: dict[str, Any] = {"input_ids": batch.ids, "attention_mask": batch.mask.long()}
        start = self.decoder_start()
        if start is not None and "decoder_input_ids" in self._params:
            kwargs["decoder_input_ids"] = shift_right(batch.ids, batch.mask, start, batch.pad_idx)
            if "decoder_attention_mask" in self._params:
                kwargs["decoder_attention_mask"] = batch.mask.long()
        if "use_cache" in self._params:  # no past_key_values in the outputs
            kwargs["use_cache"] = False
        return kwargs

    def step_inputs(self, tb: TorchBatch) -> dict[str, Any]:
        """Return the default inputs, with labels a loss head takes (-100 at pads)."""
        kwargs = self.inputs(tb)
        if "labels" in self._params:
            kwargs["labels"] = synthetic_labels(self.model, tb)
        return kwargs

    def _forward(self, batch: TorchBatch) -> Any:
        if self.options.forward is not None or self.options.step or batch.feed is not None:
            return super()._forward(batch)
        kwargs = self.inputs(batch)
        return self.call_model(
            lambda: self.model(**kwargs),
            batch.numpy,
            f"model({', '.join(f'{k}=' for k in kwargs)})",
            advice="forward=lambda model, batch: model(input_ids=batch.ids, "
            "attention_mask=batch.mask.long(), ...)",
        )

    # -- words -----------------------------------------------------------------------
    def explain(
        self, cause: str, table: Table | None, options: AuditOptions, info: Any = None
    ) -> tuple[str, str, str]:
        if cause == "grad" and table is not None:
            return self._grad_words(table)
        if cause == "tied" and table is not None:
            return self._tied_words(table)
        if cause == "pad_mismatch" and table is not None and not table.own_pad:
            return self._mismatch_words(table)
        if cause == "invariance":
            words = self._invariance_words(info, options)
            if words is not None:
                return words
        return super().explain(cause, table, options, info)

    def _also(self, t: Table) -> str:
        start = self.decoder_start()
        return (
            f"; besides, the decoder starts every target with the pad id "
            f"(decoder_start_token_id={start}), so row {t.pad_idx} is a real decoder input"
            if start is not None and start == t.pad_idx
            else ""
        )

    def _zero_grad(self, t: Table) -> str:
        return (
            "zero the pad row's gradient with model.get_input_embeddings().weight."
            f"register_hook(lambda g: g.index_fill(0, torch.tensor([{t.pad_idx}]), 0))"
        )

    def _tied_words(self, t: Table) -> tuple[str, str, str]:
        modules = dict(self.model.named_modules())
        heads = [p for p in t.tied_with if not isinstance(modules.get(p), _TABLES)]
        tie = getattr(self.config, "tie_word_embeddings", None)
        return (
            "tied",
            f"the LM head {', '.join(heads)} shares this weight (tied input/output "
            f"embeddings, tie_word_embeddings={tie}): the gradient of the logits reaches "
            f"every row of the output projection, pad row {t.pad_idx} included, whatever "
            "padding_idx says — in training too, where the softmax gives the pad class "
            f"gradient at every position{self._also(t)}",
            "accept it knowingly with allow=('tied',) (the pad row then trains as an "
            "output class, as in the released model), untie the LM head "
            "(tie_word_embeddings=False, where the architecture honours it), "
            f"or {self._zero_grad(t)}",
        )

    def _mismatch_words(self, t: Table) -> tuple[str, str, str]:
        source = pad_source(self.options, t.pad_idx)
        return (
            "pad_mismatch",
            f"your data pads with {t.pad_idx} ({source}) but {self.model_class} has "
            f"config.pad_token_id={t.own_pad_idx}: row {t.pad_idx} is looked up at every pad "
            "position and trains like a real token, and the model (generate(), loss "
            f"masking, decoder inputs) treats {t.own_pad_idx} as the pad",
            f"pad your data with {t.own_pad_idx} (tokenizer.pad_token_id = {t.own_pad_idx}, "
            f"pad_idx={t.own_pad_idx}), or set model.config.pad_token_id = {t.pad_idx}",
        )

    def _grad_words(self, t: Table) -> tuple[str, str, str]:
        """Words for the gradient through the lookups (the tied head's: _tied_words)."""
        also, zero_grad = self._also(t), self._zero_grad(t)
        if not t.own_pad:
            source = (
                f"config.pad_token_id={t.pad_idx}"
                if self.options.pad_idx is None
                else f"pad_idx={t.pad_idx}"
            )
            return (
                "no_padding_idx",
                f"{t.path} is an nn.Embedding without padding_idx (the pad id comes from "
                f"{source}), so every pad token trains row {t.pad_idx} like a real "
                f"token{also}",
                f"set model.get_input_embeddings().padding_idx = {t.pad_idx} (and zero that "
                f"row), {zero_grad}, or accept it knowingly with allow=('no_padding_idx',)",
            )
        return super().explain("grad", t, self.options, None)

    def _invariance_words(self, first: Any, options: AuditOptions) -> tuple[str, str, str] | None:
        first = str(first or "")
        if options.padding_side != "left" or not first:
            return None
        if first.rsplit(".", 1)[-1] == "pooler":
            return (
                "invariance",
                f"the pooler of {self.model_class} reads the first column ([CLS]); with left "
                "padding that column is a pad in every shorter sequence",
                "pad on the right for encoders with a first-token pooler "
                "(tokenizer.padding_side = 'right'), or pool over real positions",
            )
        positions = [
            path
            for path, layer in self.model.named_modules()
            if isinstance(layer, _TABLES)
            and layer.padding_idx is None
            and ("position" in path or path.rsplit(".", 1)[-1] in ("wpe", "embed_positions"))
        ]
        if first != ROOT and not any(p == first or p.startswith(first + ".") for p in positions):
            return None
        if not positions:
            return None
        return (
            "invariance",
            f"{self.model_class} numbers positions from the first column when no "
            f"position_ids are passed, so left padding shifts the position of every real "
            f"token ({', '.join(positions)} looks up different rows)",
            "pass position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0), as generate() "
            "does, e.g. forward=lambda model, batch: model(input_ids=batch.ids, "
            "attention_mask=batch.mask.long(), position_ids=(batch.mask.long().cumsum(-1) "
            "- 1).clamp(min=0)); or pad on the right",
        )


def synthetic_labels(model: nn.Module, tb: TorchBatch) -> torch.Tensor:
    """Return labels of the shape the model's head expects, seeded by the batch.

    Language-model heads get the ids; token classifiers a class per token (its id modulo
    the classes); sequence classifiers a seeded class per row. Pad positions hold -100,
    the ignore index, so a wider batch has the same labels at its real positions.
    """
    name = type(model).__name__
    classes = int(getattr(model.config, "num_labels", 2) or 2)
    if "SequenceClassification" in name:
        generator = torch.Generator().manual_seed(tb.numpy.seed)
        return torch.randint(0, classes, (tb.ids.shape[0],), generator=generator).to(tb.ids.device)
    labels = tb.ids % classes if "TokenClassification" in name else tb.ids.clone()
    return labels.masked_fill(~tb.mask, -100)


def _parameters(model: nn.Module) -> frozenset[str]:
    """Return the names of the keyword parameters ``model.forward`` declares."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return frozenset()
    return frozenset(
        name for name, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    )
