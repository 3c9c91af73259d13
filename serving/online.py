"""Online prediction in-process: Feast online features -> both champions -> index, reasons.

:class:`OnlinePredictor` is what the HTTP service (``serving/service.py``) wraps; it has
no HTTP or BentoML dependency, so benchmarks and tests can call it directly and the
service's own cost is the difference.

It is the response adapter of the decision core (:func:`serving.decision.decide`), the
function batch scoring (``engage score``) calls too, with the explainers of
:func:`serving.champions.make_explainers` and the typical values of the latest snapshot:
a contact scored online and in the latest batch run gets the same probabilities, stage
and reasons by construction. It does not import the batch scorer.

A contact looked up by id also gets the stability rule of the index: its previous stage
is its stage in the latest batch run *before* the online features' snapshot (the run batch
scoring of that snapshot compares with), so online and batch agree on the stage too. The
runs are re-read when the scores folder changes (a new batch run), checked with one
``stat`` per request. Rows sent as features (``/predict_features``) carry no contact id,
so they get the plain thresholds.

The hazard champions (:class:`serving.timing.Timing`, either may be missing) add the
answers at any horizon: their inputs are read in the same online lookup, and
:func:`serving.timing.timing_columns`, the function batch scoring calls, turns the same
feature values into the same horizon-named numbers.

The hot path avoids per-request overhead that does not change the numbers: the Feast
feature services are resolved once (``FeatureStore.get_feature_service`` re-reads the
registry on every call), the online response is read with ``to_dict`` (``to_df`` costs
more than the lookup), and the inputs become one float64 matrix in the stored feature
order of each model.
"""

from __future__ import annotations

import math
import os
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from engage.config import Params, Paths
from engage.specs import MODEL_NAMES, MODEL_SPECS
from features.catalog import ENTITY_KEY, SNAPSHOT_TIME, ValueRule, value_rules
from features.online_store import OnlineStoreUnavailable
from features.snapshots import pick_snapshot
from serving.champions import Champions, load_champions, make_explainers, typical_by_half
from serving.decision import HALF, DecisionInputError, Layout, decide
from serving.explain import Explainer
from serving.index import NURTURE, STAGES
from serving.runs import PreviousStages, previous_stages
from serving.segments import NEW, SEGMENTS
from serving.timing import HorizonError, Timing, check_horizons, load_timing, timing_columns

# Fixed reference time of the stale-feature flag (ISO-8601); the clock when unset.
NOW_ENV = "ENGAGE_SERVING_NOW"


def parse_now(text: str | None) -> datetime | None:
    """An ISO-8601 time as an aware UTC datetime (naive = UTC); None for empty.

    Raises:
        ValueError: not an ISO-8601 time.

    """
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"${NOW_ENV}: not an ISO-8601 time: {text!r}") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


class RequestError(ValueError):
    """The request cannot be answered as sent; the message names the problem.

    Attributes:
        status: the HTTP status the service answers with (400 by default).

    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class StoreUnavailable(RequestError):
    """A store the answer needs cannot be read now (HTTP 503); the message names it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=503)


@dataclass
class Scored:
    """Scores of a set of rows (one entry per row, in input order).

    Rows with ``known`` False (no features) hold placeholders: stage Nurture, segment
    New, NaN probabilities, engagement score and dial position, 0 CLV and value at risk.
    """

    known: np.ndarray
    p_purchase: np.ndarray
    p_churn: np.ndarray
    stage: list[str]
    engagement_score: np.ndarray
    dial_position: np.ndarray
    segment: list[str]
    clv: np.ndarray
    value_at_risk: np.ndarray
    reasons: list[list[dict]] | None
    as_of_s: np.ndarray
    lapsed: np.ndarray | None = None
    # The hazard models' columns (serving.timing.timing_columns) of every row, NaN for an
    # unknown contact, at ``horizons``; None when no timing was computed.
    timing: pd.DataFrame | None = None
    horizons: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.known)

    def _timing_record(self, i: int) -> dict:
        """Row ``i``'s horizon-named answers: one entry per horizon, then the medians."""
        t = self.timing

        def get(name: str) -> float | None:
            return _opt(t[name].iat[i]) if t is not None and name in t.columns else None

        return {
            "horizons": [
                {
                    "horizon_days": h,
                    "p_purchase": get(f"p_purchase_{h}d"),
                    "p_churn": get(f"p_churn_{h}d"),
                    "expected_purchases": get(f"expected_purchases_{h}d"),
                }
                for h in self.horizons
            ],
            "days_to_purchase": get("days_to_purchase"),
            "days_to_activity": get("days_to_activity"),
            "days_to_churn": get("days_to_churn"),
        }

    def records(self) -> list[dict]:
        """One dict per row; NaN becomes None (JSON null)."""
        out = []
        for i in range(len(self)):
            out.append(
                {
                    "p_purchase": _opt(self.p_purchase[i]),
                    "p_churn": _opt(self.p_churn[i]),
                    "stage": self.stage[i],
                    "engagement_score": _opt(self.engagement_score[i]),
                    "dial_position": _opt(self.dial_position[i]),
                    "segment": self.segment[i],
                    "clv": _opt(self.clv[i]),
                    "value_at_risk": _opt(self.value_at_risk[i]),
                    "lapsed": bool(self.lapsed[i]) if self.lapsed is not None else False,
                    "reasons": None if self.reasons is None else self.reasons[i],
                    **self._timing_record(i),
                }
            )
        return out


