"""Lines that repeat an audit, written so that they run when pasted.

``audit_call`` renders the ``audit(...)`` call and ``rerun_line`` the pytest command. No
framework is known here: the adapters write their own objects (an optimizer as the
expression that builds it) through the ``padaudit_expression`` hook; the plain-framework
reproduction of a shrunk batch is each adapter's too (``BaseHandle.snippet``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from ..core.source import dotted_name

if TYPE_CHECKING:
    import pluggy

    from ..core.options import AuditOptions

#: how to reach padaudit's plugin manager, installed by ``core.hooks``: render cannot import
#: it (the adapters it loads import the options, and the options import this module).
_MANAGER: list[Callable[[], pluggy.PluginManager]] = []


def use_plugin_manager(get: Callable[[], pluggy.PluginManager]) -> None:
    """Ask the ``padaudit_expression`` hook of the plugin manager ``get()`` returns."""
    _MANAGER[:] = [get]


def audit_call(opts: AuditOptions) -> str:
    """Return the ``audit(model, ...)`` call that repeats an audit with ``opts``."""
    default = type(opts)()
    parts = ["model"]
    for name in (f.name for f in fields(opts) if f.repr):  # not the bookkeeping ``given``
        value = getattr(opts, name)
        if name == "batch":
            parts += [] if value is None else ["batch=batch"]  # the test's own batch
        elif name == "seed" or value != getattr(default, name):
            parts.append(f"{name}={expression(value)}")
    return f"audit({', '.join(parts)})"


def expression(value: Any) -> str:
    """Return Python source that evaluates to ``value`` where the test's names exist."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        inner = ", ".join(expression(v) for v in value)
        return f"({inner},)" if isinstance(value, tuple) and len(value) == 1 else f"({inner})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {expression(v)}" for k, v in value.items()) + "}"
    if isinstance(value, type):
        return public_name(value)
    if type(value).__name__ == "OptimizerClass":  # a dotted path the options accept as text
        return repr(value.text)
    known = _adapters(value)  # an optimizer, in its framework's words
    if known is not None:
        return known
    if hasattr(value, "item") and not hasattr(value, "__len__"):  # a NumPy scalar
        return repr(value.item())
    if callable(value):
        return getattr(value, "__name__", type(value).__name__)  # the name the test uses
    return dotted_name(type(value))


def public_name(cls: type) -> str:
    """Return the shortest importable dotted name of ``cls`` (``torch.optim.AdamW``)."""
    return _adapters(cls) or dotted_name(cls)


def _adapters(value: object) -> str | None:
    """Return what the adapters' ``padaudit_expression`` hook writes for ``value``."""
    return _MANAGER[0]().hook.padaudit_expression(value=value) if _MANAGER else None


def rerun_line(test: str, seed: int | None) -> str:
    """Return the pytest command that reruns ``test`` (a node id) with ``seed``."""
    quoted = "'" + test.replace("'", "'\"'\"'") + "'"  # always quoted: ids hold [ ] and ::
    return f"pytest {quoted}" + ("" if seed is None else f" --padaudit-seed={seed}")
