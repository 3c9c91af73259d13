"""The root of the ``engage`` command line: the app, its groups, one context, one console.

Every command reads ``params.yaml`` once (``--profile``, ``--params`` and ``--set`` adjust
it) into a :class:`Context` and prints through :data:`cli.ui.console`. The command
modules (``cli/data.py``, ``cli/features.py``, ...) add their commands to the groups
defined here; :mod:`cli.main` imports them all.
"""

from __future__ import annotations

import logging
import os
import re
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.markup import escape

from cli.help import EngageGroup
from cli.ui import console
from engage.config import ConfigError, Params, Paths, load_params, resolve_paths

# Everything runs offline: no telemetry from the ML libraries, no download bars.
OFFLINE_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "BENTOML_DO_NOT_TRACK": "true",
    "DO_NOT_TRACK": "true",
    "FEAST_USAGE": "False",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # MLflow logs INFO lines ("Creating initial MLflow database tables...", "Validating
    # input example against model signature") on stderr; warnings and errors still show.
    "MLFLOW_LOGGING_LEVEL": "WARNING",
}
# Deprecation warnings raised inside libraries, by code engage does not call directly:
# nothing a user of the command line can act on. Each is matched by its category and
# message, so any other warning still shows.
LIBRARY_WARNINGS = (
    # MLflow's SQLAlchemy store configures a ``noload`` relationship (SQLAlchemy 2.x).
    (DeprecationWarning, r"The ``noload`` loader strategy is deprecated"),
    # Feast's DuckDB offline store calls ibis, which calls DuckDB's old method name.
    (DeprecationWarning, r"fetch_arrow_table\(\) is deprecated"),
)


def _library_noise(category: type[Warning], message: str) -> bool:
    return any(
        issubclass(category, cat) and re.match(pattern, message)
        for cat, pattern in LIBRARY_WARNINGS
    )


def quiet_libraries() -> None:
    """Silence the known library warnings of :data:`LIBRARY_WARNINGS` (this process only).

    Filters alone are not enough: importing Feast puts ``simplefilter("once",
    DeprecationWarning)`` in front of every filter installed before it, so the warnings
    are also dropped where they are shown; every other warning is shown as usual.
    """
    for category, message in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    # Batch scoring logs each run's findings for library users; the commands print the
    # same findings from the run they get back, so Python's last-resort handler would
    # print every one twice.
    logging.getLogger("serving.scoring").addHandler(logging.NullHandler())
    logging.getLogger("serving.scoring").propagate = False
    shown = warnings.showwarning
    if getattr(shown, "_engage_quiet", False):
        return

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if not _library_noise(category, str(message)):
            shown(message, category, filename, lineno, file, line)

    showwarning._engage_quiet = True  # type: ignore[attr-defined]
    warnings.showwarning = showwarning


app = typer.Typer(
    cls=EngageGroup,
    help="Churn and appetence prediction on an engagement index.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(
    cls=EngageGroup, help="Create, import and validate event data.", no_args_is_help=True
)
features_app = typer.Typer(
    cls=EngageGroup, help="Build point-in-time features into Feast.", no_args_is_help=True
)
bench_app = typer.Typer(
    cls=EngageGroup,
    help="Evaluate the models against simple baselines on real data.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
app.add_typer(bench_app, name="bench")


@dataclass
class Context:
    """What every command gets: the parsed parameters and the resolved paths."""

    params: Params
    paths: Paths


def context(ctx: typer.Context) -> Context:
    """The :class:`Context` of the running command."""
    return ctx.obj


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: message`` on one line and exit with ``code`` (no traceback)."""
    # soft_wrap: one line whatever the terminal width (logs and tests read it whole).
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def step(title: str) -> Iterator[None]:
    """A titled section of output that ends with its duration."""
    start = time.perf_counter()
    console.rule(f"[bold]{title}")
    yield
    console.print(f"[dim]{title}: {time.perf_counter() - start:.1f} s[/dim]")


def _version(value: bool) -> None:
    if value:
        from engage import __version__

        console.print(f"engage {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    profile: Annotated[
        str | None, typer.Option(help="Overlay profiles.NAME of params.yaml (e.g. cdnow).")
    ] = None,
    params_file: Annotated[
        Path | None,
        typer.Option(
            "--params",
            help="Your params file, overlaid on the project's params.yaml (may be partial).",
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a parameter: dotted.key=value (repeatable)."),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_version, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Read params.yaml once for the command."""
    for var, value in OFFLINE_ENV.items():
        os.environ.setdefault(var, value)
    quiet_libraries()
    try:
        params = load_params(params_file, profile=profile, overrides=tuple(set_ or ()))
        paths = resolve_paths(params)
    except ConfigError as err:
        # Escaped: messages quote values such as [purchase], which rich reads as markup.
        console.print(f"[red]{escape(str(err))}[/red]", soft_wrap=True)
        raise typer.Exit(2) from None
    ctx.obj = Context(params, paths)
