"""Plain-text tables whose long cells wrap instead of being cut."""

from __future__ import annotations

from collections.abc import Sequence

GAP = "  "
#: characters after which a cell may wrap (and before ``[``).
_BREAK_AFTER = "./ ,:-"


def align(rows: Sequence[Sequence[str]], widths: Sequence[int]) -> list[str]:
    """Lay out rows; a cell longer than its column wraps onto continuation lines."""
    lines = []
    for row in rows:
        parts = [wrap(cell, w) for cell, w in zip(row, widths, strict=True)]
        for i in range(max(len(p) for p in parts)):
            cells = [
                (p[i] if i < len(p) else "").ljust(w) for p, w in zip(parts, widths, strict=True)
            ]
            lines.append(GAP.join(cells).rstrip())
    return lines


def pieces(text: str) -> list[str]:
    """Split ``text`` after ``. / , : -`` and before ``[``: the parts a line may break between."""
    parts, start = [], 0
    for i, ch in enumerate(text):
        if ch in _BREAK_AFTER:
            parts.append(text[start : i + 1])
            start = i + 1
        elif ch == "[" and i > start:
            parts.append(text[start:i])
            start = i
    parts.append(text[start:])
    return [p for p in parts if p]


def wrap(text: str, width: int) -> list[str]:
    """Split ``text`` into lines of at most ``width`` at its :func:`pieces`; nothing is cut.

    A piece longer than ``width`` (an identifier) stays whole on a line of its own.
    """
    if len(text) <= width or width < 1:
        return [text]
    lines = [""]
    for piece in pieces(text):
        if lines[-1] and len(lines[-1]) + len(piece.rstrip()) > width:
            lines.append("")
        lines[-1] += piece
    return [line.rstrip() for line in lines if line.strip()] or [text]


def longest_piece(text: str) -> int:
    return max((len(p.rstrip()) for p in pieces(text)), default=0)


def heading(head: Sequence[str], widths: Sequence[int]) -> list[str]:
    return [*align([head], widths), GAP.join("-" * w for w in widths)]


def span(widths: Sequence[int]) -> int:
    return sum(widths) + len(GAP) * (len(widths) - 1)


def fit_widths(
    head: Sequence[str],
    table: Sequence[Sequence[str]],
    wrappable: Sequence[int],
    width: int | None,
) -> list[int]:
    """Return column widths; the ``wrappable`` columns narrow until the table fits ``width``.

    Each step takes one character from the widest wrappable column that can still wrap
    (a column never gets narrower than its longest unbreakable piece or its heading).
    """
    widths = [max(len(row[i]) for row in [head, *table]) for i in range(len(head))]
    floor = {i: max([len(head[i]), *(longest_piece(row[i]) for row in table)]) for i in wrappable}
    over = span(widths) - (width or span(widths))
    while over > 0:
        room = [i for i in wrappable if widths[i] > floor[i]]
        if not room:
            break
        widths[max(room, key=lambda i: widths[i] - floor[i])] -= 1
        over -= 1
    return widths
