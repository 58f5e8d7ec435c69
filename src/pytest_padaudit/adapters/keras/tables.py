"""Keras embedding tables: the variables behind a table, its rows as looked up, its notes."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...core.errors import PadAuditError
from ...core.handle import Table
from .backends.base import Backend
from .feed import PadIds, backbone_token_table


def own_variables(layer: Any) -> list[Any]:
    """Return the variables a layer tracks itself (not through its sub-layers)."""
    own = [
        *(getattr(layer, "_trainable_variables", None) or []),
        *(getattr(layer, "_non_trainable_variables", None) or []),
    ]
    if not own:  # tf_keras
        own = [
            *(getattr(layer, "_trainable_weights", None) or []),
            *(getattr(layer, "_non_trainable_weights", None) or []),
        ]
    return own


def is_table(layer: Any, keras: Any) -> bool:
    """Say whether a layer holds an embedding table: an Embedding or a position table."""
    return isinstance(layer, keras.layers.Embedding) or is_position_table(layer)


def is_position_table(layer: Any) -> bool:
    """Say whether a layer is a learned position table (keras-hub ``PositionEmbedding``)."""
    return type(layer).__name__.endswith("PositionEmbedding") and hasattr(
        layer, "position_embeddings"
    )


def base_variable(layer: Any) -> Any:
    """Return the table's stored variable (an Embedding's, or a position table's)."""
    if is_position_table(layer):
        return layer.position_embeddings
    base = getattr(layer, "_embeddings", None)
    return base if base is not None else layer.embeddings


def table_shape(layer: Any) -> tuple[int, int]:
    """Return (rows, dim) of a table."""
    if is_position_table(layer):
        rows, dim = tuple(layer.position_embeddings.shape)[:2]
        return int(rows), int(dim)
    return int(layer.input_dim), int(layer.output_dim)


def is_reverse_call(args: tuple, kwargs: dict) -> bool:
    """Say whether a ``ReversibleEmbedding`` call projects hidden states to logits."""
    flag = kwargs.get("reverse", args[1] if len(args) > 1 else False)
    return isinstance(flag, bool) and flag


def lookup_ids(backend: Backend, layer: Any, args: tuple, kwargs: dict) -> Any:
    """Return the id tensor a table call looked up (None: a reverse or position call)."""
    if is_position_table(layer) or is_reverse_call(args, kwargs):
        return None
    ids = args[0] if args else kwargs.get("inputs")
    return ids if backend.is_tensor(ids) else None


def head_row(
    layer: Any, hidden: np.ndarray, logits: np.ndarray, grad: np.ndarray, pad: int
) -> np.ndarray:
    """Return the pad row's gradient through one reverse (logits) call of a tied table.

    ``logits = hidden @ W.T`` (then ``c * tanh(logits / c)`` with a soft cap ``c``), so
    the row ``W[pad]`` gets ``sum over positions of dL/dz[..., pad] * hidden``.
    """
    g = grad[..., pad]
    cap = getattr(layer, "logit_soft_cap", None)
    if cap:
        g = g * (1.0 - np.square(logits[..., pad] / float(cap)))
    dim = hidden.shape[-1]
    return (g[..., None] * hidden).reshape(-1, dim).sum(0, dtype=np.float32)


def table_variables(layer: Any) -> list[Any]:
    """Return the trainable variables that make up the table's rows."""
    if not layer.trainable:
        return []
    if getattr(layer, "lora_enabled", False):
        parts = [layer.lora_embeddings_a, layer.lora_embeddings_b]
    else:
        parts = [base_variable(layer)]
    trainable = {id(v) for v in layer.trainable_variables}
    return [v for v in parts if id(v) in trainable]


def constraint(layer: Any) -> Any:
    """Return the table's embeddings constraint, if any."""
    return getattr(layer, "embeddings_constraint", None)


def effective_row(backend: Backend, layer: Any, pad: int) -> np.ndarray:
    """Return row ``pad`` as the layer looks it up (LoRA: base + scaled delta)."""
    row = backend.to_numpy(backend.row_of(base_variable(layer), pad))[0]
    if getattr(layer, "lora_enabled", False):
        a = backend.to_numpy(backend.row_of(layer.lora_embeddings_a, pad))[0]
        b = backend.read(layer.lora_embeddings_b)
        row = row + np.float32(layer.lora_alpha / layer.lora_rank) * (a @ b)
        row = backend.round_to(row.astype(np.float32), layer.compute_dtype)
    return row


def notes(layer: Any) -> tuple[str, ...]:
    """Return what is worth knowing about a table: mask_zero, LoRA, constraint, ..."""
    found = []
    if getattr(layer, "mask_zero", False):
        found.append("mask_zero=True")
    if getattr(layer, "lora_enabled", False):
        found.append(f"lora_rank={layer.lora_rank}")
    for name in ("embeddings_constraint", "embeddings_regularizer", "quantization_mode"):
        value = getattr(layer, name, None)
        if value:
            found.append(f"{name}={getattr(value, '__name__', type(value).__name__)}")
    return tuple(found)


def find_tables(
    model: Any, model_class: str, layers: list[tuple[str, Any]], keras: Any, pad_idx: Any
) -> list[tuple[Table, Any]]:
    """Return (table, layer) for every embedding table, each with its pad id resolved.

    A table's own pad id is 0 under ``mask_zero``; a keras-hub backbone's token table has
    its preprocessor's. The batch pads with ``pad_idx=`` where given (an int, or a
    ``{path: id}`` mapping), else with the own id, else with the preprocessor's.
    """
    owners: dict[int, list[str]] = {}
    for path, layer in layers:
        for var in own_variables(layer):
            owners.setdefault(id(var), []).append(path)
    layers = [(path, layer) for path, layer in layers if is_table(layer, keras)]
    for path, layer in layers:
        if not layer.built:
            raise PadAuditError(
                f"the Embedding {path} of {model_class} is not built yet, so it has "
                "no weights to audit: call the model once on a batch (or "
                "model.build((None, seq_len))) before the audit"
            )
    pads = PadIds(model, model_class, pad_idx, [p for p, _ in layers])
    token_layer = backbone_token_table(model)
    found = []
    for path, layer in layers:
        rows, dim = table_shape(layer)
        mask = 0 if getattr(layer, "mask_zero", False) else None
        own = mask if mask is not None or layer is not token_layer else pads.library
        pad = pads.resolve(path, rows, mask)
        lora = bool(getattr(layer, "lora_enabled", False))
        tied = tuple(o for o in owners.get(id(base_variable(layer)), []) if o != path)
        table = Table(
            path,
            rows,
            dim,
            type(layer).__name__ + ("(lora)" if lora else ""),
            pad,
            mask is not None and pad == mask,
            bool(table_variables(layer)),
            tied,
            notes(layer),
            own_pad_idx=own,
        )
        found.append((table, layer))
    if found and pads.out_of_range and all(t.pad_idx is None for t, _ in found):
        pads.raise_out_of_range(f"pad_idx={pad_idx!r}", [(t.path, t.rows) for t, _ in found])
    return found
