"""Lines that repeat an audit, written so that they run when pasted.

``audit_call`` renders the ``audit(...)`` call (an optimizer instance as the expression
that builds it, with its hyper-parameters) and ``rerun_line`` the pytest command. No
framework is imported: objects are described by what they carry. The plain-framework
reproduction of a shrunk batch is each adapter's (``BaseHandle.snippet``).
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import fields
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from ..core.options import AuditOptions

#: public homes of optimizer classes, tried in order for a class's short name.
_PUBLIC = ("torch.optim", "keras.optimizers", "tf_keras.optimizers")


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
    if hasattr(value, "param_groups") and hasattr(value, "defaults"):
        return _torch_optimizer(value)
    if hasattr(value, "get_config") and "optimizers" in type(value).__module__:
        return _keras_optimizer(value)
    if hasattr(value, "item") and not hasattr(value, "__len__"):  # a NumPy scalar
        return repr(value.item())
    if callable(value):
        return getattr(value, "__name__", type(value).__name__)  # the name the test uses
    return f"{type(value).__module__}.{type(value).__qualname__}"


def public_name(cls: type) -> str:
    """Return the shortest importable dotted name of ``cls`` (``torch.optim.AdamW``)."""
    for home in _PUBLIC:
        module = sys.modules.get(home)
        if module is not None and getattr(module, cls.__name__, None) is cls:
            return f"{home}.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _changed(cls: type, values: dict[str, Any], skip: tuple[str, ...]) -> list[str]:
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
            value = _short(value)
        if isinstance(value, (bool, int, float, str, tuple, type(None))) and value != p.default:
            out.append(f"{name}={value!r}")
    return out


def _torch_optimizer(opt: Any) -> str:
    group = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    args = ", ".join(["params", *_changed(type(opt), group, ("params",))])
    return f"lambda params: {public_name(type(opt))}({args})"


def _keras_optimizer(opt: Any) -> str:
    config = dict(opt.get_config())
    lr = config.get("learning_rate")
    if isinstance(lr, dict) or not isinstance(lr, (int, float)):  # a schedule: say its class
        config.pop("learning_rate", None)
    args = _changed(type(opt), config, ("name",))
    if "learning_rate" in config and not any(a.startswith("learning_rate=") for a in args):
        args.insert(0, f"learning_rate={_short(float(config['learning_rate']))!r}")
    return f"{public_name(type(opt))}({', '.join(args)})"


def _short(value: float) -> float:
    """Return ``value`` without float32 noise (0.0010000000474974513 -> 0.001)."""
    short = float(f"{value:.7g}")
    return short if abs(short - value) <= 1e-7 * abs(value) else value


def rerun_line(test: str, seed: int | None) -> str:
    """Return the pytest command that reruns ``test`` (a node id) with ``seed``."""
    quoted = "'" + test.replace("'", "'\"'\"'") + "'"  # always quoted: ids hold [ ] and ::
    return f"pytest {quoted}" + ("" if seed is None else f" --padaudit-seed={seed}")