def _opt(v: float) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


class OnlinePredictor:
    """Loads the champions, the Feast store and the explainers once; scores requests.

    Args:
        paths: resolved locations (``ENGAGE_DATA_DIR`` honoured by ``resolve_paths``).
        params: the parsed params.yaml.
        champions: models to use (default: ``churn@champion`` and ``appetence@champion``
            from the MLflow registry).
        store: a Feast ``FeatureStore`` (default: :func:`features.store.get_store`).
        timing: the hazard models (default: the registry's hazard champions, either may
            be missing; :func:`serving.timing.load_timing`).

    The stores are only read: the champions through a read-only registry query
    (:func:`training.registry.load_model`), the Feast registry and online store through
    :func:`features.store.open_store_read_only` (nothing is created when missing).

    Raises:
        LookupError: a model has no champion, or a store is missing.
        FileNotFoundError: no feature snapshot (the explainers' typical values).
        ValueError: the feature services do not provide a needed feature.

    """

    def __init__(
        self,
        paths: Paths,
        params: Params,
        champions: Champions | None = None,
        store=None,
        timing: Timing | None = None,
    ) -> None:
        from features.store import open_store_read_only

        self.paths, self.params = paths, params
        self.champions = champions or load_champions(paths, params)
        self.versions = dict(self.champions.versions)
        self.timing = timing if timing is not None else load_timing(paths, params)
        self.decision_horizon_days = {
            MODEL_SPECS[m].probability: int(model.horizon_days)
            for m, model in self.champions.models.items()
        }
        self.store = store if store is not None else open_store_read_only(paths)
        snapshot = pick_snapshot(paths.features_dir)
        self.snapshot_as_of = snapshot.as_of
        typical = typical_by_half(snapshot.path, self.champions.features)
        self.explainers: dict[str, Explainer] = make_explainers(self.champions, params, typical)
        # Every column the decision needs, in one fixed order: the matrix layout.
        # The hazard models' inputs are read in the same online lookup.
        self.layout = Layout.of(self.champions, self.timing.features)
        self.inputs = self.layout.inputs
        self._col = self.layout.columns
        self._half = self._col[HALF]
        self._features = self._resolve_services()
        self._direct = self._direct_plan()
        self._previous: PreviousStages | None = None
        self._previous_key: tuple | None = None
        catalog = value_rules(params)
        self.rules: dict[str, ValueRule] = {n: catalog[n] for n in self.inputs if n in catalog}

    # --------------------------------------------------------------- previous stages

    def previous(self) -> PreviousStages:
        """The stages of the latest batch run before the online snapshot (re-read on change)."""
        folder = self.paths.scores_dir
        try:
            st = os.stat(folder)
            key = (st.st_mtime_ns, st.st_ino)
        except FileNotFoundError:
            key = None
        if self._previous is None or key != self._previous_key:
            self._previous = previous_stages(self.paths, self.snapshot_as_of)
            self._previous_key = key
        return self._previous

    def _resolve_services(self):
        """What to ask Feast for: the champions' feature service, or the union of theirs.

        Resolved once: ``FeatureStore.get_feature_service`` re-reads the registry.
        """
        services = [
            self.store.get_feature_service(name)
            for name in dict.fromkeys(self.champions[m].feature_service for m in MODEL_NAMES)
        ]
        refs = list(
            dict.fromkeys(
                f"{p.name_to_use()}:{f.name}"
                for s in services
                for p in s.feature_view_projections
                for f in p.features
            )
        )
        self._services = services
        provided = {r.split(":", 1)[1] for r in refs}
        missing = [c for c in [*self.inputs, SNAPSHOT_TIME] if c not in provided]
        if missing:
            raise ValueError(
                f"Feast feature services {[s.name for s in services]} lack {missing[:10]}"
            )
        # One online read per request: the service itself when one covers everything.
        return services[0] if len(services) == 1 else refs

    def _direct_plan(self):
        """How to read the online store without the Feast SDK, or None.

        Direct reads exist for the packed SQLite store and Feast's Redis store (single
        node, :class:`features.redis_store.RedisDirectReader`); both give the same
        matrices (tests/test_redis_store.py).

        The feature services still define what is read (views and features); only the
        SDK's per-value protobuf round trip is skipped, most of a one-contact lookup.
        With another online store configured, lookups go through the SDK.
        """
        from features.online_store import PackedSqliteOnlineStore

        online = self.store._get_provider().online_store
        if not isinstance(online, PackedSqliteOnlineStore):
            online = _redis_reader(self.store.config)
            if online is None:
                return None
        by_view: dict[str, list[str]] = {}
        for service in self._services:
            for p in service.feature_view_projections:
                names = by_view.setdefault(p.name, [])
                names += [f.name for f in p.features if f.name not in names]
        plan = []
        for view_name, features in by_view.items():
            view = self.store.get_feature_view(view_name)
            cols = np.array([self._col.get(f, -1) for f in features], dtype=np.intp)
            snap = features.index(SNAPSHOT_TIME) if SNAPSHOT_TIME in features else None
            plan.append((view, features, cols, snap))
        return online, plan

    # ----------------------------------------------------------------- feature lookup

    def lookup(self, customer_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Latest online features of ``customer_ids`` (one online store read).

        Returns:
            The input matrix (ids x :attr:`inputs`, float64, NaN = null) and the snapshot
            time of each row in epoch seconds (NaN for an id without features).

        Raises:
            StoreUnavailable: the online store cannot be read (missing, corrupt, or its
                tables changed under the service).

        """
        try:
            return self._lookup(customer_ids)
        except (OnlineStoreUnavailable, sqlite3.Error) as err:
            raise StoreUnavailable(str(err)) from None

    def _lookup(self, customer_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        n = len(customer_ids)
        X = np.full((n, len(self.inputs)), np.nan)
        as_of = np.full(n, np.nan)
        if self._direct is not None:
            from features.online_store import entity_key_bytes

            online, plan = self._direct
            config = self.store.config
            keys = entity_key_bytes(
                ENTITY_KEY, [str(c) for c in customer_ids], config.entity_key_serialization_version
            )
            # One read transaction for every view: never half of a reload.
            matrices = online.read_views(config, [(view, f) for view, f, _, _ in plan], keys)
            for (_, _, cols, snap), values in zip(plan, matrices, strict=True):
                keep = cols >= 0
                X[:, cols[keep]] = values[:, keep]
                if snap is not None:
                    as_of = values[:, snap]
            return X, as_of
        rows = [{ENTITY_KEY: str(c)} for c in customer_ids]
        got = self.store.get_online_features(features=self._features, entity_rows=rows).to_dict()
        for name, values in got.items():
            j = self._col.get(name)
            if j is not None:
                # None -> NaN in the float conversion, as pandas reads a null.
                X[:, j] = np.asarray(values, dtype="float64")
            elif name == SNAPSHOT_TIME:
                as_of = np.asarray(values, dtype="float64")
        return X, as_of

    def probe(self) -> None:
        """A cheap real read of the online store, what every ``/predict`` needs.

        With the packed store: a fresh read-only connection, each view's layout and one
        row (:meth:`~features.online_store.PackedSqliteOnlineStore.probe`); otherwise a
        lookup of one id through the Feast SDK.

        Raises:
            StoreUnavailable: the online store cannot be read (the message says why).

        """
        try:
            if self._direct is not None:
                online, plan = self._direct
                online.probe(self.store.config, [view for view, *_ in plan])
            else:
                self._lookup(["__engage_readiness_probe__"])
        except (OnlineStoreUnavailable, sqlite3.Error) as err:
            raise StoreUnavailable(str(err)) from None

    def warm_up(self) -> None:
        """One lookup and one scored row per half, so the first request is not slower.

        The first call of the compiled TreeSHAP loop, of each booster and of the online
        store (its connection) costs far more than the next ones.
        """
        X = np.zeros((2, len(self.inputs)))
        X[:, self._half] = (0.0, 1.0)
        self.score_matrix(X, explain=True, top_k=3, horizons=self.timing.horizons_days)
        self.lookup(["__engage_warm_up__"])

    # ------------------------------------------------------------------------ scoring

    def score_matrix(
        self,
        X: np.ndarray,
        explain: bool = False,
        top_k: int = 3,
        previous_stage: np.ndarray | None = None,
        previous_runs: np.ndarray | None = None,
        horizons: Sequence[int] | None = None,
    ) -> Scored:
        """Score rows of features (every row must be a known contact).

        Args:
            X: rows x :attr:`inputs`, float64 (NaN = not observed).
            explain: also compute the top-k reasons of the deciding model.
            top_k: reasons per row.
            previous_stage: each row's stage code in the previous run (-1 unknown); None
                applies the plain thresholds.
            previous_runs: runs spent in that stage (0 unknown).
            horizons: horizons (days) of the hazard models' answers (default:
                ``hazard.horizons_days``); see :func:`serving.timing.timing_columns`.

        Raises:
            RequestError: ``has_purchased`` is not 0 or 1 in some row, or a horizon
                beyond ``H_max`` (the message names ``horizons_days`` and the rule).

        """
        hs = self.check_horizons(horizons)
        try:
            d = decide(
                X,
                self.layout,
                self.champions,
                self.params,
                self.explainers,
                top_k if explain else 0,
                previous_stage=previous_stage,
                previous_runs=previous_runs,
            )
        except DecisionInputError as err:
            raise RequestError(str(err)) from None
        n = len(d)
        reasons = None
        if explain:
            reasons = [[] for _ in range(n)]
            for rows, found in (d.reasons or {}).values():
                for i, r in zip(rows.tolist(), found.records(), strict=True):
                    reasons[i] = r
        return Scored(
            known=np.ones(n, dtype=bool),
            p_purchase=d.probabilities["p_purchase"],
            p_churn=d.probabilities["p_churn"],
            stage=[STAGES[c] for c in d.stage.tolist()],
            engagement_score=d.engagement_score,
            dial_position=d.dial_position,
            segment=[SEGMENTS[c] for c in d.segment.tolist()],
            clv=d.clv,
            value_at_risk=d.value_at_risk,
            reasons=reasons,
            as_of_s=np.full(n, np.nan),
            lapsed=d.lapsed,
            # The very function batch scoring calls, on the same feature values.
            timing=(
                timing_columns(pd.DataFrame(X, columns=self.inputs), self.timing, hs)
                if self.timing.models
                else None
            ),
            horizons=hs,
        )

    def check_horizons(self, horizons: Sequence[int] | None) -> tuple[int, ...]:
        """The asked horizons (default: ``hazard.horizons_days``), each within ``H_max``.

        Raises:
            RequestError: names ``horizons_days`` and the rule it breaks.

        """
        try:
            return check_horizons(
                self.timing.horizons_days if horizons is None else horizons,
                self.timing.h_max_days,
            )
        except HorizonError as err:
            raise RequestError(str(err)) from None

    def predict_ids(
        self,
        customer_ids: Sequence[str],
        explain: bool = False,
        top_k: int = 3,
        horizons: Sequence[int] | None = None,
    ) -> Scored:
        """Look up and score contacts by id; ids without online features are unknown.

        An unknown id (never seen, or features older than the Feast TTL) is not an
        error: it is a new prospect, placed in Nurture / New with null probabilities.

        Raises:
            RequestError: a horizon beyond ``H_max`` (checked before any lookup).
            StoreUnavailable: the online store cannot be read.

        """
        hs = self.check_horizons(horizons)
        X, as_of = self.lookup(customer_ids)
        half = X[:, self._half]
        known = ~np.isnan(as_of) & ((half == 0.0) | (half == 1.0))
        if known.all():  # the usual case: no placeholders to merge
            # The stability rule applies here too: a known contact is compared with its
            # stage in the previous batch run, exactly as `engage score` does.
            before, before_runs = self.previous().lookup([str(c) for c in customer_ids])
            scored = self.score_matrix(
                X, explain, top_k, previous_stage=before, previous_runs=before_runs, horizons=hs
            )
            scored.as_of_s = as_of
            return scored
        n = len(customer_ids)
        out = Scored(
            known=known,
            p_purchase=np.full(n, np.nan),
            p_churn=np.full(n, np.nan),
            stage=[NURTURE] * n,
            engagement_score=np.full(n, np.nan),
            dial_position=np.full(n, np.nan),
            segment=[NEW] * n,
            clv=np.zeros(n),
            value_at_risk=np.zeros(n),
            reasons=[[] for _ in range(n)] if explain else None,
            as_of_s=np.where(known, as_of, np.nan),
            lapsed=np.zeros(n, dtype=bool),
            timing=(
                pd.DataFrame(np.nan, index=range(n), columns=self.timing.columns(hs))
                if self.timing.models
                else None
            ),
            horizons=hs,
        )
        if not known.any():
            return out
        rows = np.flatnonzero(known)
        before, before_runs = self.previous().lookup([str(customer_ids[i]) for i in rows])
        scored = self.score_matrix(
            X[rows] if len(rows) < n else X,
            explain,
            top_k,
            previous_stage=before,
            previous_runs=before_runs,
            horizons=hs,
        )
        if out.timing is not None:
            out.timing.iloc[rows] = scored.timing.to_numpy()
        for name in (
            "p_purchase",
            "p_churn",
            "engagement_score",
            "dial_position",
            "clv",
            "value_at_risk",
            "lapsed",
        ):
            getattr(out, name)[rows] = getattr(scored, name)
        for k, i in enumerate(rows.tolist()):
            out.stage[i] = scored.stage[k]
            out.segment[i] = scored.segment[k]
            if explain:
                out.reasons[i] = scored.reasons[k]
        return out

    def rows_matrix(self, rows: Sequence[Mapping[str, float | None]]) -> np.ndarray:
        """Caller-sent feature rows as the input matrix, checked against the value rules.

        Raises:
            RequestError: a row lacks a needed feature or has an unknown one (the message
                names them and the row), a value is not a finite number or null, or
                values break a feature's rule (:func:`features.catalog.value_rules`: the
                message names each feature, its rule and how many rows break it).

        """
        expected = set(self.inputs)
        X = np.full((len(rows), len(self.inputs)), np.nan)
        for i, row in enumerate(rows):
            keys = set(row)
            missing = [c for c in self.inputs if c not in keys]
            extra = sorted(keys - expected)
            if missing or extra:
                parts = []
                if missing:
                    parts.append(f"missing feature(s) {missing[:10]}")
                if extra:
                    parts.append(f"unknown feature(s) {extra[:10]}")
                raise RequestError(f"rows[{i}]: " + "; ".join(parts))
            for name, value in row.items():
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise RequestError(f"rows[{i}].{name}: must be a number or null")
                if not math.isfinite(value):
                    raise RequestError(f"rows[{i}].{name}: must be finite (got {value})")
                X[i, self._col[name]] = value
        problems = rule_violations(X, self.inputs, self.rules)
        if problems:
            raise RequestError("; ".join(problems))
        return X


def _redis_reader(config):
    """The direct reader of Feast's Redis store (single node), or None for any other."""
    cfg = config.online_store
    if getattr(cfg, "type", None) != "redis" or getattr(cfg, "redis_type", None) != "redis":
        return None
    from features.redis_store import RedisDirectReader

    return RedisDirectReader(config)


