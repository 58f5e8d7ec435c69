"""TensorFlow: Keras 3 on its ``tensorflow`` backend, and ``tf_keras`` (Keras 2).

Gradients come from ``tf.GradientTape``; an Embedding's gradient is ``tf.IndexedSlices``,
read row by row (duplicate indices summed) and never densified for the whole table.

Never gather from, scatter into or slice-assign a table variable: TensorFlow then switches the
variable to copy-on-read, and every later read of it copies the whole table (about 30 ms for
1M x 64), in the user's training too. Rows are read as slices of a dense read instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import tensorflow as tf

from .base import Backend, Draw, Pass, Run, own_generator


class TFBackend(Backend):
    """Keras on TensorFlow; ``flavour`` is "keras" (Keras 3) or "tf_keras"."""

    name = "tensorflow"

    def __init__(self, flavour: str = "keras") -> None:
        self.flavour = flavour

    # -- tensors ------------------------------------------------------------------------
    def is_tensor(self, x: Any) -> bool:
        return tf.is_tensor(x) and not isinstance(x, tf.SparseTensor)

    def is_floating(self, x: Any) -> bool:
        return self.is_tensor(x) and x.dtype.is_floating

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.array(tf.cast(x, tf.float32).numpy(), dtype=np.float32, copy=True)

    def ints(self, x: Any) -> np.ndarray:
        return np.asarray(tf.cast(x, tf.int64))

    def _numpy(self, x: Any) -> Any:
        return x.numpy()

    def constant(self, array: np.ndarray, dtype: Any) -> Any:
        return tf.constant(array, dtype=str(getattr(dtype, "name", dtype)))

    def size(self, x: Any) -> int:
        return int(x.shape.num_elements() or 0)

    def scalar(self, x: Any) -> Any:
        return tf.reshape(tf.cast(x, tf.float32), ())

    def weighted_sum(self, x: Any, weights: np.ndarray) -> Any:
        return tf.reduce_sum(tf.cast(x, tf.float32) * weights)

    def round_to(self, row: np.ndarray, dtype: str) -> np.ndarray:
        return self.to_numpy(tf.cast(tf.constant(row), dtype))

    # -- variables ----------------------------------------------------------------------
    def raw(self, variable: Any) -> Any:
        inner = getattr(variable, "_value", None)
        return inner if isinstance(inner, tf.Variable) else variable

    def snapshot(self, variable: Any) -> Any:
        return tf.identity(self.raw(variable))

    def assign(self, variable: Any, value: Any) -> None:
        self.raw(variable).assign(value)

    def row_of(self, variable: Any, pad: int) -> Any:
        return tf.convert_to_tensor(self.raw(variable))[pad : pad + 1]

    def variable(self, keras: Any, value: Any, name: str) -> Any:
        make = getattr(keras, "Variable", None) or tf.Variable
        return make(value, name=name)

    def read(self, variable: Any) -> np.ndarray:
        return self.to_numpy(tf.convert_to_tensor(variable))

    # -- gradients ----------------------------------------------------------------------
    def gradients(self, run: Run, variables: Sequence[Any], *, taps: bool = False) -> Pass:
        tapped: list[Any] = []

        def tap(x: Any) -> Any:
            tapped.append(x)
            return x

        with tf.GradientTape() as tape:
            loss, aux = run(tap)
        grads = tape.gradient(loss, [*variables, *tapped])
        return Pass(list(grads[: len(variables)]), list(grads[len(variables) :]), aux)

    def pad_row(self, grad: Any, pad: int) -> np.ndarray | None:
        """Return row ``pad``; IndexedSlices: the sum of the slices at ``pad`` only."""
        if grad is None:
            return None
        if isinstance(grad, tf.IndexedSlices):
            hit = np.asarray(grad.indices) == pad
            return self.to_numpy(grad.values)[hit].sum(0)
        return self.to_numpy(tf.gather(grad, pad))

    def select_rows(self, grad: Any, rows: np.ndarray) -> np.ndarray:
        """Return the gradient's ``rows`` (sorted), summing duplicate slices."""
        if isinstance(grad, tf.IndexedSlices):
            index = grad.indices.numpy().astype(np.int64)
            values = self.to_numpy(grad.values)
            out = np.zeros((len(rows), *values.shape[1:]), dtype=np.float32)
            keep = np.isin(index, rows)
            np.add.at(out, np.searchsorted(rows, index[keep]), values[keep])
            return out
        return self.to_numpy(tf.gather(grad, rows))

    def dense(self, grad: Any) -> np.ndarray:
        return self.to_numpy(tf.convert_to_tensor(grad))

    def for_optimizer(self, grad: Any) -> Any:
        return tf.convert_to_tensor(grad)  # dense: no scatter into the tables

    # -- randomness ---------------------------------------------------------------------
    @contextmanager
    def rng_guard(self, seed: int, flavour: str) -> Iterator[None]:
        """Also swap TF's global generator and keep the eager op seed's state.

        The user's generator states are restored too (a compiled tf.function keeps
        drawing from the generator it captured).
        """
        generators = _tf_generators()
        previous = generators.global_generator if generators else None
        state = getattr(previous, "state", None)
        kept = [] if state is None else [(state, tf.identity(state))]
        context = _tf_context()
        op_rng = getattr(context, "_rng", None)
        op_state = op_rng.getstate() if op_rng is not None else None
        outer = super().rng_guard(seed, flavour) if flavour == "keras" else _nothing()
        try:
            with outer:
                if generators is not None:
                    own = own_generator("tf", seed, tf.random.Generator.from_seed)
                    own.reset_from_seed(seed)  # as from_seed(seed) builds it, bitwise
                    generators.global_generator = own
                yield
        finally:
            if generators is not None:
                generators.global_generator = previous
            for var, value in kept:
                var.assign(value)
            if op_rng is not None and getattr(context, "_rng", None) is op_rng:
                # mypy's `is` narrowing gives op_rng getattr's type (Any | None)
                op_rng.setstate(op_state)  # type: ignore[union-attr]

    def noise(self, out: Any, ids: Any, pad: int, draw: Draw) -> Any:
        """Pure TensorFlow ops, so that it works inside a ``tf.function`` too."""
        if not (tf.is_tensor(ids) and tf.is_tensor(out)):
            return None
        if out.shape.rank != ids.shape.rank + 1 or not out.dtype.is_floating:
            return None
        at = tf.equal(tf.cast(ids, tf.int64), pad)
        if tf.executing_eagerly() and not bool(tf.reduce_any(at)):
            return None
        others = tf.cast(tf.boolean_mask(out, tf.logical_not(at)), tf.float32)
        scale = tf.math.reduce_std(others)
        scale = tf.where(tf.math.is_finite(scale) & (scale > 0), scale, 1.0)
        if out.shape.is_fully_defined():
            values = tf.constant(draw(tuple(out.shape.as_list())))
        else:  # inside a tf.function: draw when the graph runs
            values = tf.numpy_function(lambda s: draw(tuple(s)), [tf.shape(out)], tf.float32)
        values = values * scale
        return tf.where(at[..., None], tf.cast(values, out.dtype), out)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _tf_generators() -> Any:
    try:
        from tensorflow.python.ops import stateful_random_ops
    except ImportError:
        return None
    return stateful_random_ops if hasattr(stateful_random_ops, "global_generator") else None


def _tf_context() -> Any:
    try:
        from tensorflow.python.eager import context
    except ImportError:
        return None
    return context.context()
