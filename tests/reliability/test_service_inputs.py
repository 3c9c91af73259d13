"""Input rules of the service, without a server: ranges, grouped messages, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from engage.config import load_params
from features.catalog import model_feature_names, value_rules
from serving.api_models import (
    feature_row_example,
    feature_row_model,
    predict_features_request_model,
    predict_request_model,
)
from serving.online import rule_violations
from serving.startup import one_line

PARAMS = load_params()
RULES = value_rules(PARAMS)


def test_every_model_input_has_a_rule_by_its_unit():
    assert set(RULES) == set(model_feature_names(PARAMS))
    flag, count = RULES["has_purchased"], RULES["purchases_30d"]
    assert (flag.low, flag.high, flag.integer, flag.nullable) == (0, 1, True, False)
    assert (count.low, count.high, count.integer, count.nullable) == (0, 10_000_000, True, False)
    assert (RULES["days_since_last_purchase"].low, RULES["days_since_last_purchase"].nullable) == (
        0,
        True,
    )
    assert (RULES["open_rate_30d"].low, RULES["open_rate_30d"].high) == (0, 1)
    assert (RULES["activity_trend_30d"].low, RULES["activity_trend_30d"].high) == (-1, 1)
    assert (RULES["last_nps_response_value"].low, RULES["last_nps_response_value"].high) == (0, 10)
    assert RULES["avg_order_value"].kind == "an amount" and RULES["avg_order_value"].low == 0
    assert RULES["web_visit_value_30d"].kind == "a number of seconds"
    # The largest CLV an accepted row can give is finite: amount x count x lifespan.
    top = RULES["avg_order_value"].high * RULES["purchases_365d"].high
    assert np.isfinite(top * PARAMS.value.lifespan_years)


def test_rule_violations_name_feature_rule_and_rows():
    names = ["has_purchased", "purchases_30d", "open_rate_30d", "days_since_last_purchase"]
    X = np.array(
        [
            [1.0, -1.0, 0.5, np.nan],  # negative count
            [np.nan, 2.5, 1.2, 3.0],  # null flag, fractional count, rate over 1
            [0.0, 3.0, 0.0, -0.1],  # negative days
            [1.0, 0.0, 1.0, 0.0],  # every bound itself is allowed
        ]
    )
    lines = rule_violations(X, names, RULES)
    assert lines == [
        "has_purchased: must be a flag: a whole number from 0 to 1, never null; "
        "1 row(s) break it (rows[1] = null)",
        "purchases_30d: must be a count: a whole number from 0 to 10,000,000, never null; "
        "2 row(s) break it (rows[0] = -1, rows[1] = 2.5)",
        "open_rate_30d: must be a rate: a number from 0 to 1; 1 row(s) break it (rows[1] = 1.2)",
        "days_since_last_purchase: must be a number of days: a number from 0 to 36,525; "
        "1 row(s) break it (rows[2] = -0.1)",
    ]
    assert rule_violations(X[3:], names, RULES) == []
    many = np.full((1, 8), -5.0)
    cut = rule_violations(many, list(RULES)[:8], RULES, most=5)
    assert len(cut) == 6 and cut[-1] == "and 3 more feature(s)"


def test_the_row_model_documents_and_enforces_the_rules():
    row = feature_row_model(RULES)
    request = predict_features_request_model(row, feature_row_example(RULES), max_ids=3)
    example = feature_row_example(RULES)
    assert request.model_validate_json(json.dumps({"rows": [example]})).rows[0]
    schema = request.model_json_schema()
    props = schema["$defs"]["FeatureRow"]["properties"]
    assert props["purchases_30d"] == {
        "description": "a count: a whole number from 0 to 10,000,000; never null",
        "maximum": 10_000_000,
        "minimum": 0,
        "multipleOf": 1,
        "title": "Purchases 30D",
        "type": "number",
    }
    assert {"type": "null"} in props["days_since_last_purchase"]["anyOf"]
    assert schema["properties"]["rows"]["maxItems"] == 3
    assert request.model_validate({"rows": [{**example, "days_since_last_purchase": None}]})
    for bad in ({"purchases_30d": None}, {"open_rate_30d": 1.01}, {"colour": 1.0}):
        with pytest.raises(ValidationError):
            request.model_validate({"rows": [{**example, **bad}]})
    with pytest.raises(ValidationError, match="at most 3 items"):
        request.model_validate({"rows": [example] * 4})


def test_validation_messages_group_rows_and_name_the_limit():
    from serving.service import describe_validation

    row = feature_row_model(RULES)
    request = predict_features_request_model(row, feature_row_example(RULES), max_ids=5)
    example = feature_row_example(RULES)
    rows = [{**example, "purchases_30d": -1}, example, {**example, "purchases_30d": -2}]
    with pytest.raises(ValidationError) as err:
        request.model_validate({"rows": rows})
    message, detail = describe_validation(err.value)
    assert message == (
        "invalid request: rows.*.purchases_30d: Input should be greater than or equal to 0 "
        "(2 item(s): rows.0, rows.2)"
    )
    assert [d["loc"] for d in detail] == ["rows.0.purchases_30d", "rows.2.purchases_30d"]
    assert "-1" not in message and "-2" not in message  # values are never echoed

    ids = predict_request_model(2)
    with pytest.raises(ValidationError) as err:
        ids.model_validate({"customer_ids": ["a", "b", "c"]})
    message, _ = describe_validation(err.value)
    assert "customer_ids: List should have at most 2 items" in message
    assert "(serving.max_ids)" in message


def test_errors_become_one_line():
    err = ValueError("the champion models were trained for other parameters:\n  a\n  b\nretrain")
    assert one_line(err) == "the champion models were trained for other parameters: a; b; retrain"
    assert one_line(KeyError("x")) == "'x'"
    assert one_line(ZeroDivisionError("boom")) == "ZeroDivisionError: boom"