def _shown(v: float) -> str:
    return "null" if math.isnan(v) else f"{v:g}"


def rule_violations(
    X: np.ndarray, names: Sequence[str], rules: Mapping[str, ValueRule], most: int = 5
) -> list[str]:
    """One line per feature of ``X`` whose values break its rule.

    NaN is a null: allowed unless the rule is not ``nullable``. Each line names the
    feature, the rule, the number of rows breaking it and the first ones, e.g.
    ``purchases_30d: must be a count: a whole number from 0 to 10,000,000, never null;
    2 row(s) break it (rows[0] = -1, rows[3] = 2.5)``. At most ``most`` features are
    listed, then how many more.
    """
    out = []
    for j, name in enumerate(names):
        rule = rules.get(name)
        if rule is None:
            continue
        col = X[:, j]
        bad = (col < rule.low) | (col > rule.high)
        if rule.integer:
            bad |= np.isfinite(col) & (col != np.floor(col))
        if not rule.nullable:
            bad |= np.isnan(col)
        rows = np.flatnonzero(bad)
        if len(rows):
            shown = ", ".join(f"rows[{i}] = {_shown(col[i])}" for i in rows[:3].tolist())
            never = "" if rule.nullable else ", never null"
            out.append(
                f"{name}: must be {rule.describe()}{never}; {len(rows)} row(s) break it ({shown})"
            )
    if len(out) > most:
        out = [*out[:most], f"and {len(out) - most} more feature(s)"]
    return out


__all__ = [
    "NOW_ENV",
    "OnlinePredictor",
    "RequestError",
    "Scored",
    "StoreUnavailable",
    "parse_now",
    "rule_violations",
]
