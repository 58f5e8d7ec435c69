"""Cost of a default Keras audit next to a bare gradient step, on each Keras backend.

Run ``python bench/keras_backends_cost.py``: one process per backend (Keras picks its backend
at import time) audits a small encoder (Embedding 1000 x 32 with mask_zero, two Dense,
GlobalAveragePooling1D, Dense(3)) on the audit's batch shape (4 x 16), and times a bare
gradient of a weighted sum of its outputs, computed the backend's own way: ``tf.GradientTape``,
``jax.grad`` over ``model.stateless_call``, ``torch.autograd.grad``. Medians after one warm-up;
the ratio is measured within one process. On jax it also times a jitted train step
(``jax.jit`` of ``value_and_grad`` over ``stateless_call`` plus the optimizer's
``stateless_apply``), the figure ``bench/run.py`` holds to issue 21's target.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from timing import median_time, paired  # bench/ is on sys.path when a bench script runs

BACKENDS = ("tensorflow", "jax", "torch")


def bare_grad(model: object, ids: object, weights: object) -> Callable[[], object]:
    """Return one gradient of sum(model(ids) * weights) w.r.t. every trainable variable."""
    import keras
    from keras import ops

    backend = keras.config.backend()
    variables = model.trainable_variables
    if backend == "tensorflow":
        import tensorflow as tf

        def step() -> object:
            with tf.GradientTape() as tape:
                loss = ops.sum(model(ids, training=True) * weights)
            return [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, variables)]

        return step
    if backend == "jax":
        import jax

        rest = [v.value for v in model.non_trainable_variables]

        def loss(values: list) -> object:
            out, _ = model.stateless_call(values, rest, ids, training=True)
            return ops.sum(out * weights)

        grad = jax.grad(loss)
        return lambda: jax.block_until_ready(grad([v.value for v in variables]))
    import torch

    def torch_step() -> object:
        loss = ops.sum(model(ids, training=True) * weights)
        return torch.autograd.grad(loss, [v.value for v in variables])

    return torch_step


def encoder() -> tuple[Any, Any, Any]:
    """Return the small encoder, a 4 x 16 batch of ids (about 30 % pads), output weights."""
    import keras
    import numpy as np
    from keras import layers

    keras.utils.set_random_seed(0)
    inputs = keras.Input((None,), dtype="int32")
    x = layers.Embedding(1000, 32, mask_zero=True)(inputs)
    x = layers.Dense(32, activation="relu")(layers.Dense(32, activation="relu")(x))
    model = keras.Model(inputs, layers.Dense(3)(layers.GlobalAveragePooling1D()(x)))
    rng = np.random.default_rng(0)
    ids = np.where(rng.random((4, 16)) < 0.7, rng.integers(1, 1000, (4, 16)), 0).astype("int32")
    weights = keras.ops.convert_to_tensor(rng.random((4, 3), dtype=np.float32))
    return model, ids, weights


def jitted_train_step(model: Any, ids: Any, weights: Any) -> Callable[[], object]:
    """Return a jitted jax train step: value_and_grad over stateless_call, SGD stateless_apply.

    The step takes the variables, the optimizer's state and the batch as arguments, as a
    user's jitted step does, so XLA cannot fold any of it into constants.
    """
    import jax
    import keras
    from keras import ops

    optimizer = keras.optimizers.SGD(0.01)
    optimizer.build(model.trainable_variables)
    trainable = [v.value for v in model.trainable_variables]
    rest = [v.value for v in model.non_trainable_variables]
    state = [v.value for v in optimizer.variables]

    def loss(values: list, rest: list, ids: Any, weights: Any) -> tuple[Any, list]:
        out, rest = model.stateless_call(values, rest, ids, training=True)
        return ops.sum(out * weights), rest

    @jax.jit
    def step(values: list, rest: list, state: list, ids: Any, weights: Any) -> tuple:
        (value, rest), grads = jax.value_and_grad(loss, has_aux=True)(values, rest, ids, weights)
        values, state = optimizer.stateless_apply(state, grads, values)
        return value, values, rest, state

    ids = jax.numpy.asarray(ids)
    return lambda: jax.block_until_ready(step(trainable, rest, state, ids, weights))


def audit_vs_jitted(repeats: int = 7) -> tuple[float, float]:
    """Return the median warm default audit and jitted train step (Keras on jax), in seconds."""
    from pytest_padaudit import audit

    model, ids, weights = encoder()
    audit(model)  # the cold audit compiles eager ops once per process: keep it off the clock
    return paired(lambda: audit(model).passed, jitted_train_step(model, ids, weights), repeats)


def measure(repeats: int = 7) -> str:
    """Time an audit and a bare gradient step on this process's backend."""
    import keras

    from pytest_padaudit import audit

    model, ids, weights = encoder()
    start = time.perf_counter()
    audit(model)
    cold = time.perf_counter() - start
    t_audit = median_time(lambda: audit(model).passed, repeats)
    t_grad = median_time(bare_grad(model, ids, weights), repeats)
    line = (
        f"{keras.config.backend():<11} cold {cold:6.2f} s   audit {t_audit * 1e3:7.1f} ms   "
        f"bare grad {t_grad * 1e3:6.1f} ms   audit / grad = {t_audit / t_grad:5.1f}x"
    )
    if keras.config.backend() == "jax":
        t_jit = median_time(jitted_train_step(model, ids, weights), repeats)
        line += f"   jitted step {t_jit * 1e3:.3f} ms   audit / jitted = {t_audit / t_jit:.0f}x"
    return line


def main() -> None:
    if len(sys.argv) > 1:
        print(measure())
        return
    for backend in BACKENDS:
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        done = subprocess.run(
            [sys.executable, __file__, backend], env=env, capture_output=True, text=True
        )
        lines = done.stdout.strip().splitlines()
        print(lines[-1] if done.returncode == 0 and lines else f"{backend}: {done.stderr[-500:]}")


if __name__ == "__main__":
    main()
