"""The backend contract, written once with ``keras.ops`` for the backends that share it.

JAX and torch differ only in how a gradient is taken, how a tensor is recognised and which
global RNG a dropout may draw from; TensorFlow (and ``tf_keras``, which has no ``keras.ops``)
overrides the tensor helpers too.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import numpy as np

#: Marks a tensor whose gradient the pass should return: ``tap(x)`` is used in x's place.
Tap = Callable[[Any], Any]
#: One pass: ``run(tap)`` returns (scalar loss, tensors to return as values).
Run = Callable[[Tap], tuple[Any, list[Any]]]
#: the pad-noise draw: shape -> standard normal float32 array (one recipe everywhere).
Draw = Callable[[tuple[int, ...]], np.ndarray]


@dataclasses.dataclass
class Pass:
    """What one differentiated pass returns (a gradient is None where none flows)."""

    grads: list[Any]
    taps: list[Any]
    aux: list[Any]


class Backend:
    """Tensors, variables, gradients and RNGs of one Keras backend."""

    name = "?"

    # -- tensors ------------------------------------------------------------------------
    def is_tensor(self, x: Any) -> bool:
        raise NotImplementedError

    def is_floating(self, x: Any) -> bool:
        """Say whether ``x`` is a floating-point tensor."""
        from keras import backend

        if not self.is_tensor(x):
            return False
        return bool(backend.is_float_dtype(backend.standardize_dtype(x.dtype)))

    def to_numpy(self, x: Any) -> np.ndarray:
        """Copy a tensor to a float32 NumPy array."""
        from keras import ops

        return np.array(ops.convert_to_numpy(ops.cast(x, "float32")), np.float32, copy=True)

    def ints(self, x: Any) -> np.ndarray:
        """Return an integer tensor as int64 NumPy."""
        from keras import ops

        return np.asarray(ops.convert_to_numpy(x)).astype(np.int64)

    def values(self, x: Any) -> np.ndarray | None:
        """Return a tensor's values, or None where they are not known yet (traced)."""
        try:
            return np.asarray(self._numpy(x))
        except Exception:
            return None

    def _numpy(self, x: Any) -> Any:
        from keras import ops

        return ops.convert_to_numpy(x)

    def constant(self, array: np.ndarray, dtype: Any) -> Any:
        from keras import backend, ops

        return ops.convert_to_tensor(array, backend.standardize_dtype(dtype))

    def size(self, x: Any) -> int:
        return int(np.prod(tuple(x.shape)))

    def scalar(self, x: Any) -> Any:
        """Return a one-element tensor as a float32 scalar."""
        from keras import ops

        return ops.reshape(ops.cast(x, "float32"), ())

    def weighted_sum(self, x: Any, weights: np.ndarray) -> Any:
        from keras import ops

        return ops.sum(ops.cast(x, "float32") * ops.convert_to_tensor(weights))

    def round_to(self, row: np.ndarray, dtype: str) -> np.ndarray:
        """Return ``row`` as the layer computes it (cast to its compute dtype and back)."""
        from keras import ops

        return self.to_numpy(ops.cast(ops.convert_to_tensor(row), dtype))

    # -- variables ----------------------------------------------------------------------
    def raw(self, variable: Any) -> Any:
        """Return the variable to snapshot and compare (TensorFlow: the inner tf.Variable)."""
        return variable

    def snapshot(self, variable: Any) -> Any:
        raise NotImplementedError

    def assign(self, variable: Any, value: Any) -> None:
        variable.assign(value)

    def row_of(self, variable: Any, pad: int) -> Any:
        """Return a copy of row ``pad`` of a variable, shape (1, dim)."""
        from keras import ops

        return ops.copy(ops.convert_to_tensor(variable)[pad : pad + 1])

    def variable(self, keras: Any, value: Any, name: str) -> Any:
        return keras.Variable(value, name=name)

    def read(self, variable: Any) -> np.ndarray:
        return self.to_numpy(variable.value)

    # -- gradients ----------------------------------------------------------------------
    def gradients(self, run: Run, variables: Sequence[Any], *, taps: bool = False) -> Pass:
        """Run ``run`` once, differentiated w.r.t. ``variables`` and the tapped tensors."""
        raise NotImplementedError

    def connected(self, grad: Any) -> bool:
        """Say whether a gradient shows that the loss depends on its variable."""
        return grad is not None

    def no_grad(self) -> AbstractContextManager[Any]:
        return nullcontext()

    def pad_row(self, grad: Any, pad: int) -> np.ndarray | None:
        """Return row ``pad`` of a gradient."""
        return None if grad is None else self.to_numpy(grad[pad])

    def select_rows(self, grad: Any, rows: np.ndarray) -> np.ndarray:
        from keras import ops

        return self.to_numpy(ops.take(grad, ops.convert_to_tensor(rows), axis=0))

    def dense(self, grad: Any) -> np.ndarray:
        return self.to_numpy(grad)

    def for_optimizer(self, grad: Any) -> Any:
        """Return a gradient as an optimizer's ``apply_gradients`` takes it."""
        return grad

    def apply(self, optimizer: Any, pairs: Sequence[tuple[Any, Any]]) -> None:
        """Step ``optimizer`` (the audit's fresh copy) once on (gradient, variable) pairs."""
        optimizer.apply_gradients(list(pairs))

    # -- randomness ---------------------------------------------------------------------
    @contextmanager
    def rng_guard(self, seed: int, flavour: str) -> Iterator[None]:
        """Seed Keras' global seed generator for the audit; put the user's back after.

        The model's own generators (dropout seeds) are variables, restored with the rest.
        """
        from keras.src.backend.common import global_state

        previous = global_state.get_global_attribute("global_seed_generator")
        state = getattr(previous, "state", None)
        kept = self.snapshot(state) if state is not None else None
        try:
            global_state.set_global_attribute("global_seed_generator", _seed_generator(seed))
            with self.framework_rng(seed):
                yield
        finally:
            global_state.set_global_attribute("global_seed_generator", previous)
            if state is not None:
                self.assign(state, kept)

    def framework_rng(self, seed: int) -> AbstractContextManager[Any]:
        """Seed the framework's own global RNG, where layers draw from it; restore it after."""
        return nullcontext()

    def noise(self, out: Any, ids: Any, pad: int, draw: Draw) -> Any:
        """Return ``out`` with the vectors at ``ids == pad`` replaced by seeded noise.

        ``draw(shape)`` is the standard normal draw (:class:`~...core.base.PadNoise`); the
        noise has the scale (standard deviation) of the other vectors. Return None when
        ``out`` is not the lookup of ``ids`` or no id is ``pad``.
        """
        from keras import ops

        if not (self.is_tensor(ids) and self.is_tensor(out)):
            return None
        at = self.ints(ids) == pad
        if not self.is_floating(out) or len(out.shape) != at.ndim + 1 or not at.any():
            return None
        keep = ops.convert_to_tensor((~at)[..., None].astype(np.float32))
        x = ops.cast(out, "float32")
        count = float((~at).sum() * out.shape[-1])
        if count:
            mean = ops.sum(x * keep) / count
            scale = ops.sqrt(ops.sum(ops.square((x - mean) * keep)) / count)
            scale = ops.where(ops.isfinite(scale) & (scale > 0), scale, 1.0)
        else:
            scale = 1.0
        values = ops.convert_to_tensor(draw(tuple(out.shape))) * scale
        return ops.where(ops.convert_to_tensor(at[..., None]), ops.cast(values, out.dtype), out)


#: the audit's own generators, built once per thread (Keras' global state is per thread)
#: and reset to each audit's seed: building them costs more than the reset.
_OWN = threading.local()


def _seed_generator(seed: int) -> Any:
    """Return this thread's padaudit SeedGenerator, its state as ``SeedGenerator(seed)``'s."""
    from keras.src import backend
    from keras.src.random.seed_generator import SeedGenerator

    seeded = own_generator(
        "keras", seed, lambda s: SeedGenerator(s, name="padaudit_seed_generator")
    )
    seeded.state.assign(backend.convert_to_tensor([seed, 0], dtype=backend.random_seed_dtype()))
    return seeded


def own_generator(name: str, seed: int, build: Callable[[int], Any]) -> Any:
    """Return this thread's generator ``name``, built by ``build(seed)`` the first time;
    the caller resets a returned one to ``seed``."""
    made = getattr(_OWN, name, None)
    if made is None:
        made = build(seed)
        setattr(_OWN, name, made)
    return made
