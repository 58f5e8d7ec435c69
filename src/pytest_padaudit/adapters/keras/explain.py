"""Keras words for findings: causes and fixes (the mask-chain diagnosis is in mask_flow)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...core import explain as words
from ...core.handle import Table
from ...core.options import AuditOptions
from .mask_flow import mask_flow

if TYPE_CHECKING:
    from .handle import KerasHandle

_APPLY_MASK = "def call(self, inputs, mask=None): inputs * ops.cast(mask, inputs.dtype)[..., None]"
_APPLY_MASK_TF = (
    "def call(self, inputs, mask=None): inputs * tf.cast(mask, inputs.dtype)[..., None]"
)


def _legacy(handle: KerasHandle) -> bool:
    """Return True for tf_keras (Keras 2): its fixes are written with ``tf``, not ``ops``."""
    return getattr(handle, "framework", "keras") == "tf_keras"


def _apply_mask(handle: KerasHandle) -> str:
    return _APPLY_MASK_TF if _legacy(handle) else _APPLY_MASK


def _zero_row(t: Table, handle: KerasHandle | None = None) -> str:
    if handle is not None and _legacy(handle):
        return f"layer.embeddings[{t.pad_idx}].assign(tf.zeros({t.dim}))"
    return (
        f"layer.embeddings.assign(ops.slice_update(layer.embeddings, ({t.pad_idx}, 0), "
        f"ops.zeros((1, {t.dim}))))"
    )


def _names(entries: list[tuple[str, str]]) -> str:
    return ", ".join(f"{cls} {path!r}" for path, cls in entries)


def _unmasked_words(handle: KerasHandle, t: Table, options: AuditOptions) -> tuple[str, str, str]:
    flow = mask_flow(handle)
    parts = []
    if flow.unsupported:
        parts.append(
            f"{_names(flow.unsupported)} does not support masking and drops the mask, so "
            "the pad positions reach everything after it as data"
        )
    if flow.drops:
        parts.append(f"{_names(flow.drops)} drops the mask without applying it")
    if flow.passes:
        parts.append(
            f"{_names(flow.passes)} receives the mask without applying it (its call takes "
            "no mask=): its outputs at pad positions are computed from the pad row, the "
            "mask is only passed on"
        )
    if flow.applies:
        parts.append(f"layers that take the mask: {_names(flow.applies)}")
    if not any((flow.unsupported, flow.drops, flow.passes, flow.applies)):
        parts.append("no layer after the embedding receives its mask")
    if flow.output_masked:
        parts.append(
            "the output still carries the mask, so a loss over every position "
            f"(loss={options.loss!r}) trains the pad row; model.fit would weight its "
            "loss by that mask"
        )
    else:
        parts.append("the output carries no mask, so pad positions reach the loss as data")
    if flow.error:
        parts.append(f"(the mask could not be traced: {flow.error})")
    why = "mask_zero=True only protects the pad row where a layer applies the mask: " + (
        "; ".join(parts)
    )
    if flow.output_masked and options.loss != "masked":
        fix = (
            'audit with loss="masked" (it mirrors model.fit, which weights the loss by the '
            f"output's mask), or apply the mask in the layer: {_apply_mask(handle)}"
        )
    elif flow.unsupported or flow.drops:
        first = (flow.unsupported or flow.drops)[0]
        fix = (
            f"replace {first[1]} {first[0]!r} by a masking-aware layer (GlobalAveragePooling1D, "
            f"an RNN, a masked pooling) or apply the mask before it: {_apply_mask(handle)}"
        )
    else:
        fix = f"apply the mask before pad positions mix with real ones: {_apply_mask(handle)}"
    return "unmasked", why, fix


def _grad_words(
    handle: KerasHandle, t: Table, options: AuditOptions, info: Any
) -> tuple[str, str, str]:
    layer = handle.layer(t.path)
    cls = type(layer).__name__
    if t.own_pad_idx is not None and t.own_pad_idx != t.pad_idx:
        return _mismatch_words(handle, t, options, info)
    if t.tied_with and t.path not in handle.head_grads():
        return _tied_words(handle, t, options, info)  # a variable shared outside the head
    if not t.own_pad and handle.takes_padding_mask():
        return (
            "unmasked",
            f"{cls} {t.path!r} has no pad row of its own: {handle.model_class} masks pad "
            "positions with its padding_mask input, and its outputs at pad positions, "
            f"computed from row {t.pad_idx}, reach the loss (loss={options.loss!r})",
            "weight the loss by padding_mask, as keras-hub's preprocessors do (they return "
            'sample_weight=padding_mask for fit): audit with loss="masked", or a loss= that '
            "multiplies by batch.mask",
        )
    if not t.own_pad:
        remap = (
            ""
            if t.pad_idx == 0
            else f"; Keras masks only id 0, so make the tokenizer pad with 0 instead of {t.pad_idx}"
        )
        return (
            "no_padding_idx",
            f"{cls} {t.path!r} has no mask_zero, so no layer can mask the pad positions and "
            f"every pad token trains row {t.pad_idx} like a real token",
            f"construct it with mask_zero=True: {cls}({t.rows}, {t.dim}, mask_zero=True), and "
            f'use layers that apply the mask (or loss="masked", as model.fit does){remap}',
        )
    own, lookup = handle.grad_sources.get(t.path, (0.0, None))
    if lookup is not None and lookup == 0.0 and own > 0.0:
        return (
            "weight_reuse",
            f"the lookup of {t.path!r} gives the pad row no gradient, yet its variable gets "
            "some: the embeddings are read outside the layer's lookup (a matmul with "
            ".embeddings, e.g. tied output logits), where no mask applies",
            "mask the pad id out where the weight is reused (the pad column of the logits), "
            "or zero the pad row's gradient before the update",
        )
    return _unmasked_words(handle, t, options)


def _mismatch_words(
    handle: KerasHandle, t: Table, options: AuditOptions, info: Any
) -> tuple[str, str, str]:
    layer = handle.layer(t.path)
    if getattr(layer, "mask_zero", False):
        why = (
            f"{type(layer).__name__} {t.path!r} has mask_zero=True, which masks id "
            f"{t.own_pad_idx} only, but the data pads with {t.pad_idx} (pad_idx=): pad tokens "
            f"are real tokens to the mask, and row {t.pad_idx} trains"
        )
        fix = (
            f"make the tokenizer pad with {t.own_pad_idx} (Keras masks only id 0), or "
            "compute the mask from your pad id and pass it to the layers that take mask="
        )
    else:
        why = (
            f"the model's preprocessor pads with {t.own_pad_idx}, but pad_idx={t.pad_idx}: "
            f"data padded with {t.pad_idx} trains row {t.pad_idx}"
        )
        fix = (
            f"pad with the preprocessor's id ({t.own_pad_idx}), or drop pad_idx= so the "
            "audit takes it from the preprocessor"
        )
    return "pad_mismatch", why, fix


def _tied_words(
    handle: KerasHandle, t: Table, options: AuditOptions, info: Any
) -> tuple[str, str, str]:
    layer = handle.layer(t.path)
    if t.path in handle.head_grads():
        return (
            "tied",
            f"{type(layer).__name__} {t.path!r} also projects the hidden states to the "
            "logits (reverse=True, tie_weights=True): the logit of the pad id at every real "
            f"position trains row {t.pad_idx}, as it trains every row",
            "expected with tied weights: accept it with allow=('tied',) (it covers only the "
            "head's part), or mask the pad id's logit (logits at column "
            f"{t.pad_idx} set to a large negative value) before the loss",
        )
    others = ", ".join(t.tied_with)
    return (
        "tied",
        f"the embeddings variable is shared with {others} (tied weights): its gradient "
        "reaches every row, the pad row included, whatever mask_zero says",
        "untie the weights, mask the pad id out of the shared use (e.g. the pad column of "
        "tied logits), or accept it knowingly with allow=('tied',)",
    )


def _optimizer_words(
    handle: KerasHandle, t: Table, options: AuditOptions, info: Any
) -> tuple[str, str, str]:
    layer = handle.layer(t.path)
    constraint = getattr(layer, "embeddings_constraint", None)
    if getattr(layer, "lora_enabled", False):
        return (
            "weight_reuse",
            f"LoRA: the row's delta is lora_embeddings_a[{t.pad_idx}] @ lora_embeddings_b, and "
            "lora_embeddings_b is shared by every row, so the real tokens' gradients move "
            "the pad row although its own gradient is zero",
            f"zero lora_embeddings_a[{t.pad_idx}] (then the delta of the pad row stays zero), "
            "or accept it knowingly with allow=('weight_reuse',)",
        )
    if info.weight_decay:
        default = " (Keras' AdamW decays by 0.004 by default)" if info.name == "AdamW" else ""
        return (
            "weight_decay",
            f"weight decay moved a non-zero pad row: {info.name}(weight_decay="
            f"{info.weight_decay:g}) shrinks every row every step{default}, although the pad "
            "row's gradient is zero",
            "exclude the table from decay: optimizer.exclude_from_weight_decay("
            "var_names=['embeddings']) before the first step, or zero the pad row once "
            f"({_zero_row(t, handle)}; a zero row stays zero)",
        )
    if constraint is not None:
        return (
            "max_norm",
            f"embeddings_constraint={type(constraint).__name__} is applied to every row after "
            "each optimizer step, and this pad row is not zero",
            f"zero the pad row once ({_zero_row(t, handle)}) or drop the constraint",
        )
    return words.stateful(info.name)


def _invariance_words(
    handle: KerasHandle, t: Table | None, options: AuditOptions, info: Any
) -> tuple[str, str, str]:
    layer = handle.layer(info)
    layers = handle.keras.layers
    name = type(layer).__name__
    if isinstance(layer, layers.MultiHeadAttention):
        why = "attention attends to the pad keys: no mask reached it"
        fix = (
            "feed it from an Embedding with mask_zero=True (Keras passes query_mask and "
            "value_mask), or pass attention_mask=mask[:, None, :]"
        )
    elif isinstance(layer, (layers.RNN, layers.Bidirectional)):
        why = f"{name} runs over the pad positions without a mask, so its state depends on them"
        fix = "give the Embedding mask_zero=True (or add a Masking layer) so the RNN skips pads"
    elif isinstance(layer, layers.BatchNormalization):
        why = words.BATCH_STATISTICS
        fix = "normalise over real positions only, or use LayerNormalization"
    elif _legacy(handle):
        why = (
            "a pooling or mixing step treats pad positions as data (an unmasked "
            "tf.reduce_mean or sum over the sequence, a Lambda, a layer that drops the mask)"
        )
        fix = (
            "use GlobalAveragePooling1D fed by a masked input, or mask it: m = tf.cast(mask, "
            "x.dtype)[..., None]; tf.reduce_sum(x * m, 1) / tf.reduce_sum(m, 1)"
        )
    else:
        why = (
            "a pooling or mixing step treats pad positions as data (an unmasked ops.mean or "
            "sum over the sequence, a Lambda, a layer that drops the mask)"
        )
        fix = (
            "use GlobalAveragePooling1D fed by a masked input, or mask it: "
            "ops.sum(x * m[..., None], 1) / ops.sum(m, 1, keepdims=True) with m the mask"
        )
    return "invariance", why, fix


#: cause -> words, as :attr:`BaseHandle.WORDS` takes them.
WORDS: dict[str, Callable[[KerasHandle, Any, AuditOptions, Any], tuple[str, str, str]]] = {
    "grad": _grad_words,
    "nonfinite": lambda h, t, o, i: (
        "nonfinite",
        words.NONFINITE,
        f"guard the pad positions ({'tf.math' if _legacy(h) else 'ops'}.divide_no_nan, mask "
        "before log) and rerun with the seed",
    ),
    "forward": lambda h, t, o, i: (
        "forward",
        "the forward pass assigned to the embeddings variable (a call that uses .assign)",
        words.FORWARD_FIX.format(method="call"),
    ),
    "optimizer": _optimizer_words,
    "invariance": _invariance_words,
    "tied": _tied_words,
    "pad_mismatch": _mismatch_words,
}
