"""Training sets from Feast, time splits with purging, and leakage checks.

An entity frame (customer_id, event_timestamp = as_of, label) goes through
``get_historical_features`` with the model's FeatureService; the split is by as-of time,
and the rows of a split whose label window reaches into the next split are purged, so no
training label has seen the validation or test period.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from engage.config import Params, Paths, TrainingParams
from engage.specs import model_spec
from features.catalog import ENTITY_KEY, SNAPSHOT_TIME, TIMESTAMP
from features.reference import reference_snapshot
from features.snapshots import require_snapshots
from training.labels import LABEL, labelable, make_labels, observed_until


class LeakageError(AssertionError):
    """A training row carries information from at or after its as-of time."""


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame

    def ranges(self) -> dict[str, str]:
        """As-of range of each part, for logging."""
        out = {}
        for name in ("train", "valid", "test"):
            ts = getattr(self, name)[TIMESTAMP]
            out[name] = f"{ts.min():%Y-%m-%d}..{ts.max():%Y-%m-%d} ({len(ts):,} rows)"
        return out


def split_times(
    times: list[pd.Timestamp], horizon_days: int, tp: TrainingParams
) -> tuple[list, list, list]:
    """The train, valid and test as-of times of a purged split of ``times``.

    The last ``training.test_snapshots`` times are the test set; validation takes the
    last ``valid_snapshots`` times whose label window ``[as_of, as_of + H)`` ends by the
    first test time; training takes every time whose window ends by the first validation
    time. Times in between are left out.

    Raises:
        ValueError: too few times for the configured split and horizon.

    """
    horizon = pd.Timedelta(days=horizon_days)
    times = sorted(times)
    if len(times) < tp.test_snapshots + 2:
        raise ValueError(
            f"training: {len(times)} labelled as-of times, need more than "
            f"training.test_snapshots={tp.test_snapshots} + 1"
        )
    test_start = times[-tp.test_snapshots]
    # Validation and training times are purged: their label windows end before the
    # next part starts, so no label has seen the period it is evaluated on.
    valid_times = [t for t in times if t + horizon <= test_start][-tp.valid_snapshots :]
    valid_start = valid_times[0] if valid_times else test_start
    train_times = [t for t in times if t + horizon <= valid_start]
    if len(train_times) < tp.min_train_snapshots or not valid_times:
        raise ValueError(
            f"training: after purging label windows of {horizon_days} days, "
            f"{len(train_times)} train and {len(valid_times)} valid as-of times remain (need "
            f"{tp.min_train_snapshots} and 1) out of {len(times)}: shorten "
            "labels.horizon_days, reduce valid/test snapshots or add history"
        )
    return train_times, valid_times, times[-tp.test_snapshots :]


def longest_horizon(
    as_of: list[pd.Timestamp], end: pd.Timestamp, tp: TrainingParams, up_to: int
) -> int | None:
    """The longest horizon (days, at most ``up_to``) whose purged split fits the history.

    A horizon fits when the as-of times whose label window ends by ``end`` can be split
    by :func:`split_times`. None when not even a one-day horizon fits.
    """
    for h in range(up_to, 0, -1):
        try:
            split_times(labelable(as_of, h, end), h, tp)
        except ValueError:
            continue
        return h
    return None


def check_horizon(as_of: list[pd.Timestamp], end: pd.Timestamp, params: Params) -> None:
    """Fail before any retrieval when the horizon leaves no purged split of the history.

    Raises:
        ValueError: names the horizon, the history, and the longest horizon that fits.

    """
    tp, h = params.training, params.labels.horizon_days
    labelled = labelable(as_of, h, end)
    try:
        split_times(labelled, h, tp)
        return
    except ValueError as err:
        problem = str(err).removeprefix("training: ")
    best = longest_horizon(as_of, end, tp, h - 1)
    history = (
        f"{len(as_of)} snapshots from {min(as_of):%Y-%m-%d} to {max(as_of):%Y-%m-%d}, data "
        f"until {end:%Y-%m-%d}"
        if as_of
        else "no snapshot"
    )
    hint = (
        f"the longest horizon that fits is {best} days (--set labels.horizon_days={best})"
        if best
        else "no horizon fits: add history, or reduce training.valid_snapshots / "
        "test_snapshots / min_train_snapshots"
    )
    raise ValueError(
        f"labels.horizon_days={h}: {len(labelled)} as-of times have a fully observed label "
        f"window ({history}); {problem}; {hint}"
    )


def check_history(paths: Paths, params: Params) -> None:
    """:func:`check_horizon` on the stored snapshots and events (cheap: no labels, no Feast).

    Raises:
        FileNotFoundError: no snapshot.
        ValueError: the horizon does not fit the history (names the longest that does).

    """
    times = [s.as_of for s in require_snapshots(paths.features_dir)]
    check_horizon(times, observed_until(paths.events), params)


def training_frame(paths: Paths, params: Params, model: str, store=None) -> pd.DataFrame:
    """Labels at every stored snapshot with an observed window, joined by Feast.

    The features come from the model's FeatureService through ``get_historical_features``
    (point in time); with ``training.max_rows_per_snapshot`` a fixed-size random sample
    of contacts is kept per as-of time. (:func:`check_history` tells beforehand whether
    the time split of :func:`time_split` will fit.)

    Raises:
        ValueError: see :func:`training.labels.make_labels`.

    """
    from features.store import get_store, historical_features

    customers = paths.customers if paths.customers.exists() else None
    times = [s.as_of for s in require_snapshots(paths.features_dir)]
    labels = make_labels(paths.events, customers, times, params, model)
    # A fixed-size random sample per as-of time keeps the Feast retrieval and the
    # training bounded at millions of contacts; the seed makes it repeatable.
    labels = sample_per_as_of(labels, params.training.max_rows_per_snapshot, params.training.seed)
    store = store or get_store(paths)
    return historical_features(store, labels, model_spec(model).feature_service)


def sample_per_as_of(rows: pd.DataFrame, cap: int | None, seed: int) -> pd.DataFrame:
    """At most ``cap`` rows per as-of time, drawn at random with ``seed`` (None: all rows).

    Returns the rows sorted by as-of time and contact, on a fresh index.
    """
    if cap is None:
        return rows
    rows = rows.reset_index(drop=True)
    # Sampling the key column alone draws the same positions as sampling the whole group,
    # without pandas' warning about applying a function to the grouping column.
    picked = (
        rows.groupby(TIMESTAMP, group_keys=False)[[ENTITY_KEY]]
        .apply(lambda g: g.sample(min(cap, len(g)), random_state=seed))
        .index
    )
    return rows.loc[picked].sort_values([TIMESTAMP, ENTITY_KEY]).reset_index(drop=True)


def time_split(frame: pd.DataFrame, params: Params) -> Split:
    """Split by as-of time: train < valid < test, purging label-window overlaps.

    See :func:`split_times`.

    Raises:
        ValueError: too few as-of times for the configured split and horizon.
    """
    times = sorted(frame[TIMESTAMP].unique())
    train_times, valid_times, test_times = split_times(
        times, params.labels.horizon_days, params.training
    )
    ts = frame[TIMESTAMP]
    test = frame[ts >= test_times[0]]
    valid = frame[ts.isin(valid_times)]
    train = frame[ts.isin(train_times)]
    return Split(train.reset_index(drop=True), valid.reset_index(drop=True), test)


def refit_split(frame: pd.DataFrame, params: Params) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The rows of the refit's calibration: a twin's training rows and its calibration rows.

    The calibration rows are the last ``training.valid_snapshots`` labelled as-of times;
    the twin trains on every time whose label window ends by the first of them (purged).
    None when fewer than ``training.min_train_snapshots`` times remain for the twin.
    """
    horizon = pd.Timedelta(days=params.labels.horizon_days)
    times = sorted(frame[TIMESTAMP].unique())
    calib_times = times[-params.training.valid_snapshots :]
    twin_times = [t for t in times if t + horizon <= calib_times[0]]
    if len(twin_times) < params.training.min_train_snapshots:
        return None
    ts = frame[TIMESTAMP]
    return (
        frame[ts.isin(twin_times)].reset_index(drop=True),
        frame[ts.isin(calib_times)].reset_index(drop=True),
    )


