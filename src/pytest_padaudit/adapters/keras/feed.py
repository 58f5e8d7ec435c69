"""What a Keras model is fed, the pad id it knows, and what to do when it refuses a batch.

A model is fed its ids; keras-hub backbones and tasks are functional models whose inputs are a dict:
``token_ids``, ``padding_mask`` and, where the model has them, ``segment_ids``. The audit
feeds that dict by default. The pad id is the one the model's preprocessor pads with
(``preprocessor.tokenizer.pad_token_id``) when the model has a preprocessor.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ...core.batch import PadBatch
from ...core.errors import PadAuditError
from .backends.base import Backend

#: input names, by role: the token ids, the padding mask (True at real tokens), segments.
_IDS = ("token_ids", "input_ids", "ids", "tokens", "input_word_ids")
_MASK = ("padding_mask", "attention_mask", "mask", "input_mask")
_ZEROS = ("segment_ids", "token_type_ids", "input_type_ids")
_ROLES = {"ids": _IDS, "mask": _MASK, "zeros": _ZEROS}


@dataclasses.dataclass(frozen=True)
class KerasBatch:
    """The synthetic batch as tensors, as ``forward=`` and ``loss=`` callables receive it.

    ``training`` is the mode of the pass: call ``model(batch.ids, training=batch.training)``.
    """

    ids: Any
    mask: Any
    lengths: Any
    pad_idx: int
    padding_side: str
    numpy: PadBatch
    training: bool
    #: what ``step=`` (or the model, for ``batch=``) is fed: the user's batch as given,
    #: rebuilt as tensors, or the synthetic ``x``; None when the model takes ``ids``.
    feed: Any = None


PAD_HINT = (
    "keras-hub: the id is preprocessor.tokenizer.pad_token_id, e.g. "
    "keras_hub.models.BertTokenizer(vocabulary=...).pad_token_id ([PAD], 0 in BERT "
    "vocabularies; <pad>, 1 in RoBERTa's; GPT-2's preprocessor pads with 0)"
)


def dict_inputs(model: Any) -> dict[str, tuple[str, Any]] | None:
    """Return {input name: (role, dtype)} when a functional model takes a dict, else None."""
    struct = getattr(model, "_inputs_struct", None)
    if not isinstance(struct, Mapping) or not struct:
        return None
    roles = {}
    for name, tensor in struct.items():
        role = (
            "ids"
            if name in _IDS
            else "mask"
            if name in _MASK
            else "zeros"
            if name in _ZEROS
            else "unknown"
        )
        roles[str(name)] = (role, getattr(tensor, "dtype", "int32"))
    return roles


def feed(
    backend: Backend,
    model_class: str,
    roles: dict[str, tuple[str, Any]],
    ids: np.ndarray,
    mask: np.ndarray,
) -> dict[str, Any]:
    """Return the dict of inputs for ``roles``; raise for inputs the audit cannot fill."""
    unknown = [name for name, (role, _) in roles.items() if role == "unknown"]
    if unknown or not any(role == "ids" for role, _ in roles.values()):
        names = ", ".join(repr(n) for n in roles)
        what = f"what {', '.join(map(repr, unknown))} should hold" if unknown else "the token ids"
        raise PadAuditError(
            f"{model_class} takes a dict of inputs ({names}) and padaudit cannot tell {what}: "
            "pass forward=lambda model, batch: model({'<ids input>': batch.ids, "
            "'<mask input>': batch.mask}, training=batch.training)"
        )
    out = {}
    for name, (role, dtype) in roles.items():
        value = ids if role == "ids" else mask if role == "mask" else np.zeros_like(ids)
        kind = str(getattr(dtype, "name", dtype))
        out[name] = backend.constant(np.asarray(value).astype(kind), kind)
    return out


def library_pad_id(model: Any) -> tuple[int | None, str]:
    """Return (pad id, where it came from) from the model's preprocessor, else (None, "")."""
    tokenizer = getattr(getattr(model, "preprocessor", None), "tokenizer", None)
    pad = getattr(tokenizer, "pad_token_id", None)
    if isinstance(pad, int) and not isinstance(pad, bool):
        return pad, f"{type(tokenizer).__name__}.pad_token_id of the model's preprocessor"
    return None, ""


def backbone_token_table(model: Any) -> Any:
    """Return the token embedding layer of a keras-hub backbone or task, else None."""
    backbone = getattr(model, "backbone", None)
    backbone = model if backbone is None else backbone
    return getattr(backbone, "token_embedding", None)


def is_keras_hub(model: Any) -> bool:
    """Say whether ``model`` is a keras-hub backbone or task."""
    return any(c.__module__.startswith("keras_hub.") for c in type(model).__mro__)


