"""Kill a batch command at a named point, rerun it: same stores as an uninterrupted run.

The light subset of the matrix (``make test``, within its 10-minute budget): the ingest
commit killed between two renames. Every point of every step (the ingest journal, the
features build, training and scoring included) and random-time kills are in
``test_batch_kill_rerun_heavy.py`` (``make test-reliability``) and in BENCHMARKS.md
(``python -m benchmarks.bench_reliability``).
"""

from __future__ import annotations

import shutil

import pytest

from benchmarks.reliability import KILLED, STEPS, events_state, run
from tests.reliability.conftest_batch import bench  # noqa: F401

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("step", "point"),
    [("ingest", "ingest:mid_commit")],
)
def test_a_killed_step_leaves_readable_stores_and_a_rerun_matches(bench, step, point):  # noqa: F811
    bench.prepare((step,))
    case = bench.case(step, point)
    assert case.killed, case
    assert case.readable, case.detail
    assert case.rerun_ok and case.identical, case.detail


def test_the_comparison_notices_a_different_store(bench, tmp_path):  # noqa: F811
    """The harness can fail: a store with one more ingest is not 'identical'."""
    bench.prepare(("ingest",))
    reference = bench.references["ingest"]
    other = tmp_path / "other"
    shutil.copytree(bench.starts["ingest"], other)
    # The same file appended (not replacing) gives other events and another log. The
    # start holds the demo data, which an ingest replaces unless told to append.
    outcome = run(other, ["data", "ingest", str(other / "incoming.csv"), "--append"])
    assert outcome.returncode == 0, outcome.output
    state = events_state(other)
    assert state["events"] != reference["events"] and state["log"] != reference["log"]


def test_a_kill_point_really_kills(bench, tmp_path):  # noqa: F811
    bench.prepare(("ingest",))
    work = tmp_path / "work"
    shutil.copytree(bench.starts["ingest"], work)
    before = events_state(work)
    outcome = run(work, STEPS["ingest"].command(work), fault="ingest:staged")
    assert outcome.returncode == KILLED
    # Killed before the commit: the store is exactly as before, temporary files aside.
    assert events_state(work) == before
    leftovers = [p.name for p in work.iterdir() if p.name.endswith(".tmp")]
    assert leftovers and all(p.startswith(".") for p in leftovers)
