"""The report a retention lead opens on Monday: one self-contained HTML file.

Sections, most actionable first:

1. **This week** - customers to call (the still-reachable customers in Exit up to
   ``report.capacity``), their value at risk, the change since the last run, the
   contacts that newly entered Exit (:mod:`reporting.headline`, the CLI's numbers);
2. **Customers to call** - the call list with value, reasons and suggested action;
3. **Churn risk and capacity** - the distribution of p_churn and, on the champion's
   held-out weeks, how many customers a threshold flags per week and how precise that
   is, with a capacity slider (inline JavaScript over embedded data, offline);
4. **Stages over time** - stage counts of every stored run, and the flow between the
   last two runs in quadrant order (Nurture, Purchase, Retention, Exit);
5. **Lead funnel** - MQL -> SQL -> SAL -> won per run (:mod:`serving.leads`);
6. **Model quality** - the top-decile precision in plain words next to the technical
   metrics of every method the runs logged, model versions by name and date;
7. **When: time to event** - a contact's survival curves and the hazard model's
   predicted vs realised first purchases per week (:mod:`reporting.timing_section`);
8. **Monthly KPIs** - warm-up months (no full active window of history yet) marked;
9. **Lifecycle segments** and **SHAP summary**.

Charts are inline SVG (:mod:`reporting.charts`), the SHAP and curve plots embedded PNG:
no network access is needed to open the file. Money is shown in ``value.currency``.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from engage.config import Params, Paths
from engage.specs import MODEL_NAMES
from reporting.charts import STAGE_COLOURS, bar_chart, flow_chart, line_chart
from reporting.kpis import monthly_kpis
from reporting.monitoring_section import monitoring_section
from reporting.timing_section import timing_section
from serving.index import STAGES, thresholds_at
from serving.segments import SEGMENTS
from serving.timing import Timing

SECTIONS = (
    "This week",
    "Customers to call",
    "Churn risk and capacity",
    "Stages over time",
    "Lead funnel",
    "Model quality",
    "When: time to event",
    "Monthly KPIs",
    "Lifecycle segments",
    "SHAP summary",
    "Did it come true?",
)
CURVES = ("roc.png", "calibration.png", "gain.png")
THRESHOLD_GRID = tuple(round(0.01 * i, 2) for i in range(1, 100))
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;
padding:0 1em}
h1{border-bottom:3px solid #345}h2{margin-top:2em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#eef}td.l,th.l{text-align:left}img{max-width:100%;margin:4px}
.grid{display:flex;flex-wrap:wrap;gap:8px}.note{color:#555;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:1em 0}
.card{border:1px solid #ccd;border-radius:6px;padding:10px 14px;min-width:190px;
background:#f7f8fc}.card .v{font-size:28px;font-weight:700}.card .s{color:#555;
font-size:13px}.up{color:#b03a2e}.down{color:#2e7d32}
.warm{color:#888;font-style:italic}svg.chart{display:block;margin:8px 0;max-width:100%}
#capacity-tool{margin:.5em 0 1em}#capacity{width:420px;vertical-align:middle}
"""


