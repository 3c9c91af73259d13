"""The README walk-through, end to end: a shop's CSV export to an at-risk list.

The export has the shape users bring (``user_id,timestamp,event_name,amount``, foreign
event names, no event id); it is generated from the simulator so that the models have
something to learn, then only the README's commands touch it.
"""

import re
import shlex

import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app
from engage.config import PROJECT_ROOT, load_params
from engage.data.io import read_events
from engage.data.simulate import simulate_to_parquet

pytestmark = pytest.mark.slow

THEIR_NAMES = {"web_visit": "page_view", "cart_add": "add_to_cart", "purchase": "order"}


def shop_export(tmp_path) -> tuple[pd.DataFrame, object]:
    """A shop export: the simulator's visits, carts and orders under the shop's names."""
    params = load_params(overrides=("simulate.customers=700", "simulate.days=300"))
    sim = tmp_path / "sim"
    simulate_to_parquet(params.simulate, params.data, sim / "e.parquet", sim / "c.parquet")
    events = read_events(sim / "e.parquet")
    events = events[events["event_type"].isin(THEIR_NAMES)]
    export = pd.DataFrame(
        {
            "user_id": events["customer_id"].str.replace("C", "u", regex=False),
            "timestamp": events["event_time"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "event_name": events["event_type"].map(THEIR_NAMES),
            # A visit's seconds are not the shop's to export: only orders have an amount.
            "amount": events["value"].where(events["event_type"] == "purchase"),
        }
    )
    return export, params


def readme_walkthrough() -> tuple[str, list[list[str]]]:
    """The mapping file and the `engage` commands of the README's walk-through."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme.split("### Your own data, from a CSV export to an at-risk list", 1)[1]
    section = section.split("\n### ", 1)[0]
    mapping = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    bash = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = [
        shlex.split(line.split("#", 1)[0])[1:]
        for line in bash.splitlines()
        if line.startswith("engage ")
    ]
    return mapping, commands


def test_readme_walkthrough_from_a_csv_export_to_an_at_risk_list(tmp_path, monkeypatch):
    from cli.ui import console

    monkeypatch.setattr(console, "_width", 200)
    export, _ = shop_export(tmp_path)
    export.to_csv(tmp_path / "shop.csv", index=False)
    mapping, commands = readme_walkthrough()
    (tmp_path / "shop-mapping.yaml").write_text(mapping)
    assert [c[:2] for c in commands] == [
        ["data", "ingest"],
        ["features", "build"],
        ["train"],
        ["score"],
        ["at-risk", "--top"],
    ]
    data_dir = tmp_path / "engage-shop"
    monkeypatch.setenv("ENGAGE_DATA_DIR", str(data_dir))
    monkeypatch.chdir(tmp_path)  # the README's relative file names

    outputs = []
    for args in commands:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
        assert "Traceback" not in result.output
        outputs.append(result.output)

    ingest, features, train, score, at_risk = outputs
    # No e-mails, no NPS in a shop export: the build says which features are empty.
    flat = " ".join(features.split())
    assert "no events of type email_sent, email_open, email_click" in flat, features
    assert (
        "open_rate_30d" in flat and "KPIs without data (left out of the report): CTR, NPS" in flat
    )
    rows = len(export)
    assert f"{rows} rows = {rows} good + 0 bad" in ingest, ingest
    stored = read_events(data_dir / "events.parquet")
    assert len(stored) == rows and stored["event_id"].str.startswith("h:").all()
    assert set(stored["event_type"]) == {"web_visit", "cart_add", "purchase"}
    assert "churn v1 -> @champion" in train and "appetence v1 -> @champion" in train
    assert "contacts" in score
    listed = [line for line in at_risk.splitlines() if re.search(r"\bu\d{7}\b", line)]
    assert listed, at_risk

    # The report leaves the KPIs without data out instead of drawing empty axes.
    result = CliRunner().invoke(app, ["report"])
    assert result.exit_code == 0, result.output
    page = (data_dir / "reports" / "report.html").read_text()
    assert "kpi-retention" in page and "kpi-ctr" not in page and "kpi-nps" not in page
    assert "CTR and NPS: left out" in page

    # The same export again: nothing added, the store unchanged.
    result = CliRunner().invoke(app, commands[0])
    assert result.exit_code == 0 and "already ingested" in result.output, result.output
    pd.testing.assert_frame_equal(read_events(data_dir / "events.parquet"), stored)
