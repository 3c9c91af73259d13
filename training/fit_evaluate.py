"""The pure step of training: split by time, fit every method, choose, refit for serving.

:func:`fit_and_evaluate` takes a training frame (labels and point-in-time features) and
the parameters, and:

1. splits it by as-of time (train < valid < test, purged);
2. fits LightGBM and the baselines of :data:`training.baselines.BASELINES` on the
   training rows, each calibrated on the validation rows, and scores all of them on the
   same test rows (the *held-out fits*);
3. chooses what to serve: LightGBM only if its test ``training.promotion_metric`` beats
   the best baseline's by more than ``training.baseline_margin``, else that baseline
   (:func:`choose`);
4. refits the chosen method on every labelled as-of time (``training.refit``): the
   served model has seen the most recent label windows. Its calibrator is fitted
   out of time: a twin of the same method (same number of trees for LightGBM) is fitted
   on the times whose label windows end before the last ``training.valid_snapshots``
   labelled times, and the calibrator maps the twin's margins on those last times to
   their labels; the served model is the refit with that calibrator. (With too few times
   for a twin, the held-out fit's calibrator is kept.)

The test metrics are those of the held-out fits: the refit has no held-out time left.
It writes nothing and talks to no store: logging, registration and the comparison with
the previous champion are :mod:`training.train`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from engage.config import Params
from engage.specs import model_spec
from features.catalog import BTYD_INPUTS, TIMESTAMP, model_feature_names, monotone_directions
from training.baselines import (
    BASELINES,
    RECENCY_FEATURE,
    fit_bgnbd_model,
    fit_logistic,
    fit_rfm,
)
from training.btyd import fit_on_snapshot
from training.dataset import Split, refit_split, time_split
from training.evaluate import probability_metrics
from training.fit import fit_booster_rounds, fit_calibrator, fit_engage_model
from training.labels import LABEL, label_definition
from training.model import BGNBD, EngageModel, feature_ranges

MODEL = "model"  # LightGBM, in metric names (test_model_roc_auc)
DISPLAY = {
    MODEL: "LightGBM",
    "recency": "recency alone",
    "rfm": "RFM",
    "logreg": "logistic regression",
    "bgnbd": "BG/NBD",
}


@dataclass
class Evaluation:
    """The fitted methods, how each did on the test period, and the model to serve.

    Attributes:
        model: the model to register and serve: the refit of the chosen method (or its
            held-out fit with ``training.refit: false``).
        split: the train / valid / test frames.
        features: the snapshot features (LightGBM and logistic inputs).
        metrics: test metrics per method (``model`` = LightGBM, ``recency``, ``rfm``,
            ``logreg``, ``bgnbd`` for purchase targets), held-out fits.
        test_scores: each method's test probabilities, by display name (plots).
        chosen: the served method (a key of ``metrics``).
        best_baseline: the baseline with the best test metric.
        selection: the choice in one sentence.
        heldout: each method's held-out fit.
        test_p: each method's test probabilities, by method.
        warnings: data problems worth a user's attention (a starved model).

    """

    model: EngageModel
    split: Split
    features: list[str]
    metrics: dict[str, dict[str, float]]
    test_scores: dict[str, np.ndarray] = field(repr=False)
    chosen: str = MODEL
    best_baseline: str = ""
    selection: str = ""
    heldout: dict[str, EngageModel] = field(default_factory=dict, repr=False)
    test_p: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    warnings: list[str] = field(default_factory=list)

    @property
    def y_test(self) -> np.ndarray:
        return self.split.test[LABEL].to_numpy()

    @property
    def p_test(self) -> np.ndarray:
        """The served method's held-out probabilities on the test rows."""
        return self.test_p[self.chosen]

    @property
    def lightgbm(self) -> EngageModel:
        """LightGBM's held-out fit."""
        return self.heldout[MODEL]


def methods(model: str) -> tuple[str, ...]:
    """``model`` (LightGBM) and the baselines compared with it for this target."""
    return (MODEL, *BASELINES[model_spec(model).label_rule])


def choose(
    metrics: dict[str, dict[str, float]], metric: str, margin: float
) -> tuple[str, str, str]:
    """What to serve: LightGBM if it beats the best baseline by more than ``margin``.

    Args:
        metrics: test metrics per method, LightGBM under ``model``.
        metric: the deciding metric (``training.promotion_metric``).
        margin: ``training.baseline_margin``.

    Returns:
        (chosen method, best baseline, a sentence saying why, with the figures).

    """
    baselines = [m for m in metrics if m != MODEL]
    best = max(baselines, key=lambda m: (metrics[m][metric], -baselines.index(m)))
    ours, theirs = metrics[MODEL][metric], metrics[best][metric]
    gap = ours - theirs
    if gap > margin:
        return (
            MODEL,
            best,
            f"LightGBM {metric} {ours:.4f} beats the best baseline, {DISPLAY[best]} "
            f"({theirs:.4f}), by {gap:+.4f}: LightGBM is served",
        )
    need = f" by more than {margin:g}" if margin else ""
    return (
        best,
        best,
        f"LightGBM {metric} {ours:.4f} does not beat the best baseline, {DISPLAY[best]} "
        f"({theirs:.4f}){need} ({gap:+.4f}): the {DISPLAY[best]} baseline is registered "
        "and served",
    )


