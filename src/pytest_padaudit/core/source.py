"""Python source for the values an audit takes, shared by render and the adapters.

``render/repro.py`` writes the ``audit(...)`` call; each adapter's ``padaudit_expression``
writes its own framework's optimizers with these helpers. No framework is imported.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Mapping
from typing import Any, cast


def dotted_name(cls: type) -> str:
    """Return ``cls`` as ``module.QualName``, the name it is defined under."""
    return f"{cls.__module__}.{cls.__qualname__}"


def exported_name(cls: type, homes: tuple[str, ...]) -> str | None:
    """Return ``home.Name`` for the first imported module of ``homes`` exporting ``cls``."""
    for home in homes:
        module = sys.modules.get(home)
        if module is not None and getattr(module, cls.__name__, None) is cls:
            return f"{home}.{cls.__name__}"
    return None


def changed_arguments(cls: type, values: Mapping[str, Any], skip: tuple[str, ...]) -> list[str]:
    """Return ``name=value`` for the constructor arguments that differ from their default."""
    try:
        params = inspect.signature(cast(Any, cls).__init__).parameters
    except (TypeError, ValueError):
        return []
    out = []
    for name, p in params.items():
        if name in skip or p.default is inspect.Parameter.empty or name not in values:
            continue
        value = values[name]
        if hasattr(value, "item") and not hasattr(value, "__len__"):
            value = value.item()
        if isinstance(value, float):
            value = short_float(value)
        if isinstance(value, (bool, int, float, str, tuple, type(None))) and value != p.default:
            out.append(f"{name}={value!r}")
    return out


def short_float(value: float) -> float:
    """Return ``value`` without float32 noise (0.0010000000474974513 -> 0.001)."""
    short = float(f"{value:.7g}")
    return short if abs(short - value) <= 1e-7 * abs(value) else value
