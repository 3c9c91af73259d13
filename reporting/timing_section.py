"""The report's "When" section: the hazard models' curves and their weekly buyers.

Two parts, both from the hazard champions (:class:`serving.timing.Timing`):

1. **A survival curve for one contact** (``engage report --contact ID``; default: the
   first of the latest run's at-risk list, else the run's first contact): P(no purchase
   yet) after the as-of time of the latest run (appetence hazard model) and, for a
   customer, P(no activity yet) (churn hazard model), period by period up to ``H_max``,
   with the medians (days to purchase, to activity) and the expected days to churn.
2. **Predicted vs realised buyers per week**: on the latest snapshot whose ``H_max``
   weeks are all observed (else the latest with at least one observed week), the
   appetence hazard model's expected number of contacts whose first purchase after the
   as-of time falls in each period, ``sum_i S_i(k-1) - S_i(k)``, against the number that
   did. A period that ends after the last event is shown as *pending*, never as zero.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from engage.config import Params, Paths
from features.catalog import ENTITY_KEY, TIMESTAMP
from reporting.charts import line_chart
from serving.timing import Timing, timing_columns


def _note(text: str) -> str:
    return f"<p class='note'>{text}</p>"


def pick_contact(paths: Paths, contact: str | None) -> tuple[str, str]:
    """The contact whose curve is drawn, and why it was picked.

    Raises:
        LookupError: no scoring run, or ``contact`` is not in the latest run (named).

    """
    from serving.at_risk import at_risk_list
    from serving.runs import find_run

    info = find_run(paths)
    if contact is not None:
        ids = pd.read_parquet(info.path, columns=[ENTITY_KEY])[ENTITY_KEY]
        if not (ids == contact).any():
            raise LookupError(
                f"--contact {contact!r}: not in the latest scoring run {info.run_id} "
                f"({len(ids):,} contacts)"
            )
        return contact, "chosen with --contact"
    try:
        _, top = at_risk_list(paths, top=1)
    except LookupError:
        top = pd.DataFrame()
    if len(top):
        return str(top[ENTITY_KEY].iat[0]), "the first of the at-risk list"
    first = pd.read_parquet(info.path, columns=[ENTITY_KEY])[ENTITY_KEY]
    if first.empty:
        raise LookupError(f"scoring run {info.run_id} holds no contact")
    return str(first.iat[0]), "the run's first contact (no at-risk list)"


def contact_curves(paths: Paths, timing: Timing, contact: str) -> tuple[pd.Timestamp, dict, dict]:
    """The contact's curves on the latest run's snapshot.

    Returns:
        The as-of time; per model present, the survival at 0, 1..K periods (days ->
        value); and the contact's timing columns (:func:`serving.timing.timing_columns`).

    """
    from features.snapshots import pick_snapshot
    from serving.runs import find_run
    from training.hazard import survival

    info = find_run(paths)
    snap = pick_snapshot(paths.features_dir, info.as_of)
    rows = pd.read_parquet(snap.path, columns=list(dict.fromkeys([ENTITY_KEY, *timing.features])))
    row = rows.loc[rows[ENTITY_KEY] == contact].head(1).reset_index(drop=True)
    curves: dict[str, dict[int, float]] = {}
    for name, model in timing.models.items():
        if name == "churn" and int(row["has_purchased"].iat[0]) != 1:
            continue  # the churn curve is a customer's
        s = survival(model.hazards(row))[0]
        curves[name] = {0: 1.0, **{(k + 1) * model.period_days: float(v) for k, v in enumerate(s)}}
    return snap.as_of, curves, timing_columns(row, timing).iloc[0].to_dict()


def weekly_buyers(
    paths: Paths, params: Params, timing: Timing
) -> tuple[pd.Timestamp, pd.DataFrame]:
    """Expected vs realised first purchases per period after the chosen as-of time.

    Returns:
        The as-of time and a frame with ``period`` (1..K), ``start`` (date),
        ``predicted`` and ``realised`` (NaN while the period is not fully observed:
        pending).

    Raises:
        LookupError: no appetence hazard model, or no snapshot with an observed period.

    """
    from features.snapshots import list_snapshots
    from training.hazard import first_event_times, survival
    from training.labels import observed_until

    model = timing.models.get("appetence")
    if model is None:
        raise LookupError("no appetence hazard model")
    end = observed_until(paths.events)
    period = pd.Timedelta(days=model.period_days)
    snaps = list_snapshots(paths.features_dir)
    full = [s for s in snaps if s.as_of + model.periods * period <= end]
    some = [s for s in snaps if s.as_of + period <= end]
    if not full and not some:
        raise LookupError(
            f"no snapshot has a whole period of {model.period_days} days observed before "
            f"the last event ({end:%Y-%m-%d})"
        )
    snap = (full or some)[-1]
    rows = pd.read_parquet(
        snap.path, columns=list(dict.fromkeys([ENTITY_KEY, TIMESTAMP, *model.features]))
    )
    s = np.hstack([np.ones((len(rows), 1)), survival(model.hazards(rows))])
    predicted = (s[:, :-1] - s[:, 1:]).sum(axis=0)
    events = pd.read_parquet(
        paths.events,
        columns=["customer_id", "event_type", "event_time"],
        filters=[("event_type", "==", params.data.conversion_event)],
    )
    first = first_event_times(rows, events, [params.data.conversion_event])
    as_of = snap.as_of
    k = ((pd.to_datetime(first, utc=True) - as_of) // period).dropna().astype(int) + 1
    realised = np.bincount(k[k <= model.periods], minlength=model.periods + 1)[1:].astype(float)
    starts = [as_of + i * period for i in range(model.periods)]
    observed = np.array([t + period <= end for t in starts])
    return as_of, pd.DataFrame(
        {
            "period": np.arange(1, model.periods + 1),
            "start": [f"{t:%Y-%m-%d}" for t in starts],
            "predicted": predicted,
            "realised": np.where(observed, realised, np.nan),
        }
    )


def _days(v: float | None) -> str:
    return "not within H_max" if v is None or v != v else f"{v:.0f} days"


def timing_section(
    paths: Paths, params: Params, timing: Timing | None = None, contact: str | None = None
) -> str:
    """The HTML of the section (a note when a part cannot be drawn, saying why).

    Raises:
        LookupError: ``contact`` is not in the latest scoring run.

    """
    if timing is None:
        from serving.timing import load_timing

        try:
            timing = load_timing(paths, params)
        except LookupError as err:
            # No registry at all (scores brought from elsewhere, or nothing trained here):
            # the rest of the report still stands.
            return _note(f"No hazard (time-to-event) model can be read: {html.escape(str(err))}")
    if not timing.models:
        return _note(
            "No hazard (time-to-event) model is registered yet: `engage train` fits them "
            "(README, <i>When, not only whether</i>)."
        )
    parts = []
    if timing.missing:
        parts.append(_note(f"No hazard model for: {html.escape(', '.join(timing.missing))}."))
    try:
        picked, why = pick_contact(paths, contact)
    except LookupError as err:
        if contact is not None:
            raise
        parts.append(_note(html.escape(str(err))))
    else:
        as_of, curves, cols = contact_curves(paths, timing, picked)
        labels = {"appetence": "P(no purchase yet)", "churn": "P(no activity yet)"}
        days = sorted({d for c in curves.values() for d in c})
        series = {labels[m]: [c.get(d, np.nan) for d in days] for m, c in curves.items()}
        parts.append(
            f"<p>Contact <b>{html.escape(picked)}</b> ({why}), from the features as of "
            f"{as_of:%Y-%m-%d}: next purchase in {_days(cols.get('days_to_purchase'))} "
            f"(median)"
            + (
                f"; next activity in {_days(cols.get('days_to_activity'))}; expected days to "
                f"churn: {_days_to_churn(cols.get('days_to_churn'))}"
                if "churn" in curves
                else ""
            )
            + ".</p>"
        )
        parts.append(
            line_chart(
                "survival",
                "Survival curve: probability the event has not happened yet, by day",
                [str(d) for d in days],
                series,
                percent=True,
                y_min=0.0,
            )
        )
    try:
        as_of, weeks = weekly_buyers(paths, params, timing)
    except LookupError as err:
        parts.append(_note(f"Predicted vs realised buyers: pending ({html.escape(str(err))})."))
        return "\n".join(parts)
    pending = int(weeks["realised"].isna().sum())
    done = weeks["realised"].notna()
    gap = ""
    if done.any():
        p, r = weeks.loc[done, "predicted"].sum(), weeks.loc[done, "realised"].sum()
        gap = f" Over the observed periods: {p:,.0f} predicted, {r:,.0f} realised."
    parts.append(
        f"<p>First purchases per period after the snapshot of {as_of:%Y-%m-%d} (the latest "
        "whose periods are observed): the appetence hazard model's expected number of "
        "contacts buying for the first time after that date in each period, against the "
        "number who did. If that date was among the model's training times, the agreement "
        f"is in-sample.{gap}"
        + (f" {pending} period(s) not observed yet: pending." if pending else "")
        + "</p>"
    )
    parts.append(
        line_chart(
            "buyers",
            "Buyers per period: predicted vs realised",
            list(weeks["start"]),
            {"predicted": weeks["predicted"], "realised": weeks["realised"]},
            y_min=0.0,
        )
    )
    shown = weeks.assign(
        realised=[("pending" if v != v else f"{v:,.0f}") for v in weeks["realised"]],
        predicted=[f"{v:,.1f}" for v in weeks["predicted"]],
    )
    rows = "".join(
        f"<tr><td>{r.period}</td><td>{r.start}</td><td class='num'>{r.predicted}</td>"
        f"<td class='num'>{r.realised}</td></tr>"
        for r in shown.itertuples(index=False)
    )
    parts.append(
        "<table><thead><tr><th>period</th><th>from</th><th>predicted</th><th>realised</th>"
        f"</tr></thead><tbody>{rows}</tbody></table>"
    )
    return "\n".join(parts)


def _days_to_churn(v: float | None) -> str:
    if v is None or v != v:
        return "none expected (likelier to act before lapsing)"
    return "already lapsed" if v == 0 else f"{v:.0f} days"
