"""``engage mlflow-ui``: MLflow's UI on the store ``engage train`` wrote.

The store's location follows the same rule as every other command
(:func:`engage.config.resolve_paths`: ``<project>/mlruns`` by default, under
``$ENGAGE_DATA_DIR`` or at ``$ENGAGE_MLRUNS_DIR`` when set), so the UI always shows the
runs and registered models training wrote, never a new empty database. It binds
127.0.0.1 and runs offline; ``make mlflow-ui PORT=...`` calls it.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Annotated

import typer
from rich.markup import escape

from cli.app import app, context, fail
from cli.ui import console


def mlflow_ui_args(tracking_uri: str, artifacts: str, host: str, port: int) -> list[str]:
    """The ``mlflow ui`` command line for a store (one worker: a local browsing tool)."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        tracking_uri,
        "--default-artifact-root",
        artifacts,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


@app.command("mlflow-ui")
def mlflow_ui_command(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.", min=1, max=65535)] = 5000,
) -> None:
    """Browse the training runs and the model registry in MLflow's UI (127.0.0.1)."""
    from training.registry import RegistryUnavailable, mlflow_db, open_registry

    c = context(ctx)
    try:
        open_registry(c.paths).close()  # read-only: a missing store is reported, not made
    except RegistryUnavailable as err:
        fail(str(err))
    artifacts = (c.paths.mlruns_dir / "artifacts").as_uri()
    cmd = mlflow_ui_args(c.paths.tracking_uri, artifacts, "127.0.0.1", port)
    store = escape(str(mlflow_db(c.paths)))
    console.print(f"MLflow UI on http://127.0.0.1:{port} (store {store})", soft_wrap=True)
    child = subprocess.Popen(cmd, cwd=c.paths.root)
    try:
        code = child.wait()
    except KeyboardInterrupt:
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.terminate()
            child.wait()
        return
    if code:
        raise typer.Exit(code)
