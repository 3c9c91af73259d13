"""Terminal output shared by the CLI modules: one console, one progress-bar layout.

Every string that comes from data (customer ids, segments, reasons, paths, URLs, run
ids, error messages) goes through :func:`lit` (or ``rich.markup.escape``) before Rich
sees it: ``[/]`` in an id would crash the output and ``[bold red]`` restyle it. The
console does not replace ``:name:`` codes with emoji, so a ``:smile:`` id stays text.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

console = Console(emoji=False)


def lit(value: object) -> str:
    """``value`` as text that Rich prints literally (markup escaped)."""
    return escape(str(value))


def progress() -> Progress:
    """A progress bar with spinner, description, bar, done/total and elapsed time."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
