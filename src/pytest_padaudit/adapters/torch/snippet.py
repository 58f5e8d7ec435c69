"""PyTorch as pasteable source: the lines that show a shrunk leak, and the optimizers.

``snippet`` is the plain reproduction of a shrunk batch; ``expression`` answers the
``padaudit_expression`` hook for torch optimizers and their classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from ...core.shrink import wider
from ...core.source import changed_arguments, dotted_name, exported_name

#: the public home of torch optimizer classes.
HOMES = ("torch.optim",)


def snippet(smallest: Mapping[str, Any], weights: str) -> list[str]:
    """Return the lines: ``weights`` is the source that names the table from ``model``."""
    ids, pad = smallest["ids"], smallest["pad_idx"]
    if smallest["check"] in ("grad", "update"):
        return [
            "import torch",
            f"ids = torch.tensor({ids})",
            "out = model(ids); out = out if torch.is_tensor(out) else out[0]; "
            "(out * torch.rand_like(out)).sum().backward()",
            f"print({weights}.grad[{pad}].abs().max())  # > 0: the pad row trains",
        ]
    return [
        "import torch",
        f"ids, wider = torch.tensor({ids}), torch.tensor({wider(smallest)})",
        "a, b = model(ids), model(wider)  # same sequences, 4 more pad columns",
        "print(a, b)  # the real positions' outputs differ: pads reach them",
    ]


def expression(value: object) -> str | None:
    """Return the source of a torch optimizer (``lambda params: ...``) or class, else None."""
    if isinstance(value, type):
        return exported_name(value, HOMES)
    if not (hasattr(value, "param_groups") and hasattr(value, "defaults")):
        return None
    cls, groups = type(value), cast(Any, value).param_groups
    group = {k: v for k, v in groups[0].items() if k != "params"}
    args = ", ".join(["params", *changed_arguments(cls, group, ("params",))])
    return f"lambda params: {exported_name(cls, HOMES) or dotted_name(cls)}({args})"
