"""Terminal output: consoles that keep whole lines when piped, and name columns that a narrow
terminal never wraps or cuts."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console
from rich.table import Table

PIPE_WIDTH = 10_000  # piped or redirected output: a table row is one line, never wrapped or cut


def unwrapped_console(*, stderr: bool = False) -> Console:
    """A console that wraps to the terminal, or not at all when piped or redirected (rich would
    wrap at 80 columns): results on stdout, so that `| grep` sees whole rows; errors on stderr,
    one line each in a log."""
    terminal = Console(stderr=stderr)
    return terminal if terminal.is_terminal else Console(stderr=stderr, width=PIPE_WIDTH)


def add_name_column(table: Table, header: str, names: Iterable[str]) -> None:
    """A column of names (methods, data sets) that a narrow terminal never wraps or cuts: the
    other columns give way."""
    table.add_column(header, no_wrap=True, min_width=max((len(n) for n in names), default=len(header)))
