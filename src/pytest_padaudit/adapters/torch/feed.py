"""What a torch model is fed: the user's batch as arrays, and the loss ``step=`` returns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ...core.errors import PadAuditError

#: fixes, in PyTorch and Hugging Face idiom, for the findings on a user's batch.
PIPELINE_FIXES = {
    "pad_mismatch": "pad with the model's pad id: tokenizer.pad_token_id = "
    "model.config.pad_token_id (or DataCollatorWithPadding(tokenizer) with that tokenizer)",
    "labels_at_pads": "pad labels with -100: DataCollatorForTokenClassification(tokenizer, "
    "label_pad_token_id=-100) or DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100), "
    "or labels[attention_mask == 0] = -100 before the loss",
    "step": "pass the attention mask (every key of the batch) in the step, e.g. "
    "step=lambda m, b: m(**b).loss",
}


def batch_arrays(batch: Any) -> dict[str, np.ndarray]:
    """Return the user's batch as arrays by key (a tensor of ids is ``input_ids``)."""
    items = batch.items() if isinstance(batch, Mapping) else [("input_ids", batch)]
    out = {}
    for key, value in items:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            out[key] = (value.float() if value.dtype == torch.bfloat16 else value).numpy()
            continue
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise PadAuditError(
                f"batch[{key!r}] is a {type(value).__qualname__}: pass tensors, e.g. "
                "tokenizer(texts, padding=True, return_tensors='pt')"
            )
        out[key] = array
    return out


def step_loss(value: Any) -> torch.Tensor:
    """Return the scalar loss ``step=`` returned; refuse anything else."""
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        got = (
            f"a tensor of shape {list(value.shape)}"
            if isinstance(value, torch.Tensor)
            else type(value).__qualname__
        )
        raise PadAuditError(
            f"step= returned {got}: return the scalar loss of one training step, "
            "e.g. step=lambda m, b: m(**b).loss"
        )
    if not value.requires_grad:
        raise PadAuditError(
            "step= returned a loss with no gradient (computed under torch.no_grad(), or "
            "detached): return the loss before backward(), e.g. step=lambda m, b: m(**b).loss"
        )
    return value.reshape(())
