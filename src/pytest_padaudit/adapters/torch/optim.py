"""Optimizers for the PyTorch update check.

Built-in element-wise optimizers (SGD, Adam, AdamW, ...) update each element from its own
gradient and state alone, so stepping a copy of the pad row is exactly what stepping the whole
table would do to that row, at O(dim) instead of O(vocab). Any other optimizer (LBFGS,
Adafactor, a subclass with its own step) is stepped on the real tables.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias, cast

import torch
from torch import nn

from ...core.errors import PadAuditError

#: torch.optim classes whose update of an element depends on that element's gradient and
#: state only; an exact class match: a subclass may step differently.
STEPPED_ALONE = (
    "SGD",
    "Adam",
    "AdamW",
    "Adamax",
    "NAdam",
    "RAdam",
    "RMSprop",
    "Adagrad",
    "Adadelta",
    "ASGD",
    "Rprop",
)
ELEMENTWISE = frozenset(
    getattr(torch.optim, name) for name in STEPPED_ALONE if hasattr(torch.optim, name)
)
HINT = (
    "pass optimizer= an optimizer class, an optimizer instance (its class and "
    "hyper-parameters are copied), or a factory lambda params: torch.optim.AdamW(params)"
)


#: an optimizer class as called: a subclass's __init__ (params, **hyper-parameters).
_Build: TypeAlias = "Callable[..., torch.optim.Optimizer]"

#: the code of the wrapper ``torch._disable_dynamo`` puts around a function.
_DISABLED = torch._disable_dynamo(lambda: None).__code__


def _dynamo_disabled(obj: Any, found: dict[int, Any], depth: int = 0) -> None:
    """Collect the functions ``torch._disable_dynamo`` wraps in ``obj`` (closures, wraps)."""
    obj = getattr(obj, "__func__", obj)  # staticmethod, classmethod
    if not isinstance(obj, types.FunctionType) or depth > 3:
        return
    if obj.__code__ is _DISABLED and callable(wrapped := getattr(obj, "__wrapped__", None)):
        found[id(wrapped)] = wrapped
    for cell in obj.__closure__ or ():
        with contextlib.suppress(ValueError):  # an empty cell
            _dynamo_disabled(cell.cell_contents, found, depth + 1)
    _dynamo_disabled(getattr(obj, "__wrapped__", None), found, depth + 1)


@contextlib.contextmanager
def without_dynamo(*classes: type) -> Iterator[bool]:
    """Let element-wise ``classes`` be built and stepped without importing torch._dynamo.

    torch.optim imports torch._dynamo (and sympy: about 1 s in a fresh process) the first
    time an optimizer is built or stepped, only to mark graph breaks and dynamo-disabled
    functions for ``torch.compile``. Nothing is compiled while the audit steps its copy, so
    inside this block those markers are skipped: each disabled function runs as itself.
    Yields False (and changes nothing) when dynamo is loaded already or a class is not
    element-wise; the markers are put back on exit.
    """
    if "torch._dynamo" in sys.modules or not all(c in ELEMENTWISE for c in classes):
        yield False
        return
    found: dict[int, Any] = {}
    for owner in (torch.optim.Optimizer, *classes):
        for value in [*vars(owner).values(), *vars(sys.modules[owner.__module__]).values()]:
            _dynamo_disabled(value, found)
    marked = [fn for fn in found.values() if getattr(fn, "__dynamo_disable", None) is None]
    for fn in marked:
        fn.__dynamo_disable = fn  # what torch._disable_dynamo caches; it now calls fn
    try:
        yield True
    finally:
        for fn in marked:
            if getattr(fn, "__dynamo_disable", None) is fn:
                # mypy's `is` narrowing gives fn getattr's type (Any | None)
                del fn.__dynamo_disable  # type: ignore[union-attr]


def step_eagerly(optimizer: torch.optim.Optimizer) -> None:
    """Apply ``optimizer.step()``'s update without importing torch._dynamo when it is not.

    For an element-wise class: its undecorated ``step`` under ``no_grad``, which is what
    ``optimizer.step()`` runs when ``differentiable`` is False (bitwise the same update; no
    step hooks fire: the optimizer is the audit's private copy). Else ``optimizer.step()``.
    """
    cls = type(optimizer)
    if optimizer.defaults.get("differentiable"):
        optimizer.step()
        return
    with without_dynamo(cls) as eager:
        if not eager:
            optimizer.step()
            return
        with torch.no_grad():
            inspect.unwrap(cls.step)(optimizer)


def pad_row_grad(weight: torch.Tensor, pad: int) -> torch.Tensor | None:
    """Return the pad row's gradient, summing a sparse gradient's entries for it.

    The sparse gradient is read uncoalesced: O(tokens), never O(vocab).
    """
    grad = weight.grad
    if grad is None:
        return None
    if not grad.is_sparse:
        return grad[pad]
    return grad._values()[grad._indices()[0] == pad].sum(0)


class PadRowStepper:
    """Step the audited tables' pad rows as ``optimizer=`` would; never touch the user's one.

    Follows :class:`pytest_padaudit.stepping.PadRowStepper`.

    ``full`` is True when the optimizer is not element-wise: then it steps the real tables,
    whose gradients must be dense and whose weights the caller must snapshot.
    """

    def __init__(
        self, weights: Sequence[tuple[nn.Parameter, int]], spec: Any, *, full: bool = False
    ) -> None:
        self.weights = list(weights)
        self.proxies = [nn.Parameter(w.detach()[pad : pad + 1].clone()) for w, pad in weights]
        self.optimizer = build_optimizer(self.proxies, [w for w, _ in weights], spec)
        self.full = full or type(self.optimizer) not in ELEMENTWISE
        if self.full:
            self.proxies = []
            self.optimizer = build_optimizer([w for w, _ in weights], None, spec)

    @property
    def name(self) -> str:
        return type(self.optimizer).__name__

    @property
    def weight_decay(self) -> float:
        return float(max(g.get("weight_decay", 0.0) or 0.0 for g in self.optimizer.param_groups))

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> None:
        """Apply one step with the gradients of the last backward pass.

        ``closure`` re-runs that pass; optimizers whose ``step`` needs one (LBFGS) get it.
        """
        if self.full:
            try:
                if _needs_closure(self.optimizer):
                    if closure is None:
                        raise PadAuditError(
                            f"{self.name}.step() needs a closure that re-runs the model: pass "
                            "an optimizer whose step() takes none (SGD, AdamW, ...)"
                        )
                    # torch's stub types the closure as -> float; LBFGS & co. take the loss tensor
                    self.optimizer.step(closure)  # type: ignore[arg-type]
                else:
                    self.optimizer.step()
            except RuntimeError as exc:
                raise PadAuditError(
                    f"{self.name} could not step the embedding tables ({exc}); training with "
                    "it fails the same way: pass an optimizer that supports the tables' "
                    "gradients (sparse=True tables need e.g. SGD without weight_decay or "
                    "SparseAdam)"
                ) from exc
            return
        for proxy, (weight, pad) in zip(self.proxies, self.weights, strict=True):
            grad = pad_row_grad(weight, pad)
            proxy.grad = None if grad is None else grad.detach().reshape(proxy.shape).clone()
            with torch.no_grad():  # the forward pass may have changed the row (max_norm)
                proxy.copy_(weight[pad : pad + 1])
        step_eagerly(self.optimizer)
        with torch.no_grad():
            for proxy, (weight, pad) in zip(self.proxies, self.weights, strict=True):
                weight[pad : pad + 1] = proxy


def carried_optimizer(
    model: nn.Module, weights: Sequence[nn.Parameter]
) -> tuple[torch.optim.Optimizer | None, str | None]:
    """Return the optimizer a model builds for itself (LightningModule-style
    ``configure_optimizers()``), preferring one that holds the tables, and a note when
    there is one but it could not be built. Only its class and hyper-parameters are used
    (build_optimizer copies them); the instance is never stepped.
    """
    configure = getattr(model, "configure_optimizers", None)
    if not callable(configure):
        return None, None
    try:
        built = configure()
    except Exception as exc:  # e.g. it reads self.trainer, which a bare module lacks
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return None, (
            f"update check: {type(model).__qualname__}.configure_optimizers() raised "
            f"{type(exc).__name__} ({first}), so the audit's default SGD(lr=1) stepped; pass "
            "optimizer= your optimizer (class, instance or factory) to check with it"
        )
    found = list(_optimizers(built))
    wanted = {id(w) for w in weights}
    for optimizer in found:
        if any(id(p) in wanted for g in optimizer.param_groups for p in g["params"]):
            return optimizer, None
    return (found[0] if found else None), None


def _optimizers(value: Any, depth: int = 0) -> Iterator[torch.optim.Optimizer]:
    """Yield the optimizers in what configure_optimizers() returned (lists, dicts, tuples)."""
    if isinstance(value, torch.optim.Optimizer):
        yield value
    elif isinstance(value, Mapping) and depth < 4:
        yield from _optimizers(value.get("optimizer"), depth + 1)
    elif isinstance(value, (list, tuple)) and depth < 4:
        for item in value:
            yield from _optimizers(item, depth + 1)


def _needs_closure(optimizer: torch.optim.Optimizer) -> bool:
    """Say whether ``optimizer.step`` requires a closure argument (LBFGS)."""
    try:
        closure = inspect.signature(optimizer.step).parameters.get("closure")
    except (TypeError, ValueError):
        return False
    return closure is not None and closure.default is inspect.Parameter.empty


def build_optimizer(
    params: list[nn.Parameter], originals: list[nn.Parameter] | None, spec: Any
) -> torch.optim.Optimizer:
    """Build a fresh optimizer over ``params`` from ``optimizer=``.

    ``originals[i]`` is the model parameter ``params[i]`` stands for, used to find the
    user's param group (and its hyper-parameters) when ``spec`` is an optimizer instance.
    """
    try:
        if spec is None:
            with without_dynamo(torch.optim.SGD):
                return torch.optim.SGD(params, lr=1.0)
        if isinstance(spec, torch.optim.Optimizer):
            accepted = inspect.signature(type(spec)).parameters
            settings = {k: v for k, v in spec.defaults.items() if k in accepted}
            make = cast(_Build, type(spec))  # a subclass's __init__, not Optimizer's
            with without_dynamo(type(spec)):
                return make(_copied_groups(spec, params, originals or params), **settings)
        if isinstance(spec, type) and issubclass(spec, torch.optim.Optimizer):
            with without_dynamo(spec):
                return cast(_Build, spec)(params)
        if callable(spec):
            with without_dynamo(*ELEMENTWISE):  # the factory's class is not known before
                built = spec(params)
            if isinstance(built, torch.optim.Optimizer):
                return built
            raise PadAuditError(f"optimizer= returned {type(built).__name__}: {HINT}")
    except PadAuditError:
        raise
    except Exception as exc:
        name = getattr(spec, "__name__", type(spec).__name__)
        raise PadAuditError(f"could not build an optimizer from {name} ({exc}): {HINT}") from exc
    raise PadAuditError(f"optimizer={spec!r:.80} is not usable: {HINT}")


def _copied_groups(
    spec: torch.optim.Optimizer, params: list[nn.Parameter], originals: list[nn.Parameter]
) -> list[dict]:
    """Give each parameter the hyper-parameters of the user's group holding its original."""
    groups = []
    for param, original in zip(params, originals, strict=True):
        match = next(
            (g for g in spec.param_groups if any(p is original for p in g["params"])), None
        )
        settings = {k: v for k, v in (match or spec.defaults).items() if k != "params"}
        groups.append({**settings, "params": [param]})
    return groups
