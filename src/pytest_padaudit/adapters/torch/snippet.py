"""The plain PyTorch lines that show a shrunk leak, written to run when pasted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...core.shrink import wider


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
