"""``engage train``: fit, evaluate against baselines, register, gate (fixed and hazard models)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cli.app import Context, app, context, fail
from cli.ui import console, lit, progress
from engage.specs import HAZARD_MODEL_NAMES, MODEL_NAMES, hazard_question


def close_orphan_runs(paths) -> list[str]:
    """Mark FAILED the MLflow runs left RUNNING by a killed ``engage train``.

    Only call this holding the models lock: then no other training is running, so a
    RUNNING run is one whose process died. Returns their ids.
    """
    from mlflow.entities import RunStatus, ViewType

    from training.registry import setup_mlflow

    client = setup_mlflow(paths)
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    if not ids:
        return []
    running = client.search_runs(ids, "attributes.status = 'RUNNING'", ViewType.ALL)
    for run in running:
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
    return [r.info.run_id for r in running]


def train_models(c: Context, model: str, force: bool = True) -> list:
    """Train ``model`` (or every model for ``all``), printing each test table and gate.

    Holds the models lock (one training at a time per MLflow store) and the features
    and events locks shared (no build or ingest changes the inputs meanwhile). Without
    ``force``, a model whose champion or latest version was trained on the same events
    with the same parameters is not trained again (it would register a copy of itself).
    """
    from engage.data.store import reading
    from engage.locks import MODELS, StoreBusyError, store_lock
    from features.snapshots import features_lock

    timeout = c.params.data.lock_timeout_s
    try:
        with (
            store_lock(c.paths.mlruns_dir, MODELS, timeout=timeout),
            features_lock(c.paths.features_dir, timeout=timeout, shared=True),
            reading(c.paths.events, timeout=timeout),
        ):
            orphans = close_orphan_runs(c.paths)
            if orphans:
                console.print(
                    f"[yellow]note:[/yellow] {len(orphans)} MLflow run(s) left running by an "
                    "interrupted training marked FAILED"
                )
            if model == "all":
                names = list(MODEL_NAMES)
                hazards = list(HAZARD_MODEL_NAMES) if c.params.hazard.train else []
            else:
                names = [model] if model in MODEL_NAMES else []
                hazards = [model] if model in HAZARD_MODEL_NAMES else []
            if not force and c.paths.events.exists():
                # Without events training fails with its own message (what to run).
                names = _needing_training(c, names) if names else []
                hazards = _hazards_needing_training(c, hazards)
            results = _train(c, names)
            # With every model (`engage train`, `engage run`), a history too short for
            # the hazard models' H_max split is a warning: the fixed models still serve.
            return results + _train_hazards(c, hazards, strict=model != "all")
    except StoreBusyError as err:
        fail(str(err))


def _needing_training(c: Context, names: list[str]) -> list[str]:
    """The models among ``names`` whose data or parameters changed since their last version."""
    from monitoring.retrain import training_plan

    plan = {d.model: d for d in training_plan(c.paths, c.params)}
    out = []
    for name in names:
        decision = plan[name]
        if decision.train:
            out.append(name)
        else:
            # "v3 was trained on these events with these parameters"
            version = decision.reason.split(" ", 1)[0]
            console.print(
                f"{name}: identical to {lit(version)} (same events, same training "
                "parameters), not registered (--force to train anyway)",
                soft_wrap=True,
            )
    return out


def _hazards_needing_training(c: Context, names: list[str]) -> list[str]:
    """The hazard models among ``names`` whose data or parameters changed (or no champion)."""
    from monitoring.retrain import compare
    from training.fingerprint import hazard_params_fingerprint
    from training.registry import CHAMPION, alias_version, latest_version, setup_mlflow, version_run
    from training.train import data_fingerprint

    if not names:
        return []
    data_fp, params_fp = data_fingerprint(c.paths.events), hazard_params_fingerprint(c.params)
    client = setup_mlflow(c.paths)
    out = []
    for name in names:
        champion = alias_version(client, name, CHAMPION)
        same = None
        if champion is not None:
            for v in dict.fromkeys([champion, latest_version(c.paths, name)]):
                if (
                    v is not None
                    and compare(version_run(c.paths, name, v).tags, data_fp, params_fp) is None
                ):
                    same = v
                    break
        if same is None:
            out.append(name)
        else:
            console.print(
                f"{name}: identical to {lit('v' + same)} (same events, same training "
                "parameters), not registered (--force to train anyway)",
                soft_wrap=True,
            )
    return out


def _train_hazards(c: Context, names: list[str], strict: bool) -> list:
    """Train the hazard models ``names``; print per horizon the test table, the gate."""
    from training.fit_evaluate import DISPLAY
    from training.hazard_train import HAZARD, POPULATION, train_hazard_model
    from training.hazard_train import STAGES as HSTAGES

    results = []
    for name in names:
        question = hazard_question(name)
        with progress() as bar:
            stage = bar.add_task(f"{name}: starting", total=len(HSTAGES))

            def say(message: str, n=name, task=stage) -> None:
                done = HSTAGES.index(message) if message in HSTAGES else None
                bar.update(task, description=f"{n}: {message}", completed=done)

            try:
                result = train_hazard_model(c.paths, c.params, question, progress=say)
            except (FileNotFoundError, ValueError, LookupError) as err:
                bar.stop()
                if strict:
                    fail(f"{name}: {err}")
                console.print(f"[yellow]warning: {escape(str(err))}: not trained[/yellow]")
                continue
            bar.update(stage, description=f"{name}: done", completed=len(HSTAGES))
        results.append(result)
        ev = result.evaluation
        table = Table(
            title=f"{name} v{lit(result.version)} -> @{result.alias} (hazard; test period)"
        )
        for col in ("horizon", "method", "ROC-AUC", "PR-AUC", "Brier", "ECE"):
            table.add_column(col, justify="left" if col in ("horizon", "method") else "right")
        for h in c.params.hazard.horizons_days:
            for who, m in ev.metrics.items():
                if f"brier_{h}d" not in m:
                    continue
                label = {HAZARD: "hazard LightGBM", POPULATION: "population curve"}.get(
                    who, DISPLAY.get(who, who)
                )
                table.add_row(
                    f"{h} d",
                    lit(label),
                    *(
                        f"{m[f'{k}_{h}d']:.4f}" if f"{k}_{h}d" in m else "-"
                        for k in ("roc_auc", "pr_auc", "brier", "ece")
                    ),
                )
        console.print(table)
        hm = ev.metrics[HAZARD]
        c_index = f"{hm['c_index']:.4f}" if "c_index" in hm else "-"
        console.print(
            f"whole curve: c-index {c_index}, integrated Brier {hm['integrated_brier']:.4f} "
            f"(population curve {ev.metrics[POPULATION]['integrated_brier']:.4f})"
        )
        style = "green" if ev.beats_baseline else "bold yellow"
        console.print(f"[{style}]baselines: {escape(ev.selection)}[/{style}]")
        console.print(f"gate: {escape(result.reason)}")
        console.print(split_table(name, ev.ranges))
        facts = ev.model.training
        if facts.get("refit"):
            console.print(
                f"[dim]refit on {facts['refit_rows']:,} person-period rows, as-of "
                f"{escape(facts['refit_as_of'])}[/dim]"
            )
        for line in ev.warnings:
            if line.endswith(ev.selection):
                continue  # already said, in yellow
            console.print(f"[yellow]warning: {escape(line)}[/yellow]")
        for line in ev.notes:
            console.print(f"note: {escape(line)}")
    return results


STAGES = ("training set from Feast", "leakage audit", "LightGBM and baselines, refit", "MLflow")


def _train(c: Context, names: list[str]) -> list:
    from engage.faults import fault_point
    from training.fit_evaluate import DISPLAY
    from training.progress import watch_rounds
    from training.train import train_model

    results = []
    rounds_total = c.params.training.lightgbm.n_estimators
    for i, name in enumerate(names):
        if i:
            fault_point("train:between_models")
        with progress() as bar:
            stage = bar.add_task(f"{name}: starting", total=len(STAGES))
            rounds = bar.add_task(f"{name}: boosting rounds", total=rounds_total, visible=False)

            def say(message: str, n=name, task=stage) -> None:
                done = STAGES.index(message) if message in STAGES else None
                bar.update(task, description=f"{n}: {message}", completed=done)

            def tick(k: int, total: int, task=rounds) -> None:
                bar.update(task, completed=k, total=total, visible=True)

            try:
                with watch_rounds(tick):
                    result = train_model(c.paths, c.params, name, progress=say)
            except (FileNotFoundError, ValueError, LookupError) as err:
                bar.stop()
                fail(f"{name}: {err}")
            # Early stopping ends the rounds before the total: the bar says where.
            fitted = getattr(result.lightgbm or result.engage_model, "booster", None)
            if fitted is not None:
                best = fitted.current_iteration()
                bar.update(rounds, description=f"{name}: {best} trees kept (early stopping)")
            bar.update(stage, description=f"{name}: done", completed=len(STAGES))
        results.append(result)
        table = Table(
            title=f"{name} v{lit(result.version)} -> @{result.alias} ({result.kind}; test period)"
        )
        for col in (
            "method",
            "ROC-AUC",
            "PR-AUC",
            "prec@10%",
            "log loss",
            "Brier",
            "ECE",
            "lift@10%",
        ):
            table.add_column(col, justify="right" if col != "method" else "left")
        for who, m in result.metrics.items():
            label = DISPLAY.get(who, who) + (" (served)" if who == result.chosen else "")
            table.add_row(
                lit(label),
                f"{m['roc_auc']:.4f}",
                f"{m['pr_auc']:.4f}",
                f"{m['precision_top_decile']:.3f}",
                *(f"{m[k]:.4f}" if k in m else "-" for k in ("log_loss", "brier", "ece")),
                f"{m['lift_top_decile']:.2f}",
            )
        console.print(table)
        style = "green" if result.chosen == "model" else "bold yellow"
        console.print(f"[{style}]selection: {escape(result.selection)}[/{style}]")
        console.print(f"gate: {escape(result.reason)}")
        console.print(split_table(name, result.ranges))
        model_facts = result.engage_model.training
        if model_facts.get("refit"):
            console.print(
                f"[dim]refit on {model_facts['refit_rows']:,} rows, as-of "
                f"{escape(model_facts['refit_as_of'])}[/dim]"
            )
        for line in result.warnings:
            console.print(f"[yellow]warning: {escape(line)}[/yellow]")
    return results


def split_table(name: str, ranges: dict[str, str]) -> Table:
    """The train / valid / test split as a table: part, as-of times, rows."""
    table = Table(title=f"{name}: split by as-of time (purged)")
    table.add_column("part")
    table.add_column("as-of times")
    table.add_column("rows", justify="right")
    for part, text in ranges.items():
        # "2025-01-07..2025-06-03 (3,787 rows)"
        span, _, rows = str(text).partition(" (")
        table.add_row(lit(part), lit(span), lit(rows.removesuffix(" rows)").removesuffix(")")))
    return table


@app.command("train")
def train(
    ctx: typer.Context,
    model: Annotated[
        str,
        typer.Option(
            help=f"{', '.join((*MODEL_NAMES, *HAZARD_MODEL_NAMES))} or all (the hazard "
            "models too unless hazard.train is false).",
            case_sensitive=False,
        ),
    ] = "all",
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Train even when a registered version was trained on the same events with "
            "the same parameters (otherwise: 'identical', nothing registered).",
        ),
    ] = False,
) -> None:
    """Train, evaluate against baselines, register in MLflow, apply the promotion gate."""
    known = (*MODEL_NAMES, *HAZARD_MODEL_NAMES)
    if model not in (*known, "all"):
        fail(f"--model must be {', '.join(known)} or all, got {model!r}")
    train_models(context(ctx), model, force=force)
