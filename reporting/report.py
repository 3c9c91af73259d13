"""One self-contained HTML report for a retention lead.

Sections: the engagement index (quadrants and segments of the last scoring runs and the
stage movements between the last two), monthly KPIs (formulas in
docs/DOMAIN.md#kpi-formulas), model quality against the baselines (from the champions'
MLflow runs), the SHAP summaries, and the top customers at risk with their reasons.
Images are embedded as base64 PNG, so the file opens anywhere without network access.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from engage.config import Params, Paths  # noqa: E402
from engage.specs import MODEL_NAMES  # noqa: E402
from reporting.kpis import monthly_kpis  # noqa: E402
from serving.index import STAGES  # noqa: E402
from serving.segments import SEGMENTS  # noqa: E402

SECTIONS = (
    "Engagement index",
    "Monthly KPIs",
    "Model quality",
    "SHAP summary",
    "Top customers at risk",
)
CURVES = ("roc.png", "calibration.png", "gain.png")
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{border-bottom:3px solid #345}h2{margin-top:2em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eef}
td.l,th.l{text-align:left}img{max-width:100%;margin:4px}.grid{display:flex;flex-wrap:wrap}
.note{color:#666;font-size:13px}
"""


def _img(png: bytes, alt: str, width: int = 360) -> str:
    data = base64.b64encode(png).decode()
    return f'<img alt="{html.escape(alt)}" width="{width}" src="data:image/png;base64,{data}">'


