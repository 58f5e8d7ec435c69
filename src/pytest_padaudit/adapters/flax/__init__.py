"""Flax NNX adapter, a third-party-style plugin: found through the ``padaudit`` entry point.

This module is the light hook object. It recognises an ``nnx.Module`` through
``sys.modules`` alone, so it imports neither JAX nor Flax unless the model can be one;
the handle (``handle.py``) and everything that imports JAX load only then.

Roles, as in every framework subpackage: ``handle`` (the ``nnx.Module`` handle), ``tables``
(finding and instrumenting ``nnx.Embed``), ``state`` (split/merge snapshots), ``optim``
(optax steps), ``explain`` (causes and fixes in JAX idiom), ``noise`` and ``checkpoint``
(``.msgpack`` files for ``audit_checkpoint``).

Registered in ``pyproject.toml`` as ``[project.entry-points.padaudit] flax =
"pytest_padaudit.adapters.flax:ADAPTER"``; ``pytest_padaudit.register(ADAPTER)`` does
the same by hand. It is deliberately not one of ``BUILTIN_ADAPTERS``.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ...core.errors import PadAuditError
from ...core.hookspecs import hookimpl

if TYPE_CHECKING:
    from ...core.handle import ModelHandle
    from ...core.options import AuditOptions


def nnx_module_class() -> type | None:
    """Return ``flax.nnx.Module`` when Flax NNX is already imported, else None."""
    module = sys.modules.get("flax.nnx")
    cls = getattr(module, "Module", None)
    return cls if isinstance(cls, type) else None


def linen_module_class() -> type | None:
    """Return ``flax.linen.Module`` when Flax Linen is already imported, else None."""
    cls = getattr(sys.modules.get("flax.linen"), "Module", None)
    return cls if isinstance(cls, type) else None


class FlaxAdapter:
    """Audit Flax NNX models: every ``nnx.Embed`` (pad id from ``pad_idx=``)."""

    accepts = "a flax.nnx.Module"

    @hookimpl
    def padaudit_adapt(self, model: object, options: AuditOptions) -> ModelHandle | None:
        nnx_module = nnx_module_class()
        if nnx_module is not None and isinstance(model, nnx_module):
            from .handle import FlaxHandle

            return FlaxHandle(model, options)
        linen = linen_module_class()
        if linen is not None and isinstance(model, linen):
            raise PadAuditError(
                f"{type(model).__qualname__} is a Flax Linen module: padaudit audits Flax NNX "
                "(flax.nnx.Module with nnx.Embed): pass an nnx.Module"
            )
        return None


#: The instance the ``padaudit`` entry point names.
ADAPTER = FlaxAdapter()