def last_time_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of the latest as-of time (what BG/NBD is fitted on: one summary a contact)."""
    return rows[rows[TIMESTAMP] == rows[TIMESTAMP].max()]


def _calibrated(model: EngageModel, method: str, valid: pd.DataFrame) -> EngageModel:
    model.calibrator = fit_calibrator(method, model.margin(valid), valid[LABEL].to_numpy())
    return model


def _fit_baseline(
    method: str,
    model: str,
    rows: pd.DataFrame,
    params: Params,
    trained_for: dict,
    btyd: BGNBD | None = None,
) -> EngageModel:
    """A baseline fitted on ``rows`` (not calibrated); ``btyd``: BG/NBD already fitted."""
    seed, y = params.training.seed, rows[LABEL].to_numpy()
    if method == "recency":
        return fit_logistic(model, [RECENCY_FEATURE], rows, y, seed, trained_for)
    if method == "logreg":
        return fit_logistic(model, model_feature_names(params), rows, y, seed, trained_for)
    if method == "rfm":
        return fit_rfm(model, rows, model, trained_for)
    if method == "bgnbd":
        return fit_bgnbd_model(
            model, last_time_rows(rows), params.labels.horizon_days, seed, trained_for, btyd
        )
    raise ValueError(f"unknown method {method!r}")


def fit_lightgbm(
    model: str,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    params: Params,
    trained_for: dict,
    btyd: BGNBD | None,
) -> EngageModel:
    """The product's LightGBM recipe on labelled rows, calibrated on ``valid``.

    Monotone constraints when ``training.monotone_constraints``, BG/NBD's two inputs when
    ``btyd`` is given; the horizon is that of ``params.labels`` (also used by
    :mod:`evaluation.hazard` for one fixed-horizon model per horizon).
    """
    tp = params.training
    return fit_engage_model(
        model,
        model_feature_names(params),
        train,
        train[LABEL].to_numpy(),
        valid,
        valid[LABEL].to_numpy(),
        tp,
        trained_for=trained_for,
        btyd=btyd,
        derived=list(BTYD_INPUTS) if btyd is not None else None,
        monotone=monotone_directions(params, model) if tp.monotone_constraints else None,
    )


def _lightgbm_rounds(heldout: EngageModel, rows: pd.DataFrame, params: Params) -> EngageModel:
    """LightGBM refitted on ``rows`` with the held-out fit's trees and leaf settings."""
    tp = params.training
    lgb_params = tp.lightgbm.model_copy(
        update={
            "num_leaves": heldout.training["num_leaves"],
            "min_child_samples": heldout.training["min_child_samples"],
        }
    )
    btyd = None
    if heldout.btyd is not None:
        btyd = fit_on_snapshot(last_time_rows(rows), params.labels.horizon_days, tp.seed)
    shell = replace(heldout, btyd=btyd, training=dict(heldout.training), booster=None)
    constraints = [int(heldout.training["monotone"].get(c, 0)) for c in shell.input_names]
    shell.booster = fit_booster_rounds(
        shell.inputs_frame(rows),
        rows[LABEL].to_numpy(),
        lgb_params,
        tp.seed,
        heldout.booster.num_trees(),
        constraints,
    )
    return shell


def _fit_on(
    method: str, heldout: EngageModel, rows: pd.DataFrame, model: str, params: Params
) -> EngageModel:
    if method == MODEL:
        return _lightgbm_rounds(heldout, rows, params)
    return _fit_baseline(method, model, rows, params, heldout.trained_for)


def _span(rows: pd.DataFrame) -> str:
    ts = rows[TIMESTAMP]
    return f"{ts.min():%Y-%m-%d}..{ts.max():%Y-%m-%d} ({ts.nunique()} as-of times)"


def refit_for_serving(
    method: str, heldout: EngageModel, frame: pd.DataFrame, model: str, params: Params
) -> EngageModel:
    """The chosen method refitted on every labelled as-of time (see the module docstring).

    Args:
        method: the chosen method.
        heldout: its held-out fit (trees, leaf settings and fallback calibrator).
        frame: every labelled row (train, valid and test times).
        model: the model name.
        params: the parsed params.yaml.

    Returns:
        The served model; its ``training`` records the refit rows, as-of range and how
        it was calibrated.

    """
    final = _fit_on(method, heldout, frame, model, params)
    parts = refit_split(frame, params)
    if parts is None:
        final.calibrator = heldout.calibrator
        calibration = "held-out fit's calibrator (too few as-of times for an out-of-time twin)"
    else:
        twin_rows, calib_rows = parts
        twin = _fit_on(method, heldout, twin_rows, model, params)
        final.calibrator = fit_calibrator(
            params.training.calibration, twin.margin(calib_rows), calib_rows[LABEL].to_numpy()
        )
        calibration = (
            f"{params.training.calibration} on {len(calib_rows):,} rows of {_span(calib_rows)}, "
            f"margins of a twin fitted on {len(twin_rows):,} rows of {_span(twin_rows)}"
        )
    y = frame[LABEL].to_numpy()
    final.training.update(
        refit=True,
        refit_rows=len(frame),
        refit_positive_rate=float(y.mean()),
        refit_as_of=_span(frame),
        refit_as_of_first=frame[TIMESTAMP].min().isoformat(),
        refit_as_of_last=frame[TIMESTAMP].max().isoformat(),
        calibration=calibration,
    )
    if final.booster is not None:
        final.training["trees"] = final.booster.num_trees()
    return final


