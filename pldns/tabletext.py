"""The one table renderer: left-aligned columns for `pldns status` (resolver and syncer),
`pldns sync --once` and `pldns discover`, with optional ANSI colour that never breaks the
alignment (widths come from the plain text)."""

from __future__ import annotations

from collections.abc import Sequence

Cell = tuple[str, tuple[str, ...]]  # text, ANSI SGR codes


class Paint:
    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, text: str, *codes: str) -> str:
        if not self.color or not codes:
            return text
        return f"\033[{';'.join(codes)}m{text}\033[0m"


def align(rows: Sequence[Sequence[tuple[str, tuple[str, ...]]]], paint: Paint) -> list[str]:
    """Left-aligned columns; widths from the plain text so colour never breaks alignment."""
    widths = [max(len(row[i][0]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            paint(text.ljust(width) if i < len(row) - 1 else text, *codes)
            for i, ((text, codes), width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain text: upper-case headers, then the rows (no colour)."""
    cells: list[list[Cell]] = [[(h.upper(), ()) for h in headers]]
    cells.extend([[(c, ()) for c in row] for row in rows])
    return "\n".join(align(cells, Paint(False)))
