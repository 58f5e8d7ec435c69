"""JAX: Keras 3 on its ``jax`` backend.

A pass is differentiated with ``jax.value_and_grad`` over the trainable variables' values,
mapped in with ``keras.StatelessScope`` (as ``model.stateless_call`` does), so a ``forward=``
callable that calls the model as usual is differentiated too; what the pass assigns (seed
generators, BatchNormalization statistics) stays in the scope. A tensor whose gradient is
wanted gets a zero probe added, and the gradient w.r.t. the probe is the gradient w.r.t. it.
The update check steps through the optimizer's ``stateless_apply``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from keras import StatelessScope

from .base import Backend, Pass, Run


class JaxBackend(Backend):
    """Keras on JAX."""

    name = "jax"

    def is_tensor(self, x: Any) -> bool:
        return isinstance(x, jax.Array)

    def snapshot(self, variable: Any) -> Any:
        return jnp.array(variable.value, copy=True)

    def gradients(self, run: Run, variables: Sequence[Any], *, taps: bool = False) -> Pass:
        values = [v.value for v in variables]

        def call(vals: list[Any], tap: Any) -> tuple[Any, list[Any]]:
            with StatelessScope(state_mapping=list(zip(variables, vals, strict=True))):
                return run(tap)

        shapes: list[jax.ShapeDtypeStruct] = []
        if taps:  # the probes' shapes, from one abstract pass (no arithmetic)

            def shape_of(x: Any) -> Any:
                shapes.append(jax.ShapeDtypeStruct(x.shape, x.dtype))
                return x

            jax.eval_shape(lambda vals: call(vals, shape_of), values)
        probes = [jnp.zeros(s.shape, s.dtype) for s in shapes]

        def loss(vals: list[Any], zeros: list[Any]) -> tuple[Any, list[Any]]:
            it = iter(zeros)
            return call(vals, lambda x: x + next(it) if zeros else x)

        (_, aux), (grads, tapped) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
            values, probes
        )
        return Pass(list(grads), list(tapped), aux)

    def apply(self, optimizer: Any, pairs: Sequence[tuple[Any, Any]]) -> None:
        """Step through Keras' stateless API: new values come back as arrays, then assigned."""
        grads, variables = [g for g, _ in pairs], [v for _, v in pairs]
        if not optimizer.built:
            optimizer.build(variables)
        values, state = optimizer.stateless_apply(
            [v.value for v in optimizer.variables], grads, [v.value for v in variables]
        )
        written = [*variables, *optimizer.variables]
        for variable, value in zip(written, [*values, *state], strict=True):
            variable.assign(value)

    def connected(self, grad: Any) -> bool:
        """JAX gives zeros, not None, where no gradient flows: read them as unconnected."""
        return grad is not None and bool(jnp.any(grad != 0))