def starved_warnings(fitted: EngageModel, train: pd.DataFrame, params: Params) -> list[str]:
    """A warning when LightGBM learnt from too little (thresholds ``training.starved``)."""
    sp = params.training.starved
    y = train[LABEL].to_numpy()
    rarer = int(min((y == 1).sum(), (y == 0).sum()))
    trees = fitted.booster.num_trees()
    problems = []
    if len(y) < sp.min_rows:
        problems.append(f"{len(y):,} training rows (< training.starved.min_rows={sp.min_rows})")
    if rarer < sp.min_positives:
        problems.append(
            f"{rarer:,} rows of the rarer class (< training.starved.min_positives="
            f"{sp.min_positives})"
        )
    if trees < sp.min_trees:
        problems.append(f"{trees} trees (< training.starved.min_trees={sp.min_trees})")
    if not problems:
        return []
    return [
        f"{fitted.name}: LightGBM is starved: {', '.join(problems)}; its scores rest on "
        "little evidence: add history (denser snapshots, features.min_labelled_snapshots), "
        "shorten labels.horizon_days, or rely on the baselines"
    ]


def fit_and_evaluate(frame: pd.DataFrame, params: Params, model: str) -> Evaluation:
    """Split ``frame`` by as-of time, fit and score every method, choose, refit.

    Args:
        frame: labels and features, one row per contact and as-of time
            (``customer_id``, ``event_timestamp``, ``label`` and the features).
        params: the parsed params.yaml.
        model: a model name of :data:`engage.specs.MODEL_SPECS`.

    Raises:
        ValueError: too few as-of times, or a split with a single class.

    """
    tp = params.training
    features = model_feature_names(params)
    split = time_split(frame, params)
    for name, part in (("train", split.train), ("valid", split.valid), ("test", split.test)):
        if part[LABEL].nunique() < 2:
            raise ValueError(f"{model}: the {name} split has a single class; more data needed")
    ranges = split.ranges()
    trained_for = label_definition(params, model)
    btyd = None
    if tp.btyd_inputs or "bgnbd" in methods(model):
        # One BG/NBD fit on the last training as-of time serves LightGBM and the baseline.
        last = last_time_rows(split.train)
        btyd = fit_on_snapshot(last, params.labels.horizon_days, tp.seed)
    heldout: dict[str, EngageModel] = {}
    for method in methods(model):
        if method == MODEL:
            fitted = fit_lightgbm(
                model,
                split.train,
                split.valid,
                params,
                trained_for,
                btyd if tp.btyd_inputs else None,
            )
        else:
            fitted = _calibrated(
                _fit_baseline(method, model, split.train, params, trained_for, btyd),
                tp.calibration,
                split.valid,
            )
        heldout[method] = fitted
    yte = split.test[LABEL].to_numpy()
    test_p = {m: fitted.predict_proba(split.test) for m, fitted in heldout.items()}
    metrics = {m: probability_metrics(yte, p, tp.ece_bins) for m, p in test_p.items()}
    chosen, best, sentence = choose(metrics, tp.promotion_metric, tp.baseline_margin)
    horizon = pd.Timedelta(days=params.labels.horizon_days)
    if tp.refit:
        served = refit_for_serving(chosen, heldout[chosen], frame, model, params)
        fit_rows = frame
        seen_until = frame[TIMESTAMP].max() + horizon
    else:
        served = heldout[chosen]
        served.training["refit"] = False
        fit_rows = split.train
        seen_until = split.valid[TIMESTAMP].max() + horizon
    lightgbm = heldout[MODEL]
    served.training.update(
        {
            "method": chosen,
            "kind": served.kind,
            "best_baseline": best,
            "selection": sentence,
            **{f"as_of_{k}": v for k, v in ranges.items()},
            "heldout_train_rows": len(split.train),
            "heldout_trees": lightgbm.booster.num_trees(),
            "labels_seen_until": seen_until.isoformat(),
            "feature_ranges": feature_ranges(served.frame(fit_rows)),
            "train_rows": len(fit_rows),
            "profile": params.profile or "default",
        }
    )
    return Evaluation(
        model=served,
        split=split,
        features=features,
        metrics=metrics,
        test_scores={DISPLAY[m]: p for m, p in test_p.items()},
        chosen=chosen,
        best_baseline=best,
        selection=sentence,
        heldout=heldout,
        test_p=test_p,
        warnings=starved_warnings(lightgbm, split.train, params),
    )
