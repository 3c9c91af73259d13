"""The "Did it come true?" section of the report: realised outcomes, the at-risk hit rate, drift.

:func:`monitoring_section` runs the same computation as ``engage monitor``
(:func:`monitoring.monitor.monitor`, without logging to MLflow) and returns an HTML
fragment with plain-language captions; images are embedded PNG, as in the rest of the
report.
"""

from __future__ import annotations

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from engage.config import Params, Paths  # noqa: E402

TITLE = "Did it come true?"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="realised against predicted" width="760" src="data:image/png;base64,{data}">'


def _cell(value, fmt: str | None) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return fmt.format(value) if fmt else str(value)


def _table(frame: pd.DataFrame, fmt: dict[str, str], left: tuple[str, ...] = ()) -> str:
    head = "".join(
        f'<th class="{"l" if c in left else ""}">{html.escape(str(c))}</th>' for c in frame.columns
    )
    rows = []
    for r in frame.itertuples(index=False):
        cells = "".join(
            f'<td class="{"l" if c in left else ""}">{html.escape(_cell(v, fmt.get(c)))}</td>'
            for c, v in zip(frame.columns, r, strict=True)
        )
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def monthly(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Realised against predicted per model and month of the as-of time (complete windows).

    Returns:
        ``model``, ``month``, ``runs``, ``contacts``, ``predicted``, ``realised``,
        ``roc_auc`` (means over the month's runs).

    """
    done = outcomes[outcomes["status"] == "complete"]
    if done.empty:
        return pd.DataFrame(
            columns=["model", "month", "runs", "contacts", "predicted", "realised", "roc_auc"]
        )
    done = done.assign(month=done["as_of"].dt.strftime("%Y-%m"))
    g = done.groupby(["model", "month"], sort=True)
    return g.agg(
        runs=("run_id", "size"),
        contacts=("evaluated", "sum"),
        predicted=("predicted_rate", "mean"),
        realised=("realised_rate", "mean"),
        roc_auc=("roc_auc", "mean"),
    ).reset_index()


def monitoring_section(paths: Paths, params: Params) -> str:
    """The HTML of the section (a note when there is nothing to monitor yet)."""
    from monitoring.monitor import monitor

    try:
        report = monitor(paths, params)
    except (FileNotFoundError, LookupError, ValueError) as err:
        return _note(f"Nothing to monitor yet: {err}")
    frame = report.outcome_frame()
    out = [
        "<p>Each scoring run predicted who would buy and who would leave within the "
        "horizon the models were trained for. Once that window has passed, the events say "
        "what really happened; these figures compare the two, on the same label "
        f"definition as training. Events end on {report.observed_until:%Y-%m-%d}.</p>"
    ]
    per_month = monthly(frame) if not frame.empty else monthly(pd.DataFrame(columns=["status"]))
    if per_month.empty:
        out.append(_note("No scoring run has a complete label window yet."))
    else:
        fig, axes = plt.subplots(1, per_month["model"].nunique(), figsize=(10, 3), squeeze=False)
        for ax, (model, g) in zip(axes[0], per_month.groupby("model"), strict=True):
            ax.plot(g["month"], g["predicted"], "o--", label="predicted")
            ax.plot(g["month"], g["realised"], "o-", label="realised")
            ax.set(title=f"{model}: share of positives", ylabel="share")
            ax.tick_params(axis="x", labelrotation=45, labelsize=7)
            ax.legend(fontsize=8)
        out += [
            "<h3>Realised against predicted, per month</h3>",
            _png(fig),
            _note(
                "predicted: the mean probability the runs of the month gave; realised: the "
                "share that actually bought (appetence) or left (churn). Close lines mean the "
                "probabilities can be taken at face value; ROC-AUC says whether the ranking "
                "(who first) held: 0.5 is a coin toss, 1 a perfect order."
            ),
            _table(
                per_month,
                {
                    "contacts": "{:,.0f}",
                    "predicted": "{:.1%}",
                    "realised": "{:.1%}",
                    "roc_auc": "{:.3f}",
                },
                left=("model", "month"),
            ),
        ]
    partial = frame[frame["status"] != "complete"] if not frame.empty else frame
    if len(partial):
        out.append(
            _note(
                f"{len(partial)} run/model pair(s) have a label window not yet fully observed: "
                "they are left out here (engage monitor shows them as partial, never final)."
            )
        )
    if "at_risk_listed" in frame:
        hits = frame[(frame["status"] == "complete") & (frame["at_risk_listed"] > 0)]
        if len(hits):
            table = hits[
                [
                    "run_id",
                    "as_of",
                    "at_risk_listed",
                    "at_risk_labelled",
                    "at_risk_churned",
                    "at_risk_hit_rate",
                    "at_risk_base_rate",
                    "at_risk_lift",
                    "at_risk_clv_churned",
                ]
            ].copy()
            table["as_of"] = table["as_of"].dt.strftime("%Y-%m-%d")
            table.columns = [
                "run",
                "as of",
                "listed",
                "with a label",
                "left",
                "hit rate",
                "churn rate of all",
                "lift",
                "value of those who left",
            ]
            out += [
                "<h3>The at-risk list: how many of them left?</h3>",
                _note(
                    f"Of the top {params.monitoring.at_risk_top} customers by value at risk "
                    "in each run, the share who really left within the horizon (hit rate), "
                    "against the churn rate of all active customers (lift = how many times "
                    "more often a listed customer left). Customers outside the churn "
                    "population have no label and are not counted as hits or misses."
                ),
                _table(
                    table,
                    {
                        "listed": "{:,.0f}",
                        "with a label": "{:,.0f}",
                        "left": "{:,.0f}",
                        "hit rate": "{:.1%}",
                        "churn rate of all": "{:.1%}",
                        "lift": "{:.2f}",
                        "value of those who left": "{:,.0f}",
                    },
                    left=("run", "as of"),
                ),
            ]
    out.append("<h3>Has the data moved since the models were trained?</h3>")
    out.append(
        _note(
            "PSI (population stability index) compares today's distribution of each model "
            "input with the one the model was validated on: below "
            f"{params.monitoring.psi_warn} no real change, from {params.monitoring.psi_warn} "
            f"a moderate one, from {params.monitoring.psi_alert} a major one (time to look, "
            "and to retrain). Gain share: how much the model relies on the feature."
        )
    )
    for d in report.feature_drift:
        if d.table.empty:
            out.append(_note(f"{d.model}: {d.note}"))
            continue
        shown = d.table[d.table["level"] != "ok"].head(15)
        if shown.empty:
            shown = d.table.head(3)
        current = "" if d.current is None else f"{d.current:%Y-%m-%d}"
        out += [
            f"<p><b>{html.escape(d.model)} v{html.escape(d.version)}</b>: reference "
            f"{html.escape(d.reference)} against the snapshot of {current}.</p>",
            _table(
                shown[["feature", "psi", "level", "importance", "ref_median", "cur_median"]],
                {
                    "psi": "{:.3f}",
                    "importance": "{:.1%}",
                    "ref_median": "{:.3g}",
                    "cur_median": "{:.3g}",
                },
                left=("feature", "level"),
            ),
        ]
    if report.alerts:
        items = "".join(
            f"<li><b>{html.escape(a.level)}</b>: {html.escape(a.message)}</li>"
            for a in report.alerts[:20]
        )
        out.append(f"<h3>Alerts</h3><ul>{items}</ul>")
    else:
        out.append(_note("No threshold crossed."))
    return "\n".join(out)
