"""Keras as pasteable source: the lines that show a shrunk leak, and the optimizers.

``snippet`` is the plain reproduction of a shrunk batch on the model's backend;
``expression`` answers the ``padaudit_expression`` hook for Keras optimizers and classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from ...core.shrink import wider
from ...core.source import changed_arguments, dotted_name, exported_name, short_float

#: the public homes of Keras optimizer classes, tried in order for a class's short name.
HOMES = ("keras.optimizers", "tf_keras.optimizers")


def snippet(smallest: Mapping[str, Any], weights: str, backend: str) -> list[str]:
    """Return the lines: ``weights`` is the source that names the table from ``model``."""
    ids, pad = smallest["ids"], smallest["pad_idx"]
    if smallest["check"] in ("grad", "update"):
        return _grad_lines(ids, pad, weights, backend)
    return [
        "import numpy as np",
        f"ids, wider = np.array({ids}), np.array({wider(smallest)})",
        "a, b = model(ids), model(wider)  # same sequences, 4 more pad columns",
        "print(a, b)  # the real positions' outputs differ: pads reach them",
    ]


def _grad_lines(ids: list, pad: int, weights: str, backend: str) -> list[str]:
    """Return the pad row's gradient, computed the way Keras on ``backend`` computes one."""
    if backend == "jax":
        return [
            "import jax, numpy as np; from keras import ops",
            f"ids = np.array({ids}); emb = {weights}; "
            "r = jax.random.uniform(jax.random.key(0), model(ids).shape)",
            "f = lambda w: ops.sum(model.stateless_call([w if v is emb else v.value for v in "
            "model.trainable_variables], [v.value for v in model.non_trainable_variables], "
            "ids)[0] * r)",
            f"print(abs(jax.grad(f)(emb.value)[{pad}]).max())  # > 0: the pad row trains",
        ]
    if backend == "torch":
        return [
            "import numpy as np, torch",
            f"ids = np.array({ids}); emb = {weights}",
            "out = model(ids); (out * torch.rand_like(out)).sum().backward()",
            f"print(emb.value.grad[{pad}].abs().max())  # > 0: the pad row trains",
        ]
    return [
        "import numpy as np, tensorflow as tf",
        f"ids = np.array({ids})",
        "with tf.GradientTape() as tape: out = model(ids); "
        "loss = tf.reduce_sum(out * tf.random.uniform(tf.shape(out)))",
        f"print(tf.reduce_max(tf.abs(tf.convert_to_tensor(tape.gradient(loss, "
        f"{weights}))[{pad}])))  # > 0: the pad row trains",
    ]


def expression(value: object) -> str | None:
    """Return the source of a Keras optimizer (with its rate) or class, else None."""
    if isinstance(value, type):
        return exported_name(value, HOMES)
    if not (hasattr(value, "get_config") and "optimizers" in type(value).__module__):
        return None
    cls = type(value)
    config = dict(cast(Any, value).get_config())
    lr: Any = config.get("learning_rate")
    if hasattr(lr, "item") and not hasattr(lr, "__len__"):  # tf_keras keeps a NumPy float32
        lr = config["learning_rate"] = lr.item()
    if isinstance(lr, dict) or not isinstance(lr, (int, float)):  # a schedule: say its class
        config.pop("learning_rate", None)
    args = changed_arguments(cls, config, ("name",))
    if "learning_rate" in config and not any(a.startswith("learning_rate=") for a in args):
        args.insert(0, f"learning_rate={short_float(float(config['learning_rate']))!r}")
    return f"{exported_name(cls, HOMES) or dotted_name(cls)}({', '.join(args)})"
