"""Torch words for findings: the cause and the fix in PyTorch idiom, per check."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

from ...core import explain as words
from ...core.handle import Table, pad_source

if TYPE_CHECKING:
    from .handle import TorchHandle

CONSTANT_LOSS = (
    "the loss does not depend on any trainable parameter of the model, so no gradient can "
    "be measured: pass loss=callable(output, batch) that computes a scalar from the output"
)


def _tied_words(handle: TorchHandle, t: Table, info: Any) -> tuple[str, str, str]:
    others = ", ".join(t.tied_with)
    return (
        "tied",
        f"the weight is shared with {others} (tied weights): the gradient of its output "
        "reaches every row, the pad row included, whatever padding_idx says",
        f"untie the weights, zero the pad row's gradient with "
        f"weight.register_hook(lambda g: g.index_fill(0, torch.tensor([{t.pad_idx}]), 0)), "
        "or accept it knowingly with allow=('tied',)",
    )


def _mismatch_words(handle: TorchHandle, t: Table, info: Any) -> tuple[str, str, str]:
    source = pad_source(handle.options, t.pad_idx)
    cls = t.kind.split("(")[0]
    return (
        "pad_mismatch",
        f"your data pads with {t.pad_idx} ({source}) but {t.path} has padding_idx="
        f"{t.own_pad_idx}: row {t.pad_idx} is looked up at every pad position and trains "
        f"like a real token, while padding_idx keeps row {t.own_pad_idx} aside",
        f"pad your data with {t.own_pad_idx} (pad_idx={t.own_pad_idx}), or construct the "
        f"layer with padding_idx={t.pad_idx}: nn.{cls}({t.rows}, {t.dim}, "
        f"padding_idx={t.pad_idx})",
    )


def _grad_words(handle: TorchHandle, t: Table, info: Any) -> tuple[str, str, str]:
    """Words for a pad-row gradient through the table's lookups (never the tied head's)."""
    cls = t.kind.split("(")[0]
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
        words.FORWARD_FIX.format(method="forward"),
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
    return words.stateful(info.name)


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
        why = words.BATCH_STATISTICS
        fix = "normalise over real positions only, or use LayerNorm"
    else:
        why = (
            "a pooling or mixing step treats pad positions as data (an unmasked mean or sum "
            "over the sequence, attention without a mask)"
        )
        fix = "mask it: (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)"
    return "invariance", why, fix


EXPLAIN: dict[str, Callable[[TorchHandle, Any, Any], tuple[str, str, str]]] = {
    "grad": _grad_words,
    "tied": _tied_words,
    "pad_mismatch": _mismatch_words,
    "nonfinite": lambda h, t, i: (
        "nonfinite",
        words.NONFINITE,
        "guard the pad positions (clamp denominators, mask before log) and rerun with the seed",
    ),
    "forward": _forward_words,
    "optimizer": _optimizer_words,
    "invariance": _invariance_words,
}
