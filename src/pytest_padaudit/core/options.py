"""Audit options: one frozen record, validated once, with one clear error per bad value."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from difflib import get_close_matches
from typing import Any

from . import causes
from .errors import PadAuditError
from .optimizer_path import OptimizerClass, parse_optimizer

CHECKS = ("grad", "update", "invariance")
DEFAULT_CHECKS = CHECKS
LOSSES = ("all", "masked")
PADDING_SIDES = ("right", "left")
#: Finding causes that ``allow=`` accepts (see causes.py, their one owner).
CAUSES = causes.CODES


@dataclass(frozen=True)
class AuditOptions:
    """Everything that decides an audit; see ``audit()`` for the meaning of each field."""

    pad_idx: int | Mapping[str, int] | None = None
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
    tokenizer: Any = None
    #: the user's padded batch (a Mapping of tensors, or a tensor of ids); never compared.
    batch: Any = field(default=None, compare=False)
    step: Callable[..., Any] | None = None
    widen: Callable[..., Any] | None = None
    #: the options set by name (the rest are defaults): what a later layer may override
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> AuditOptions:
        """Validate keyword options and build the record."""
        return cls().merged(**kwargs)

    def merged(self, **kwargs: Any) -> AuditOptions:
        """Return this record with ``kwargs`` validated and laid over it (``kwargs`` win).

        Only ``kwargs`` are validated: the record's own values were, when it was built.
        """
        unknown = sorted(set(kwargs) - set(OPTION_NAMES))
        names: str | frozenset[str]  # the known options' list, then the options set by name
        if unknown:
            names = ", ".join(sorted(OPTION_NAMES))
            raise PadAuditError(
                f"unknown padaudit option {', '.join(map(repr, unknown))}"
                f"{did_you_mean(unknown, OPTION_NAMES)}: pass one of {names}"
            )
        values = {name: getattr(self, name) for name in self.given}
        values.update((name, _VALIDATORS[name](value)) for name, value in kwargs.items())
        names = frozenset(values)
        if values.get("tokenizer") is not None:
            _from_tokenizer(values)  # pad_idx and padding_side follow the tokenizer
        if values.get("step") is not None and values.get("forward") is not None:
            raise PadAuditError(
                "step= and forward= both say how to run the model: pass step=callable(model, "
                "batch) -> scalar loss alone (it replaces forward= and loss=)"
            )
        return type(self)(**values, given=names)

    @property
    def extra_columns(self) -> int:
        """Pad columns the invariance check appends."""
        return self.extra_pad if self.extra_pad is not None else max(2, self.seq_len // 2)

    def to_dict(self) -> dict[str, Any]:
        """Return the options as JSON primitives (callables by their qualified name)."""
        out = {name: _jsonable(getattr(self, name)) for name in OPTION_NAMES}
        if isinstance(self.batch, Mapping):  # the user's batch by its keys, not its values
            out["batch"] = {"keys": sorted(map(str, self.batch))}
        elif isinstance(self.batch, tuple):  # Keras' (x, y[, sample_weight])
            out["batch"] = {"keys": ["x", "y", "sample_weight"][: len(self.batch)]}
        elif self.batch is not None:
            out["batch"] = {"keys": ["input_ids"], "shape": list(self.batch.shape)}
        return out

    def reproduce(self) -> str:
        """Return the ``audit(...)`` call that repeats this audit (pasteable)."""
        from ..render.repro import audit_call

        return audit_call(self)


#: the option names, as ``audit()`` takes them.
OPTION_NAMES = tuple(f.name for f in fields(AuditOptions) if f.name != "given")


def framework_seed(seed: int) -> int:
    """Fold ``seed`` into [0, 2**31) for torch, TF and Keras seeding; smaller seeds stay.

    Deterministic, so a huge seed reproduces; reports keep the user's seed.
    """
    seed = int(seed)
    while seed >= 2**31:
        seed = (seed >> 31) ^ (seed & (2**31 - 1))
    return seed


def _jsonable(value: Any) -> Any:
    if isinstance(value, OptimizerClass):
        return value.text
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if callable(value):
        return getattr(value, "__qualname__", type(value).__qualname__)
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _int(name: str, low: int, *, optional: bool = False) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        if not _is_int(value) or value < low:
            hint = f"an int >= {low}" + (" or None" if optional else "")
            raise PadAuditError(f"{name}={value!r} is not valid: pass {hint}")
        return int(value)

    return check


def _pad_idx(value: Any) -> int | Mapping[str, int] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        if value and all(isinstance(k, str) and _is_int(v) for k, v in value.items()):
            return {k: int(v) for k, v in value.items()}
        raise PadAuditError(
            f"pad_idx={value!r} is not valid: pass the pad token id as an int, or a "
            "non-empty mapping {layer path: id} such as {'embed': 0}"
        )
    if not _is_int(value):
        raise PadAuditError(f"pad_idx={value!r} is not valid: pass the pad token id as an int")
    return int(value)


def _tokenizer(value: Any) -> Any:
    if value is None:
        return None
    if not hasattr(value, "pad_token_id") or not hasattr(value, "padding_side"):
        raise PadAuditError(
            f"tokenizer={type(value).__qualname__} is not a Hugging Face tokenizer: pass "
            "one with pad_token_id and padding_side (transformers.AutoTokenizer...), or "
            "pass pad_idx= and padding_side= instead"
        )
    pad = value.pad_token_id
    if not _is_int(pad):
        raise PadAuditError(
            f"tokenizer={type(value).__qualname__} has no pad token (pad_token_id={pad!r}): "
            "set one first, e.g. tokenizer.pad_token = tokenizer.eos_token"
        )
    if value.padding_side not in PADDING_SIDES:
        raise PadAuditError(
            f"tokenizer.padding_side={value.padding_side!r} is not valid: set it to "
            f"{' or '.join(map(repr, PADDING_SIDES))}"
        )
    return value


def _from_tokenizer(values: dict[str, Any]) -> None:
    """Take ``pad_idx`` and ``padding_side`` from ``values["tokenizer"]``; refuse conflicts."""
    tok = values["tokenizer"]
    for name, value in (("pad_idx", int(tok.pad_token_id)), ("padding_side", tok.padding_side)):
        given = values.get(name)
        if given is not None and given != value:
            attr = "pad_token_id" if name == "pad_idx" else name
            raise PadAuditError(
                f"{name}={given!r} disagrees with tokenizer.{attr}={value!r}: pass one of "
                f"them (the tokenizer is what pads your data)"
            )
        values[name] = value


def _float(name: str, *, positive: bool) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
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


def did_you_mean(given: Iterable[Any], known: Iterable[str]) -> str:
    """Return `` (did you mean a -> b?)`` for the given names close to a known one, or ""."""
    known = list(known)
    guesses = [
        f"{g!r} -> {close[0]!r}"
        for g in given
        if isinstance(g, str) and (close := get_close_matches(g, known, n=1, cutoff=0.6))
    ]
    return f" (did you mean {', '.join(guesses)}?)" if guesses else ""


def _names(name: str, choices: tuple[str, ...], *, empty_ok: bool) -> Callable:
    def check(value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            raise PadAuditError(
                f"{name}={value!r} is a string: pass a tuple of names, {name}=({value!r},)"
                + did_you_mean([value], () if value in choices else choices)
            )
        if not isinstance(value, Iterable) or isinstance(value, Mapping):
            raise PadAuditError(f"{name}={value!r} is not valid: pass a tuple of names")
        items = tuple(value)
        bad = [v for v in items if v not in choices]
        if bad or (not items and not empty_ok):
            raise PadAuditError(
                f"{name}={value!r} is not valid{did_you_mean(bad, choices)}: pass names "
                f"from {', '.join(choices)}"
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
    "optimizer": parse_optimizer,  # the adapter checks what it builds
    "atol": _float("atol", positive=False),
    "rtol": _float("rtol", positive=True),
    "extra_pad": _int("extra_pad", 1, optional=True),
    "padding_side": _choice("padding_side", PADDING_SIDES),
    "allow": _names("allow", CAUSES, empty_ok=True),
    "tokenizer": _tokenizer,
    "batch": lambda value: _batch(value),
    "step": _callable_or_none("step", "a callable(model, batch) -> scalar loss"),
    "widen": _callable_or_none("widen", "a callable(batch, n) -> the batch with n pad columns"),
}


def _batch(value: Any) -> Any:
    """Take a Mapping, an array of ids or an (x, y[, sample_weight]) tuple, as fit takes."""
    if value is None or isinstance(value, Mapping) or hasattr(value, "shape"):
        return value
    if isinstance(value, tuple) and 1 <= len(value) <= 3:
        return value
    if isinstance(value, str):
        raise PadAuditError(
            f"batch={value!r} is a name: pass the batch itself to audit() and the fixture; "
            "the marker takes a fixture's name, @pytest.mark.padaudit(batch='train_batch')"
        )
    raise PadAuditError(
        f"batch={type(value).__qualname__} is not a batch: pass the padded inputs the model "
        "takes, a dict such as tokenizer(texts, padding=True, return_tensors='pt') or "
        "collator(examples), a tensor of ids, or Keras' (x, y) or (x, y, sample_weight)"
    )


def optimizer_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Fold a zero-code spec's optimizer hyper-parameters into ``optimizer=``.

    ``{"optimizer": "torch.optim.AdamW", "lr": 0.01}`` becomes ``{"optimizer":
    OptimizerClass(AdamW, lr=0.01)}``: names that are no audit option are the optimizer's.
    """
    spec = options.get("optimizer")
    extra = {k: v for k, v in options.items() if k not in OPTION_NAMES}
    if not isinstance(spec, str) or not extra:
        return dict(options)
    built = parse_optimizer(spec)
    if not isinstance(built, OptimizerClass):
        return dict(options)
    kwargs = {**built.kwargs, **extra}
    rest = {k: v for k, v in options.items() if k in OPTION_NAMES}
    return {**rest, "optimizer": OptimizerClass(built.path, built.cls, kwargs)}
