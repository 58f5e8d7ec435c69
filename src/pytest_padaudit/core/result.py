"""What an audit found: per-table measurements, findings, and the report that holds them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import PadLeakError


@dataclass
class Finding:
    """One problem: which check, where, how much (``message``), ``why``, and the ``fix``.

    ``cause`` is the code ``allow=`` takes (one of ``options.CAUSES``); ``why`` is the
    sentence that explains it. Reports print each under its own name: ``why:``, ``fix:``,
    ``cause:``. Adapters build findings positionally: keep the field order.
    """

    check: str
    layer: str
    pad_idx: int | None
    value: float
    cause: str
    message: str
    why: str
    fix: str
    allowed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TableResult:
    """One embedding table and what each check measured on its pad row."""

    layer: str
    kind: str
    pad_idx: int | None
    rows: int
    skipped: str | None = None
    #: max|g| of the pad row's gradient through the table's lookups.
    grad: float | None = None
    #: for a table tied to an output projection: max|g| through that head (else None).
    head_grad: float | None = None
    update: float | None = None
    update_cause: str | None = None
    tied_with: list[str] = field(default_factory=list)
    #: the L2 norm of the pad row before the audit (checkpoints: as saved).
    pad_norm: float | None = None

    @property
    def audited(self) -> bool:
        return self.pad_idx is not None and self.skipped is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InvarianceResult:
    """The invariance check: the worst relative difference and where the leak enters."""

    value: float | None = None
    worst: str | None = None
    outputs: float | None = None
    first_module: str | None = None
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AuditReport:
    """The outcome of one audit. ``passed`` is False when a finding is not allowed."""

    framework: str
    model: str
    options: dict[str, Any]
    #: the seed of the synthetic batch (None: a checkpoint audit, which runs no model).
    seed: int | None
    reproduce: str
    batch: dict[str, Any]
    batch_text: str
    tables: list[TableResult] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    invariance: InvarianceResult | None = None
    notes: list[str] = field(default_factory=list)
    test: str | None = None
    #: "model" (:func:`audit`) or "checkpoint" (:func:`audit_checkpoint`).
    kind: str = "model"
    #: the smallest batch that still fails (see shrink.py), as JSON primitives.
    smallest: dict[str, Any] | None = None
    #: what the framework runs on, where it has a choice (Keras 3: tensorflow, jax, torch).
    backend: str | None = None
    #: the optimizer the update check stepped (e.g. "SGD"); None when none stepped.
    optimizer: str | None = None

    @property
    def passed(self) -> bool:
        return not self.leaks

    @property
    def leaks(self) -> list[Finding]:
        """Return the findings that fail the audit (not allowed)."""
        return [f for f in self.findings if not f.allowed]

    def raise_if_leaking(self) -> AuditReport:
        """Raise :class:`PadLeakError` with the full message when the audit failed."""
        __tracebackhide__ = True
        if not self.passed:
            raise PadLeakError(self.failure_message(), self)
        return self

    def failure_message(self) -> str:
        """Return the message a failing audit raises (rendered by ``report.py``)."""
        return _renderer().failure_message(self)

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON primitives."""
        return {
            "test": self.test,
            "kind": self.kind,
            "framework": self.framework,
            "backend": self.backend,
            "model": self.model,
            "passed": self.passed,
            "seed": self.seed,
            "options": self.options,
            "reproduce": self.reproduce,
            "batch": self.batch,
            "tables": [t.to_dict() for t in self.tables],
            "findings": [f.to_dict() for f in self.findings],
            "invariance": self.invariance.to_dict() if self.invariance else None,
            "notes": list(self.notes),
            "smallest": self.smallest,
            "optimizer": self.optimizer,
        }

    def __str__(self) -> str:
        return _renderer().render_text(self)


#: The text renderer of reports: ``report.py`` installs itself when imported, and the
#: modules that make reports (``engine.py``, ``checkpoint.py``) import it. The data object
#: never imports its renderer; whoever prints does.
_RENDERER: list[Any] = []


def use_renderer(renderer: Any) -> None:
    """Render reports with ``renderer`` (``render_text(report)``, ``failure_message(report)``)."""
    _RENDERER[:] = [renderer]


def _renderer() -> Any:
    if not _RENDERER:
        raise RuntimeError("no report renderer installed: import pytest_padaudit.render.report")
    return _RENDERER[0]
