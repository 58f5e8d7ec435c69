"""Tiny Flax NNX models of the shapes padaudit must judge, and plain-JAX ground truth."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

PAD = 0
VOCAB, DIM, OUT = 40, 8, 3


def masked_mean(x: jax.Array, ids: jax.Array) -> jax.Array:
    m = (ids != PAD)[..., None]
    return jnp.sum(x * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1)


class MeanPool(nnx.Module):
    """Embed -> Linear -> mean over the sequence (masked or not) -> Linear."""

    def __init__(self, masked: bool, seed: int = 0) -> None:
        rngs = nnx.Rngs(seed)
        self.embed = nnx.Embed(VOCAB, DIM, rngs=rngs)
        self.proj = nnx.Linear(DIM, DIM, rngs=rngs)
        self.head = nnx.Linear(DIM, OUT, rngs=rngs)
        self.masked = masked

    def __call__(self, ids: jax.Array) -> jax.Array:
        x = nnx.tanh(self.proj(self.embed(ids)))
        pooled = masked_mean(x, ids) if self.masked else jnp.mean(x, axis=1)
        return self.head(pooled)


class Attention(nnx.Module):
    """Embed -> MultiHeadAttention (with or without a padding mask) -> masked mean."""

    def __init__(self, masked: bool, seed: int = 0) -> None:
        rngs = nnx.Rngs(seed)
        self.embed = nnx.Embed(VOCAB, DIM, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=2, in_features=DIM, decode=False, rngs=rngs, dropout_rate=0.0
        )
        self.head = nnx.Linear(DIM, OUT, rngs=rngs)
        self.masked = masked

    def __call__(self, ids: jax.Array) -> jax.Array:
        x = self.embed(ids)
        m = ids != PAD
        mask = nnx.make_attention_mask(m, m) if self.masked else None
        x = self.attn(x, mask=mask)
        return self.head(masked_mean(x, ids))


class Recurrent(nnx.Module):
    """Embed -> nnx.RNN(LSTMCell) -> final carry; ``seq_lengths`` stops it at the real end."""

    def __init__(self, lengths: bool, seed: int = 0) -> None:
        rngs = nnx.Rngs(seed)
        self.embed = nnx.Embed(VOCAB, DIM, rngs=rngs)
        self.rnn = nnx.RNN(nnx.LSTMCell(DIM, DIM, rngs=rngs), return_carry=True)
        self.head = nnx.Linear(DIM, OUT, rngs=rngs)
        self.lengths = lengths

    def __call__(self, ids: jax.Array) -> jax.Array:
        x = self.embed(ids)
        seq_lengths = jnp.sum(ids != PAD, axis=1) if self.lengths else None
        (_c, h), _ = self.rnn(x, seq_lengths=seq_lengths)
        return self.head(h)


class TiedHead(nnx.Module):
    """Masked mean pooling, then logits through ``embed.attend`` (tied weights).

    ``stop_head`` stops the gradient through the head (ground truth of the lookup part).
    """

    def __init__(self, seed: int = 0) -> None:
        rngs = nnx.Rngs(seed)
        self.embed = nnx.Embed(VOCAB, DIM, rngs=rngs)
        self.proj = nnx.Linear(DIM, DIM, rngs=rngs)
        self.stop_head = False

    def __call__(self, ids: jax.Array) -> jax.Array:
        pooled = masked_mean(nnx.tanh(self.proj(self.embed(ids))), ids)
        if self.stop_head:
            return pooled @ jax.lax.stop_gradient(self.embed.embedding[...]).T
        return self.embed.attend(pooled)


ZOO: dict[str, Callable[[], nnx.Module]] = {
    "masked_mean": lambda: MeanPool(masked=True),
    "unmasked_mean": lambda: MeanPool(masked=False),
    "attention_masked": lambda: Attention(masked=True),
    "attention_unmasked": lambda: Attention(masked=False),
    "rnn_over_pads": lambda: Recurrent(lengths=False),
    "rnn_seq_lengths": lambda: Recurrent(lengths=True),
}


# -- ground truth: plain jax.grad, no padaudit -------------------------------------------
def weighted_loss(model: nnx.Module, ids: np.ndarray, seed: int = 1) -> Callable:
    """Return f(params) = seeded weighted sum of the model's (batch, k) output on ``ids``."""
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    rest = nnx.as_pure(rest)
    x = jnp.asarray(ids, jnp.int32)

    def f(p):
        out = nnx.merge(graphdef, p, rest)(x)
        w = np.random.default_rng(seed).random(out.shape, dtype=np.float32) + 0.5
        return jnp.sum(out * w)

    return f


def param_grads(model: nnx.Module, ids: np.ndarray) -> dict[tuple, np.ndarray]:
    """Every Param's gradient of the weighted loss, ``{state path: array}``."""
    params = nnx.as_pure(nnx.state(model, nnx.Param))
    grads = jax.grad(weighted_loss(model, ids))(params)
    return {p: np.asarray(g) for p, g in nnx.to_flat_state(grads)}


def pad_row_grad(model: nnx.Module, ids: np.ndarray, table: tuple = ("embed", "embedding")):
    """max|g| of the pad row of ``table``."""
    return float(np.abs(param_grads(model, ids)[table][PAD]).max())


def invariance_gap(model: nnx.Module, ids: np.ndarray, extra: int) -> float:
    """Append ``extra`` pad columns; return the largest relative change of any gradient."""
    wider = np.hstack([ids, np.full((ids.shape[0], extra), PAD, ids.dtype)])
    a, b = param_grads(model, ids), param_grads(model, wider)
    scale = max(float(np.abs(g).max()) for g in a.values())
    return max(float(np.abs(a[k] - b[k]).max()) for k in a) / scale
