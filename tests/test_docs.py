"""docs/DOMAIN.md and the code cannot drift: its worked examples are recomputed here.

- Every "**Worked example (KEY).** inputs: LABEL = expr = ... = **result**" line is
  checked twice: each arithmetic expression must equal the stated result, and for a KPI
  the product implements, the product's function on the stated inputs must too.
- The engagement-index examples table is recomputed by ``serving.index``.
- The defaults quoted in the document are those of params.yaml.
- No file of the project cites a domain document outside the repository, and every
  section anchor cited in DOMAIN.md (from the code or the document) has its heading.
"""

from __future__ import annotations

import ast
import math
import operator
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engage.config import ValueParams, load_params
from reporting.kpis import churn_rate, ctr, monthly_kpis, nps, retention_rate
from serving.index import engagement_index
from serving.value import customer_value

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = ROOT / "docs" / "DOMAIN.md"
TEXT = DOMAIN.read_text(encoding="utf-8")
PARAMS = load_params(ROOT / "params.yaml")

# --- which files belong to the project -------------------------------------------------

_SKIP_DIRS = {".git", ".venv", "data", "mlruns", "__pycache__", ".pytest_cache", ".ruff_cache"}


def project_files() -> list[Path]:
    """Tracked files plus new ones not ignored (git), else a walk of the source tree."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
        files = [ROOT / p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        files = []
        for base, dirs, names in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.endswith(".egg-info")]
            files += [Path(base) / n for n in names]
    return [f for f in files if f.is_file()]


def test_the_file_list_covers_the_project():
    names = {f.relative_to(ROOT).as_posix() for f in project_files()}
    for expected in ("README.md", "docs/DOMAIN.md", "reporting/kpis.py", "tests/test_docs.py"):
        assert expected in names


# Built from pieces so that this file does not match itself.
_OUTSIDE = re.compile(
    r"PRODUCT" + r"\.md" + "|" + r"(?:^|[^\w-])shared" + "/" + "|" + "/work/" + "shared",
    re.MULTILINE,
)


def test_no_file_cites_a_domain_document_outside_the_repository():
    offenders = []
    for path in project_files():
        text = path.read_bytes().decode("utf-8", errors="ignore")
        for m in _OUTSIDE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            offenders.append(f"{path.relative_to(ROOT)}:{line}: {m.group(0).strip()}")
    assert not offenders, "cite docs/DOMAIN.md instead:\n" + "\n".join(offenders)


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_cited_domain_anchor_exists():
    anchors = {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", TEXT, re.MULTILINE)}
    cited = [(DOMAIN, a) for a in re.findall(r"\]\(#([\w-]+)\)", TEXT)]
    for path in project_files():
        text = path.read_bytes().decode("utf-8", errors="ignore")
        cited += [(path, a) for a in re.findall(r"docs/DOMAIN\.md#([\w-]+)", text)]
    assert any(p != DOMAIN for p, _ in cited), "expected the code to cite sections"
    missing = [f"{p.relative_to(ROOT)}: #{a}" for p, a in cited if a not in anchors]
    assert not missing, f"anchors without a heading in docs/DOMAIN.md: {missing}"


# --- worked examples -----------------------------------------------------------------

_EXAMPLE = re.compile(
    r"^\*\*Worked example \((?P<key>[^)]+)\)\.\*\* (?P<inputs>[^:]+): "
    r"(?P<chain>.+?) = \*\*(?P<result>[^*]+)\*\*\.$",
    re.MULTILINE,
)
_NUMBER = r"-?\d[\d,]*(?:\.\d+)?"
_OPS: dict[type, Callable] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def _number(text: str) -> float:
    """The one number in ``text`` ("1,200 $" -> 1200.0, "7.5 %" -> 7.5)."""
    found = re.findall(_NUMBER, text)
    assert len(found) == 1, f"expected one number in {text!r}"
    return float(found[0].replace(",", ""))


def _arithmetic(expr: str) -> float:
    """Evaluate + - × / and parentheses on numbers written as in the document."""
    src = expr.replace("×", "*").replace("−", "-")
    src = re.sub(r"(?<=\d),(?=\d{3}\b)", "", src)  # thousands separators

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        raise ValueError(f"not plain arithmetic: {expr!r}")

    return ev(ast.parse(src, mode="eval"))


def _examples() -> list[dict]:
    out = []
    for m in _EXAMPLE.finditer(TEXT):
        inputs = {}
        for part in m["inputs"].split(", "):
            name, _, value = part.partition(" = ")
            inputs[name.strip()] = _number(value)
        label, *exprs = m["chain"].split(" = ")
        out.append(
            {
                "key": m["key"],
                "inputs": inputs,
                "label": label,
                "exprs": exprs,
                "result": _number(m["result"]),
                "line": m.group(0),
            }
        )
    return out


def _value(x: dict, frequency: str, p_churn: float = float("nan")) -> pd.DataFrame:
    features = pd.DataFrame(
        {
            "has_purchased": [1],
            "avg_order_value": [x["average order value"]],
            # With the mean-gap method the 365-day count must not be what is used.
            "purchases_365d": [x.get("purchases per year", 1.0)],
            "mean_days_between_purchases": [x.get("mean days between purchases", np.nan)],
        }
    )
    params = ValueParams(lifespan_years=x["lifespan"], frequency=frequency, currency="EUR")
    return customer_value(features, np.array([p_churn]), params)


def _nps_answers(x: dict) -> pd.Series:
    # Spread each group over its whole range, so the group boundaries are exercised.
    def spread(n: float, scores: list[int]) -> list[int]:
        return [scores[i % len(scores)] for i in range(int(n))]

    return pd.Series(
        spread(x["promoters"], [9, 10])
        + spread(x["passives"], [7, 8])
        + spread(x["detractors"], [0, 1, 2, 3, 4, 5, 6]),
        dtype=float,
    )


# What the product computes from a worked example's inputs, per example key.
PRODUCT: dict[str, Callable[[dict], float]] = {
    "CRR": lambda x: retention_rate(start=x["S"], end=x["E"], acquired=x["N"]),
    "churn rate": lambda x: churn_rate(start=x["S"], lost=x["L"]),
    "CLV": lambda x: float(_value(x, "purchases_365d")["clv"].iloc[0]),
    "CLV, mean gap": lambda x: float(_value(x, "mean_gap")["clv"].iloc[0]),
    "value at risk": lambda x: float(
        _value(x, "purchases_365d", x["p_churn"])["value_at_risk"].iloc[0]
    ),
    "NPS": lambda x: nps(_nps_answers(x)),
    "CTR": lambda x: ctr(clicks=x["clicks"], sent=x["e-mails sent"]),
}
# KPIs the product does not implement (the document says so): arithmetic only.
NOT_IMPLEMENTED = {"CSAT", "time on platform", "social engagement rate"}
REQUIRED = {"CRR", "churn rate", "CLV", "NPS", "CTR"}

EXAMPLES = _examples()


def test_the_worked_examples_are_all_found():
    keys = {e["key"] for e in EXAMPLES}
    assert REQUIRED <= keys, f"missing worked examples: {REQUIRED - keys}"
    assert keys <= set(PRODUCT) | NOT_IMPLEMENTED, f"unknown: {keys - set(PRODUCT)}"
    # Every line that announces a worked example has the checkable form.
    announced = re.findall(r"^\*\*Worked example \(", TEXT, re.MULTILINE)
    assert len(announced) == len(EXAMPLES)


def _example_id(example: dict) -> str:
    return re.sub(r"\W+", "_", f"{example['key']} {example['result']:g}")


@pytest.mark.parametrize("example", EXAMPLES, ids=_example_id)
def test_worked_example_arithmetic(example):
    assert example["exprs"], example["line"]
    for expr in example["exprs"]:
        assert _arithmetic(expr) == pytest.approx(example["result"]), (expr, example["line"])
    # The first expression is built from the stated inputs.
    used = {float(n.replace(",", "")) for n in re.findall(_NUMBER, example["exprs"][0])}
    for name, value in example["inputs"].items():
        assert value in used, f"input {name} = {value:g} not in {example['exprs'][0]!r}"


@pytest.mark.parametrize(
    "example",
    [e for e in EXAMPLES if e["key"] in PRODUCT],
    ids=_example_id,
)
def test_worked_example_equals_the_product(example):
    got = PRODUCT[example["key"]](example["inputs"])
    assert got == pytest.approx(example["result"]), example["line"]


def test_the_source_retention_mistake_is_not_what_the_product_computes():
    # The source's 20 % is net growth / S; the product's CRR for the same month is 70 %.
    assert "= 20 %" in TEXT
    assert retention_rate(start=10_000, end=12_000, acquired=5_000) != pytest.approx(20.0)


def test_crr_counts_a_reactivated_customer_as_retained(tmp_path):
    """The caveat of the CRR section: 1 lapsed, 1 back, 1 new gives CRR 100 %, churn 100 %."""
    rows = [
        ("back", "2025-01-01", "purchase", 10.0),  # lapsed by February 1 (20-day window)
        ("lapses", "2025-01-20", "purchase", 10.0),  # active on Feb 1, not on Mar 1
        ("back", "2025-02-10", "purchase", 10.0),  # comes back: not a first purchase
        ("new", "2025-02-15", "purchase", 10.0),  # acquired in February
    ]
    df = pd.DataFrame(rows, columns=["customer_id", "event_time", "event_type", "value"])
    df["event_time"] = pd.to_datetime(df["event_time"], utc=True).astype("datetime64[us, UTC]")
    df.to_parquet(tmp_path / "e.parquet")
    params = load_params(ROOT / "params.yaml", overrides=("labels.active_within_days=20",))
    feb = monthly_kpis(tmp_path / "e.parquet", params).set_index("month").loc["2025-02"]
    assert (feb["customers_start"], feb["customers_end"], feb["acquired"]) == (1, 2, 1)
    assert feb["retention_rate"] == pytest.approx(100.0)
    assert feb["churn_rate"] == pytest.approx(100.0)
    assert "CRR = (2 − 1) / 1 × 100 = 100 %" in TEXT and "churn rate = 100 %" in TEXT


# --- the engagement index and the defaults ------------------------------------------------

_INDEX_COLUMNS = "contact | half | p_purchase | p_churn | stage | engagement score | dial position"
_INDEX_HEADER = f"| {_INDEX_COLUMNS} |"


def _index_rows() -> list[list[str]]:
    lines = TEXT.splitlines()
    start = lines.index(_INDEX_HEADER) + 2  # skip the header and the |---| line
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_index_examples_table_equals_the_product():
    rows = _index_rows()
    assert {r[4] for r in rows} == {"Nurture", "Purchase", "Retention", "Exit"}

    def prob(cell: str) -> float:
        return float("nan") if cell in ("-", "–") else float(cell)

    out = engagement_index(
        [1 if r[1] == "customer" else 0 for r in rows],
        [prob(r[2]) for r in rows],
        [prob(r[3]) for r in rows],
        PARAMS.index,
    )
    assert list(out["stage"]) == [r[4] for r in rows]
    assert out["engagement_score"].tolist() == pytest.approx([float(r[5]) for r in rows])
    assert out["dial_position"].tolist() == pytest.approx([float(r[6]) for r in rows])


def test_quoted_defaults_are_those_of_params_yaml():
    idx = PARAMS.index
    assert f"`index.tau_purchase` = {idx.tau_purchase:g}" in TEXT
    assert f"`index.tau_churn` = {idx.tau_churn:g}" in TEXT
    assert f"tau_p = {idx.tau_purchase:g}, tau_c = {idx.tau_churn:g}" in TEXT
    for name, value in PARAMS.segments.model_dump().items():
        assert f"`{name}` ({value:g})" in TEXT, name
    assert f"(default {PARAMS.value.lifespan_years:g})" in TEXT
    assert f"`labels.active_within_days` ({PARAMS.labels.active_within_days})" in TEXT


def test_the_arithmetic_checker_can_fail():
    assert _arithmetic("(12,000 − 5,000) / 10,000 × 100") == pytest.approx(70.0)
    assert _arithmetic("(12,000 − 10,000) / 10,000 × 100") != pytest.approx(70.0)
    with pytest.raises(ValueError):
        _arithmetic("__import__('os')")
    assert math.isnan(retention_rate(0, 1, 1))
