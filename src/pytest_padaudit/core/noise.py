"""The pad-noise rule, one NumPy recipe for every framework: :class:`PadNoise`.

The invariance check's ``perturb`` run replaces each token table's vectors at its pad id
with seeded noise; each adapter's ``noise.py`` hooks :func:`pad_noise` into its lookups.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from .errors import PadAuditError

if TYPE_CHECKING:
    from .handle import Table

#: mixed into every noise seed, so pad noise never repeats another seeded draw.
NOISE_SALT = 104729


@dataclass
class PadNoise:
    """The pad-noise rule, the same in every framework.

    Each token table's vectors at its pad id become ``scale * draw(path, shape)``: a
    standard normal draw seeded by (seed, table number, call number), so the same seed
    gives the same values everywhere; ``scale`` is the standard deviation (ddof 0) of the
    vectors the call emitted at the other ids, 1.0 when there are none or it is 0/inf.
    """

    tables: list[Table]
    seed: int
    calls: dict[str, int] = field(default_factory=dict)

    def pad_of(self, path: str) -> int:
        """Return the pad id of token table ``path``."""
        return next(cast(int, t.pad_idx) for t in self.tables if t.path == path)

    def draw(self, path: str, shape: tuple[int, ...]) -> np.ndarray:
        """Return this call's standard normal noise for table ``path`` (float32)."""
        number = [t.path for t in self.tables].index(path)
        self.calls[path] = self.calls.get(path, 0) + 1
        rng = np.random.default_rng([self.seed, NOISE_SALT, number, self.calls[path]])
        return rng.standard_normal(tuple(int(s) for s in shape)).astype(np.float32)


@contextmanager
def pad_noise(
    tables: Sequence[Table],
    seed: int | None,
    install: Callable[[PadNoise], AbstractContextManager[Any]],
    what: str,
) -> Iterator[PadNoise | None]:
    """Put :class:`PadNoise` on the token tables while the block runs (``seed`` None: none).

    ``install`` hooks it into the framework's lookups. Raise :class:`PadAuditError` when
    no table emitted a vector at a pad position; ``what`` names the lookups that can.
    """
    if seed is None:
        yield None
        return
    noise = PadNoise([t for t in tables if t.token is not False], seed)
    with install(noise):
        yield noise
    if not any(noise.calls.values()):
        names = ", ".join(t.path for t in noise.tables) or "none"
        raise PadAuditError(
            f"no token table ({names}) emitted a vector at a pad position: only {what} "
            "lookups of the pad id can be replaced"
        )


def noise_scale(spread: float) -> float:
    """Return the noise scale for a measured spread: 1.0 unless it is finite and > 0."""
    return spread if np.isfinite(spread) and spread > 0 else 1.0
