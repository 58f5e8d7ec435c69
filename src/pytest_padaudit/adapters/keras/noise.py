"""Noise at the pad positions of Keras Embedding calls, for the invariance check.

A model that cannot take a wider batch is measured by replacing the vectors its token
tables emit at pad positions with seeded noise and comparing with the plain pass. The
Embedding's ``call`` is wrapped (:func:`recorded_calls`), so Keras still attaches its
mask to the result. The noise itself is the backend's (:meth:`Backend.noise`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from ...core.errors import PadAuditError
from ...core.handle import Table
from .backends.base import Backend
from .calls import recorded_calls


@contextmanager
def noise_at_pads(
    backend: Backend, layers: Mapping[str, Any], tables: Sequence[Table], seed: int | None
) -> Iterator[None]:
    """Replace each token table's vectors at its pad id with seeded noise of its scale.

    The scale is the standard deviation of the vectors it emits at the other ids.
    Raise :class:`PadAuditError` when no table emitted a vector at a pad position.
    """
    if seed is None:
        yield
        return
    tables = [t for t in tables if getattr(t, "token", None) is not False]
    number = {t.path: (k, t.pad_idx) for k, t in enumerate(tables)}
    calls: dict[str, int] = {}

    def noise(path: str, layer: Any, args: tuple, kwargs: dict, out: Any) -> Any:
        ids = args[0] if args else kwargs.get("inputs")
        k, pad = number[path]
        key = (seed % (2**31 - 1), 104729 * (k + 1) + calls.get(path, 0) + 1)
        replaced = backend.noise(out, ids, pad, key)
        if replaced is not None:
            calls[path] = calls.get(path, 0) + 1
        return replaced

    with recorded_calls([(t.path, layers[t.path]) for t in tables], noise):
        yield
    if not calls:
        names = ", ".join(t.path for t in tables) or "none"
        raise PadAuditError(
            f"no token table ({names}) emitted a vector at a pad position: only "
            "Embedding lookups of the pad id can be replaced"
        )
