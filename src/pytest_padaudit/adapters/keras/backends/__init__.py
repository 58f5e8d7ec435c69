"""What differs between the backends Keras runs on: tensors, variables, gradients, RNGs.

The handle speaks to one :class:`~.base.Backend`, chosen once per model: ``tensorflow``
(Keras 3 on TensorFlow, and ``tf_keras``), ``jax`` or ``torch``. Each module imports its
framework when the model needs it, never before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ....core.errors import PadAuditError

if TYPE_CHECKING:
    from .base import Backend

#: the Keras 3 backends padaudit audits on.
SUPPORTED = ("tensorflow", "jax", "torch")


def backend_name(flavour: str, keras: Any) -> str:
    """Return the backend a model of ``flavour`` ("keras" or "tf_keras") runs on."""
    return "tensorflow" if flavour == "tf_keras" else str(keras.config.backend())


def backend_for(flavour: str, keras: Any, model_class: str) -> Backend:
    """Return the backend a model runs on; raise for one without gradients."""
    name = backend_name(flavour, keras)
    if name == "tensorflow":
        from .tf_backend import TFBackend

        return TFBackend(flavour)
    if name == "jax":
        from .jax_backend import JaxBackend

        return JaxBackend()
    if name == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend()
    raise PadAuditError(
        f"{model_class} is a Keras model on the {name!r} backend, which computes no "
        f"gradients: set KERAS_BACKEND to one of {', '.join(SUPPORTED)} before keras is "
        "imported, e.g. os.environ['KERAS_BACKEND'] = 'jax' at the top of conftest.py"
    )
