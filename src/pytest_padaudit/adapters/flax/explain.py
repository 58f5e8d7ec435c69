"""Causes and fixes in Flax NNX's words.

``nnx.Embed`` has no ``padding_idx``: nothing in the layer stops the pad row's gradient,
so a pad row that trains through the lookups gets the cause the PyTorch and Keras
adapters give a layer without a pad id of its own, ``no_padding_idx`` (one ``allow=``
list works everywhere); the fix is to mask downstream or zero the row's gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flax import nnx

from ...core.handle import ROOT, Table
from ...core.options import AuditOptions
from . import optim

if TYPE_CHECKING:
    from .handle import FlaxHandle

_POOL = (
    "pool over real positions only: m = (ids != {pad})[..., None]; "
    "x = jnp.sum(x * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1)"
)


def expr(path: str) -> str:
    """Return the Python expression that reaches module ``path`` from ``model``."""
    if path == ROOT:
        return "model"
    out = "model"
    for part in path.split("."):
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out


def zero_grad_fix(t: Table) -> str:
    """Return the train-step line that zeroes ``t``'s pad-row gradient in ``nnx.grad``'s
    output."""
    keys = "".join(f"[{p}]" if p.isdigit() else f"[{p!r}]" for p in t.path.split("."))
    return (
        f"g = grads{keys}['embedding']; g[...] = g[...].at[{t.pad_idx}].set(0) "
        "(grads from nnx.grad, before optimizer.update)"
    )


def zero_row_fix(t: Table) -> str:
    """Return the line that zeroes ``t``'s pad row once."""
    e = f"{expr(t.path)}.embedding"
    return f"{e}[...] = {e}[...].at[{t.pad_idx}].set(0)"


def _grad(h: FlaxHandle, t: Table, o: AuditOptions, info: Any) -> tuple[str, str, str]:
    pad = t.pad_idx
    why = (
        f"nnx.Embed has no padding_idx, so nothing stops the gradient of row {pad}: every "
        "output the pad positions reach (an unmasked mean or sum, attention to pad keys, an "
        "RNN state read after the pads) trains it like a real token"
    )
    if o.loss == "all" and h.per_token:
        why += (
            '; per-token outputs count at pad positions too under loss="all" (audit with '
            'loss="masked" if your training loss masks them)'
        )
    fix = (
        f"mask the pad positions before they mix with real ones: {_POOL.format(pad=pad)}; "
        "attention: nnx.MultiHeadAttention(...)(x, mask=nnx.make_attention_mask(m, m)) with "
        f"m = ids != {pad}; RNNs: nnx.RNN(cell)(x, seq_lengths=lengths); or zero the row's "
        f"gradient: {zero_grad_fix(t)}"
    )
    return "no_padding_idx", why, fix


def _tied(h: FlaxHandle, t: Table, o: AuditOptions, info: Any) -> tuple[str, str, str]:
    if t.path in h.attended:
        why = (
            f"{t.path}.attend(...) reuses the embedding matrix as the output projection "
            "(tied weights): the logits' gradient reaches every row, the pad row included, "
            "whatever the inputs' mask says"
        )
    elif t.tied_with:
        why = (
            f"the embedding Param of {t.path} is shared with {', '.join(t.tied_with)} (tied "
            "weights): that use's gradient reaches the pad row, where no mask applies"
        )
    else:
        why = (
            f"the embedding matrix of {t.path} is read outside nnx.Embed.__call__ (tied "
            f"weights, e.g. x @ {t.path}.embedding[...].T): that use's gradient reaches the "
            "pad row, where no mask applies"
        )
    fix = (
        f"untie the head (a separate nnx.Linear), zero the row's gradient: {zero_grad_fix(t)}, "
        "or accept it knowingly with allow=('tied',)"
    )
    return "tied", why, fix


def _forward(h: FlaxHandle, t: Table, o: AuditOptions, info: Any) -> tuple[str, str, str]:
    return (
        "forward",
        f"the forward pass wrote to the embedding Param of {t.path} (an assignment to "
        "self.embedding[...] inside __call__, e.g. a renorm); NNX keeps such writes",
        f"do not modify the weight inside __call__; if it must change, zero the pad row after "
        f"({zero_row_fix(t)})",
    )


def _optimizer(h: FlaxHandle, t: Table, o: AuditOptions, info: Any) -> tuple[str, str, str]:
    if h.head_moved(t):
        code, why, fix = _tied(h, t, o, info)
        return code, f"the pad row's own lookups give it no gradient, yet {why}", fix
    stepper = info.state
    moved = 0.0
    if isinstance(stepper, optim.Stepper):
        moved = h.decay_probe(stepper, t)
    if info.weight_decay or moved:
        decay = f"weight_decay={info.weight_decay:g}" if info.weight_decay else "weight decay"
        return (
            "weight_decay",
            f"weight decay moved a non-zero pad row: {info.name} ({decay}) shrinks every "
            "parameter every step, although the pad row's gradient is zero (one step with "
            f"zero gradients moves it by {moved:.3g})",
            "exclude the embeddings from decay: optax.adamw(..., mask=lambda params: "
            "jax.tree_util.tree_map_with_path(lambda path, _: 'embedding' not in "
            f"jax.tree_util.keystr(path), params)), or zero the pad row once "
            f"({zero_row_fix(t)}; a zero row stays zero)",
        )
    return (
        "optimizer",
        f"{info.name} moved the row although its gradient is zero (a transformation whose "
        "update of one element depends on others)",
        "exclude the table from that transformation (optax.multi_transform), or zero the pad "
        f"row once ({zero_row_fix(t)})",
    )


def _invariance(h: FlaxHandle, t: Table | None, o: AuditOptions, info: Any) -> tuple[str, str, str]:
    module = h.module(info) if info else None
    pad = o.pad_idx if isinstance(o.pad_idx, int) else "pad"
    if isinstance(module, nnx.MultiHeadAttention):
        why = "attention attends to the pad keys: no padding mask reached it"
        fix = f"pass mask=nnx.make_attention_mask(m, m) with m = ids != {pad}"
    elif isinstance(module, (nnx.RNN, nnx.Bidirectional, nnx.RNNCellBase)):
        why = (
            f"{type(module).__name__} runs over the pad positions and its state is read after them"
        )
        fix = "pass the lengths: nnx.RNN(cell, return_carry=True)(x, seq_lengths=lengths)"
    elif isinstance(module, nnx.BatchNorm):
        why = "its batch statistics include the pad positions"
        fix = "pass mask=m[..., None] to the BatchNorm call, or use nnx.LayerNorm"
    else:
        why = (
            "a pooling or mixing step treats pad positions as data (an unmasked jnp.mean or sum "
            "over the sequence, attention without a mask, an RNN state read after the pads)"
        )
        fix = _POOL.format(pad=pad)
    return "invariance", why, fix


#: cause -> words, as :attr:`BaseHandle.WORDS` takes them.
WORDS: dict[str, Callable[..., tuple[str, str, str]]] = {
    "grad": _grad,
    "tied": _tied,
    "nonfinite": lambda h, t, o, i: (
        "nonfinite",
        "the model produced nan/inf on the padded batch (a division by a zero pad count, "
        "log(0) at pad positions)",
        "guard the pad positions (jnp.maximum(count, 1), jnp.where(m, x, 0) before jnp.log) "
        "and rerun with the seed",
    ),
    "forward": _forward,
    "optimizer": _optimizer,
    "invariance": _invariance,
}
