"""CSV exports: text a spreadsheet would run as a formula gets a leading quote."""

from __future__ import annotations

import io

import pandas as pd

from engage.exports import neutralise, to_csv


def test_each_formula_start_is_neutralised_and_plain_text_is_not():
    for text in ("=1+1", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\tx", "\rx"):
        assert neutralise(text) == "'" + text
    for value in ("c1", "a=b", "", " =x", 3.5, -2, None):
        assert neutralise(value) == value


def test_to_csv_keeps_numbers_as_numbers():
    frame = pd.DataFrame(
        {"customer_id": ['=HYPERLINK("http://x")', "c2"], "delta": [-0.5, 1.25], "n": [-3, 4]}
    )
    text = to_csv(frame, float_format="%.2f")
    assert text.splitlines() == [
        "customer_id,delta,n",
        '"\'=HYPERLINK(""http://x"")",-0.50,-3',
        "c2,1.25,4",
    ]
    back = pd.read_csv(io.StringIO(text))
    assert back["delta"].tolist() == [-0.5, 1.25] and back["n"].tolist() == [-3, 4]
    # The caller's frame is not changed.
    assert frame["customer_id"].iloc[0].startswith("=")
