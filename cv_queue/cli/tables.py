"""rpk-style plain tables: upper-case headers, columns padded with two spaces, no borders."""

from collections.abc import Sequence


def render(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h).upper() for h in headers], *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells]
    return "\n".join(lines)


def section(title: str, body: str) -> str:
    return f"{title}\n{'=' * len(title)}\n{body}\n"