class PadIds:
    """Resolve each table's pad id from ``pad_idx=`` (an int or {path: id}) and the library's."""

    def __init__(self, model: Any, model_class: str, pad_idx: Any, paths: list[str]) -> None:
        self.model_class = model_class
        self.user = pad_idx
        self.library, self.source = library_pad_id(model)
        self.out_of_range: list[str] = []
        if isinstance(pad_idx, Mapping):
            unknown = sorted(set(pad_idx) - set(paths))
            if unknown:
                raise PadAuditError(
                    f"pad_idx names {', '.join(map(repr, unknown))}, which is not an embedding "
                    f"table of {model_class}: pass pad_idx={{path: id}} with paths from "
                    f"{', '.join(map(repr, paths))}"
                )

    def resolve(self, path: str, rows: int, own: int | None) -> int | None:
        """Return the id the batch pads with for table ``path`` (None: no pad id known)."""
        wanted = self.user.get(path) if isinstance(self.user, Mapping) else self.user
        if wanted is None:
            if own is not None:
                return own
            wanted = self.library
            if wanted is None:
                return None
        if -rows <= wanted < rows:
            return wanted % rows
        if isinstance(self.user, Mapping):
            self.raise_out_of_range(f"pad_idx={{{path!r}: {wanted!r}}}", [(path, rows)])
        self.out_of_range.append(path)
        return None

    def raise_out_of_range(self, written: str, tables: list[tuple[str, int]]) -> None:
        """Raise for a pad id no table can hold, quoting it as the user wrote it."""
        names = ", ".join(f"{path} ({rows} rows)" for path, rows in tables)
        high = max(rows for _, rows in tables)
        negative = f" (or -{high} to -1 to count from the last row)" if len(tables) == 1 else ""
        raise PadAuditError(
            f"{written} is out of range for {names} of {self.model_class}: pass pad_idx= "
            f"between 0 and {high - 1}{negative}"
        )


#: fixes, in Keras idiom, for the findings on a user's batch.
PIPELINE_FIXES = {
    "pad_mismatch": "pad with the model's pad id: keras.utils.pad_sequences(sequences, "
    "padding='post', value=<the model's pad id>) (keras-hub: the preprocessor pads with "
    "preprocessor.tokenizer.pad_token_id)",
    "labels_at_pads": "leave pad positions out of the loss: model.fit(x, y, "
    "sample_weight=<1 at real tokens, 0 at pads>), or a mask_zero=True Embedding whose "
    "mask reaches the outputs",
    "step": "leave pad positions out of the step's loss: m.compute_loss(x=x, y=y, y_pred=m(x), "
    "sample_weight=<1 at real tokens, 0 at pads>), or a loss on outputs that carry the "
    "Embedding's mask (mask_zero=True)",
}
#: the key each input role has in the arrays the core reads.
_CANONICAL = {"ids": "input_ids", "mask": "attention_mask", "zeros": "token_type_ids"}


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """How the user's ``batch=`` is laid out, to rebuild it from (widened) arrays.

    ``names`` maps each array's key to the user's key in ``x`` (None: ``x`` is the ids);
    ``parts`` is the length of an ``(x, y[, sample_weight])`` tuple, 0 for ``x`` alone.
    """

    names: dict[str, str] | None
    parts: int

    def rebuild(self, backend: Backend, arrays: Mapping[str, np.ndarray]) -> Any:
        """Return the batch as the user gave it, with ``arrays``' values as tensors."""

        def tensor(key: str) -> Any:
            value = np.ascontiguousarray(arrays[key])
            return backend.constant(value, str(value.dtype))

        if self.names is None:
            x = tensor("input_ids")
        else:
            x = {user: tensor(key) for key, user in self.names.items()}
        if not self.parts:
            return x
        rest = [tensor(k) if k in arrays else None for k in ("y", "sample_weight")]
        return (x, *rest)[: self.parts]


