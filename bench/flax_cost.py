"""Cost of a default Flax NNX audit next to a bare ``jax.grad`` step, as ratios in one run.

Run ``python bench/flax_cost.py`` (jax, flax and optax installed). The model is a small
encoder (vocab 1000, dim 32, two Linear layers, masked mean pooling) on the audit's own
batch shape (4 x 16). Every figure is a median after one warm-up, measured in this one
process; the first (cold) audit is reported apart, since it compiles the jitted passes
(once per model structure and batch shape per process). The jitted train step
(``jax.jit`` of ``value_and_grad`` and an optax SGD update, taking the parameters, the
optimizer's state and the batch as arguments) is the figure ``bench/run.py`` holds to
issue 21's target.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from timing import paired  # bench/ is on sys.path when a bench script runs

import pytest_padaudit
from pytest_padaudit import audit
from pytest_padaudit.adapters.flax import ADAPTER


class Encoder(nnx.Module):
    def __init__(self, vocab: int = 1000, dim: int = 32) -> None:
        rngs = nnx.Rngs(0)
        self.embed = nnx.Embed(vocab, dim, rngs=rngs)
        self.l1 = nnx.Linear(dim, dim, rngs=rngs)
        self.l2 = nnx.Linear(dim, dim, rngs=rngs)
        self.head = nnx.Linear(dim, 3, rngs=rngs)

    def __call__(self, ids: jax.Array) -> jax.Array:
        x = nnx.relu(self.l2(nnx.relu(self.l1(self.embed(ids)))))
        m = (ids != 0)[..., None]
        return self.head(jnp.sum(x * m, 1) / jnp.maximum(jnp.sum(m, 1), 1))


def median(fn: Callable[[], object], repeats: int) -> float:
    """Return the median time of ``fn`` over ``repeats`` calls, each awaited, after a warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def batch() -> tuple[jax.Array, jax.Array]:
    """Return a 4 x 16 batch of ids (about 30 % pads) and the weights of a weighted-sum loss."""
    rng = np.random.default_rng(0)
    ids = jnp.asarray(np.where(rng.random((4, 16)) < 0.7, rng.integers(1, 1000, (4, 16)), 0))
    return ids, jnp.asarray(rng.random((4, 3), dtype=np.float32))


def jitted_train_step(model: Encoder, ids: jax.Array, weights: jax.Array) -> Callable[[], Any]:
    """Return a jitted train step of ``model``: value_and_grad and an optax SGD update."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = nnx.as_pure(params), nnx.as_pure(rest)
    tx = optax.sgd(1.0)
    opt_state = tx.init(params)

    def loss(p: Any, ids: jax.Array, weights: jax.Array) -> jax.Array:
        return jnp.sum(nnx.merge(graphdef, p, rest)(ids) * weights)

    @jax.jit
    def step(p: Any, opt_state: Any, ids: jax.Array, weights: jax.Array) -> tuple:
        value, grads = jax.value_and_grad(loss)(p, ids, weights)
        updates, opt_state = tx.update(grads, opt_state, p)
        return value, optax.apply_updates(p, updates), opt_state

    return lambda: jax.block_until_ready(step(params, opt_state, ids, weights))


def audit_vs_jitted(repeats: int = 7) -> tuple[float, float]:
    """Return the median warm default audit and jitted train step, in seconds."""
    pytest_padaudit.register(ADAPTER)
    model = Encoder()
    ids, weights = batch()
    audit(model, pad_idx=0)  # the cold audit compiles the passes once per process
    return paired(
        lambda: audit(model, pad_idx=0).passed, jitted_train_step(model, ids, weights), repeats
    )


def main(repeats: int = 7) -> None:
    pytest_padaudit.register(ADAPTER)
    model = Encoder()
    ids, weights = batch()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = nnx.as_pure(params), nnx.as_pure(rest)
    tx = optax.sgd(1.0)
    opt_state = tx.init(params)

    def loss(p):
        return jnp.sum(nnx.merge(graphdef, p, rest)(ids) * weights)

    def grad_step():
        return jax.grad(loss)(params)

    def train_step():
        updates, _ = tx.update(jax.grad(loss)(params), opt_state, params)
        return optax.apply_updates(params, updates)

    jitted = jitted_train_step(model, ids, weights)
    start = time.perf_counter()
    audit(model, pad_idx=0)
    cold = time.perf_counter() - start
    t_audit = median(lambda: audit(model, pad_idx=0).passed, repeats)
    t_grad = median(grad_step, repeats)
    t_step = median(train_step, repeats)
    t_jit = median(jitted, repeats)
    print(f"cold first audit      {cold:8.3f} s (compiles, once per process)")
    print(f"default audit         {t_audit:8.3f} s")
    print(f"bare jax.grad         {t_grad:8.3f} s   audit / grad       = {t_audit / t_grad:6.1f}x")
    print(f"bare eager train step {t_step:8.3f} s   audit / train step = {t_audit / t_step:6.1f}x")
    print(f"jitted train step     {t_jit:8.4f} s   audit / jitted     = {t_audit / t_jit:6.0f}x")


if __name__ == "__main__":
    main()
