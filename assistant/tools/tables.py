"""The one way reports show numbers: Markdown tables for files, rich tables for the terminal,
and one percentile (linear between closest ranks, numpy's default) behind every p50 and p95.

Does not compute metrics or decide what goes in a table.
"""

import sys
from collections.abc import Iterable, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """`q` in [0, 1]: 0.5 is the median; linear interpolation between the closest ranks."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], labels: int = 1) -> str:
    """A Markdown table whose first `labels` columns are text (left-aligned) and the rest numbers."""
    lines = [_row(header), "|" + "|".join(" --- " if i < labels else " ---: " for i in range(len(header))) + "|"]
    return "\n".join(lines + [_row(r) for r in rows])


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _cell(text: object) -> str:
    # A raw pipe would end the cell and a newline would end the row.
    return " ".join(str(text).split()).replace("|", "\\|")


def print_table(title: str, header: Sequence[str], rows: Iterable[Sequence[str]], labels: int = 1,
                flagged: str | None = None, err: bool = False) -> None:
    """A rich table on stdout (stderr with `err`); rows whose last cell is `flagged` in red."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    stream = sys.stderr if err else sys.stdout
    # A log or pipe gets whole lines: no terminal width to fit, and a cut header says nothing.
    console = Console(file=stream, width=None if stream.isatty() else 200)
    table = Table(title=escape(title), title_justify="left")
    for i, column in enumerate(header):
        table.add_column(escape(column), justify="left" if i < labels else "right")
    for row in rows:
        style = "red" if flagged is not None and row and row[-1] == flagged else None
        table.add_row(*(escape(cell) for cell in row), style=style)
    console.print(table)
