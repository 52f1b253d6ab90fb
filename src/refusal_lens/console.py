"""Terminal output of results: a stdout console that keeps whole rows when piped, and name
columns that a narrow terminal never wraps or cuts."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console
from rich.table import Table

PIPE_WIDTH = 10_000  # piped or redirected output: a table row is one line, never wrapped or cut


def stdout_console() -> Console:
    """Results go to stdout, so that `refusal-lens ... > out.txt` captures them; when stdout is
    not a terminal, lines are not wrapped to 80 columns, so `| grep` sees whole rows."""
    terminal = Console()
    return terminal if terminal.is_terminal else Console(width=PIPE_WIDTH)


def add_name_column(table: Table, header: str, names: Iterable[str]) -> None:
    """A column of names (methods, data sets) that a narrow terminal never wraps or cuts: the
    other columns give way."""
    table.add_column(header, no_wrap=True, min_width=max((len(n) for n in names), default=len(header)))