def _fig_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _table(frame: pd.DataFrame, fmt: dict[str, str] | None = None, left: tuple = ()) -> str:
    fmt = fmt or {}
    head = "".join(
        f'<th class="{"l" if c in left else ""}">{html.escape(str(c))}</th>' for c in frame.columns
    )
    rows = []
    for _, r in frame.iterrows():
        cells = []
        for c in frame.columns:
            v = r[c]
            text = fmt[c].format(v) if c in fmt and pd.notna(v) else ("" if pd.isna(v) else v)
            cls = "l" if c in left else ""
            cells.append(f'<td class="{cls}">{html.escape(str(text))}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _index_section(paths: Paths, last_runs: int) -> str:
    from serving.runs import list_runs
    from serving.transitions import stage_transitions

    runs = list_runs(paths)[-last_runs:]
    if not runs:
        return '<p class="note">No scoring run yet: run <code>engage score</code>.</p>'
    stage_rows, seg_rows = [], []
    for r in runs:
        df = pd.read_parquet(r.path, columns=["stage", "segment"])
        stage_rows.append({"run": r.run_id, **df["stage"].value_counts().to_dict()})
        seg_rows.append({"run": r.run_id, **df["segment"].value_counts().to_dict()})
    stages = pd.DataFrame(stage_rows).reindex(columns=["run", *STAGES]).fillna(0)
    segs = pd.DataFrame(seg_rows).reindex(columns=["run", *SEGMENTS]).fillna(0)
    fig, ax = plt.subplots(figsize=(6, 3))
    stages.set_index("run")[list(STAGES)].plot.barh(stacked=True, ax=ax)
    ax.set(xlabel="contacts", ylabel="", title="quadrants per scoring run")
    ax.legend(fontsize=8, loc="lower right")
    out = [
        f"<p>Latest run <b>{html.escape(runs[-1].run_id)}</b>: features as of "
        f"{runs[-1].as_of:%Y-%m-%d}, {runs[-1].rows:,} contacts, models "
        f"{html.escape(json.dumps(runs[-1].versions))}.</p>",
        _img(_fig_png(fig), "quadrants per run", 560),
        "<h3>Quadrants</h3>",
        _table(stages, {s: "{:,.0f}" for s in STAGES}, left=("run",)),
        "<h3>Lifecycle segments</h3>",
        _table(segs, {s: "{:,.0f}" for s in SEGMENTS}, left=("run",)),
    ]
    if len(runs) >= 2:
        moves = stage_transitions(paths, runs[-2].run_id, runs[-1].run_id)
        matrix = moves.matrix().reindex(index=list(STAGES), columns=list(STAGES), fill_value=0)
        matrix.insert(0, "from \\ to", matrix.index)
        out += [
            f"<h3>Stage changes {html.escape(runs[-2].run_id)} &rarr; "
            f"{html.escape(runs[-1].run_id)}</h3>",
            f"<p>{len(moves.changes):,} contacts changed stage (the basis of automated "
            "responses: <code>engage transitions</code>).</p>",
            _table(matrix, {s: "{:,.0f}" for s in STAGES}, left=("from \\ to",)),
        ]
    return "\n".join(out)


def _kpi_section(paths: Paths, params: Params) -> str:
    kpis = monthly_kpis(paths.events, params)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    kpis.plot(
        x="month", y=["retention_rate", "churn_rate"], ax=axes[0], title="retention / churn %"
    )
    kpis.plot(x="month", y="ctr", ax=axes[1], title="CTR %", legend=False)
    kpis.plot(x="month", y="nps", ax=axes[2], title="NPS", legend=False)
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    fmt = {
        c: "{:.1f}" for c in ("retention_rate", "churn_rate", "ctr", "nps", "avg_customer_value")
    }
    fmt.update({c: "{:,.0f}" for c in ("customers_start", "customers_end", "acquired", "lost")})
    fmt["revenue"] = "{:,.0f}"
    return (
        '<p class="note">CRR = (E - N) / S x 100; churn = lost / S x 100; CTR = clicks / '
        "sent x 100; NPS = % promoters (9-10) - % detractors (0-6); average customer value "
        "= revenue / buyers of the month. S, E: active customers (a purchase within "
        f"{params.labels.active_within_days} days) at the start and end of the month; "
        "N: customers whose first purchase is in the month.</p>"
        + _img(_fig_png(fig), "monthly KPIs", 1000)
        + _table(kpis, fmt, left=("month",))
    )


def _model_sections(paths: Paths) -> tuple[str, str]:
    from training.registry import champion_runs

    champions = champion_runs(paths, MODEL_NAMES)
    if not champions:
        note = '<p class="note">No champion model yet: run <code>engage train</code>.</p>'
        return note, note
    quality, shap_html = [], []
    for run in champions:
        m = run.metrics
        rows = []
        for who, label in (
            ("model", "LightGBM (calibrated)"),
            ("logreg", "logistic"),
            ("rfm", "RFM"),
        ):
            rows.append(
                {
                    "method": label,
                    "ROC-AUC": m.get(f"test_{who}_roc_auc"),
                    "PR-AUC": m.get(f"test_{who}_pr_auc"),
                    "Brier": m.get(f"test_{who}_brier"),
                    "ECE": m.get(f"test_{who}_ece"),
                    "lift top 10%": m.get(f"test_{who}_lift_top_decile"),
                }
            )
        table = pd.DataFrame(rows)
        fmt = {c: "{:.4f}" for c in ("ROC-AUC", "PR-AUC", "Brier", "ECE")}
        fmt["lift top 10%"] = "{:.2f}"
        plots = run.plots
        test_range = html.escape(run.tags.get("as_of_test", ""))
        quality.append(
            f"<h3>{run.name} v{run.version} (test as-of {test_range})</h3>"
            f"{_table(table, fmt, left=('method',))}<div class='grid'>"
            + "".join(_img(plots[f], f) for f in CURVES if f in plots)
            + "</div>"
        )
        if "shap_beeswarm.png" in plots:
            shap_html.append(f"<h3>{run.name}</h3>" + _img(plots["shap_beeswarm.png"], "SHAP", 600))
    return "\n".join(quality), "\n".join(shap_html)


def _at_risk_section(paths: Paths, top: int) -> str:
    from serving.at_risk import at_risk_list

    try:
        _, frame = at_risk_list(paths, top=top)
    except LookupError as err:
        return f'<p class="note">{html.escape(str(err))}</p>'
    frame = frame.copy()
    frame["reasons"] = ["; ".join(r) for r in frame["reasons"]]
    cols = [
        "customer_id",
        "p_churn",
        "stage",
        "segment",
        "clv",
        "value_at_risk",
        "reasons",
        "action",
    ]
    fmt = {"p_churn": "{:.1%}", "clv": "{:,.0f}", "value_at_risk": "{:,.0f}"}
    return _table(frame[cols], fmt, left=("customer_id", "stage", "segment", "reasons", "action"))


def build_report(
    paths: Paths, params: Params, out: Path | None = None, last_runs: int = 4, top: int = 20
) -> Path:
    """Write the HTML report and return its path (default ``<data>/reports/report.html``).

    Every string that comes from the data (customer ids, segments, reasons, run ids,
    model tags) is HTML-escaped.

    Raises:
        FileNotFoundError: no events yet (the message names the commands that make them).

    """
    from engage.data.io import CREATE_HINT

    if not paths.events.exists():
        raise FileNotFoundError(f"{paths.events} does not exist; {CREATE_HINT}")
    out = out or paths.reports_dir / "report.html"
    quality, shap_html = _model_sections(paths)
    bodies = {
        "Engagement index": _index_section(paths, last_runs),
        "Monthly KPIs": _kpi_section(paths, params),
        "Model quality": quality,
        "SHAP summary": shap_html,
        "Top customers at risk": _at_risk_section(paths, top),
    }
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Engagement report</title><style>{_CSS}</style></head><body>",
        "<h1>Engagement report</h1>",
        f"<p class='note'>Generated {pd.Timestamp.now(tz='UTC'):%Y-%m-%d %H:%M} UTC from "
        f"{html.escape(str(paths.data_dir))}.</p>",
    ]
    for title in SECTIONS:
        anchor = title.lower().replace(" ", "-")
        parts.append(f"<h2 id='{anchor}'>{title}</h2>\n{bodies[title]}")
    parts.append("</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(out)
    return out
