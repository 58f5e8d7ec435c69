"""Zero-code audits: ``--padaudit-model`` and ``--padaudit-checkpoint`` become test items.

``--padaudit-model=pkg.mod:factory?pad_idx=0&seq_len=32`` imports ``pkg.mod``, takes
``factory`` (a model, or a callable that returns one when called with no arguments) and
audits it with the options after ``?`` (``name=value`` pairs joined by ``&``; each value is
read as a Python literal, else kept as a string; ``a,b`` is a tuple of strings).
``--padaudit-checkpoint=PATH?pad_idx=0&baseline=old.pt`` runs ``audit_checkpoint``.

This module (the options and ``configure``) is imported at start-up; the items live in
``zeroitems.py``, imported only when a zero-code option is given. Neither imports a framework.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ..core.result import AuditReport

#: How the generated items audit a model and keep a report for the item: the plugin hands
#: its own functions over at configure (the plugin imports this module, never the reverse).
AUDIT = pytest.StashKey[Callable[[pytest.Item, object, dict[str, Any]], "AuditReport"]]()
KEEP = pytest.StashKey[Callable[[pytest.Item, "AuditReport"], None]]()

MODEL_OPTION = "--padaudit-model"
CHECKPOINT_OPTION = "--padaudit-checkpoint"


def addoption(group: Any) -> None:
    """Add the zero-code options to the plugin's option group."""
    group.addoption(
        MODEL_OPTION,
        action="append",
        default=[],
        metavar="MODULE:FACTORY[?OPTIONS]",
        help="audit the model a factory returns, as a generated test item; repeatable. "
        "OPTIONS: name=value pairs joined by &, values as Python literals "
        "(e.g. 'mypkg.models:build?pad_idx=0&seq_len=32')",
    )
    group.addoption(
        CHECKPOINT_OPTION,
        action="append",
        default=[],
        metavar="PATH[?OPTIONS]",
        help="check the pad rows of saved weights (state_dict, .safetensors, .weights.h5, "
        ".keras) as a generated test item; repeatable. OPTIONS as for audit_checkpoint: "
        "expect, pad_idx, keys, baseline, atol, allow (e.g. 'ft.pt?baseline=base.pt&pad_idx=1')",
    )


#: node-id prefixes of the generated items; a node id given as an argument reruns its item.
MODEL_PREFIX = "padaudit["
CHECKPOINT_PREFIX = "padaudit-checkpoint["


def configure(
    config: pytest.Config,
    audit: Callable[[pytest.Item, object, dict[str, Any]], AuditReport],
    keep: Callable[[pytest.Item, AuditReport], None],
) -> tuple[list[str], list[str]]:
    """Return the zero-code model and checkpoint specs given (the caller registers
    ``zeroitems.ZeroCode`` for them), and keep ``audit`` and ``keep`` for their items.

    ``pytest 'padaudit[pkg.mod:factory]'`` (the node id of a generated item, as the
    rerun line prints it) is read as ``--padaudit-model=pkg.mod:factory`` and leaves
    nothing else to collect; pytest itself would reject it as a path.
    """
    models = list(config.getoption("padaudit_model", default=None) or [])
    checkpoints = list(config.getoption("padaudit_checkpoint", default=None) or [])
    ids = [a for a in config.args if _item_spec(a) is not None]
    for arg in ids:
        kind, spec = _item_spec(arg)  # type: ignore[misc]
        (models if kind == "model" else checkpoints).append(spec)
    if ids:
        config.args[:] = [a for a in config.args if a not in ids]
        models, checkpoints = list(dict.fromkeys(models)), list(dict.fromkeys(checkpoints))
        config.option.padaudit_model = models  # pytest-xdist workers read the options
        config.option.padaudit_checkpoint = checkpoints
    config.stash[AUDIT] = audit
    config.stash[KEEP] = keep
    return models, checkpoints


def _item_spec(arg: str) -> tuple[str, str] | None:
    """Return ("model" | "checkpoint", spec) when ``arg`` is a generated item's node id."""
    for kind, prefix in (("checkpoint", CHECKPOINT_PREFIX), ("model", MODEL_PREFIX)):
        if arg.startswith(prefix) and arg.endswith("]") and len(arg) > len(prefix) + 1:
            return kind, arg[len(prefix) : -1]
    return None
