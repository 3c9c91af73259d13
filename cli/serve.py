"""``engage serve``: start the prediction service (``serving/service.py``) with BentoML.

First a **preflight** in this process (:func:`serving.startup.preflight`): the read-only
store checks, then the very load each worker will do. A problem is one ``error: ...``
line naming the path and the command to run, exit code 3, and no server is started.

Then the command runs ``bentoml serve serving.service:EngageService`` in a child process
on ``serving.host`` / ``serving.port`` (127.0.0.1:3000 by default) and waits for it;
Ctrl-C stops both, and a child that ends with an error ends this command with its exit
code; SIGTERM is handled like Ctrl-C, and no process is left behind (the workers, in
process groups of their own, are stopped by process id). The service sees exactly the
parameters and stores this command resolved: the parameters (``--profile``,
``--params``, ``--set``) are written to ``<data dir>/bentoml/serve-params.yaml`` and
passed as ``$ENGAGE_PARAMS``, the data directory as ``$ENGAGE_DATA_DIR`` and the MLflow
store as ``$ENGAGE_MLRUNS_DIR`` (in the default layout it is ``<project>/mlruns``, not
under the data directory). BentoML's home stays under the data directory
(``$BENTOML_HOME`` = ``<data dir>/bentoml`` unless set).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
from typing import Annotated

import typer
import yaml
from rich.markup import escape

from cli.app import Context, app, context, fail
from cli.help import default_from
from cli.ui import console


def serve_env(c: Context, now: str | None = None, workers: int | None = None) -> dict[str, str]:
    """Environment of the service process for the CLI context ``c``.

    Args:
        c: the CLI context (parsed params and resolved paths).
        now: fixed reference time for the stale-feature flag (ISO-8601), or None.
        workers: service worker processes (default: one per core).

    Raises:
        ValueError: ``now`` is not an ISO-8601 time.

    """
    from serving.online import NOW_ENV, parse_now

    home = c.paths.data_dir / "bentoml"
    home.mkdir(parents=True, exist_ok=True)
    effective = home / "serve-params.yaml"
    doc = c.params.model_dump(mode="json", exclude={"profile"})
    effective.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = dict(os.environ)
    env.update(
        ENGAGE_PARAMS=str(effective),
        # The profile is already applied in the written file; applying it again fails.
        ENGAGE_PROFILE="",
        # Both stores named outright: the service must read what this command resolved,
        # whatever the rule that relates them (mlruns is not under the default data dir).
        ENGAGE_DATA_DIR=str(c.paths.data_dir),
        ENGAGE_MLRUNS_DIR=str(c.paths.mlruns_dir),
        MLFLOW_DISABLE_TELEMETRY="true",
        BENTOML_DO_NOT_TRACK="true",
        DO_NOT_TRACK="true",
        FEAST_USAGE="False",
    )
    env.setdefault("BENTOML_HOME", str(home))
    if now is not None:
        parse_now(now)
        env[NOW_ENV] = now
    if workers is not None:
        # BentoML's JSON config overrides, merged into any the caller already set.
        overrides = json.loads(env.get("BENTOML_CONFIG_OVERRIDES") or "{}")
        service = overrides.setdefault("services", {}).setdefault("engage", {})
        service["workers"] = workers
        env["BENTOML_CONFIG_OVERRIDES"] = json.dumps(overrides)
    return env


@app.command("serve")
def serve_command(
    ctx: typer.Context,
    host: Annotated[
        str | None, typer.Option(help=f"Interface to bind. {default_from('serving.host')}")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(help=f"Port. {default_from('serving.port')}", min=1, max=65535),
    ] = None,
    now: Annotated[
        str | None,
        typer.Option(
            "--now",
            help="Fixed reference time for the stale-feature flag (ISO-8601), e.g. to "
            "serve simulated data as if it were fresh.",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Worker processes (default: one per CPU core).", min=1),
    ] = None,
) -> None:
    """Start the prediction service (POST /predict, /predict_features, /at_risk).

    The stores are checked and the models loaded here first: a problem is one line and
    exit code 3, before any server process starts.
    """
    from serving.online import parse_now
    from serving.startup import EXIT_STARTUP_FAILED, StartupError, preflight

    c = context(ctx)
    host = host or c.params.serving.host
    port = port or c.params.serving.port
    if now is not None:
        try:
            parse_now(now)
        except ValueError as err:
            fail(str(err), 2)
    with console.status("checking the stores and loading the models..."):
        try:
            predictor = preflight(c.paths, c.params)
        except StartupError as err:
            fail(f"the service cannot start: {err}", EXIT_STARTUP_FAILED)
    console.print(
        f"preflight: churn v{predictor.versions.get('churn')}, appetence "
        f"v{predictor.versions.get('appetence')}, features as of {predictor.snapshot_as_of}"
    )
    del predictor  # the workers load their own; this process only waits for them
    gc.collect()
    env = serve_env(c, now, workers)
    if host not in ("127.0.0.1", "localhost", "::1") and not env.get(c.params.serving.api_key_env):
        console.print(
            f"[yellow]warning:[/yellow] listening on {escape(host)} without an API key "
            f"(set ${c.params.serving.api_key_env})"
        )
    from serving.local_server import bentoml_serve_args

    cmd = bentoml_serve_args(host, port, c.paths.root)
    console.print(
        f"serving on http://{escape(host)}:{port} (API docs at /, data {c.paths.data_dir}, "
        f"MLflow store {c.paths.mlruns_dir})",
        soft_wrap=True,
    )
    # Its own session: a Ctrl-C is forwarded by stop_server, which knows the workers
    # (BentoML starts them in process groups of their own, out of a terminal's reach).
    child = subprocess.Popen(cmd, env=env, cwd=c.paths.root, start_new_session=True)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = child.wait()
    except KeyboardInterrupt:
        console.print("stopping the service...")
        stop_server(child)
        return
    finally:
        signal.signal(signal.SIGTERM, previous)
    if code:
        # The server printed why (one `error:` line); exit with its code.
        raise typer.Exit(code if code > 0 else 1)


def _interrupt(signum, frame) -> None:
    # SIGTERM (a supervisor, `kill`) stops the service like Ctrl-C does.
    raise KeyboardInterrupt


def stop_server(child: subprocess.Popen, grace_s: float = 30.0) -> None:
    """Stop the ``bentoml serve`` process ``child`` and every process it started.

    The server gets SIGINT (what Ctrl-C sends) and ``grace_s`` seconds to stop its
    workers; whatever is still running then, the server or a worker, is terminated, then
    killed, by process id (they are this command's descendants, nothing else).
    """
    import psutil

    try:
        family = psutil.Process(child.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    if child.poll() is None:
        try:
            os.killpg(child.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        try:
            child.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    _, alive = psutil.wait_procs(family, timeout=10)
    for proc in alive:
        proc.terminate()
    _, alive = psutil.wait_procs(alive, timeout=5)
    for proc in alive:
        proc.kill()
