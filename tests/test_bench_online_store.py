"""The online-store benchmark runs end to end on a small data set and compares equal reads."""

from __future__ import annotations

from benchmarks.bench_online_store import render, run


def test_bench_online_store_measures_both_stores_and_their_reads_agree(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGAGE_DATA_DIR", str(tmp_path))  # run() sets it; restored after
    result = run(customers=300, data_dir=tmp_path, days=60)

    assert result["equal"] and result["compared"] == 300
    for store in ("stock", "packed"):
        assert result[store]["rows"] == 300
        assert result[store]["materialize_s"] > 0 and result[store]["file_mb"] > 0
    # One row per contact and view instead of one per contact and feature.
    assert result["packed"]["file_mb"] < result["stock"]["file_mb"]
    table = render(result)
    assert "PackedSqliteOnlineStore" in table and "ratio stock / packed" in table