def _img(png: bytes, alt: str, width: int = 360) -> str:
    data = base64.b64encode(png).decode()
    return f'<img alt="{html.escape(alt)}" width="{width}" src="data:image/png;base64,{data}">'


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
            missing = v is None or (isinstance(v, float) and math.isnan(v))
            text = "" if missing else (fmt[c].format(v) if c in fmt else v)
            cls = "l" if c in left else ""
            cells.append(f'<td class="{cls}">{html.escape(str(text))}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _note(text: str) -> str:
    return f'<p class="note">{text}</p>'


def _money(v: float, currency: str) -> str:
    # NaN: the data has no amounts (ingested with --no-amounts).
    return "unknown" if v != v else f"{v:,.0f} {currency}"


def _delta(now: float, before: float | None, money: str | None = None) -> str:
    if before is None:
        return "first run: nothing to compare with"
    if now != now or before != before:
        return "unknown (no amounts)"
    d = now - before
    if d == 0:
        return "no change since the last run"
    text = f"{abs(d):,.0f}" + (f" {money}" if money else "")
    cls, word = ("up", "more") if d > 0 else ("down", "fewer" if money is None else "less")
    return f'<span class="{cls}">{text} {word}</span> than the last run'


# ---------------------------------------------------------------------- this week


def _this_week(paths: Paths, params: Params) -> str:
    from reporting.headline import headline

    try:
        h = headline(paths, params)
    except LookupError as err:
        return _note(html.escape(str(err)))
    cur = params.value.currency
    came = ", ".join(f"{n:,} from {s}" for s, n in h.entered_from.items()) or "none"
    entered = (
        "first run"
        if h.entered_exit is None
        else f"{h.entered_exit:,} <span class='s'>({html.escape(came)})</span>"
    )
    cards = [
        ("customers to call", f"{h.to_call:,}", _delta(h.to_call, h.to_call_before)),
        (
            "their value at risk",
            _money(h.value_at_risk, cur),
            _delta(h.value_at_risk, h.value_before, cur),
        ),
        (
            "newly entered Exit",
            entered,
            f"since run {html.escape(h.previous.run_id)}" if h.previous else "",
        ),
        (
            "already lapsed in Exit",
            f"{h.lapsed_in_exit:,}",
            f"of {h.in_exit:,} in Exit: win-back campaign, not a call",
        ),
    ]
    body = "".join(
        f'<div class="card" data-figure="{html.escape(k)}"><div class="s">{html.escape(k)}</div>'
        f'<div class="v">{v}</div><div class="s">{s}</div></div>'
        for k, v, s in cards
    )
    return (
        f"<p>Run <b>{html.escape(h.run.run_id)}</b>, features as of "
        f"{h.run.as_of:%Y-%m-%d}, {h.run.rows:,} contacts. The call list holds the "
        f"still-reachable customers in Exit (not Lost / At risk) by value at risk, up to "
        f"the team's capacity of {h.capacity:,} per run (<code>report.capacity</code>): "
        f"<code>engage at-risk --call-list</code>.</p>"
        f'<div class="cards">{body}</div>'
    )


def _call_list(paths: Paths, params: Params) -> str:
    from serving.at_risk import call_list

    try:
        _, frame = call_list(paths, params.report.capacity)
    except LookupError as err:
        return _note(html.escape(str(err)))
    if frame.empty:
        return _note("No still-reachable customer is in Exit this run.")
    cur = params.value.currency
    shown = frame.head(params.report.call_list_rows).copy()
    shown["reasons"] = ["; ".join(r) for r in shown["reasons"]]
    shown = shown.rename(
        columns={
            "customer_id": "customer",
            "p_churn": "churn risk",
            "clv": f"value ({cur})",
            "value_at_risk": f"value at risk ({cur})",
        }
    )
    cols = ["customer", "churn risk", "segment", f"value ({cur})", f"value at risk ({cur})"]
    cols += ["reasons", "action"]
    fmt = {"churn risk": "{:.0%}", f"value ({cur})": "{:,.0f}", f"value at risk ({cur})": "{:,.0f}"}
    more = (
        f"The first {len(shown):,} of {len(frame):,}; the full list: "
        "<code>engage at-risk --call-list --format csv</code>."
    )
    return _note(more) + _table(shown[cols], fmt, left=("customer", "segment", "reasons", "action"))


# ------------------------------------------------------------ churn risk, capacity


def capacity_rows(held: pd.DataFrame) -> list[dict]:
    """The threshold table over :data:`THRESHOLD_GRID`, as the slider's embedded rows."""
    from serving.thresholds import threshold_table

    table = threshold_table(held, THRESHOLD_GRID)
    rows = []
    for r in table.itertuples(index=False):
        rows.append(
            {
                "t": f"{r.threshold:.2f}",
                "contacts": float(r.contacts),
                "precision": None if math.isnan(r.precision) else f"{_round(100 * r.precision)} %",
                "recall": None if math.isnan(r.recall) else f"{_round(100 * r.recall)} %",
            }
        )
    return rows


def _round(x: float) -> int:
    # Half up, as JavaScript's Math.round does for the slider.
    return int(math.floor(x + 0.5))


def pick_capacity(rows: list[dict], capacity: float) -> str:
    """The slider's text for ``capacity``: the lowest threshold flagging at most that many.

    Mirrors the inline script of the report (the browser test checks both agree).
    """
    for r in rows:
        if r["contacts"] <= capacity:
            if r["precision"] is None:
                return f"{_round(capacity)} calls per run: no customer is flagged at any threshold"
            return (
                f"{_round(capacity)} calls per run: threshold {r['t']} flags about "
                f"{_round(r['contacts'])} customers per run; expected precision "
                f"{r['precision']}, recall {r['recall']}"
            )
    return f"{_round(capacity)} calls per run: no threshold flags so few customers"


_SLIDER_JS = """
(function () {
  var rows = JSON.parse(document.getElementById('capacity-data').textContent);
  var slider = document.getElementById('capacity');
  var out = document.getElementById('capacity-out');
  var marker = document.getElementById('capacity-marker');
  function text(cap) {
    for (var i = 0; i < rows.length; i++) {
      var r = rows[i];
      if (r.contacts <= cap) {
        if (r.precision === null) {
          return [Math.round(cap) + ' calls per run: no customer is flagged at any threshold', i];
        }
        return [Math.round(cap) + ' calls per run: threshold ' + r.t + ' flags about ' +
          Math.round(r.contacts) + ' customers per run; expected precision ' + r.precision +
          ', recall ' + r.recall, i];
      }
    }
    return [Math.round(cap) + ' calls per run: no threshold flags so few customers', -1];
  }
  function show() {
    var got = text(Number(slider.value));
    out.textContent = got[0];
    if (marker && got[1] >= 0) {
      var left = Number(marker.dataset.left), right = Number(marker.dataset.right);
      var x = left + got[1] / Math.max(rows.length - 1, 1) * (right - left);
      marker.setAttribute('x1', x); marker.setAttribute('x2', x);
      marker.style.display = '';
    } else if (marker) { marker.style.display = 'none'; }
  }
  slider.addEventListener('input', show);
  show();
})();
"""


def _churn_risk(paths: Paths, params: Params) -> str:
    from serving.runs import read_run
    from serving.thresholds import load_held_out

    parts = []
    tau = thresholds_at(params.index, params.labels.horizon_days).tau_churn
    try:
        _, scores = read_run(paths, columns=["has_purchased", "p_churn"])
    except LookupError as err:
        return _note(html.escape(str(err)))
    q = scores.loc[scores["has_purchased"] == 1, "p_churn"].dropna().to_numpy()
    edges = np.linspace(0, 1, 21)
    counts, _ = np.histogram(q, bins=edges)
    labels = [f"{a:.2f}" for a in edges[:-1]]
    parts.append(
        bar_chart(
            "churn-distribution",
            f"Customers by churn risk, latest run ({len(q):,} customers)",
            labels,
            counts,
            colours=[
                STAGE_COLOURS["Exit"] if a >= tau else STAGE_COLOURS["Retention"]
                for a in edges[:-1]
            ],  # fmt: skip
            marker=(tau, f"tau_churn {tau:g}: Exit from here"),
        )
    )
    try:
        held, version = load_held_out(paths, "churn")
    except (LookupError, ValueError) as err:
        parts.append(_note(f"No held-out predictions for the slider: {html.escape(str(err))}"))
        return "".join(parts)
    rows = capacity_rows(held)
    grid = [r["t"] for r in rows]
    chart = line_chart(
        "capacity",
        f"Customers flagged per run at each threshold (churn v{version}, held-out weeks)",
        grid,
        {"customers flagged per run": [r["contacts"] for r in rows]},
    )
    # The slider's marker: a vertical line in the plot, moved by the script.
    left, right, top, bottom = 56, 700 - 16, 28, 260 - 40
    marker = (
        f'<line id="capacity-marker" data-left="{left}" data-right="{right}" x1="{left}" '
        f'x2="{left}" y1="{top}" y2="{bottom}" stroke="#222" stroke-dasharray="4 3"/>'
    )
    chart = chart.replace("</g></svg>", marker + "</g></svg>", 1)
    precision = line_chart(
        "precision",
        "Expected precision and recall at each threshold (held-out weeks)",
        grid,
        {
            "precision": [_pct_value(r["precision"]) for r in rows],
            "recall": [_pct_value(r["recall"]) for r in rows],
        },
        percent=True,
    )
    cap = params.report.capacity
    top_cap = max(int(math.ceil(max(r["contacts"] for r in rows))), cap, 1)
    parts.append(
        '<div id="capacity-tool"><label for="capacity">Calls per run: </label>'
        f'<input type="range" id="capacity" min="0" max="{top_cap}" step="1" value="{cap}"> '
        f'<output id="capacity-out" for="capacity">{html.escape(pick_capacity(rows, cap))}'
        "</output></div>"
        + chart
        + precision
        + f'<script type="application/json" id="capacity-data">{json.dumps(rows)}</script>'
        + f"<script>{_SLIDER_JS}</script>"
        + _note(
            "Counts are per scoring run (weekly snapshots), averaged over the champion's "
            "held-out weeks, over the customers the churn model was trained on; the slider "
            "picks the lowest threshold of a 0.01 grid that fits the capacity. The exact "
            "figure: <code>engage thresholds --model churn --capacity N</code>."
        )
    )
    return "".join(parts)


def _pct_value(text: str | None) -> float:
    return float("nan") if text is None else float(text.split()[0]) / 100


# ------------------------------------------------------------------ stages, flow


def _stage_counts(paths: Paths) -> pd.DataFrame:
    from serving.runs import list_runs

    rows = []
    for r in list_runs(paths):
        df = pd.read_parquet(r.path, columns=["stage"])
        rows.append({"run": r.run_id, "as_of": r.as_of, **df["stage"].value_counts().to_dict()})
    return pd.DataFrame(rows).reindex(columns=["run", "as_of", *STAGES]).fillna(0)


def _stages(paths: Paths) -> str:
    from serving.transitions import stage_transitions

    counts = _stage_counts(paths)
    if counts.empty:
        return _note("No scoring run yet: run <code>engage score</code>.")
    labels = [f"{t:%m-%d}" for t in counts["as_of"]]
    out = [
        line_chart(
            "stage-trend",
            f"Contacts per stage, every stored run ({len(counts)})",
            labels,
            {s: counts[s].tolist() for s in STAGES},
            colours=STAGE_COLOURS,
        )
    ]
    if len(counts) >= 2:
        moves = stage_transitions(paths)
        a, b = moves.from_run, moves.to_run
        ids_a = pd.read_parquet(a.path, columns=["customer_id", "stage"])
        ids_b = pd.read_parquet(b.path, columns=["customer_id", "stage"])
        both = ids_a.merge(ids_b, on="customer_id", suffixes=("_a", "_b"))
        flow = pd.crosstab(both["stage_a"], both["stage_b"]).reindex(
            index=list(STAGES), columns=list(STAGES), fill_value=0
        )
        out.append(
            flow_chart(
                "stage-flow",
                f"From run {a.run_id} to run {b.run_id} (contacts in both)",
                STAGES,
                flow.to_numpy(),
                f"{a.as_of:%Y-%m-%d}",
                f"{b.as_of:%Y-%m-%d}",
            )
        )
        matrix = moves.matrix().reindex(index=list(STAGES), columns=list(STAGES), fill_value=0)
        matrix.insert(0, "from \\ to", matrix.index)
        out.append(
            _note(
                f"{len(moves.changes):,} contacts changed stage after the stability rule "
                "(<code>index.hysteresis</code>, <code>index.min_dwell_runs</code>); "
                f"{moves.entered:,} new contacts, {moves.left:,} gone. "
                "<code>engage transitions</code> lists them and can post them to a webhook."
            )
            + _table(matrix, {s: "{:,.0f}" for s in STAGES}, left=("from \\ to",))
        )
    table = counts.assign(as_of=counts["as_of"].dt.strftime("%Y-%m-%d"))
    return "\n".join(out) + _table(
        table.tail(12), {s: "{:,.0f}" for s in STAGES}, left=("run", "as_of")
    )


# ---------------------------------------------------------------------- lead funnel


def _funnel(paths: Paths, params: Params) -> str:
    from serving.leads import lead_funnel, mql_threshold

    try:
        funnel = lead_funnel(paths, params)
    except (LookupError, FileNotFoundError) as err:
        return _note(html.escape(str(err)))
    t = funnel.table
    complete = t[t["complete"]]
    latest = complete.iloc[-1] if len(complete) else t.iloc[-1]
    steps = ["MQL", "SQL", "SAL", "won"]
    values = [latest["mql"], latest["sql"], latest["sal"], latest["won"]]
    rates = ["", _pct(latest["sql_rate"]), _pct(latest["sal_rate"]), _pct(latest["won_rate"])]
    chart = bar_chart(
        "lead-funnel",
        f"Lead funnel of run {latest['run_id']} ({latest['as_of']:%Y-%m-%d})",
        steps,
        values,
        colours=["#7fa7d6", "#1f5fa8", "#e39b2d", "#3f9a5b"],
        value_labels=[f"{v:,.0f} {r}".strip() for v, r in zip(values, rates, strict=True)],
        height=220,
    )
    shown = t.assign(
        as_of=t["as_of"].dt.strftime("%Y-%m-%d"),
        complete=np.where(t["complete"], "yes", "not yet"),
    ).rename(
        columns={
            "sql_rate": "SQL / MQL",
            "sal_rate": "SAL / SQL",
            "won_rate": "won / SAL",
            "bought_rate": "bought / SQL",
        }
    )
    pct = {c: "{:.1%}" for c in ("SQL / MQL", "SAL / SQL", "won / SAL", "bought / SQL")}
    count = {c: "{:,.0f}" for c in ("mql", "sql", "sal", "won", "bought")}
    lp = params.leads
    tau_purchase = thresholds_at(params.index, params.labels.horizon_days).tau_purchase
    note = _note(
        f"MQL: a prospect in {', '.join(lp.mql_segments)} or with p_purchase &ge; "
        f"{mql_threshold(params):.3g}; SQL: a prospect in Purchase (p_purchase &ge; "
        f"{tau_purchase:.3g}); SAL: an SQL with a <code>{lp.accepted_event}"
        f"</code> event within {lp.accepted_within_days} days of the run; won: a SAL who "
        f"bought within {params.labels.horizon_days} days; bought / SQL counts every SQL who "
        "bought, accepted or not. A run whose windows have not elapsed by the last event "
        f"({funnel.observed_until:%Y-%m-%d}) is provisional. Sales records acceptances with "
        f"<code>engage data ingest</code> (event type <code>{lp.accepted_event}</code>); the "
        "SQL list: <code>engage leads --top N</code>."
    )
    return chart + note + _table(shown.tail(12), {**pct, **count}, left=("run_id", "as_of"))


def _pct(x: float) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"({x:.0%})"


# --------------------------------------------------------------------- model quality


def _model_sections(paths: Paths, params: Params) -> tuple[str, str]:
    from reporting.quality import METRIC_LABELS, METRICS, compare, method_label, methods
    from training.registry import champion_runs

    champions = champion_runs(paths, MODEL_NAMES)
    if not champions:
        note = _note("No champion model yet: run <code>engage train</code>.")
        return note, note
    horizon = params.labels.horizon_days
    quality, shap_html = [], []
    for run in champions:
        cmp = compare(run.name, run.metrics, run.tags, horizon)
        by = methods(run.metrics)
        rows = []
        for method, m in by.items():
            row = {"method": method_label(method) + (" (served)" if method == cmp.served else "")}
            row.update({METRIC_LABELS[k]: m.get(k) for k in METRICS})
            rows.append(row)
        table = pd.DataFrame(rows)
        fmt = {METRIC_LABELS[k]: "{:.3f}" for k in ("roc_auc", "pr_auc", "brier", "ece")}
        fmt[METRIC_LABELS["precision_top_decile"]] = "{:.0%}"
        fmt[METRIC_LABELS["lift_top_decile"]] = "{:.2f}"
        test_range = html.escape(run.tags.get("as_of_test", ""))
        quality.append(
            f"<h3>{html.escape(run.name)} version {html.escape(run.version)}, trained "
            f"{run.created:%Y-%m-%d}</h3>"
            f"<p><b>{html.escape(cmp.sentence)}</b></p>"
            + _note(f"Held-out as-of times: {test_range}.")
            + _table(table, fmt, left=("method",))
            + "<div class='grid'>"
            + "".join(_img(run.plots[f], f) for f in CURVES if f in run.plots)
            + "</div>"
        )
        if "shap_beeswarm.png" in run.plots:
            shap_html.append(
                f"<h3>{html.escape(run.name)}</h3>"
                + _img(run.plots["shap_beeswarm.png"], "SHAP", 600)
            )
    return "\n".join(quality), "\n".join(shap_html)


# ------------------------------------------------------------------------------ KPIs


def _kpis(paths: Paths, params: Params) -> str:
    if not paths.events.exists():
        return _note("No events yet.")
    from features.coverage import KPI_LABELS, store_coverage

    kpis = monthly_kpis(paths.events, params)
    # KPIs whose event types the store has none of (a shop export without e-mails or NPS
    # answers) are left out, rather than drawn as empty axes.
    empty = store_coverage(paths.events, params).empty_kpis
    kpis = kpis.drop(columns=list(empty))
    months = kpis["month"].tolist()
    charts = [
        line_chart(
            "kpi-retention",
            "Retention and churn rate (%), warm-up months left out",
            months,
            {"retention rate": kpis["retention_rate"], "churn rate": kpis["churn_rate"]},
        ),
        ""
        if "ctr" in empty
        else line_chart("kpi-ctr", "CTR (%)", months, {"CTR": kpis["ctr"]}, width=340),
        ""
        if "nps" in empty
        else line_chart("kpi-nps", "NPS", months, {"NPS": kpis["nps"]}, width=340),
    ]
    left_out = ""
    if empty:
        names = " and ".join(KPI_LABELS[k] for k in empty)
        left_out = f" {names}: left out, the events have none of the types they are computed from."
    shown = kpis.copy()
    for col in ("retention_rate", "churn_rate"):
        shown[col] = [
            "warm-up" if w else ("" if math.isnan(v) else f"{v:.1f}")
            for w, v in zip(shown["warm_up"], shown[col], strict=True)
        ]
    shown = shown.drop(columns="warm_up")
    fmt = {c: "{:.1f}" for c in ("ctr", "nps", "avg_customer_value")}
    fmt.update({c: "{:,.0f}" for c in ("customers_start", "customers_end", "acquired", "lost")})
    fmt["revenue"] = "{:,.0f}"
    warm = int(kpis["warm_up"].sum())
    return (
        _note(
            "CRR = (E - N) / S x 100; churn = lost / S x 100; CTR = clicks / sent x 100; NPS = "
            "% promoters (9-10) - % detractors (0-6); average customer value = revenue / "
            "buyers of the month (" + params.value.currency + "). S, E: active customers (a "
            f"purchase within {params.labels.active_within_days} days) at the start and end of "
            "the month; N: customers whose first purchase is in the month. "
            f"<span class='warm'>warm-up</span>: the first {warm} month(s) start less than "
            f"{params.labels.active_within_days} days after the first event, so nobody could "
            "have lapsed yet; their rates are not shown." + left_out
        )
        + charts[0]
        + "<div class='grid'>"
        + charts[1]
        + charts[2]
        + "</div>"
        + _table(shown, fmt, left=("month", "retention_rate", "churn_rate"))
    )


def _segments(paths: Paths, last_runs: int) -> str:
    from serving.runs import list_runs

    runs = list_runs(paths)[-last_runs:]
    if not runs:
        return _note("No scoring run yet.")
    rows = []
    for r in runs:
        df = pd.read_parquet(r.path, columns=["segment"])
        rows.append({"run": r.run_id, **df["segment"].value_counts().to_dict()})
    segs = pd.DataFrame(rows).reindex(columns=["run", *SEGMENTS]).fillna(0)
    return _table(segs, {s: "{:,.0f}" for s in SEGMENTS}, left=("run",))


def build_report(
    paths: Paths,
    params: Params,
    out: Path | None = None,
    last_runs: int = 4,
    contact: str | None = None,
    timing: Timing | None = None,
) -> Path:
    """Write the HTML report and return its path (default ``<data>/reports/report.html``).

    Every string that comes from the data (customer ids, segments, reasons, run ids,
    model tags) is HTML-escaped.

    Args:
        paths: resolved locations.
        params: the parsed params.yaml.
        out: the HTML file (default ``<data>/reports/report.html``).
        last_runs: runs shown in the segment table.
        contact: whose survival curve the "When" section draws (default: the first of
            the at-risk list).
        timing: the hazard models (default: the registry's hazard champions).

    Raises:
        FileNotFoundError: no events yet (the message names the commands that make them).
        LookupError: ``contact`` is not in the latest scoring run.

    """
    from engage.data.io import CREATE_HINT

    if not paths.events.exists():
        raise FileNotFoundError(f"{paths.events} does not exist; {CREATE_HINT}")
    out = out or paths.reports_dir / "report.html"
    quality, shap_html = _model_sections(paths, params)
    bodies = {
        "This week": _this_week(paths, params),
        "Customers to call": _call_list(paths, params),
        "Churn risk and capacity": _churn_risk(paths, params),
        "Stages over time": _stages(paths),
        "Lead funnel": _funnel(paths, params),
        "Model quality": quality,
        "When: time to event": timing_section(paths, params, timing, contact),
        "Monthly KPIs": _kpis(paths, params),
        "Lifecycle segments": _segments(paths, last_runs),
        "SHAP summary": shap_html,
        "Did it come true?": monitoring_section(paths, params),
    }
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
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
