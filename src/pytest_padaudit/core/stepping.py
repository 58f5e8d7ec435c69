"""What the update check shares across frameworks: the contract of a pad-row stepper.

An element-wise optimizer updates each element from its own gradient and state alone, so
stepping a one-row copy of the pad row is exactly what stepping the whole table would do to
that row: O(dim), not O(vocab), and the user's table is never written. Any other optimizer
(LBFGS, Lamb, Adafactor, norm clipping, a subclass with its own step) steps the real tables.
Each adapter lists its framework's element-wise classes (``optim.ELEMENTWISE``).
"""

from __future__ import annotations

from typing import Any, Protocol


class PadRowStepper(Protocol):
    """The contract of each adapter's ``optim.PadRowStepper``.

    Built for the audited tables with the audit's optimizer (a fresh one, never the user's
    instance or state). ``full`` is False when it steps one-row copies of the pad rows
    (an element-wise optimizer): the tables stay untouched and the stepped rows are read
    back from the copies. When True it steps the real tables, whose weights the handle
    has snapshotted (``preserve``) and puts back.
    """

    full: bool

    def step(self, *args: Any) -> None:
        """Apply one optimizer step with the gradients of the last train pass."""
