"""The public ``audit()``: typed keyword options, and nothing heavy imported until it runs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypedDict

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .result import AuditReport

Check = Literal["grad", "update", "invariance"]


class AuditKwargs(TypedDict, total=False):
    """The keyword options of :func:`audit` (the marker and the fixture take the same)."""

    pad_idx: int | Mapping[str, int] | None
    seed: int
    batch_size: int
    seq_len: int
    vocab_size: int | None
    forward: Callable[..., Any] | None
    loss: Literal["all", "masked"] | Callable[..., Any]
    checks: Sequence[Check]
    steps: int
    optimizer: Any
    atol: float
    rtol: float
    extra_pad: int | None
    padding_side: Literal["right", "left"]
    allow: Sequence[str]
    tokenizer: Any
    batch: Any
    step: Callable[..., Any] | None
    widen: Callable[..., Any] | None


def audit(model: object, **options: Unpack[AuditKwargs]) -> AuditReport:
    """Audit ``model``'s embedding tables for padding leaks; never raise for a leak.

    Example::

        from pytest_padaudit import audit

        report = audit(model, pad_idx=0, checks=("grad", "invariance"))
        assert report.passed, report.failure_message()

    Options: ``pad_idx`` (for tables without a pad id of their own), ``seed`` (0),
    ``batch_size`` (4), ``seq_len`` (16), ``vocab_size``, ``forward=callable(model,
    batch)``, ``loss`` ("all", "masked" or ``callable(output, batch)``), ``checks``
    (grad, update, invariance), ``steps`` (1), ``optimizer``, ``atol`` (0.0), ``rtol``
    (1e-4), ``extra_pad``, ``padding_side`` ("right"), ``allow`` (causes reported as
    allowed instead of failing), ``tokenizer`` (pad id and side from a Hugging Face
    tokenizer), ``batch`` (your own padded batch: a dict such as a collator's output, or
    a tensor of ids), ``step=callable(model, batch) -> scalar loss`` (your training step,
    e.g. ``lambda m, b: m(**b).loss``), ``widen=callable(batch, n)`` (the batch with ``n``
    more pad columns, for keys padaudit cannot pad itself).
    Raise :class:`~pytest_padaudit.PadAuditError` on bad input.
    """
    from .engine import audit as run

    return run(model, **options)
