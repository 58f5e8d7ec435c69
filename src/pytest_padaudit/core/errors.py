"""Exceptions raised by pytest-padaudit."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .result import AuditReport


class PadAuditError(Exception):
    """An audit could not run: the message says what to pass instead."""

    __module__ = "pytest_padaudit"  # tracebacks name the public path


class PadLeakError(AssertionError):
    """An audit or a training guard found padding leaking into the weights.

    ``report`` is the audit's report; None when a guard (``pytest_padaudit.guards``) saw a
    pad row move during training, which has no report.
    """

    __module__ = "pytest_padaudit"

    def __init__(self, message: str, report: AuditReport | None = None) -> None:
        super().__init__(message)
        self.report = report
