"""Audit options: one frozen record, validated once, with one clear error per bad value."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import PadAuditError

CHECKS = ("grad", "update", "invariance")
DEFAULT_CHECKS = CHECKS
LOSSES = ("all", "masked")
PADDING_SIDES = ("right", "left")
#: Finding causes that ``allow=`` accepts: reported as allowed instead of failing.
CAUSES = (
    "no_padding_idx",
    "tied",
    "weight_reuse",
    "unmasked",
    "max_norm",
    "weight_decay",
    "optimizer",
    "nonfinite",
    "invariance",
)


@dataclass(frozen=True)
class AuditOptions:
    """Everything that decides an audit; see ``audit()`` for the meaning of each field."""

    pad_idx: int | None = None
    seed: int = 0
    batch_size: int = 4
    seq_len: int = 16
    vocab_size: int | None = None
    forward: Callable[..., Any] | None = None
    loss: str | Callable[..., Any] = "all"
    checks: tuple[str, ...] = DEFAULT_CHECKS
    steps: int = 1
    optimizer: Any = None
    atol: float = 0.0
    rtol: float = 1e-4
    extra_pad: int | None = None
    padding_side: str = "right"
    allow: tuple[str, ...] = ()

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> AuditOptions:
        """Validate keyword options and build the record."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise PadAuditError(
                f"unknown padaudit option {', '.join(map(repr, unknown))}: "
                f"pass one of {', '.join(sorted(known))}"
            )
        values = {name: _VALIDATORS[name](value) for name, value in kwargs.items()}
        return cls(**values)

    @property
    def extra_columns(self) -> int:
        """Pad columns the invariance check appends."""
        return self.extra_pad if self.extra_pad is not None else max(2, self.seq_len // 2)

    def to_dict(self) -> dict[str, Any]:
        """Return the options as JSON primitives (callables by their qualified name)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}

    def reproduce(self) -> str:
        """Return the ``audit(...)`` call that repeats this audit (pasteable)."""
        from .repro import audit_call

        return audit_call(self)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if callable(value):
        return getattr(value, "__qualname__", type(value).__qualname__)
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _int(name: str, low: int, *, optional: bool = False) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            hint = f"an int >= {low}" + (" or None" if optional else "")
            raise PadAuditError(f"{name}={value!r} is not valid: pass {hint}")
        return int(value)

    return check


def _pad_idx(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PadAuditError(f"pad_idx={value!r} is not valid: pass the pad token id as an int")
    return int(value)


def _float(name: str, *, positive: bool) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or value < 0 or (positive and value == 0) or value != value:
            bound = "> 0" if positive else ">= 0"
            raise PadAuditError(f"{name}={value!r} is not valid: pass a float {bound}")
        return float(value)

    return check


def _choice(name: str, choices: tuple[str, ...], *, callable_ok: bool = False) -> Callable:
    def check(value: Any) -> Any:
        if callable_ok and callable(value):
            return value
        if value not in choices:
            extra = " or a callable(output, batch) -> scalar" if callable_ok else ""
            raise PadAuditError(
                f"{name}={value!r} is not valid: pass one of {', '.join(map(repr, choices))}{extra}"
            )
        return value

    return check


def _names(name: str, choices: tuple[str, ...], *, empty_ok: bool) -> Callable:
    def check(value: Any) -> tuple[str, ...]:
        items = (value,) if isinstance(value, str) else value
        if not isinstance(items, Iterable) or isinstance(items, Mapping):
            raise PadAuditError(f"{name}={value!r} is not valid: pass a tuple of names")
        items = tuple(items)
        bad = [v for v in items if v not in choices]
        if bad or (not items and not empty_ok):
            raise PadAuditError(
                f"{name}={value!r} is not valid: pass names from {', '.join(choices)}"
            )
        return tuple(dict.fromkeys(items))

    return check


def _callable_or_none(name: str, hint: str) -> Callable:
    def check(value: Any) -> Any:
        if value is not None and not callable(value):
            raise PadAuditError(f"{name}={value!r} is not callable: pass {hint}")
        return value

    return check


_VALIDATORS: dict[str, Callable[[Any], Any]] = {
    "pad_idx": _pad_idx,
    "seed": _int("seed", 0),
    "batch_size": _int("batch_size", 2),
    "seq_len": _int("seq_len", 2),
    "vocab_size": _int("vocab_size", 2, optional=True),
    "forward": _callable_or_none("forward", "a callable(model, batch) -> output"),
    "loss": _choice("loss", LOSSES, callable_ok=True),
    "checks": _names("checks", CHECKS, empty_ok=False),
    "steps": _int("steps", 1),
    "optimizer": lambda value: value,  # validated by the adapter, which knows the framework
    "atol": _float("atol", positive=False),
    "rtol": _float("rtol", positive=True),
    "extra_pad": _int("extra_pad", 1, optional=True),
    "padding_side": _choice("padding_side", PADDING_SIDES),
    "allow": _names("allow", CAUSES, empty_ok=True),
}
