"""Optimizers named by a dotted path (zero-code specs, markers, ini): :class:`OptimizerClass`.

``optimizer="torch.optim.AdamW(lr=0.01)"`` becomes a factory of the class it names, with
its hyper-parameters; what the factory builds is the adapter's to check.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Mapping
from typing import Any

from .errors import PadAuditError


class OptimizerClass:
    """An optimizer class named by a dotted path, with its hyper-parameters.

    Calling it builds the optimizer: ``factory(params)`` for PyTorch, ``factory()`` for Keras.
    ``text`` is the form the user wrote, e.g. ``torch.optim.AdamW(lr=0.01)``.
    """

    def __init__(self, path: str, cls: Any, kwargs: Mapping[str, Any]) -> None:
        self.path, self.cls, self.kwargs = path, cls, dict(kwargs)
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        self.text = f"{path}({args})" if args else path
        self.__name__ = self.__qualname__ = self.text

    def __call__(self, *params: Any) -> Any:
        return self.cls(*params, **self.kwargs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OptimizerClass) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return self.text


_OPTIMIZER_HINT = (
    "pass a dotted path to an optimizer class, with hyper-parameters as keywords, "
    "e.g. 'torch.optim.AdamW(lr=0.01, weight_decay=0.1)' or 'keras.optimizers.AdamW'"
)


def parse_optimizer(value: Any) -> Any:
    """Turn a dotted path (``pkg.mod.Class`` or ``pkg.mod.Class(k=v, ...)``) into a factory.

    Anything else is returned as is: the adapter knows its framework's optimizers.
    """
    if not isinstance(value, str) or "." not in value:
        return value
    try:
        node = ast.parse(value.strip(), mode="eval").body
    except SyntaxError:
        raise PadAuditError(f"optimizer={value!r} is not valid: {_OPTIMIZER_HINT}") from None
    kwargs: dict[str, Any] = {}
    if isinstance(node, ast.Call):
        if node.args or any(k.arg is None for k in node.keywords):
            raise PadAuditError(f"optimizer={value!r}: {_OPTIMIZER_HINT}")
        try:
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
        except ValueError:
            raise PadAuditError(f"optimizer={value!r}: keyword values must be literals") from None
        node = node.func
    path = ast.unparse(node)
    if not all(part.isidentifier() for part in path.split(".")):
        raise PadAuditError(f"optimizer={value!r} is not valid: {_OPTIMIZER_HINT}")
    return OptimizerClass(path, _import_class(path, value), kwargs)


def _import_class(path: str, value: str) -> Any:
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
        except AttributeError:
            raise PadAuditError(
                f"optimizer={value!r}: {'.'.join(parts[:cut])} has no {'.'.join(parts[cut:])}: "
                f"{_OPTIMIZER_HINT}"
            ) from None
        if not isinstance(obj, type):
            raise PadAuditError(f"optimizer={value!r} names a {type(obj).__name__}, not a class")
        return obj
    raise PadAuditError(f"optimizer={value!r}: cannot import {parts[0]!r}: {_OPTIMIZER_HINT}")
