"""Plain-torch ground truth of the PyTorch zoo (zoo_hf.py): no padaudit in the loop.

grad: each token table's pad-row gradient, split into what its lookups put there and what a
tied LM head puts there. invariance: every parameter's gradient and the real outputs, with
and without EXTRA pad columns (eval mode).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from support.zoo_common import (
    EXTRA,
    RTOL,
    Entry,
    audit_batch,
    cut_real,
    real_weights,
    relative,
    weights,
)
from support.zoo_hf import VOCAB


def floats(output: Any) -> Iterator[torch.Tensor]:
    """Yield the floating-point tensors of a (nested) output, in order."""
    if isinstance(output, torch.Tensor):
        if output.is_floating_point():
            yield output
    elif isinstance(output, dict):  # ModelOutput and sentence-transformers features
        for value in output.values():
            yield from floats(value)
    elif isinstance(output, (tuple, list)):
        for value in output:
            yield from floats(value)


def tables(model: nn.Module) -> dict[str, nn.Module]:
    """Return every embedding table once per weight, by its first module path."""
    found: dict[str, nn.Module] = {}
    seen: set[int] = set()
    for path, module in model.named_modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            found[path] = module
    return found


def _grad_truth(entry: Entry, model: nn.Module, token: dict[str, nn.Parameter]) -> dict:
    """Split each token table's pad-row gradient into its lookup part and its head part.

    Each embedding module that holds a token weight gets a copy of it for the measurement,
    so its lookups write their gradient to the copy and only other users of the weight (a
    tied LM head) write to the weight itself.
    """
    batch = audit_batch(VOCAB, entry.pad)
    ids, mask = torch.from_numpy(batch.ids), torch.from_numpy(batch.mask)
    model.train()

    def backward() -> None:
        out = list(floats(entry.call(model, ids, mask)))
        loss = sum(
            (t.float() * torch.from_numpy(weights(i, tuple(t.shape), 1))).sum()
            for i, t in enumerate(out)
        )
        loss.backward()

    backward()  # the whole pad-row gradient first, to check the split adds up to it
    totals = {p: None if w.grad is None else w.grad[entry.pad].clone() for p, w in token.items()}
    model.zero_grad(set_to_none=True)
    copies: dict[str, nn.Parameter] = {}
    swapped: list[tuple[nn.Module, nn.Parameter]] = []
    for path, weight in token.items():
        copies[path] = nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
        for module in model.modules():
            if isinstance(module, nn.Embedding) and module.weight is weight:
                swapped.append((module, weight))
                module.weight = copies[path]
    try:
        backward()
    finally:
        for module, weight in swapped:
            module.weight = weight
    result = {}
    for path, weight in token.items():
        if not weight.requires_grad:
            result[path] = ("frozen", 0.0, 0.0)
            continue
        lookup = copies[path].grad
        head = weight.grad
        total = totals[path]
        parts = sum(g[entry.pad] for g in (lookup, head) if g is not None)
        if total is not None and not torch.allclose(parts + 0 * total, total, 1e-4, 1e-4):
            raise AssertionError(f"{entry.id}: lookup + head != total pad-row gradient of {path}")
        result[path] = (
            "trainable",
            0.0 if lookup is None else float(lookup[entry.pad].abs().max()),
            0.0 if head is None else float(head[entry.pad].abs().max()),
        )
    return result


def _invariance_truth(entry: Entry, model: nn.Module, token: dict[str, nn.Parameter]) -> dict:
    """Compare every gradient and the real outputs with and without EXTRA pad columns."""
    model.eval()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    token_ids = {id(w) for w in token.values()}
    runs = []
    for extra in (0, EXTRA):
        batch = audit_batch(VOCAB, entry.pad, extra)
        ids, mask = torch.from_numpy(batch.ids), torch.from_numpy(batch.mask)
        runs.append(list(floats(entry.call(model, ids, mask))))
    mask = audit_batch(VOCAB, entry.pad).mask
    short, long = runs
    if len(short) != len(long):
        raise AssertionError(f"{entry.id}: the two runs return {len(short)} vs {len(long)} leaves")
    loss_short = loss_long = 0.0
    for i, (a, b) in enumerate(zip(short, long, strict=True)):
        wa, wb = real_weights(i, tuple(a.shape), tuple(b.shape), mask)
        loss_short = loss_short + (a.float() * torch.from_numpy(wa)).sum()
        loss_long = loss_long + (b.float() * torch.from_numpy(wb)).sum()
    params = [p for _, p in named]
    ga = torch.autograd.grad(loss_short, params, allow_unused=True, retain_graph=True)
    gb = torch.autograd.grad(loss_long, params, allow_unused=True, retain_graph=True)
    a_list, b_list = [], []
    for p, x, y in zip(params, ga, gb, strict=True):
        if x is None and y is None:
            continue
        x = torch.zeros_like(p) if x is None else x
        y = torch.zeros_like(p) if y is None else y
        if id(p) in token_ids:  # extra pads only ever look up the pad row
            keep = torch.arange(p.shape[0]) != entry.pad
            x, y = x[keep], y[keep]
        a_list.append(x.detach().numpy().astype(np.float32))
        b_list.append(y.detach().numpy().astype(np.float32))
    grad_rel = relative(a_list, b_list, each=False)
    cuts = [
        cut_real(a.detach().float().numpy(), b.detach().float().numpy(), mask)
        for a, b in zip(short, long, strict=True)
    ]
    out_rel = relative([c[0] for c in cuts], [c[1] for c in cuts], each=True)
    return {"grad_rel": grad_rel, "out_rel": out_rel}


def truth(entry: Entry, model: nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the ground truth per check and the numbers behind it (plain torch)."""
    found = tables(model)
    token_weights = {id(w) for w in entry.token(model)}
    token = {p: m.weight for p, m in found.items() if id(m.weight) in token_weights}
    if len(token) != len(token_weights):
        raise AssertionError(f"{entry.id}: a token weight is not held by any nn.Embedding")
    grads = _grad_truth(entry, model, token)
    model.zero_grad(set_to_none=True)
    inv = _invariance_truth(entry, model, token)
    leak = max(inv["grad_rel"], inv["out_rel"]) > RTOL
    verdict = {
        "tables": sorted(token),
        "grad": sorted(p for p, (_, lookup, _) in grads.items() if lookup > 0),
        "tied": sorted(p for p, (_, _, head) in grads.items() if head > 0),
        "invariance": "leak" if leak else "clean",
    }
    numbers = {
        "grads": {p: (state, lookup, head) for p, (state, lookup, head) in grads.items()},
        "not_token": sorted(set(found) - set(token)),
        **inv,
    }
    return verdict, numbers


def name(path: str) -> str:
    """Table names compare as module paths in PyTorch."""
    return path
