"""Keras adapter, as a light hook object: the backend loads only when a model can be a layer.

Roles, as in every framework subpackage: ``handle`` (the layer/model handle), ``tables``
(finding tables), ``state`` (snapshots, RNG, training flags), ``optim`` (optimizers and the
pad-row stepper), ``explain`` (causes and fixes in Keras idiom), ``mask_flow`` (where the
mask chain breaks), ``calls`` (recorded layer calls), ``feed`` (inputs), ``lookups``,
``noise``, ``checkpoint`` and ``snippet`` (pasteable source: the shrunk reproduction,
optimizers for ``padaudit_expression``).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ...core.hookspecs import hookimpl

if TYPE_CHECKING:
    from ...core.handle import ModelHandle
    from ...core.options import AuditOptions

#: Modules one of which is imported whenever a Keras model exists.
KERAS_MODULES = ("keras", "tf_keras")


class KerasAdapter:
    """Audit Keras 3 (TensorFlow, JAX or torch backend) and ``tf_keras`` models and layers."""

    accepts = "a keras.Model (Keras 3 on tensorflow, jax or torch, or tf_keras)"

    @hookimpl
    def padaudit_adapt(self, model: object, options: AuditOptions) -> ModelHandle | None:
        if not any(name in sys.modules for name in KERAS_MODULES):
            return None  # nothing Keras imported: model cannot be a Keras layer
        flavour = keras_flavour(model)
        if flavour is None:
            return None
        from .handle import KerasHandle

        return KerasHandle(model, options, sys.modules[flavour])

    @hookimpl
    def padaudit_expression(self, value: object) -> str | None:
        if not any(name in sys.modules for name in KERAS_MODULES):
            return None  # nothing Keras imported: value cannot be a Keras optimizer
        from .snippet import expression

        return expression(value)


def keras_flavour(model: object) -> str | None:
    """Return "keras" or "tf_keras" when ``model`` is a layer of that imported package."""
    for name in ("keras", "tf_keras"):
        module = sys.modules.get(name)
        layer = getattr(getattr(module, "layers", None), "Layer", None)
        if isinstance(layer, type) and isinstance(model, layer):
            return name
    return None
