"""Keras adapter, as a light hook object: TensorFlow loads only when a model can be a layer.

Roles, as in every framework subpackage: ``handle`` (the layer/model handle), ``tables``
(finding tables), ``state`` (snapshots, RNG, training flags), ``optim`` (optimizers and the
pad-row stepper), ``explain`` (causes and fixes in Keras idiom), ``mask_flow`` (where the
mask chain breaks), ``calls`` (recorded layer calls), ``feed`` (inputs), ``lookups``,
``noise`` and ``checkpoint``.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ...errors import PadAuditError
from ...hookspecs import hookimpl

if TYPE_CHECKING:
    from ...handle import ModelHandle
    from ...options import AuditOptions

#: Modules one of which is imported whenever a Keras model exists.
KERAS_MODULES = ("keras", "tf_keras", "tensorflow")


class KerasAdapter:
    """Audit Keras 3 (TensorFlow backend) and ``tf_keras`` models and layers."""

    @hookimpl
    def padaudit_adapt(self, model: object, options: AuditOptions) -> ModelHandle | None:
        if not any(name in sys.modules for name in KERAS_MODULES):
            return None  # nothing Keras imported: model cannot be a Keras layer
        flavour = keras_flavour(model)
        if flavour is None:
            return None
        if flavour == "keras":
            backend = sys.modules["keras"].config.backend()
            if backend != "tensorflow":
                raise PadAuditError(
                    f"{type(model).__qualname__} is a Keras model on the {backend!r} backend: "
                    "padaudit audits Keras on TensorFlow only: set KERAS_BACKEND=tensorflow "
                    "(with tensorflow installed) before keras is imported, e.g. in conftest.py"
                )
        from .handle import KerasHandle

        return KerasHandle(model, options, sys.modules[flavour])


def keras_flavour(model: object) -> str | None:
    """Return "keras" or "tf_keras" when ``model`` is a layer of that imported package."""
    for name in ("keras", "tf_keras"):
        module = sys.modules.get(name)
        layer = getattr(getattr(module, "layers", None), "Layer", None)
        if isinstance(layer, type) and isinstance(model, layer):
            return name
    return None