def check_feature_times(frame: pd.DataFrame) -> None:
    """Every row's snapshot must be taken at or before its as-of time.

    Raises:
        LeakageError: some rows use a snapshot from after their as-of time.
    """
    as_of_s = frame[TIMESTAMP].map(pd.Timestamp.timestamp)
    late = frame[SNAPSHOT_TIME] > as_of_s + 1e-6
    if late.any():
        ex = frame.loc[late, [ENTITY_KEY, TIMESTAMP, SNAPSHOT_TIME]].head(3).to_dict("records")
        raise LeakageError(
            f"{SNAPSHOT_TIME}: {int(late.sum())} rows use features from after their as-of "
            f"time, e.g. {ex}"
        )


def audit_against_events(
    frame: pd.DataFrame,
    events_path: Path,
    customers_path: Path | None,
    params: Params,
    features: list[str],
    rows_per_snapshot: int = 60,
    snapshots: int = 3,
    seed: int = 0,
) -> int:
    """Recompute a sample of rows from raw events strictly before as-of and compare.

    A feature computed from inside the label window (or any later event) disagrees with
    the recomputation by the independent pandas reference. Rows are compared at the time
    of the snapshot they were served from, so a snapshot older than the row's as-of time
    (allowed) is not a false alarm. Only the sampled customers' events are loaded.

    Returns:
        The number of rows checked.

    Raises:
        LeakageError: a feature differs from its point-in-time recomputation.
    """
    rng = np.random.default_rng(seed)
    served = frame[frame[SNAPSHOT_TIME].notna()]
    snaps = served[SNAPSHOT_TIME].unique()
    chosen = rng.choice(snaps, size=min(snapshots, len(snaps)), replace=False)
    rows = pd.concat(
        g.sample(min(rows_per_snapshot, len(g)), random_state=seed)
        for _, g in served[served[SNAPSHOT_TIME].isin(chosen)].groupby(SNAPSHOT_TIME)
    )
    ids = pd.DataFrame({ENTITY_KEY: rows[ENTITY_KEY].unique()})
    con = duckdb.connect()
    con.register("ids", ids)
    ev = con.execute(
        f"SELECT e.* FROM read_parquet('{events_path}') e SEMI JOIN ids USING ({ENTITY_KEY})"
    ).df()
    cu = None
    if customers_path is not None and Path(customers_path).exists():
        cu = con.execute(
            f"SELECT c.* FROM read_parquet('{customers_path}') c SEMI JOIN ids USING ({ENTITY_KEY})"
        ).df()
    con.close()
    ev["event_time"] = pd.to_datetime(ev["event_time"], utc=True)
    if cu is not None:
        cu["first_seen"] = pd.to_datetime(cu["first_seen"], utc=True)
    for snap_s, group in rows.groupby(SNAPSHOT_TIME):
        t = pd.Timestamp(snap_s, unit="s", tz="UTC")
        ref = reference_snapshot(ev, cu, t, params)
        got = group.set_index(ENTITY_KEY)[features].astype(float)
        want = ref.reindex(got.index)[features].astype(float)
        bad = ~np.isclose(got.to_numpy(), want.to_numpy(), rtol=1e-6, atol=1e-6, equal_nan=True)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            names = [f for f, b in zip(features, bad.any(axis=0), strict=True) if b][:5]
            raise LeakageError(
                f"{names}: {int(bad.any(axis=1).sum())} sampled rows differ from a "
                f"recomputation on events strictly before the as-of time (e.g. "
                f"{got.index[r]} at {t}: {features[c]}={got.iat[r, c]} vs {want.iat[r, c]})"
            )
    return len(rows)


def label_balance(frame: pd.DataFrame) -> dict[str, float]:
    """Rows and positive rate, for logging."""
    return {"rows": float(len(frame)), "positive_rate": float(frame[LABEL].mean())}
