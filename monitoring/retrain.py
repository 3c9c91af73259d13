"""What ``engage retrain`` has to do: which models need training, which run needs scoring.

``engage retrain`` = features build, train, score, monitor. It must be idempotent: on
unchanged events and parameters a second call registers no new model version and writes
no new scoring run. Training is skipped for a model that has a champion when that
champion, or its latest version (a challenger the gate kept out), was trained on events
with the same ``data_fingerprint`` and with the same ``params_fingerprint``
(:mod:`training.fingerprint`): ``engage train`` itself always registers a new version,
which the gate then promotes on identical data, since the new model scores as well as
the old one. A model without a champion (never trained, or a training killed between
registration and the gate) is always trained.
"""

from __future__ import annotations

from dataclasses import dataclass

from engage.config import Params, Paths
from engage.specs import MODEL_NAMES
from training.fingerprint import DATA_TAG, PARAMS_TAG, params_fingerprint


@dataclass(frozen=True)
class TrainDecision:
    """Whether ``model`` is trained, and why."""

    model: str
    train: bool
    reason: str


def compare(tags: dict[str, str], data_fp: str, params_fp: str) -> str | None:
    """Why a version with these run tags is not up to date, or None when it is."""
    if tags.get(DATA_TAG) != data_fp:
        return "the events changed"
    if tags.get(PARAMS_TAG) is None:
        return "its parameters were not recorded"
    if tags[PARAMS_TAG] != params_fp:
        return "the training parameters changed"
    return None


def training_plan(paths: Paths, params: Params, force: bool = False) -> list[TrainDecision]:
    """For each model, train or not (see the module docstring).

    Args:
        paths: resolved locations.
        params: the parsed parameters.
        force: train every model whatever the fingerprints say.

    """
    from training.registry import CHAMPION, alias_version, latest_version, setup_mlflow, version_run
    from training.train import data_fingerprint

    data_fp, params_fp = data_fingerprint(paths.events), params_fingerprint(params)
    client = setup_mlflow(paths)
    out = []
    for model in MODEL_NAMES:
        if force:
            out.append(TrainDecision(model, True, "--force"))
            continue
        champion = alias_version(client, model, CHAMPION)
        if champion is None:
            # A version without the alias (a training killed before the gate) serves
            # nothing: train, or the model would stay without a champion.
            out.append(TrainDecision(model, True, "no champion yet"))
            continue
        latest = latest_version(paths, model)
        versions = [v for v in dict.fromkeys([champion, latest]) if v is not None]
        why = []
        for v in versions:
            reason = compare(version_run(paths, model, v).tags, data_fp, params_fp)
            if reason is None:
                out.append(
                    TrainDecision(
                        model, False, f"v{v} was trained on these events with these parameters"
                    )
                )
                break
            why.append(f"v{v}: {reason}")
        else:
            out.append(TrainDecision(model, True, "; ".join(why)))
    return out
