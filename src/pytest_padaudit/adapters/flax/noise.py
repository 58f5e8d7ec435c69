"""Noise at the pad positions of Flax NNX ``nnx.Embed`` calls, for the invariance check.

A model that cannot take a wider batch is measured by replacing the vectors its token
tables emit at pad positions with seeded noise and comparing with the plain pass. The
rule and the draw are the core's (:class:`~pytest_padaudit.core.base.PadNoise`); the
instrumented Embed copies (``tables.instrument``) call :func:`noisy` while a pass runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from ...core.handle import Table
from ...core.noise import PadNoise, pad_noise

if TYPE_CHECKING:
    from .tables import Recorder


def noise_at_pads(
    rec: Recorder, tables: Sequence[Table], seed: int | None
) -> AbstractContextManager[PadNoise | None]:
    """Make the pass that ``rec`` records replace the token tables' pad vectors.

    Raise :class:`PadAuditError` when no table emitted a vector at a pad position.
    """

    @contextmanager
    def install(noise: PadNoise) -> Iterator[None]:
        rec.noise = noise
        try:
            yield
        finally:
            rec.noise = None

    return pad_noise(tables, seed, install, "nnx.Embed")


def noisy(noise: PadNoise, path: str, inputs: Any, out: jax.Array) -> jax.Array:
    """Return ``out`` with the vectors at table ``path``'s pad id replaced by noise.

    The scale is the standard deviation of the vectors emitted at the other ids.
    """
    at = jnp.asarray(inputs) == noise.pad_of(path)
    if not isinstance(at, jax.core.Tracer) and not bool(at.any()):
        return out
    keep = (~at)[..., None].astype(jnp.float32)
    x = out.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(keep) * out.shape[-1], 1.0)
    mean = jnp.sum(x * keep) / count
    spread = jnp.sqrt(jnp.sum(jnp.square((x - mean) * keep)) / count)
    scale = jnp.where(jnp.isfinite(spread) & (spread > 0), spread, 1.0)
    values = jnp.asarray(noise.draw(path, tuple(out.shape))) * scale
    return jnp.where(at[..., None], values.astype(out.dtype), out)
