"""Exceptions raised by pytest-padaudit."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .result import AuditReport


class PadAuditError(Exception):
    """An audit could not run: the message says what to pass instead."""

    __module__ = "pytest_padaudit"  # tracebacks name the public path


class PadLeakError(AssertionError):
    """An audit ran and found padding leaking into the weights."""

    __module__ = "pytest_padaudit"

    def __init__(self, message: str, report: AuditReport) -> None:
        super().__init__(message)
        self.report = report
