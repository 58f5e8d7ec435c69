"""Compare two audit reports (``AuditReport.to_dict()``) field by field."""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from typing import Any


def blurred(text: str) -> str:
    """Return ``text`` with every decimal number replaced by ``#``."""
    return re.sub(r"\d+\.\d+(e[-+]?\d+)?", "#", text)


def assert_same_report(
    a: Any, b: Any, *, skip: Collection[str] = (), abs_tol: float, where: str = "report"
) -> None:
    """Assert ``a`` and ``b`` agree: equal structure and text, floats to rel 1e-4.

    ``skip``: dict keys not compared; texts are compared with their numbers blurred.
    """
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            if key not in skip:
                here = f"{where}.{key}"
                assert_same_report(a[key], b[key], skip=skip, abs_tol=abs_tol, where=here)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_report(x, y, skip=skip, abs_tol=abs_tol, where=f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(b, str):
        assert isinstance(b, float) and (
            (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-4, abs_tol=abs_tol)
        ), (where, a, b)
    elif isinstance(a, str) and isinstance(b, str) and a != b:
        assert blurred(a) == blurred(b), (where, a, b)
    else:
        assert a == b, (where, a, b)
