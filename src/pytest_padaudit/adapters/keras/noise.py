"""Noise at the pad positions of Keras Embedding calls, for the invariance check.

A model that cannot take a wider batch is measured by replacing the vectors its token
tables emit at pad positions with seeded noise and comparing with the plain pass. The
rule and the draw are the core's (:class:`~pytest_padaudit.core.base.PadNoise`). The
Embedding's ``call`` is wrapped (:func:`recorded_calls`), so Keras still attaches its
mask to the result; the backend puts the noise in place (:meth:`Backend.noise`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from ...core.handle import Table
from ...core.noise import PadNoise, pad_noise
from .backends.base import Backend
from .calls import recorded_calls


def noise_at_pads(
    backend: Backend, layers: Mapping[str, Any], tables: Sequence[Table], seed: int | None
) -> AbstractContextManager[PadNoise | None]:
    """Replace each token table's vectors at its pad id with :class:`PadNoise`.

    Raise :class:`PadAuditError` when no table emitted a vector at a pad position.
    """

    def install(noise: PadNoise) -> AbstractContextManager[Any]:
        def replace(path: str, layer: Any, args: tuple, kwargs: dict, out: Any) -> Any:
            ids = args[0] if args else kwargs.get("inputs")
            draw = lambda shape: noise.draw(path, shape)  # noqa: E731
            return backend.noise(out, ids, noise.pad_of(path), draw)

        return recorded_calls([(t.path, layers[t.path]) for t in noise.tables], replace)

    return pad_noise(tables, seed, install, "Embedding")