def batch_arrays(backend: Backend, batch: Any) -> tuple[dict[str, np.ndarray], BatchLayout]:
    """Return the user's batch as arrays by key, and its layout.

    ``batch`` is what ``model.fit`` takes: ``x`` (an array of ids, or a dict of inputs),
    or ``(x, y)`` / ``(x, y, sample_weight)``. Inputs are keyed by role (``token_ids`` and
    ``input_ids`` become ``input_ids``, ``padding_mask`` ``attention_mask``, ...).
    """
    parts = batch if isinstance(batch, tuple) else (batch,)
    x, out = parts[0], {}
    names: dict[str, str] | None = None
    if isinstance(x, Mapping):
        names = {}
        for name, value in x.items():
            role = next((r for r, known in _ROLES.items() if name in known), None)
            key = _CANONICAL[role] if role else str(name)
            if key in names:
                raise PadAuditError(
                    f"batch= x has both {names[key]!r} and {name!r} for {key}: pass one"
                )
            names[key], out[key] = str(name), _array(backend, f"x[{name!r}]", value)
        if "input_ids" not in out:
            raise PadAuditError(
                f"batch= x has keys {sorted(map(str, x))} and none holds the token ids: name "
                f"the ids input one of {', '.join(_IDS)}, or pass forward= and a bare array"
            )
    else:
        out["input_ids"] = _array(backend, "x", x)
    for key, value in zip(("y", "sample_weight"), parts[1:], strict=False):
        if value is not None:
            out[key] = _array(backend, key, value)
    return out, BatchLayout(names, len(parts) if isinstance(batch, tuple) else 0)


def _array(backend: Backend, where: str, value: Any) -> np.ndarray:
    array = backend.values(value) if backend.is_tensor(value) else np.asarray(value)
    if array is None or array.dtype.kind not in "biuf":
        raise PadAuditError(
            f"batch= {where} is a {type(value).__qualname__}: pass arrays or tensors, e.g. "
            "(keras.utils.pad_sequences(sequences, padding='post'), labels)"
        )
    return array


def step_loss(backend: Backend, value: Any) -> Any:
    """Return the scalar loss ``step=`` returned; refuse anything else."""
    if not backend.is_tensor(value) or backend.size(value) != 1:
        got = (
            f"a tensor of shape {list(value.shape)}"
            if backend.is_tensor(value)
            else type(value).__qualname__
        )
        raise PadAuditError(
            f"step= returned {got}: return the scalar loss of one training step, e.g. "
            "step=lambda m, b: m.compute_loss(x=b[0], y=b[1], y_pred=m(b[0]))"
        )
    return backend.scalar(value)


_SHAPE_ERROR = re.compile(r"incompatible|expected axis|shapes? mismatch|must be compatible", re.I)


def forward_error(
    model: Any,
    model_class: str,
    exc: Exception,
    batch: PadBatch,
    forward: Any,
    feeding: dict[str, tuple[str, Any]] | None,
    call: str = "",
) -> str:
    """Return what to do when the model raised ``exc`` on ``batch``.

    ``feeding``: the dict inputs the audit fed (keras-hub style), else None; ``call``: what
    ran (``step=``, ``model(x)``), else the model on the ids.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split("Arguments received by")[0]
    text = " ".join(text.split())[:400]
    width = batch.shape[1]
    fixed = _fixed_seq_len(model)
    if fixed is not None and fixed != width and batch.extra:
        return (
            f"{model_class} takes sequences of exactly {fixed} tokens (its Input "
            f"has shape (None, {fixed})), so it cannot take the invariance check's batch "
            f"of {batch.base_len} + {batch.extra} pad columns "
            f"({type(exc).__name__}: {text})"
        )
    if fixed is not None and fixed != width:
        return (
            f"{model_class} takes sequences of exactly {fixed} tokens (its Input "
            f"has shape (None, {fixed})), but the audit batch is {width} wide: pass "
            f"seq_len={fixed} ({type(exc).__name__}: {text})"
        )
    if call in ("", "model(ids)"):
        call = "forward=" if forward else "model(ids, training=...)"
    if feeding is not None and not forward and call == "model(ids, training=...)":
        call = f"model({{{', '.join(map(repr, feeding))}}}, training=...)"
    advice = (
        "If the model takes other inputs, pass forward=lambda model, batch: model(batch.ids, "
        "training=batch.training) (batch has ids, mask, lengths, pad_idx, training)"
    )
    if call == "step=":
        given = "your batch= as given" if batch.source != "synthetic" else "the model's x"
        advice = f"step=callable(model, batch) receives {given}: make it run on that"
    elif batch.source != "synthetic":
        advice = "To run the model your way, pass step=callable(model, batch) -> scalar loss"
    message = (
        f"{model_class} raised {type(exc).__name__} on {batch.origin} ({call} "
        f"with {batch.describe()}; ids int32): {text}\n  {advice}"
    )
    if _SHAPE_ERROR.search(text) and not batch.extra:
        message += "\n  If the model needs a fixed sequence length, pass seq_len= that length"
    return message


def _fixed_seq_len(model: Any) -> int | None:
    """Return the sequence length a functional model's first Input fixes, else None."""
    try:
        shape = tuple(model.inputs[0].shape)
    except Exception:
        return None
    return shape[1] if len(shape) >= 2 and isinstance(shape[1], int) else None
